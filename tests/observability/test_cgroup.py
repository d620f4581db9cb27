"""The container's memory limit as gateway_memory_limit_bytes: read from cgroup v2 or v1, and no
sample (not a huge number) when the container has no limit."""

from __future__ import annotations

from pathlib import Path

from gateway.observability.cgroup import MemoryLimitCollector, memory_limit_bytes
from gateway.observability.metrics import Metrics


def limits(directory: Path, v2: str | None, v1: str | None) -> tuple[str, str]:
    """Fake cgroup files in `directory`: v2's memory.max and v1's limit, each only if given."""
    directory.mkdir()
    paths = (directory / "memory.max", directory / "memory.limit_in_bytes")
    for path, text in zip(paths, (v2, v1), strict=True):
        if text is not None:
            path.write_text(text + "\n")
    return str(paths[0]), str(paths[1])


def test_the_limit_is_read_from_cgroup_v2_or_v1(tmp_path: Path) -> None:
    assert memory_limit_bytes(limits(tmp_path / "v2", "1073741824", None)) == 2**30
    assert memory_limit_bytes(limits(tmp_path / "v1", None, "536870912")) == 2**29
    [family] = MemoryLimitCollector(limits(tmp_path / "both", "1073741824", "536870912")).collect()
    assert [sample.value for sample in family.samples] == [2**30]


def test_no_limit_is_no_sample(tmp_path: Path) -> None:
    for name, v2, v1 in (("v2", "max", None), ("v1", None, "9223372036854771712"), ("none", None, None)):
        paths = limits(tmp_path / name, v2, v1)
        assert memory_limit_bytes(paths) is None
        [family] = MemoryLimitCollector(paths).collect()
        assert family.name == "gateway_memory_limit_bytes" and family.samples == []


def test_the_family_is_on_every_registry() -> None:
    names = {family.name for family in Metrics().registry.collect()}
    assert "gateway_memory_limit_bytes" in names

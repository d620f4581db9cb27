"""The container's memory limit as a metric (`gateway_memory_limit_bytes`), read from the cgroup
when scraped, so that an alert can compare `process_resident_memory_bytes` with the limit the
kernel kills at, whatever the overlay or pod spec set, without a copy of it in the rules."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# cgroup v2, then v1.
CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
# cgroup v1 writes "no limit" as a page-aligned number near 2**63.
_UNLIMITED_V1 = 2**62


def memory_limit_bytes(paths: Sequence[str] = CGROUP_MEMORY_LIMITS) -> int | None:
    """The memory limit of this process's cgroup, or None when there is none (or no cgroup)."""
    for path in paths:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit() or int(text) >= _UNLIMITED_V1:
            return None
        return int(text)
    return None


class MemoryLimitCollector(Collector):
    """The family always, its one sample only under a limit: no limit is no series, not +Inf."""

    def __init__(self, paths: Sequence[str] = CGROUP_MEMORY_LIMITS) -> None:
        self._paths = paths

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "gateway_memory_limit_bytes",
            "The memory limit of the gateway's cgroup (the pod's limit): the kernel kills the process there.",
        )
        limit = memory_limit_bytes(self._paths)
        if limit is not None:
            family.add_metric([], limit)
        yield family

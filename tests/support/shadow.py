"""A gateway in shadow mode in front of the fake legacy service, and what the rollout tests read
from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.http import keys
from tests.support.fake_legacy import write_flags
from tests.support.gateway import create, poll_until_final

ADMIN = {"X-Admin-Token": "admin-token-for-tests-0123456789"}


def results(client: Any, result: str, reason: str) -> float:
    labels = {"result": result, "reason": reason}
    return client.app[keys.METRICS].registry.get_sample_value("gateway_shadow_results_total", labels) or 0.0


async def shadow_gateway(
    gateway: Any, url: str, legacy_url: str, tmp_path: Path, sections: dict[str, Any] | None = None, **rollout: Any
) -> Any:
    flags = tmp_path / "flags.toml"
    write_flags(flags, 'mode = "shadow"\nversion = 1\n')
    settings = {
        "legacy_url": legacy_url,
        "flags_file": str(flags),
        "shadow_poll_interval": 0.05,
        "shadow_timeout": 20.0,
        "admin_token": ADMIN["X-Admin-Token"],
    }
    return await gateway(url, rollout=settings | rollout, **(sections or {}))


async def gateway_answer(gateway: Any, url: str, token: str) -> list[dict[str, Any]]:
    """What the gateway itself answers for this token (a gateway with no rollout)."""
    plain = await gateway(url)
    body, _ = await poll_until_final(plain, await create(plain, token))
    return body

"""`python -m bench --json stdlib`: the gateway with the standard library's json in place of
orjson, to measure what orjson buys (docs/benchmarks.md). Only the benchmark's gateway process
uses it; the gateway itself always uses orjson."""

from __future__ import annotations

import json
from typing import Any

JSONDecodeError = json.JSONDecodeError


def dumps(value: Any, default: Any = None) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=default).encode()


def loads(data: bytes | str) -> Any:
    return json.loads(data)


def use_in_gateway() -> None:
    import sys

    import gateway.observability.logs
    import gateway.sessions.fanout
    import gateway.upstream.client

    stdlib = sys.modules[__name__]
    for module in (gateway.sessions.fanout, gateway.observability.logs, gateway.upstream.client):
        module.orjson = stdlib  # type: ignore[attr-defined]

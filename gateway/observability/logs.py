"""structlog set up once per process: JSON lines (or console), level from config.

Nothing in the gateway logs headers or bodies; request-scoped keys (the request id) come from
contextvars bound by the request middleware.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from typing import Any, TextIO

import orjson
import structlog

from gateway.config import LogConfig

# Secrets seen by the current request (and the tasks it starts, which copy its context).
_SECRETS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("log_secrets", default=())
REDACTED = "[redacted]"


def redact_for_request(authorization: str | None) -> None:
    """Every later log line of this request's context (and of the tasks it starts) prints the
    Authorization value and its credential as [redacted].

    The gateway never logs headers, but an exception text can quote anything it was given;
    this is the net under that. Set afresh per request: keep-alive connections reuse a task.
    """
    secrets: list[str] = []
    if authorization:
        secrets.append(authorization)
        credential = authorization.partition(" ")[2].strip()
        if len(credential) >= 4:
            secrets.append(credential)
    _SECRETS.set(tuple(secrets))


def _redact(logger: Any, method: str, line: Any) -> Any:
    secrets = _SECRETS.get()
    if secrets and isinstance(line, str):
        for secret in sorted(secrets, key=len, reverse=True):
            line = line.replace(secret, REDACTED)
    return line


def _json_line(event: Any, **kw: Any) -> str:
    # One access line per request: orjson renders it in a fraction of json.dumps' time.
    return orjson.dumps(event, default=kw.get("default")).decode()


def configure_logging(config: LogConfig, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    level = logging.getLevelNamesMapping()[config.level.upper()]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_json_line)
        if config.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
            _redact,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    # aiohttp's own loggers (server errors) go to the same stream; its access log is replaced
    # by ours, which knows the route template and never prints headers.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer, _redact],
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.WARNING))

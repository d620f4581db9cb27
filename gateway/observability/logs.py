"""structlog set up once per process: JSON lines (or console), level from config.

Nothing in the gateway logs headers or bodies. Request-scoped keys (the request id) and the
secrets to redact come from one context variable, set once per request by the request
middleware (`begin_request`) and copied into the tasks a request starts. The access line (which
requests get one: docs/metrics.md, "Logs") is rendered directly (`access_line`): the same JSON as
any other line, without the processor chain's cost on the hot path.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import sys
from typing import Any, TextIO

import orjson
import structlog

from gateway.config import LogConfig

REDACTED = "[redacted]"
# Shorter values are not redacted: replacing "," or "e" in a rendered line would break the line's
# JSON (and say nothing), and no credential the upstream issues is that short.
MIN_SECRET = 8


class RequestContext:
    """What every log line of one request carries (`keys`), and the secrets it must not print."""

    __slots__ = ("keys", "secrets")

    def __init__(self, keys: dict[str, str], secrets: tuple[str, ...]) -> None:
        self.keys = keys
        self.secrets = secrets


_NO_REQUEST = RequestContext({}, ())
# The current request's context (and that of the tasks it starts, which copy it).
_REQUEST: contextvars.ContextVar[RequestContext] = contextvars.ContextVar("log_request", default=_NO_REQUEST)


def begin_request(authorization: str | None, **keys: str) -> None:
    """Every later log line of this request's context (and of the tasks it starts) carries `keys`
    and prints the Authorization value and its credential as [redacted].

    The gateway never logs headers, but an exception text can quote anything it was given;
    this is the net under that. Set afresh per request: keep-alive connections reuse a task.
    """
    secrets: tuple[str, ...] = ()
    if authorization:
        credential = authorization.partition(" ")[2].strip()
        secrets = tuple(value for value in (authorization, credential) if len(value) >= MIN_SECRET)
    _REQUEST.set(RequestContext(keys, secrets))


def _merge_request(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    keys = _REQUEST.get().keys
    if keys:
        event = keys | event
    return event


def _redact(logger: Any, method: str, line: Any) -> Any:
    secrets = _REQUEST.get().secrets
    if secrets and isinstance(line, str):
        for secret in sorted(secrets, key=len, reverse=True):
            line = line.replace(secret, REDACTED)
    return line


class _AccessLog:
    """Where access lines go. Logging is configured once per process (as structlog's own
    configuration is), so this is too: by configure_logging."""

    # A stream: JSON lines rendered directly; None: through structlog (console format), which
    # also filters by level; False: info lines are off.
    stream: TextIO | bool | None = None


_ACCESS = _AccessLog()


def access_line(logger: Any, **fields: Any) -> None:
    """Logs the request's access line (event "request", level info), as structlog would."""
    stream = _ACCESS.stream
    if stream is False:
        return
    if stream is None or stream is True:
        logger.info("request", **fields)
        return
    now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    line = orjson.dumps(_REQUEST.get().keys | fields | {"event": "request", "level": "info", "timestamp": now})
    stream.write(_redact(None, "info", line.decode()) + "\n")
    stream.flush()  # as structlog flushes each line: an access line is never held back


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
    # The access line is rendered directly when it is JSON and info lines are on.
    if level > logging.INFO:
        _ACCESS.stream = False
    else:
        _ACCESS.stream = stream if config.format == "json" else None
    structlog.configure(
        processors=[
            _merge_request,
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

"""structlog set up once per process: JSON lines (or console), level from config.

Nothing in the gateway logs headers or bodies; request-scoped keys (the request id) come from
contextvars bound by the request middleware.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog

from gateway.config import LogConfig


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
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.WARNING))

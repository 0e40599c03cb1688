"""Structured logging shared by every Switchyard process: one JSON object per line on stderr."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog


def configure_logging(level: str = "info", json: bool = True) -> None:
    """JSON lines for machines (default), key=value console lines for humans (`--log-format`)."""
    # orjson renders bytes straight to stderr's buffer: the request log line is on the hot path.
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=orjson.dumps) if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=(structlog.BytesLoggerFactory(file=sys.stderr.buffer) if json
                        else structlog.PrintLoggerFactory(file=sys.stderr)),
        cache_logger_on_first_use=True,
    )

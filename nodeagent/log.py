"""Logging: structlog to stderr, JSON lines for journald, readable lines on a terminal.

Command output (tables, JSON, diffs) goes to stdout; logs go to stderr, so
``nodeagent detect -o json | jq`` works while logs still reach the journal.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

import structlog


def configure(fmt: Optional[str] = None, verbosity: int = 0) -> None:
    """Set up structlog. ``fmt`` is "json" or "console"; None picks console on a TTY.

    Level: warnings by default for one-shot commands (their stdout is the report),
    info with ``-v``, debug with ``-vv``.
    """
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if fmt == "json":
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )

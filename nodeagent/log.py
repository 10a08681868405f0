"""Logging: structlog to stderr, JSON lines for journald, readable lines on a terminal.

Command output (tables, JSON, diffs) goes to stdout; logs go to stderr, so
``nodeagent detect -o json | jq`` works while logs still reach the journal.

structlog is imported on the first event that passes the level, not at start: a one-shot
command that logs nothing below a warning (``runtime configure --dry-run``) never pays
for it (structlog pulls in asyncio; ~25 ms of a ~60 ms command, see docs/benchmarks.md).
Modules take their logger from :func:`get_logger` instead of ``structlog.get_logger``.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

# logging's numeric levels, without importing logging.
DEBUG, INFO, WARNING = 10, 20, 30
_METHOD_LEVEL = {
    "debug": DEBUG,
    "info": INFO,
    "msg": INFO,
    "warning": WARNING,
    "warn": WARNING,
    "error": 40,
    "exception": 40,
    "critical": 50,
}


class _Settings:
    fmt: Optional[str] = None
    level: Optional[int] = None  # None: configure() not called; structlog's defaults
    generation = 0  # bumped by configure(); loggers re-resolve when it changes
    applied = -1


def configure(fmt: Optional[str] = None, verbosity: int = 0) -> None:
    """Set up logging. ``fmt`` is "json" or "console"; None picks console on a TTY.

    Level: warnings by default for one-shot commands (their stdout is the report),
    info with ``-v``, debug with ``-vv``.
    """
    _Settings.fmt = fmt or ("console" if sys.stderr.isatty() else "json")
    _Settings.level = {0: WARNING, 1: INFO}.get(verbosity, DEBUG)
    _Settings.generation += 1


def _apply() -> None:
    """Configure structlog from the settings (once per configure() call)."""
    import structlog

    if _Settings.applied == _Settings.generation:
        return
    _Settings.applied = _Settings.generation
    if _Settings.level is None:
        return
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if _Settings.fmt == "json":
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_Settings.level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class LazyLogger:
    """A structlog logger that imports structlog on the first event above the level."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, method: str) -> Any:
        level = _METHOD_LEVEL.get(method)
        if level is not None and _Settings.level is not None and level < _Settings.level:
            return _noop
        import structlog

        _apply()
        return getattr(structlog.get_logger(self._name), method)


def get_logger(name: str) -> Any:
    """The module logger: ``log = get_logger(__name__)``; ``log.info("event", k=v)``."""
    return LazyLogger(name)

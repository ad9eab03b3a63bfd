"""Configure structlog once, for the shell: readable on a terminal, JSON lines otherwise.

Events are facts in the past tense (``domain_defined``, ``step_failed``) carrying shared
keys: ``vm``, ``action``, ``reconcile_id``, ``duration_ms``.  Logs go to stderr so that
stdout stays the command's output (a plan, a report, JSON).
"""

from __future__ import annotations

import logging
import sys

import structlog

FORMATS = ("auto", "console", "json")


def configure(*, format: str = "auto", level: str = "info", stream=None) -> None:
    """Route structlog events to ``stream`` (stderr) as console text or JSON lines."""
    stream = stream or sys.stderr
    if format == "auto":
        format = "console" if stream.isatty() else "json"
    renderer = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if format == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )

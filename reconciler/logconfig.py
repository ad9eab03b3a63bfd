"""Configure structlog once, for the shell: readable on a terminal, JSON lines otherwise.

Every string in every event passes through :func:`redact_credentials`, so a git URL with
a token, or git's stderr quoting it, never reaches the logs in clear.

Events are facts in the past tense (``domain_defined``, ``step_failed``) carrying shared
keys: ``vm``, ``action``, ``reconcile_id``, ``duration_ms``.  Logs go to stderr so that
stdout stays the command's output (a plan, a report, JSON).

structlog is imported at the first log event the configured level lets through, not
before: it costs a one-shot command such as ``kvmops plan``, which logs nothing when all
goes well, a tenth of its run time, and ``kvmops apply``, whose events are info.
"""

from __future__ import annotations

import sys
import threading

FORMATS = ("auto", "console", "json")
# logging's numeric levels, spelled out: importing logging costs every command's start-up
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

_pending: dict | None = None  # what configure() asked for, not yet given to structlog
_least_level: int | None = None  # configure()'s level: events below it need no structlog to be dropped
_lock = threading.Lock()  # the executor's threads may all log their first event at once


def configure(*, format: str = "auto", level: str = "info", stream=None) -> None:
    """Route log events to ``stream`` (stderr) as console text or JSON lines."""
    global _pending, _least_level
    _pending = {"format": format, "level": level, "stream": stream}
    _least_level = _LEVELS.get(level.lower())
    if "structlog" in sys.modules:  # already in use: apply now
        _apply()


def _apply() -> None:
    global _pending
    with _lock:
        if _pending is None:
            return
        settings, _pending = _pending, None
        _configure(settings)


def _configure(settings: dict) -> None:
    import structlog

    stream = settings["stream"] or sys.stderr
    format = settings["format"]
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
            redact_credentials,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[settings["level"].lower()]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def redact_credentials(_logger, _method: str, event_dict: dict) -> dict:
    """structlog processor: mask credentials in URLs anywhere in an event (the backstop for every log line)."""
    from reconciler.core import redaction

    return {key: redaction.redact_value(value) for key, value in event_dict.items()}


class _Logger:
    """A structlog logger that imports and configures structlog on its first use."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger = None

    def __getattr__(self, attribute: str):
        if self._logger is None:
            if _dropped(attribute):
                return _drop
            _apply()
            import structlog

            self._logger = structlog.get_logger(self._name)
        return getattr(self._logger, attribute)


def _dropped(method: str) -> bool:
    """Return whether events logged with ``method`` fall below the configured level before structlog is loaded.

    structlog costs a twentieth of a second to import: a one-shot ``kvmops apply`` logs
    only info events, dropped at its default level (warning), so it need never load it.
    Once structlog is loaded (by a real event, or by anyone), it alone decides.
    """
    level = _LEVELS.get(method)
    return level is not None and _least_level is not None and level < _least_level and "structlog" not in sys.modules


def _drop(*_args, **_kwargs) -> None:
    return None


def get_logger(name: str) -> _Logger:
    """Return the logger ``name``; structlog is loaded when it first logs."""
    return _Logger(name)

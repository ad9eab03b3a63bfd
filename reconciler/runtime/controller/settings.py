"""What ``kvmops run`` is told: :class:`ControllerSettings`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reconciler import defaults
from reconciler.core import planner
from reconciler.runtime import execute, gitsource, hostlock


@dataclass(frozen=True)
class ControllerSettings:
    """Everything ``kvmops run`` is told: by flags, a config file, or both."""

    path: str
    uri: str
    uri_given: bool = False  # uri was asked for on the command line (--connect): kept to, even in a fleet repository
    planner: planner.Settings = planner.Settings()
    resync_interval: float = 60.0
    quiet_period: float = 0.3
    max_quiet_wait: float = 2.0  # a change storm still gets a pass at least this often
    workers: int = execute.DEFAULT_WORKERS
    termination_grace: float = 30.0
    listen: str = ""
    listen_token_file: str = ""  # /status and /metrics need this file's bearer token
    listen_insecure: bool = False  # serve beyond loopback without a token
    state_dir: Path = field(default_factory=hostlock.default_state_dir)
    reconnect_max_delay: float = 5.0
    host_timeout: float = defaults.DEFAULT_HOST_TIMEOUT  # in a fleet: a Host not connected to, or silent, that long is unreachable
    git: gitsource.GitSettings | None = None  # follow a branch instead of watching ``path``

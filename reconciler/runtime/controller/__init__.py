"""The controller behind ``kvmops run``: :class:`Controller`, told by :class:`ControllerSettings`.

The main loop and its passes are in :mod:`.loop`; its parts in :mod:`.settings`,
:mod:`.hostlock_keeper`, :mod:`.git_follower`, :mod:`.debounce`, :mod:`.timers`,
:mod:`.status` and :mod:`.lifecycle` (the last two shared with the fleet's :mod:`.fleet_loop`).
"""

from __future__ import annotations

from reconciler.runtime.controller.loop import Controller
from reconciler.runtime.controller.settings import ControllerSettings

__all__ = ["Controller", "ControllerSettings"]

"""The main loop's clocks: when the next full resync is due, when to ping the watchdog, when to reconnect."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass


@dataclass
class LoopTimers:
    """The main loop's clocks (``time.monotonic()``), carried from one turn to the next."""

    next_resync: float
    next_watchdog: float
    next_connect: float = 0.0
    reconnect_delay: float = 0.5


def next_resync(interval: float) -> float:
    """Return when the next periodic full resync is due: ``interval`` from now, plus up to 10 % jitter."""
    return time.monotonic() + interval + random.uniform(0, interval * 0.1)

"""The global planning choices the shell passes to :func:`~reconciler.core.planner.plan_changes`."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.core import policy as policies
from reconciler.core import trash


@dataclass(frozen=True)
class Settings:
    """Global planning choices; per-VM manifest fields override the defaults."""

    prune: bool = True
    allow_empty: bool = False
    virt_type: str = "auto"  # used when a VM does not set virtType
    shutdown_timeout: float = 60.0  # seconds, used when a VM does not set shutdownTimeout
    scope: str = "default"  # the manifest set's name: only its own domains are pruned
    no_prune_reason: str = "pruning is disabled (--no-prune)"
    password_salt: bytes = b""  # entropy for new graphics password digests (the shell passes random bytes)
    policy: policies.Policy | None = None  # the host's policy (configuration file); None: none is set
    allow_mass_prune: bool = False  # a prune larger than the policy's maxPrunePerPass goes ahead (--allow-mass-prune)
    trash_retention: int = trash.DEFAULT_RETENTION  # seconds a deleted volume stays restorable; 0: deleted at once
    now: int = 0  # epoch seconds, from the shell: when volumes moved to the trash count as deleted
    # In a fleet (core.fleet): the fleet and Host written in the marks, and the domains this
    # host's plan holds as they are, neither changed nor pruned (migrating away, split brain).
    fleet: str = ""
    host: str = ""
    roster: tuple[str, ...] = ()  # the fleet's Host names every mark written records (core.fleet)
    held: frozenset[str] = frozenset()

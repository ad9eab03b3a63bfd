"""The settings a one-shot command plans under: its flags over the host's configuration file.

``plan``, ``apply``, ``diff``, ``drain``, ``evacuate`` and ``doctor`` read ``--config`` (or
``$KVMOPS_CONFIG``) for the scope, the policy, the seconds a host gets to answer
(``hostTimeout``) and those a step may take (``stepTimeout``); their flags win over the
file. Without a configuration file there is no policy, the scope is ``default``, a host
gets 10 s and a step an hour.
"""

from __future__ import annotations

from pathlib import Path

from reconciler import defaults
from reconciler.core import planner, trash
from reconciler.core import policy as policies

DEFAULT_SCOPE = defaults.DEFAULT_SCOPE


def planning(path: str | None, *, no_prune: bool, allow_empty: bool, virt_type: str, shutdown_timeout: float,
             scope: str | None, config: str | None, allow_mass_prune: bool,
             single_file_stops_pruning: bool = True) -> planner.Settings:
    """Return the planner settings of a command planning the manifests at ``path``.

    A single manifest file cannot say which other VMs are gone, so it plans no prune
    (unless ``single_file_stops_pruning`` is off: ``diff`` compares whole revisions).
    """
    single_file = single_file_stops_pruning and Path(path).is_file()
    scope, policy = host_configuration(config, scope)
    return planner.Settings(
        prune=not no_prune and not single_file, allow_empty=allow_empty,
        virt_type=virt_type, shutdown_timeout=shutdown_timeout, scope=scope,
        no_prune_reason=(
            f"pruning is off because {path} is a single file: it cannot say which other VMs are gone"
            if single_file and not no_prune else "pruning is disabled (--no-prune)"
        ),
        policy=policy, allow_mass_prune=allow_mass_prune,
        trash_retention=trash_retention(config),
    )


def scoped(scope: str | None, config: str | None = None) -> planner.Settings:
    """Return the settings of a command that only looks (``status``, ``doctor`` in a fleet): the scope alone,
    ``--scope`` over the configuration file's."""
    return planner.Settings(scope=host_configuration(config, scope)[0])


def host_configuration(config: str | None, scope: str | None) -> tuple[str, policies.Policy | None]:
    """Return the scope and the host policy a one-shot command works under: ``--scope`` over the configuration file."""
    if not config:
        return scope or DEFAULT_SCOPE, None
    # imported here: the configuration module brings the controller, no business of a command without --config
    from reconciler.runtime import configuration

    read = configuration.read(config)
    return scope or str(read.get("scope") or DEFAULT_SCOPE), configuration.policy(read, config)


def trash_retention(config: str | None) -> int:
    """Return ``policy.trashRetention`` of the configuration file, or the default: 24h."""
    if not config:
        return trash.DEFAULT_RETENTION
    from reconciler.runtime import configuration  # as in host_configuration

    return configuration.trash_retention(configuration.read(config))


def step_timeout(config: str | None, flag: float | None) -> float | None:
    """Return the seconds a step may take, None for no limit: ``--step-timeout``, else ``stepTimeout`` (0: no limit)."""
    seconds = flag
    if seconds is None and config:
        from reconciler.runtime import configuration  # as in host_configuration

        seconds = configuration.read(config).get("stepTimeout")
    if seconds is None:
        seconds = defaults.DEFAULT_STEP_TIMEOUT
    return float(seconds) or None


def host_timeout(config: str | None, flag: float | None) -> float:
    """Return the seconds a host gets to be connected to and observed: ``--host-timeout``, else ``hostTimeout``."""
    if flag is not None:
        return flag
    if not config:
        return defaults.DEFAULT_HOST_TIMEOUT
    from reconciler.runtime import configuration  # as in host_configuration

    return float(configuration.read(config).get("hostTimeout") or defaults.DEFAULT_HOST_TIMEOUT)

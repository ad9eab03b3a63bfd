"""The controller's configuration: a YAML file validated by ``schemas/config.schema.json``.

Precedence, highest first: command-line flags, ``$KVMOPS_CONNECT`` (for the URI only),
the configuration file, the schema's defaults.  The file is read again on SIGHUP; a file
that no longer validates is reported and the previous settings stay.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from reconciler import errors
from reconciler.adapters import hypervisor as hv
from reconciler.adapters import manifests
from reconciler.core import planner, trash, validation
from reconciler.core import policy as policies
from reconciler.runtime import controller, gitsource, hostlock


def read(path: str | None) -> dict:
    """Return the settings in configuration file ``path`` with defaults (all defaults if None)."""
    if path is None:
        schema = validation.schemas()[validation.CONFIG_SCHEMA]
        return validation.with_defaults({}, schema, schema)
    if not Path(path).is_file():
        raise errors.ManifestError(f"{path}: configuration file not found")
    document = manifests.load_document(path)
    body, problems = validation.validate_config(document)
    if problems:
        raise errors.ManifestError("invalid configuration: " + "; ".join(str(p) for p in problems), tuple(problems))
    return body


def trash_retention(config: Mapping[str, object]) -> int:
    """Return ``policy.trashRetention`` of ``config`` in seconds (24h when unset; 0: volumes are deleted at once)."""
    policy = config.get("policy")
    value = policy.get("trashRetention") if isinstance(policy, Mapping) else None
    return trash.DEFAULT_RETENTION if value is None else trash.parse_retention(value)


def policy(config: Mapping[str, object], path: str | None = None) -> policies.Policy | None:
    """Return the host policy of configuration ``config`` (read from ``path``), or None when it sets none."""
    block = config.get("policy")
    return policies.from_config(block, source=path or "") if isinstance(block, Mapping) else None


def controller_settings(flags: Mapping[str, object], config: Mapping[str, object]) -> controller.ControllerSettings:
    """Return the controller's settings: ``flags`` (None: not given) over ``config``."""
    def pick(flag: str, key: str):
        value = flags.get(flag)
        return config.get(key) if value is None else value

    git_config = dict(config.get("git") or {})
    if flags.get("git"):
        git_config["url"] = flags["git"]
    for flag, key in (("branch", "branch"), ("git_path", "path"), ("interval", "interval")):
        if flags.get(flag) is not None:
            git_config[key] = flags[flag]
    git = None
    if flags.get("git"):
        git_config.pop("urlFile", None)  # the command line wins
    if git_config.get("url") or git_config.get("urlFile"):
        git = gitsource.GitSettings(
            url=str(git_config.get("url") or ""), branch=str(git_config.get("branch") or "main"),
            path=str(git_config.get("path") or ""), interval=float(git_config.get("interval") or 60),
            url_file=str(git_config.get("urlFile") or ""), token_file=str(git_config.get("tokenFile") or ""),
        )
    path = pick("path", "manifests")
    if git is not None and path:
        raise errors.KvmopsError(
            "give either a manifest directory (PATH or 'manifests:') or a git repository (--git or 'git:'), not both: "
            "with git the manifests come from the repository"
        )
    if not path and git is None:
        raise errors.KvmopsError("no manifests: give PATH or --git URL, or 'manifests:' or 'git:' in the configuration file")
    uri = flags.get("connect") or os.environ.get("KVMOPS_CONNECT") or config.get("connect") or hv.DEFAULT_URI
    state_dir = pick("state_dir", "stateDir")
    allow_empty = bool(flags.get("allow_empty")) or bool(config.get("allowEmpty"))
    prune = False if flags.get("no_prune") else bool(config.get("prune", True))
    listen = config.get("listen") or ""
    listen_config = listen if isinstance(listen, Mapping) else {"address": listen}  # the short form is the address
    listen_address = flags.get("listen") or listen_config.get("address") or ""
    return controller.ControllerSettings(
        path=str(path) if path and git is None else "",
        git=git,
        uri=str(uri),
        uri_given=bool(flags.get("connect")),  # on the command line: $KVMOPS_CONNECT is a default (the image sets it)
        planner=planner.Settings(
            prune=prune,
            allow_empty=allow_empty,
            virt_type=str(pick("virt_type", "virtType") or "auto"),
            shutdown_timeout=float(pick("shutdown_timeout", "shutdownTimeout")),
            scope=str(pick("scope", "scope") or "default"),
            password_salt=secrets.token_bytes(16),  # random per controller run; mixed with each domain's UUID
            trash_retention=trash_retention(config),
            policy=policy(config, str(flags.get("config") or "") or None),
            allow_mass_prune=bool(flags.get("allow_mass_prune")),
        ),
        resync_interval=float(pick("resync_interval", "resyncInterval")),
        quiet_period=float(pick("quiet_period", "quietPeriod")),
        workers=int(pick("parallel", "parallel")),
        termination_grace=float(pick("termination_grace", "terminationGracePeriod")),
        host_timeout=float(pick("host_timeout", "hostTimeout")),
        listen=str(listen_address),
        listen_token_file=str(flags.get("listen_token_file") or listen_config.get("tokenFile") or ""),
        listen_insecure=bool(flags.get("listen_insecure")) or bool(listen_config.get("insecure")),
        state_dir=Path(state_dir) if state_dir else hostlock.default_state_dir(),
    )

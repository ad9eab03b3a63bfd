"""The host's policy: how far one manifest set (scope) may reach on a shared hypervisor.

Whoever can merge to a manifest repository decides what runs on the host; the policy,
written by the host's administrator in kvmops' configuration file (``policy:``), bounds
that: which pool directories, networks, bridges and image sources a scope may use, how
large one VM may be, how much a scope may hold in all, how many VMs one pass may remove,
and whether a pass may delete volumes at all.  No manifest can loosen it.

:func:`from_config` reads the ``policy:`` block (already validated by
``schemas/config.schema.json``) into a :class:`Policy`; :meth:`Policy.for_scope` gives the
:class:`Rules` of one scope (``policy.scopes.<scope>`` over the rules for every scope).
The planner asks three questions, each answered with located problems:

* :func:`resource_problems`: which declared resources break a rule (paths, networks,
  bridges, image sources, per-VM limits, the scope's quota), keyed by resource;
* :func:`data_loss_problem`: does a planned resource delete a volume the policy protects;
* :func:`prune_hold`: is a prune larger than ``maxPrunePerPass``.

:func:`obeyed` and :func:`held_prunes` are how the planner applies the answers (a
resource that breaks a rule is blocked; a held prune suspends every prune of the pass);
:func:`violations` asks all three of a finished plan.  Every problem's message starts with
the rule's name (``policy.quota.vcpus: scope team-a would use 34 of 32 vCPUs``).  Pure:
no I/O; paths the shell resolved on this machine (pool directories, image files) arrive
in the specs.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from urllib.parse import unquote, urlsplit

from reconciler.core import model, redaction
from reconciler.core import plan as plans
from reconciler.core.quantity import GIB, KIB, MIB, format_bytes, parse_bytes

ADVICE = "ask the host's administrator"


# --- the policy as data -------------------------------------------------------------------


@dataclass(frozen=True)
class PruneLimit:
    """``maxPrunePerPass``: a number of VMs, or a percentage of the scope's VMs (rounded up)."""

    count: int | None = None
    percent: int | None = None

    def allowed(self, scope_vms: int) -> int:
        """Return how many VMs one pass may remove from a scope that has ``scope_vms``."""
        if self.percent is not None:
            return math.ceil(scope_vms * self.percent / 100)
        return self.count or 0

    def __str__(self) -> str:
        return f"{self.percent}%" if self.percent is not None else str(self.count)


@dataclass(frozen=True)
class Limits:
    """What one VM may ask for; None: no limit."""

    max_vcpus: int | None = None
    max_memory: int | None = None  # KiB, compared with the VM's maxMemory (the most its balloon reaches)
    max_disk_size: int | None = None  # bytes, per disk
    graphics_listen: tuple[str, ...] | None = None  # addresses a VNC/SPICE console may listen on
    host_passthrough: bool = True  # may a VM ask for cpu mode host-passthrough


@dataclass(frozen=True)
class Quota:
    """What one scope may hold in all; None: no limit."""

    vms: int | None = None
    vcpus: int | None = None
    memory: int | None = None  # KiB, the sum of the VMs' maxMemory
    disk: int | None = None  # bytes, the sum of the VMs' disk sizes (volumes in pools)


@dataclass(frozen=True)
class Rules:
    """The rules one scope obeys; None for a list means "anything"; an empty list means "nothing"."""

    pool_paths: tuple[str, ...] | None = None  # directories under which pools (and files attached as-is) may be
    networks: tuple[str, ...] | None = None  # libvirt network names, ``*`` matching any run of characters
    bridges: tuple[str, ...] | None = None  # host bridge names, the same
    image_sources: tuple[str, ...] | None = None  # http(s) URL prefixes and absolute local directories
    limits: Limits = Limits()
    quota: Quota = Quota()
    max_prune_per_pass: PruneLimit | None = None
    allow_data_loss: bool = True

    def describe(self) -> list[str]:
        """Return the rules as ``name: value`` lines, in the configuration file's words (only those that are set)."""
        lines = []
        for key, value in (("allowedPoolPaths", self.pool_paths), ("allowedNetworks", self.networks),
                           ("allowedBridges", self.bridges), ("imageSources", self.image_sources)):
            if value is not None:
                lines.append(f"{key}: {', '.join(value) if value else '(none)'}")
        limits = self.limits
        for key, value in (("maxVcpus", limits.max_vcpus),
                           ("maxMemory", _size(limits.max_memory * KIB) if limits.max_memory is not None else None),
                           ("maxDiskSize", _size(limits.max_disk_size) if limits.max_disk_size is not None else None)):
            if value is not None:
                lines.append(f"limits.{key}: {value}")
        if limits.graphics_listen is not None:
            lines.append(f"limits.allowedGraphicsListen: {', '.join(limits.graphics_listen) or '(none)'}")
        if not limits.host_passthrough:
            lines.append("limits.allowHostPassthrough: false")
        quota = self.quota
        for key, value in (("vms", quota.vms), ("vcpus", quota.vcpus),
                           ("memory", _size(quota.memory * KIB) if quota.memory is not None else None),
                           ("disk", _size(quota.disk) if quota.disk is not None else None)):
            if value is not None:
                lines.append(f"quota.{key}: {value}")
        if self.max_prune_per_pass is not None:
            lines.append(f"maxPrunePerPass: {self.max_prune_per_pass}")
        if not self.allow_data_loss:
            lines.append("allowDataLoss: false")
        return lines


@dataclass(frozen=True)
class Policy:
    """The host's policy: rules for every scope, and per-scope rules that replace them key by key."""

    default: Rules = Rules()
    scopes: tuple[tuple[str, Rules], ...] = ()
    source: str = ""  # the configuration file it was read from, for messages

    def for_scope(self, scope: str) -> Rules:
        """Return the rules scope ``scope`` obeys."""
        return dict(self.scopes).get(scope, self.default)


def from_config(body: Mapping[str, object] | None, *, source: str = "") -> Policy | None:
    """Return the policy of a configuration's ``policy:`` block (validated by the schema); None when it has none.

    ``policy.scopes.<scope>`` overrides the rules for every scope key by key; within
    ``limits`` and ``quota`` each key is overridden on its own, and lists are replaced,
    never merged.
    """
    if body is None:
        return None
    common = {key: value for key, value in body.items() if key != "scopes"}
    scopes = body.get("scopes") or {}
    assert isinstance(scopes, Mapping)
    return Policy(
        default=_rules(common),
        scopes=tuple((name, _rules(_overlay(common, dict(own or {})))) for name, own in sorted(scopes.items())),
        source=source,
    )


def _overlay(common: Mapping[str, object], own: Mapping[str, object]) -> dict:
    merged = dict(common)
    for key, value in own.items():
        if key in ("limits", "quota") and isinstance(value, Mapping):
            merged[key] = {**dict(common.get(key) or {}), **value}  # type: ignore[arg-type]
        else:
            merged[key] = value
    return merged


def _rules(body: Mapping[str, object]) -> Rules:
    def names(key: str) -> tuple[str, ...] | None:
        value = body.get(key)
        return None if value is None else tuple(str(v) for v in value)  # type: ignore[union-attr]

    limits: Mapping = body.get("limits") or {}  # type: ignore[assignment]
    quota: Mapping = body.get("quota") or {}  # type: ignore[assignment]
    prune = body.get("maxPrunePerPass")
    listen = limits.get("allowedGraphicsListen")
    pool_paths, sources = names("allowedPoolPaths"), names("imageSources")
    return Rules(
        pool_paths=None if pool_paths is None else tuple(_directory(p) for p in pool_paths),
        networks=names("allowedNetworks"),
        bridges=names("allowedBridges"),
        image_sources=None if sources is None else tuple(_directory(s) if s.startswith("/") else s for s in sources),
        limits=Limits(
            max_vcpus=limits.get("maxVcpus"),
            max_memory=_memory(limits.get("maxMemory")),
            max_disk_size=_disk(limits.get("maxDiskSize")),
            graphics_listen=None if listen is None else tuple(str(a) for a in listen),
            host_passthrough=bool(limits.get("allowHostPassthrough", True)),
        ),
        quota=Quota(vms=quota.get("vms"), vcpus=quota.get("vcpus"), memory=_memory(quota.get("memory")),
                    disk=_disk(quota.get("disk"))),
        max_prune_per_pass=_prune_limit(prune),
        allow_data_loss=bool(body.get("allowDataLoss", True)),
    )


def _memory(value: object) -> int | None:
    """Return a memory size (integer MiB or a string with a unit) in KiB."""
    return None if value is None else parse_bytes(value, bare_unit=MIB) // KIB  # type: ignore[arg-type]


def _disk(value: object) -> int | None:
    """Return a disk size (integer GiB or a string with a unit) in bytes."""
    return None if value is None else parse_bytes(value, bare_unit=GIB)  # type: ignore[arg-type]


def _prune_limit(value: object) -> PruneLimit | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().endswith("%"):
        return PruneLimit(percent=int(value.strip()[:-1]))
    return PruneLimit(count=int(value))  # type: ignore[call-overload]


def _directory(path: str) -> str:
    normal = posixpath.normpath(path)
    return "/" if normal.startswith("//") else normal  # POSIX keeps a leading '//'; it is '/' all the same


def _size(value: int) -> str:
    return format_bytes(value)


# --- what the manifests may use -------------------------------------------------------------


def inside(path: str, directories: Iterable[str]) -> bool:
    """Return whether absolute ``path``, normalised, is one of ``directories`` or lies under one."""
    if not path.startswith("/"):
        return False
    normal = _directory(path)
    return any(normal == d or normal.startswith(d.rstrip("/") + "/") for d in directories)


def name_allowed(name: str, patterns: Iterable[str]) -> bool:
    """Return whether ``name`` matches one of ``patterns``, where ``*`` stands for any run of characters."""
    return any(re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), name) for pattern in patterns)


def url_allowed(url: str, prefixes: Iterable[str]) -> bool:
    """Return whether ``url`` is one of the URL ``prefixes`` or lies below one, segment by segment.

    Compared as URLs, not text: the scheme and host must be equal (``https://images.example.com``
    does not admit ``https://images.example.com.evil.org/``, nor ``...@evil.org``), and the
    path must continue the prefix's path at a ``/``.  A path with ``.`` or ``..`` segments
    (percent-encoded or not), which a server would resolve elsewhere, is never admitted.
    """
    try:
        wanted = urlsplit(url)
        host, port = wanted.hostname, wanted.port
    except ValueError:
        return False
    segments = unquote(wanted.path).split("/")
    if any(part in (".", "..") for part in segments) or "\\" in unquote(wanted.path):
        return False
    for prefix in prefixes:
        try:
            allowed = urlsplit(prefix)
            allowed_port = allowed.port
        except ValueError:
            continue
        if (allowed.scheme.lower(), allowed.hostname, allowed_port) != (wanted.scheme.lower(), host, port):
            continue
        base = allowed.path.rstrip("/")
        if not base or wanted.path == base or wanted.path.startswith(base + "/"):
            return True
    return False


@dataclass(frozen=True)
class Usage:
    """What VMs hold, in the quota's dimensions: memory in KiB, disk in bytes."""

    vms: int = 0
    vcpus: int = 0
    memory: int = 0
    disk: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


def wanted_usage(spec: model.VMSpec, actual: model.ActualState) -> Usage:
    """Return what VM ``spec`` holds once applied; a disk never shrinks, so a larger volume counts as it is."""
    disk = 0
    for item in spec.disks:
        if item.path is None:
            volume = actual.volumes.get((item.pool, item.volume))
            disk += max(item.size, volume.capacity if volume is not None else 0)
    return Usage(1, spec.vcpus, spec.max_memory, disk)


def held_usage(domain: model.ObservedDomain, actual: model.ActualState) -> Usage:
    """Return what an existing domain holds now (nothing, if it cannot be read)."""
    definition = domain.definition
    if definition is None:
        return Usage(vms=1)
    disk = sum(
        actual.volumes[(d.pool, d.volume)].capacity for d in definition.disks
        if d.pool is not None and d.volume is not None and (d.pool, d.volume) in actual.volumes
    )
    return Usage(1, definition.vcpus, definition.max_memory, disk)


def resource_problems(
    desired: model.DesiredState,
    actual: model.ActualState,
    rules: Rules,
    *,
    scope: str,
    staying: Sequence[model.ObservedDomain] = (),
    local: bool = True,
) -> dict[str, tuple[model.Problem, ...]]:
    """Return the problems of each declared resource under ``rules``, keyed like ``VirtualMachine/web``.

    ``staying`` are the scope's domains that no manifest declares but this pass keeps (pruning
    is off, or their mark cannot justify a prune): they hold quota.  The scope's domains a
    pass removes hold none.  With ``local``, a pool's directory as this machine resolves it
    (symlinks followed) must be allowed too.  A VM already refused by a rule holds no new
    quota; the quota refuses, in name order, each VM that would grow the scope past it.
    """
    found: dict[str, list[model.Problem]] = {}

    def add(key: str, problem: model.Problem) -> None:
        found.setdefault(key, []).append(problem)

    for spec in desired.pools.values():
        for problem in _declared_pool_problems(spec, rules, local):
            add(f"StoragePool/{spec.name}", problem)
    refused_networks = set()
    for spec in desired.networks.values():
        problems = _network_manifest_problems(spec, rules)
        for problem in problems:
            add(f"Network/{spec.name}", problem)
        if problems:
            refused_networks.add(spec.name)
    refused_images = set()
    for spec in desired.images.values():
        problems = _image_problems(spec, desired, actual, rules, local)
        for problem in problems:
            add(f"Image/{spec.name}", problem)
        if problems:
            refused_images.add(spec.name)
    for spec in desired.vms.values():
        for problem in _vm_problems(spec, desired, actual, rules, local, refused_images, refused_networks):
            add(f"VirtualMachine/{spec.name}", problem)
    for name, problem in _quota_problems(desired, actual, rules, scope, staying, refused=set(found)):
        add(f"VirtualMachine/{name}", problem)
    return {key: tuple(problems) for key, problems in found.items()}


def _declared_pool_problems(spec: model.PoolSpec, rules: Rules, local: bool) -> list[model.Problem]:
    if rules.pool_paths is None:
        return []
    why = _pool_path_refusal(spec.name, spec.path, spec.host_path if local else "", rules.pool_paths)
    return [spec.origin.problem("spec.path", why)] if why else []


def _pool_path_refusal(name: str, path: str | None, host_path: str, allowed: tuple[str, ...]) -> str | None:
    where = f"allows pools only under {_listing(allowed)}" if allowed else "allows no pool directory"
    if not path:
        return (f"policy.allowedPoolPaths: pool {name} has no directory (not a dir pool), and the host policy {where}; "
                + ADVICE)
    if not inside(path, allowed):
        return f"policy.allowedPoolPaths: pool {name} is at {path}, and the host policy {where}; {ADVICE}"
    if host_path and not inside(host_path, allowed):
        return (f"policy.allowedPoolPaths: pool {name} is at {path}, which leads to {host_path} on this host, and the "
                f"host policy {where}; {ADVICE}")
    return None


def _network_manifest_problems(spec: model.NetworkSpec, rules: Rules) -> list[model.Problem]:
    problems = []
    if rules.networks is not None and not name_allowed(spec.name, rules.networks):
        problems.append(spec.origin.problem("metadata.name", (
            f"policy.allowedNetworks: network {spec.name} is not one the host policy allows "
            f"({_listing(rules.networks) or 'none'}); {ADVICE}"
        )))
    bridge = spec.definition.bridge
    if spec.definition.mode == "bridge" and bridge and rules.bridges is not None and not name_allowed(bridge, rules.bridges):
        problems.append(spec.origin.problem("spec.bridge", (
            f"policy.allowedBridges: host bridge {bridge} is not one the host policy allows "
            f"({_listing(rules.bridges) or 'none'}); {ADVICE}"
        )))
    return problems


def _image_problems(
    spec: model.ImageSpec, desired: model.DesiredState, actual: model.ActualState, rules: Rules, local: bool,
) -> list[model.Problem]:
    problems = []
    if rules.image_sources is not None:
        urls = tuple(s for s in rules.image_sources if not s.startswith("/"))
        directories = tuple(s for s in rules.image_sources if s.startswith("/"))
        allowed = _listing(rules.image_sources) or "none"
        if spec.url is not None and not url_allowed(spec.url, urls):
            problems.append(spec.origin.problem("spec.source.url", (
                f"policy.imageSources: {redaction.redact_url(spec.url)} is not below a source the host policy allows "
                f"({allowed}); {ADVICE}"
            )))
        if spec.path is not None:
            file = spec.host_path or (posixpath.join(spec.tree, spec.path) if spec.tree.startswith("/") else "")
            if not file or not inside(file, directories):
                problems.append(spec.origin.problem("spec.source.path", (
                    f"policy.imageSources: the image file {file or spec.path} is not under a directory the host policy "
                    f"allows ({allowed}); {ADVICE}"
                )))
    why = _used_pool_refusal(spec.pool, desired, actual, rules, local)
    if why:
        problems.append(spec.origin.problem("spec.pool", why))
    return problems


def _used_pool_refusal(
    name: str, desired: model.DesiredState, actual: model.ActualState, rules: Rules, local: bool,
) -> str | None:
    """Return why a resource may not use pool ``name``, or None (also when the pool is unknown: another problem says so)."""
    if rules.pool_paths is None:
        return None
    if name in desired.pools:
        spec = desired.pools[name]
        return _pool_path_refusal(name, spec.path, spec.host_path if local else "", rules.pool_paths)
    pool = actual.pools.get(name)
    if pool is None or actual.host.offline:
        return None  # unknown (the planner says so), or a stand-in whose directory a diff cannot see
    return _pool_path_refusal(name, pool.path, "", rules.pool_paths)


def _vm_problems(
    spec: model.VMSpec, desired: model.DesiredState, actual: model.ActualState, rules: Rules, local: bool,
    refused_images: set[str], refused_networks: set[str],
) -> list[model.Problem]:
    origin = spec.origin
    problems = []
    for path, pool in spec.pools_by_field():
        why = _used_pool_refusal(pool, desired, actual, rules, local)
        if why:
            problems.append(origin.problem(path, why))
    if rules.pool_paths is not None:
        for path, file in _files_attached(spec):
            if not inside(file, rules.pool_paths):
                where = f"under {_listing(rules.pool_paths)}" if rules.pool_paths else "nowhere"
                problems.append(origin.problem(path, (
                    f"policy.allowedPoolPaths: {file} is attached as-is from outside the directories the host policy "
                    f"allows ({where}); {ADVICE}"
                )))
    for index, nic in enumerate(spec.nics):
        if nic.kind == "network" and rules.networks is not None and not name_allowed(nic.source, rules.networks):
            problems.append(origin.problem(f"spec.networks[{index}].network", (
                f"policy.allowedNetworks: network {nic.source} is not one the host policy allows "
                f"({_listing(rules.networks) or 'none'}); {ADVICE}"
            )))
        elif nic.kind == "network" and nic.source in refused_networks:
            problems.append(origin.problem(f"spec.networks[{index}].network", (
                f"policy.allowedBridges: network {nic.source} is refused by the host policy (see the Network's own problem)"
            )))
        elif nic.kind == "bridge" and rules.bridges is not None and not name_allowed(nic.source, rules.bridges):
            problems.append(origin.problem(f"spec.networks[{index}].bridge", (
                f"policy.allowedBridges: host bridge {nic.source} is not one the host policy allows "
                f"({_listing(rules.bridges) or 'none'}); {ADVICE}"
            )))
    for index, disk in enumerate(spec.disks):
        if disk.image is not None and disk.image in refused_images:
            problems.append(origin.problem(f"spec.disks[{index}].image", (
                f"policy.imageSources: image {disk.image} is refused by the host policy (see the Image's own problem)"
            )))
    problems.extend(_limit_problems(spec, rules.limits))
    return problems


def _limit_problems(spec: model.VMSpec, limits: Limits) -> list[model.Problem]:
    origin = spec.origin
    problems = []
    if limits.max_vcpus is not None and spec.vcpus > limits.max_vcpus:
        problems.append(origin.problem("spec.vcpus", (
            f"policy.limits.maxVcpus: {spec.vcpus} vCPUs, more than the {limits.max_vcpus} the host policy allows one VM"
        )))
    if limits.max_memory is not None and spec.max_memory > limits.max_memory:
        field_path = "spec.maxMemory" if "spec.maxMemory" in origin.lines else "spec.memory"
        problems.append(origin.problem(field_path, (
            f"policy.limits.maxMemory: {_size(spec.max_memory * KIB)} of memory"
            f"{' (maxMemory)' if field_path == 'spec.maxMemory' else ''}, more than the "
            f"{_size(limits.max_memory * KIB)} the host policy allows one VM"
        )))
    if limits.max_disk_size is not None:
        for index, disk in enumerate(spec.disks):
            if disk.path is None and disk.size > limits.max_disk_size:
                problems.append(origin.problem(f"spec.disks[{index}].size", (
                    f"policy.limits.maxDiskSize: disk {disk.name} of {_size(disk.size)}, larger than the "
                    f"{_size(limits.max_disk_size)} the host policy allows one disk"
                )))
    if spec.graphics != "none" and limits.graphics_listen is not None and spec.graphics_listen not in limits.graphics_listen:
        field_path = "spec.graphics.listen" if "spec.graphics.listen" in origin.lines else "spec.graphics"
        problems.append(origin.problem(field_path, (
            f"policy.limits.allowedGraphicsListen: a {spec.graphics} console listening on {spec.graphics_listen}, "
            f"which the host policy does not allow (allowed: {_listing(limits.graphics_listen) or 'none'})"
        )))
    if not limits.host_passthrough and spec.cpu_mode == "host-passthrough":
        problems.append(origin.problem("spec.cpu.mode", (
            "policy.limits.allowHostPassthrough: cpu mode host-passthrough is not allowed by the host policy; "
            "use host-model (or leave cpu out)"
        )))
    return problems


def _files_attached(spec: model.VMSpec) -> list[tuple[str, str]]:
    """Return (field path, absolute file) for every file a VM attaches as-is, outside any pool."""
    attached = [(f"spec.disks[{i}].path", disk.path) for i, disk in enumerate(spec.disks) if disk.path is not None]
    if spec.cdrom is not None and not spec.cdrom.pool and spec.cdrom.path:
        attached.append(("spec.cdrom.path", spec.cdrom.path))
    if spec.install is not None:
        for name, ref in (("kernel", spec.install.kernel), ("initrd", spec.install.initrd)):
            if ref is not None and not ref.pool and ref.path:
                attached.append((f"spec.install.{name}.path", ref.path))
    return attached


# --- the quota ------------------------------------------------------------------------------


_DIMENSIONS = (
    # (Usage field, field path of the VM to blame, how to write an amount, what is counted)
    ("vms", "metadata.name", str, "VMs"),
    ("vcpus", "spec.vcpus", str, "vCPUs"),
    ("memory", "spec.memory", lambda n: _size(n * KIB), "memory"),
    ("disk", "spec.disks", _size, "disk"),
)


def _quota_problems(
    desired: model.DesiredState, actual: model.ActualState, rules: Rules, scope: str,
    staying: Sequence[model.ObservedDomain], *, refused: set[str],
) -> list[tuple[str, model.Problem]]:
    """Return (VM, problem) for each VM that would take the scope past its quota.

    What the scope holds after the pass: every declared VM as it will be (an update that
    grows a VM counts grown), every domain in ``staying`` as it is, and nothing for the
    domains the pass removes.  VMs that do not grow are admitted first (an update that
    shrinks frees room); then each growing VM, in name order, while it fits. A VM a rule
    already refused stays as it is.
    """
    quota = rules.quota
    limits = {name: getattr(quota, name) for name, *_ in _DIMENSIONS if getattr(quota, name) is not None}
    if not limits:
        return []
    held = Usage()
    for domain in staying:
        held += held_usage(domain, actual)
    growing: list[tuple[model.VMSpec, Usage, Usage]] = []
    for name in sorted(desired.vms):
        spec = desired.vms[name]
        domain = actual.domains.get(name)
        now = held_usage(domain, actual) if domain is not None and domain.owned else Usage()
        wanted = wanted_usage(spec, actual)
        if f"VirtualMachine/{name}" in refused:
            held += now
        elif any(getattr(wanted, d) > getattr(now, d) for d in limits):
            growing.append((spec, now, wanted))
        else:
            held += wanted
    found = []
    for spec, now, wanted in growing:
        candidate = held + wanted
        over = [d for d in limits if getattr(candidate, d) > limits[d] and getattr(wanted, d) > getattr(now, d)]
        if not over:
            held = candidate
            continue
        held += now
        for dimension, field_path, amount, counted in _DIMENSIONS:
            if dimension not in over:
                continue
            if dimension == "memory" and "spec.maxMemory" in spec.origin.lines:
                field_path = "spec.maxMemory"
            growth = getattr(wanted, dimension) - getattr(now, dimension)
            verb = "asks for" if now == Usage() else "grows by"
            found.append((spec.name, spec.origin.problem(field_path, (
                f"policy.quota.{dimension}: scope {scope} would use {amount(getattr(candidate, dimension))} of "
                f"{amount(limits[dimension])} {counted} ({spec.name} {verb} {amount(growth)}); {spec.name} is left as it is"
            ))))
    return found


# --- what a planned pass may do -----------------------------------------------------------


def data_loss_problem(
    resource: plans.ResourcePlan, rules: Rules, where: model.Origin | str,
) -> model.Problem | None:
    """Return the problem of a planned resource that deletes a volume while ``allowDataLoss`` is false, or None.

    ``where`` locates it: the declaring manifest's origin or, for a VM no manifest declares
    any more, the file its mark names.
    """
    if rules.allow_data_loss:
        return None
    lost = [change.path for change in resource.changes if change.impact is plans.Impact.DATA_LOSS]
    if not lost:
        return None
    what = ", ".join(path.removeprefix("volume ") for path in lost)
    pruned = plans.Action.DELETE in resource.actions
    how = ("declare the VM again with deletionPolicy: Retain on those disks and apply, then remove it"
           if pruned else "put the disk back with deletionPolicy: Retain and apply, then remove it")
    message = (
        f"policy.allowDataLoss: this pass would delete {'volume' if len(lost) == 1 else 'volumes'} {what} "
        f"({resource.kind} {resource.name}), and the host policy allows no pass to delete volumes; {how} "
        f"(the volume is then kept), or {ADVICE}"
    )
    if isinstance(where, str):
        return model.Problem(where, None, "", message)
    return where.problem("spec.disks", message)


def prune_hold(
    pruned: Sequence[str], scope_vms: int, rules: Rules, *, scope: str, allow_mass_prune: bool = False,
) -> str | None:
    """Return why removing the VMs ``pruned`` in one pass is held (more than ``maxPrunePerPass``), or None.

    ``scope_vms`` is how many VMs the scope has on the host before the pass, the base of a
    percentage.  The whole prune is held, never a part of it: which VMs to keep would be a guess.
    """
    limit = rules.max_prune_per_pass
    if limit is None or allow_mass_prune or not pruned:
        return None
    allowed = limit.allowed(scope_vms)
    if len(pruned) <= allowed:
        return None
    named = ", ".join(pruned[:10]) + (f" and {len(pruned) - 10} more" if len(pruned) > 10 else "")
    base = f"{limit} of {scope_vms} VMs" if limit.percent is not None else str(limit)
    return (
        f"policy.maxPrunePerPass: this pass would remove {len(pruned)} VMs of scope {scope} ({named}), more than the "
        f"{allowed} the host policy allows in one pass (maxPrunePerPass {base}); none is removed. If that is what you "
        "want, run plan/apply with --allow-mass-prune (kvmops run --allow-mass-prune), or raise policy.maxPrunePerPass"
    )


def obeyed(
    resources: Sequence[plans.ResourcePlan], desired: model.DesiredState, actual: model.ActualState, rules: Rules, *,
    scope: str, removable: set[str], local: bool,
) -> list[plans.ResourcePlan]:
    """Return planned ``resources`` with each one that breaks ``rules`` blocked: no steps, its problems said.

    ``removable`` names the scope's undeclared domains this pass may prune (they hold no
    quota); the scope's other undeclared domains stay and hold theirs.
    """
    staying = [d for name, d in sorted(actual.domains.items())
               if d.owned and name not in desired.vms and _scope(d) == scope and name not in removable]
    refused = resource_problems(desired, actual, rules, scope=scope, staying=staying, local=local)
    result = []
    for resource in resources:
        problems = list(refused.get(resource.key, ()))
        spec = _declared(resource, desired)
        if not problems and spec is not None and (lost := data_loss_problem(resource, rules, spec.origin)):
            problems.append(lost)
        if problems:
            resource = plans.ResourcePlan(kind=resource.kind, name=resource.name, manifest=resource.manifest,
                                          problems=(*problems, *resource.problems))
        result.append(resource)
    return result


def held_prunes(
    prunes: Sequence[plans.ResourcePlan], desired: model.DesiredState, actual: model.ActualState, rules: Rules, *,
    scope: str, allow_mass_prune: bool = False,
) -> tuple[str | None, list[model.Problem]]:
    """Return why ``rules`` hold every prune of a pass (too many VMs, or a volume deleted) and the problems saying so.

    (None, []) when the prunes may go.  A held prune is work left undone, hence problems.
    """
    vms = [r.name for r in prunes if r.kind == "VirtualMachine"]
    scope_vms = sum(1 for d in actual.domains.values() if d.owned and _scope(d) == scope)
    held = prune_hold(vms, scope_vms, rules, scope=scope, allow_mass_prune=allow_mass_prune)
    if held:
        return held, [model.Problem(desired.source or ".", None, "", held)]
    lost = [p for r in prunes if (p := data_loss_problem(r, rules, pruned_file(r, desired)))]
    if lost:
        return (f"the host policy allows no data loss, and removing {len(lost)} VM(s) would delete volumes: no domain "
                "is removed in this pass"), lost
    return None, []


def violations(
    desired: model.DesiredState, actual: model.ActualState, plan: plans.Plan, rules: Rules, *, scope: str,
    local: bool = True, allow_mass_prune: bool = False,
) -> tuple[model.Problem, ...]:
    """Return every way ``plan`` (made from ``desired`` and ``actual``) breaks ``rules``, as located problems.

    The planner asks the same questions while planning (and blocks what breaks a rule);
    this asks them of a finished plan, e.g. one made without the policy.
    """
    pruned = [r.name for r in plan.resources if r.kind == "VirtualMachine" and r.name not in desired.vms
              and plans.Action.DELETE in r.actions]
    owned = [d for d in actual.domains.values() if d.owned and _scope(d) == scope]
    staying = [d for d in owned if d.name not in desired.vms and d.name not in pruned]
    found = [p for problems in resource_problems(desired, actual, rules, scope=scope, staying=staying, local=local).values()
             for p in problems]
    for resource in plan.resources:
        problem = data_loss_problem(resource, rules, _origin_of(resource, desired))
        if problem is not None:
            found.append(problem)
    held = prune_hold(sorted(pruned), len(owned), rules, scope=scope, allow_mass_prune=allow_mass_prune)
    if held:
        found.append(model.Problem(desired.source or ".", None, "", held))
    return tuple(found)


def _scope(domain: model.ObservedDomain) -> str:
    owner = domain.definition.owner if domain.definition is not None else None
    return owner.scope if owner is not None else "default"


def _declared(resource: plans.ResourcePlan, desired: model.DesiredState):
    """Return the spec declaring ``resource``, or None (a prune, a leftover)."""
    return {"VirtualMachine": desired.vms, "StoragePool": desired.pools, "Network": desired.networks,
            "Image": desired.images}.get(resource.kind, {}).get(resource.name)


def _origin_of(resource: plans.ResourcePlan, desired: model.DesiredState) -> model.Origin | str:
    spec = _declared(resource, desired)
    return spec.origin if spec is not None else pruned_file(resource, desired)


def pruned_file(resource: plans.ResourcePlan, desired: model.DesiredState) -> str:
    """Return the file a resource no manifest declares any more came from, as its mark names it."""
    if resource.manifest and desired.source:
        return posixpath.join(desired.source, resource.manifest)
    return resource.manifest or desired.source or "."


def _listing(items: Iterable[str]) -> str:
    return ", ".join(items)


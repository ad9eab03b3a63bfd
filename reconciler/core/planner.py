"""Compare desired with actual state and write down what to do: :func:`plan_changes`.

Pure: given the same :class:`DesiredState` and :class:`ActualState` it returns the same
:class:`~reconciler.core.plan.Plan`, and it never looks at anything else.  The rules
that never bend are enforced here, where they can be tested without a hypervisor:

* only domains carrying kvmops' ownership mark, written for that very domain, are ever
  changed, stopped or undefined (a clone's copied mark does not count, and a mark from an
  older kvmops that names no domain never justifies a prune); a manifest naming a foreign
  domain is a problem, not an adoption;
* nothing is pruned while any manifest is broken, or when the manifests declare no VM at
  all while kvmops owns domains (unless ``allow_empty``);
* a volume is deleted only when kvmops created it under ``deletionPolicy: Delete`` and
  its disk or VM has left the manifests, never while a running guest has it open nor
  while any other domain uses it; it is never shrunk, and never grown or written unless
  kvmops created it; every deletion is labelled ``data-loss``;
* a redefinition keeps the domain's UUID and its NICs' MACs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
import uuid as uuids
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

from reconciler.core import domxml, fields, hostdirs, model, netxml, password, redaction, storagexml
from reconciler.core import plan as plans
from reconciler.core.plan import Action, FieldChange, Impact
from reconciler.core.quantity import MIB, format_bytes, round_up

KIB = 1024
UNDECIDED_VIRT_TYPE = "auto (decided on the host)"  # what virtType auto is, planned without a host


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


def plan_changes(
    desired: model.DesiredState, actual: model.ActualState, *, settings: Settings = Settings()
) -> plans.Plan:
    """Return the plan that converges ``actual`` on ``desired``."""
    problems = list(desired.problems)
    resources: list[plans.ResourcePlan] = []

    for spec in desired.pools.values():
        resources.append(_plan_pool(spec, actual.pools.get(spec.name), actual.host.uri))
    for spec in desired.networks.values():
        resources.append(_plan_network(spec, actual.networks.get(spec.name), actual, settings))
    for spec in desired.images.values():
        resources.append(_plan_image(spec, actual, desired))
    resources.extend(_plan_import_leftovers(desired, actual))
    wanted = wanted_volumes(desired)
    for spec in desired.vms.values():
        resources.append(_plan_vm(spec, actual.domains.get(spec.name), actual, desired, settings, wanted))

    for resource in resources:
        problems.extend(resource.problems)
    owned_orphans = [
        d for name, d in sorted(actual.domains.items())
        if d.owned and name not in desired.vms and scope_of(d) == settings.scope and not _unbound(d)
    ]
    elsewhere = tuple(
        f"{name} (scope {scope_of(d)})" for name, d in sorted(actual.domains.items())
        if d.owned and name not in desired.vms and scope_of(d) != settings.scope
    )
    orphan_networks = _orphan_networks(actual, desired, settings)
    suspended = _prune_suspension(desired, problems, [*owned_orphans, *orphan_networks], settings)
    kept: tuple[str, ...] = ()
    if suspended:
        kept = tuple(d.name for d in owned_orphans) + tuple(f"network {n.name}" for n in orphan_networks)
        if not problems and settings.prune and not desired.vms and not settings.allow_empty:
            problems.append(model.Problem(desired.source or ".", None, "", suspended))  # the empty-set guard
    else:
        pruned = {d.name: d for d in owned_orphans}
        resources.extend(_plan_prune(domain, actual, settings, wanted, pruned) for domain in owned_orphans)
        resources.extend(_plan_network_prune(network, actual, desired, set(pruned)) for network in orphan_networks)

    foreign = tuple(name for name, d in sorted(actual.domains.items()) if not d.owned)
    return plans.Plan(
        uri=actual.host.uri,
        resources=tuple(resources),
        foreign=foreign,
        problems=tuple(problems),
        prune_suspended=suspended,
        kept=kept,
        elsewhere=elsewhere,
        warnings=mark_warnings(actual, desired, settings),
        declared=(("VirtualMachine", len(desired.vms)), ("StoragePool", len(desired.pools)),
                  ("Network", len(desired.networks)), ("Image", len(desired.images))),
    )


def mark_warnings(actual: model.ActualState, desired: model.DesiredState, settings: Settings) -> tuple[str, ...]:
    """Return a sentence for each domain whose kvmops mark does not prove ownership.

    A copied mark (a clone of a managed VM) makes its domain foreign; an unbound mark
    (written before marks named their domain) never justifies a prune.
    """
    warnings = []
    for name, domain in sorted(actual.domains.items()):
        if domain.copied_mark is not None:
            warnings.append(
                f"domain {name} carries a copied kvmops mark (written for {domain.copied_mark.written_for()}); "
                "treated as foreign: never changed, never pruned (`kvmops adopt` it to manage it)"
            )
        elif (domain.owned and _unbound(domain) and name not in desired.vms and scope_of(domain) == settings.scope):
            warnings.append(
                f"domain {name} carries a kvmops mark written by an older kvmops, which does not name the domain it was "
                "written for (a clone would carry the same); it is never pruned on the strength of that mark. Declare it "
                "again and apply once to bind the mark, or remove it yourself (virsh undefine)"
            )
    return tuple(warnings)


def _unbound(domain: model.ObservedDomain) -> bool:
    """Return whether ``domain`` is owned through a mark that names no domain (older kvmops)."""
    owner = domain.definition.owner if domain.definition is not None else None
    return owner is not None and not owner.bound_uuid


mark_is_unbound = _unbound  # for status: such a domain is kept, never pruned
UNBOUND_MARK_KEPT = (
    "its kvmops mark was written by an older kvmops and names no domain, so it is never pruned on it; "
    "`kvmops adopt` it (or declare it again and apply) to bind the mark, or remove it yourself (virsh undefine)"
)


def scope_of(domain: model.ObservedDomain) -> str:
    """Return the scope (manifest set) that owns ``domain``."""
    owner = domain.definition.owner if domain.definition is not None else None
    return owner.scope if owner is not None else "default"


def wanted_volumes(desired: model.DesiredState) -> set[tuple[str, str]]:
    """Return every (pool, volume) the manifests use (disks, images): such a volume is never deleted."""
    volumes = {(disk.pool, disk.volume) for spec in desired.vms.values() for disk in spec.disks if disk.path is None}
    volumes |= {(image.pool, image.volume) for image in desired.images.values()}
    return volumes


def pool_problems(
    spec: model.VMSpec,
    declared: Mapping[str, model.PoolSpec],
    existing: Mapping[str, model.ObservedPool],
    uri: str,
) -> list[model.Problem]:
    """Return a problem for each disk of ``spec`` whose pool is neither declared nor usable on the host."""
    problems = []
    for path, name in vm_pools(spec):
        if name in declared:
            if name not in existing and refused_pool_path(declared[name], uri) is not None:
                problems.append(spec.origin.problem(path, (
                    f"storage pool {name!r} cannot be created: its path {declared[name].path} is refused (see the "
                    "problem of its StoragePool manifest); fix that manifest or use another pool"
                )))
            continue
        pool = existing.get(name)
        if pool is None:
            problems.append(spec.origin.problem(path, (
                f"unknown storage pool {name!r}: declare it in a StoragePool manifest or define it on "
                f"{uri} (virsh pool-list --all shows what exists)"
            )))
        elif not pool.active:
            problems.append(spec.origin.problem(path, (
                f"storage pool {name!r} is not active: start it (virsh pool-start {name}) or declare it in a "
                "StoragePool manifest so kvmops starts it"
            )))
    return problems


def vm_pools(spec: model.VMSpec) -> list[tuple[str, str]]:
    """Return (field path, pool name) for every pool a VM uses: disks, CD-ROM, install media, seed."""
    used = [(f"spec.disks[{i}].pool", disk.pool) for i, disk in enumerate(spec.disks) if disk.path is None]
    if spec.cdrom is not None and spec.cdrom.pool:
        used.append(("spec.cdrom.pool", spec.cdrom.pool))
    if spec.install is not None and spec.install.kernel.pool:
        used.append(("spec.install.kernel.pool", spec.install.kernel.pool))
    if spec.install is not None and spec.install.initrd is not None and spec.install.initrd.pool:
        used.append(("spec.install.initrd.pool", spec.install.initrd.pool))
    if spec.cloud_init is not None:
        used.append(("spec.cloudInit.pool", spec.cloud_init.pool))
    return used


def network_problems(
    spec: model.VMSpec, declared: Mapping[str, model.NetworkSpec], existing: Mapping[str, model.ObservedNetwork], uri: str,
) -> list[model.Problem]:
    """Return a problem for each NIC on a libvirt network that is neither declared nor on the host.

    Without any observed network (an offline diff) nothing can be said, so nothing is.
    """
    if not existing:
        return []
    return [
        spec.origin.problem(f"spec.networks[{index}].network", (
            f"unknown network {nic.source!r}: declare it in a Network manifest or define it on {uri} "
            "(virsh net-list --all shows what exists)"
        ))
        for index, nic in enumerate(spec.nics)
        if nic.kind == "network" and nic.source not in declared and nic.source not in existing
    ]


def resolve_virt_type(requested: str, host: model.HostInfo) -> tuple[str | None, str | None]:
    """Return (domain type, None) for ``requested``, or (None, why it is impossible).

    ``auto`` means kvm where libvirt offers it and it can run guests, else qemu (TCG).
    libvirt's test driver emulates every type, so ``auto`` is ``test`` there and an
    explicit type is kept as written.  Without a host (``kvmops diff``) ``auto`` stays
    :data:`UNDECIDED_VIRT_TYPE`: saying kvm there would be a guess.
    """
    offered = host.virt_types
    if host.offline and requested == "auto":
        return UNDECIDED_VIRT_TYPE, None  # kvm or qemu depends on the host's /dev/kvm: not known offline
    if host.test_driver:
        return ("test" if requested == "auto" else requested), None
    if requested == "auto":
        if "kvm" in offered and not host.kvm_unusable_reason:
            return "kvm", None
        if "qemu" in offered:
            return "qemu", None
        return None, f"no usable domain type on {host.uri} (libvirt offers: {', '.join(offered) or 'none'})"
    if requested not in offered:
        hint = "use virtType: qemu (software emulation)" if requested == "kvm" else "use virtType: auto"
        return None, f"virtType {requested} is not available on {host.uri} (offers: {', '.join(offered) or 'none'}); {hint}"
    return requested, None


# --- pools ------------------------------------------------------------------------------


def host_is_local(uri: str) -> bool:
    """Return whether libvirt at ``uri`` runs on this machine (no host name in the URI)."""
    return not urlparse(uri).hostname


def refused_pool_path(spec: model.PoolSpec, uri: str) -> str | None:
    """Return why ``spec``'s directory may never become a new pool on ``uri`` (a system directory), or None.

    Only for a pool kvmops would define: an existing pool is observed, not created.  The
    directory as this machine resolves it (``host_path``) counts when libvirt is local.
    """
    why = hostdirs.system_directory(spec.path)
    if why is not None:
        return f"{spec.path} is a system directory ({why})"
    if spec.host_path and spec.host_path != spec.path and host_is_local(uri):
        why = hostdirs.system_directory(spec.host_path)
        if why is not None:
            return f"{spec.path} leads to {spec.host_path} on this host, a system directory ({why})"
    return None


def _plan_pool(spec: model.PoolSpec, observed: model.ObservedPool | None, uri: str) -> plans.ResourcePlan:
    base = dict(kind="StoragePool", name=spec.name, manifest=spec.manifest)
    if observed is None and (refusal := refused_pool_path(spec, uri)) is not None:
        return plans.ResourcePlan(**base, problems=(spec.origin.problem("spec.path", (
            f"{refusal}; kvmops never makes one a storage pool. Use a directory of its own, "
            f"such as /var/lib/kvmops/{spec.name}"
        )),))
    if observed is None:
        steps: list[plans.Step] = [
            plans.DefinePool(spec.name, storagexml.render_pool(spec)),
            plans.BuildPool(spec.name),
            plans.StartPool(spec.name),
        ]
        if spec.autostart:
            steps.append(plans.SetPoolAutostart(spec.name, True))
        changes = (
            FieldChange("type", None, spec.type, Impact.LIVE),
            FieldChange("path", None, spec.path, Impact.LIVE),
            FieldChange("autostart", None, _yes_no(spec.autostart), Impact.LIVE),
        )
        return plans.ResourcePlan(**base, actions=(Action.CREATE,), changes=changes, steps=tuple(steps))
    if (observed.type, observed.path) != (spec.type, spec.path):
        return plans.ResourcePlan(**base, problems=(spec.origin.problem(
            "spec.path",
            f"pool {spec.name!r} already exists as a {observed.type} pool at {observed.path}; kvmops never changes an "
            f"existing pool: set spec.path to {observed.path} or choose another pool name",
        ),))
    steps, changes, actions = [], [], []
    if observed.autostart != spec.autostart:
        steps.append(plans.SetPoolAutostart(spec.name, spec.autostart))
        changes.append(FieldChange("autostart", _yes_no(observed.autostart), _yes_no(spec.autostart), Impact.LIVE))
        actions.append(Action.UPDATE)
    if not observed.active:
        steps.append(plans.StartPool(spec.name))
        actions.append(Action.START)
    return plans.ResourcePlan(**base, actions=tuple(actions), changes=tuple(changes), steps=tuple(steps))


# --- networks ---------------------------------------------------------------------------


def _plan_network(
    spec: model.NetworkSpec, observed: model.ObservedNetwork | None, actual: model.ActualState, settings: Settings
) -> plans.ResourcePlan:
    base = dict(kind="Network", name=spec.name, manifest=spec.manifest)
    wanted = dataclasses.replace(spec.definition, owner=dataclasses.replace(spec.definition.owner, scope=settings.scope))
    if observed is None:
        steps: list[plans.Step] = [plans.DefineNetwork(spec.name, netxml.render(wanted), create=True),
                                   plans.StartNetwork(spec.name)]
        if spec.autostart:
            steps.append(plans.SetNetworkAutostart(spec.name, True))
        return plans.ResourcePlan(**base, actions=(Action.CREATE, Action.START), changes=tuple(
            FieldChange(path, None, value, Impact.LIVE) for path, value in _network_fields(wanted) if value
        ), steps=tuple(steps))
    if not observed.owned:
        return plans.ResourcePlan(**base, problems=(spec.origin.problem("metadata.name", (
            f"network {spec.name!r} already exists on {actual.host.uri} and is not managed by kvmops; it will not be "
            "touched. Rename this Network, or remove the existing one (virsh net-undefine) to let kvmops create it"
        )),))
    current = observed.definition
    if current.owner is not None and current.owner.scope != settings.scope:
        return plans.ResourcePlan(**base, problems=(spec.origin.problem("metadata.name", (
            f"network {spec.name!r} is managed by another kvmops manifest set (scope {current.owner.scope!r})"
        )),))
    # What libvirt chose where the manifest says nothing (the bridge name) is kept.
    wanted = dataclasses.replace(wanted, bridge=wanted.bridge or current.bridge, uuid=current.uuid)
    steps, changes, actions, notes = [], [], [], []
    if _network_essence(wanted) != _network_essence(current):
        old, new = dict(_network_fields(current)), dict(_network_fields(wanted))
        structural = [path for path in new if path not in ("hosts", "manifest") and old.get(path) != new.get(path)]
        for path in new:
            if old.get(path) != new.get(path):
                impact = Impact.LIVE if path == "hosts" or not observed.active else Impact.RESTART
                changes.append(FieldChange(path, old.get(path), new.get(path), impact))
        steps.append(plans.DefineNetwork(spec.name, netxml.render(wanted, mac=netxml.bridge_mac(observed.xml))))
        if observed.active:
            before, after = set(current.hosts), set(wanted.hosts)
            steps += [plans.UpdateDhcpHost(spec.name, False, netxml.host_xml(h)) for h in sorted(before - after, key=str)]
            steps += [plans.UpdateDhcpHost(spec.name, True, netxml.host_xml(h)) for h in sorted(after - before, key=str)]
            if structural:
                notes.append(
                    "changes to the network itself take effect when it restarts (virsh net-destroy and net-start "
                    "disconnect running guests, so kvmops leaves that to you)"
                )
        actions.append(Action.UPDATE)
    if observed.autostart != spec.autostart:
        steps.append(plans.SetNetworkAutostart(spec.name, spec.autostart))
        changes.append(FieldChange("autostart", _yes_no(observed.autostart), _yes_no(spec.autostart), Impact.LIVE))
        if Action.UPDATE not in actions:
            actions.append(Action.UPDATE)
    if not observed.active:
        steps.append(plans.StartNetwork(spec.name))
        actions.append(Action.START)
    return plans.ResourcePlan(**base, actions=tuple(actions), changes=tuple(changes), steps=tuple(steps), notes=tuple(notes))


def _network_essence(definition: model.NetworkDefinition) -> model.NetworkDefinition:
    """Return what decides whether a network is redefined: everything but the manifest's digest.

    A running network's XML may keep the digest it started with, and a digest alone
    (labels, formatting) never justifies touching a network.
    """
    if definition.owner is None:
        return definition
    return dataclasses.replace(definition, owner=dataclasses.replace(definition.owner, digest=""))


def _network_fields(definition: model.NetworkDefinition) -> list[tuple[str, str | None]]:
    subnet = f"{definition.address}/{definition.prefix}" if definition.address else None
    dhcp = f"{definition.dhcp_start} - {definition.dhcp_end}" if definition.dhcp_start else None
    hosts = ", ".join(f"{h.mac}={h.ip}" + (f" ({h.name})" if h.name else "") for h in definition.hosts) or None
    return [("mode", definition.mode), ("bridge", definition.bridge), ("ipv4", subnet), ("dhcp", dhcp), ("hosts", hosts),
            ("manifest", definition.owner.manifest if definition.owner else None)]


def _orphan_networks(actual: model.ActualState, desired: model.DesiredState, settings: Settings) -> list[model.ObservedNetwork]:
    return [
        network for name, network in sorted(actual.networks.items())
        if network.owned and name not in desired.networks and network.definition.owner is not None
        and network.definition.owner.scope == settings.scope
    ]


def _plan_network_prune(
    network: model.ObservedNetwork, actual: model.ActualState, desired: model.DesiredState, pruned: set[str],
) -> plans.ResourcePlan:
    """Return the removal of an owned network no manifest declares, or why it is kept.

    Domains this same plan prunes do not keep it: its removal requires their prunes (the
    executor runs it after them, and skips it if one fails), so VMs and the network they
    use go in one pass.
    """
    base = dict(kind="Network", name=network.name, manifest=network.definition.owner.manifest or None)
    attached = sorted(
        name for name, domain in actual.domains.items()
        if any(n.kind == "network" and n.source == network.name for n in domain.nics)
    )
    users = [name for name in attached if name not in pruned] + sorted(
        spec.name for spec in desired.vms.values() if any(n.source == network.name for n in spec.nics)
    )
    if users:
        return plans.ResourcePlan(**base, notes=(
            f"no manifest declares this network any more, but {', '.join(sorted(set(users)))} still use it: kept",
        ))
    going = [name for name in attached if name in pruned]
    notes = ["no manifest declares this network any more"]
    if going:
        notes.append(f"removed after {', '.join(going)}, which this plan removes")
    return plans.ResourcePlan(
        **base, actions=(Action.DELETE,), steps=(plans.RemoveNetwork(network.name),),
        changes=(FieldChange("network", network.name, None, Impact.LIVE),),
        notes=tuple(notes), requires=tuple(f"VirtualMachine/{name}" for name in going),
    )


# --- images -----------------------------------------------------------------------------


def _plan_image(spec: model.ImageSpec, actual: model.ActualState, desired: model.DesiredState) -> plans.ResourcePlan:
    base = dict(kind="Image", name=spec.name, manifest=spec.manifest)
    if spec.pool not in desired.pools:
        pool = actual.pools.get(spec.pool)
        if pool is None or not pool.active:
            why = "is not active" if pool is not None else "does not exist"
            return plans.ResourcePlan(**base, problems=(spec.origin.problem(
                "spec.pool", f"storage pool {spec.pool!r} {why}; declare it in a StoragePool manifest or create it"
            ),))
    requires = (f"StoragePool/{spec.pool}",) if spec.pool in desired.pools else ()
    source = redaction.redact_url(spec.url) if spec.url else spec.path
    verified = f"verified against sha256 {spec.sha256[:12]}… before it becomes a volume"
    import_step = plans.ImportImage(spec.pool, spec.volume, spec.url, spec.path, spec.sha256, spec.format, spec.tree)
    if (spec.pool, spec.volume) not in actual.volumes:
        return plans.ResourcePlan(
            **base, actions=(Action.CREATE,), requires=requires,
            changes=(FieldChange("volume", None, f"{spec.pool}/{spec.volume} from {source}", Impact.LIVE, note=verified),),
            steps=(import_step,),
        )
    complete = model.image_complete_volume(spec.volume)
    if (spec.pool, complete) not in actual.volumes and (users := _image_users(spec, actual, desired)):
        return plans.ResourcePlan(**base, requires=requires, notes=(
            f"image volume {spec.pool}/{spec.volume} has no completion record (imported by an older kvmops, or an "
            f"interrupted import) and {', '.join(users)} uses it, so kvmops will not replace it. Check it (virsh "
            f"vol-download {spec.pool} {spec.volume} FILE; sha256sum FILE: expect {spec.sha256}) and, if it matches, "
            f"record it: virsh vol-create-as {spec.pool} {complete} 0 --format raw",
        ))
    if (spec.pool, complete) not in actual.volumes:
        # "The volume exists" is not "the image is complete": only the completion record,
        # written after the copy finished, says that.  Without it the volume is what an
        # interrupted import (kill -9, libvirtd restarted mid-copy) left, and the import
        # replaces it (see _import_image for why replacing it is safe).
        return plans.ResourcePlan(
            **base, actions=(Action.UPDATE,), requires=requires,
            changes=(FieldChange(
                "volume", f"{spec.pool}/{spec.volume} (not known to be complete)", f"{spec.pool}/{spec.volume} from {source}",
                Impact.LIVE, note=f"an interrupted import left it without its completion record; imported again, {verified}",
            ),),
            steps=(import_step,),
        )
    partial = model.image_partial_volume(spec.volume)
    if (spec.pool, partial) in actual.volumes:
        return plans.ResourcePlan(
            **base, actions=(Action.UPDATE,), requires=requires,
            changes=(_leftover_change(spec.pool, partial),), steps=(plans.DeleteVolume(spec.pool, partial),),
        )
    return plans.ResourcePlan(**base, requires=requires)


def _image_users(spec: model.ImageSpec, actual: model.ActualState, desired: model.DesiredState) -> list[str]:
    """Return, in words, the domains using image volume ``spec`` and the existing overlays declared on it."""
    users = [f"domain {user}" for user in volume_users(actual, spec.pool, spec.volume, besides="")]
    users += [
        f"the overlay {disk.pool}/{disk.volume} of VM {vm.name}" for vm in desired.vms.values() for disk in vm.disks
        if disk.image == spec.name and disk.clone == "overlay" and (disk.pool, disk.volume) in actual.volumes
    ]
    return users


def _plan_import_leftovers(desired: model.DesiredState, actual: model.ActualState) -> list[plans.ResourcePlan]:
    """Return the removal of what interrupted imports left for images no manifest declares any more.

    Only in the pools this manifest set declares or imports into: the temporary volume of
    an import running right now belongs to whoever holds the host lock, which is this pass.
    """
    pools = set(desired.pools) | {image.pool for image in desired.images.values()}
    declared = {(image.pool, image.volume) for image in desired.images.values()}
    resources = []
    for pool, name in sorted(actual.volumes):
        if pool not in pools:
            continue
        if name.startswith(model.IMAGE_PARTIAL_PREFIX):
            final = name[len(model.IMAGE_PARTIAL_PREFIX):]
        elif name.startswith(model.IMAGE_COMPLETE_PREFIX):
            final = name[len(model.IMAGE_COMPLETE_PREFIX):]
            if (pool, final) in actual.volumes:
                continue  # the record of a complete image, declared or kept
        else:
            continue
        if (pool, final) in declared:
            continue  # _plan_image takes care of it
        resources.append(plans.ResourcePlan(
            kind="Image", name=f"{pool}/{final}", actions=(Action.DELETE,), manifest=None,
            changes=(_leftover_change(pool, name),), steps=(plans.DeleteVolume(pool, name),),
        ))
    return resources


def _leftover_change(pool: str, name: str) -> FieldChange:
    return FieldChange(
        f"volume {pool}/{name}", "(leftover)", None, Impact.LIVE,
        note="left by an interrupted image import, holds nothing else; removed",
    )


# --- virtual machines -------------------------------------------------------------------


def _plan_vm(
    spec: model.VMSpec,
    domain: model.ObservedDomain | None,
    actual: model.ActualState,
    desired: model.DesiredState,
    settings: Settings,
    wanted: set[tuple[str, str]],
) -> plans.ResourcePlan:
    base = dict(kind="VirtualMachine", name=spec.name, manifest=spec.manifest)
    problems = []
    if domain is not None and domain.copied_mark is not None:
        return plans.ResourcePlan(**base, problems=(spec.origin.problem("metadata.name", (
            f"domain {spec.name!r} carries a kvmops mark copied from another domain (written for "
            f"{domain.copied_mark.written_for()}), as virt-clone leaves it; it is treated as foreign and will not be "
            f"touched. To manage it, run `kvmops adopt {spec.name}` (then plan again), or rename this VM"
        )),))
    if domain is not None and not domain.owned:
        return plans.ResourcePlan(**base, problems=(spec.origin.problem("metadata.name", (
            f"domain {spec.name!r} already exists on {actual.host.uri} and is not managed by kvmops; it will not be "
            f"touched. To manage it, run `kvmops adopt {spec.name}` (then plan again), or rename this VM"
        )),))
    if domain is not None and domain.definition is not None and scope_of(domain) != settings.scope:
        owner = domain.definition.owner
        return plans.ResourcePlan(**base, problems=(spec.origin.problem("metadata.name", (
            f"domain {spec.name!r} is managed by another kvmops manifest set (scope {owner.scope!r}, manifest "
            f"{owner.manifest or '?'}); this one is scope {settings.scope!r}. One VM must be declared by one set: "
            "remove it from one of them, or use the same --scope"
        )),))
    virt_type, why = resolve_virt_type(spec.virt_type or settings.virt_type, actual.host)
    if virt_type is None:
        problems.append(spec.origin.problem("spec.virtType", why))
    problems.extend(pool_problems(spec, desired.pools, actual.pools, actual.host.uri))
    problems.extend(network_problems(spec, desired.networks, actual.networks, actual.host.uri))
    requires = [f"StoragePool/{name}" for _, name in vm_pools(spec) if name in desired.pools]
    requires += [f"Network/{n.source}" for n in spec.nics if n.kind == "network" and n.source in desired.networks]
    requires += [f"Image/{d.image}" for d in spec.disks if d.image is not None]
    if domain is not None and domain.definition is None:
        problems.append(spec.origin.problem("metadata.name", (
            f"domain {spec.name!r} carries kvmops' mark but its XML cannot be read ({domain.error}); "
            "inspect it with `virsh dumpxml` before kvmops changes it"
        )))
    if domain is not None and spec.uuid and domain.uuid != spec.uuid:
        problems.append(spec.origin.problem("spec.uuid", (
            f"domain {spec.name!r} has UUID {domain.uuid}; a UUID cannot change without replacing the VM, which kvmops "
            "never does silently. Restore the UUID, or remove the VM's manifest, apply, and add it back"
        )))
    if problems:
        return plans.ResourcePlan(**base, problems=tuple(problems))
    builder = _VMPlanBuilder(spec, domain, actual, virt_type, settings, wanted, desired)
    return builder.build(base, tuple(dict.fromkeys(requires)))


def desired_definition(
    spec: model.VMSpec, domain: model.ObservedDomain | None, actual: model.ActualState,
    desired: model.DesiredState, settings: Settings,
) -> model.DomainDefinition:
    """Return the definition a plan would give ``spec`` on this host (for ``kvmops adopt``)."""
    virt_type, why = resolve_virt_type(spec.virt_type or settings.virt_type, actual.host)
    if virt_type is None:
        raise ValueError(why)
    builder = _VMPlanBuilder(spec, domain, actual, virt_type, settings, wanted_volumes(desired), desired)
    _steps, owned, _deletions = builder._plan_volumes(stopping=False)
    return _started(builder._definition(owned, install=builder._install_now()))  # it exists: no creation start owed


class _VMPlanBuilder:
    """Collects the changes and steps for one VM; used once, by :func:`_plan_vm`."""

    def __init__(self, spec, domain, actual, virt_type, settings, claimed, desired) -> None:
        self.spec: model.VMSpec = spec
        self.domain: model.ObservedDomain | None = domain
        self.actual: model.ActualState = actual
        self.by_path: dict[str, tuple[str, str]] = actual.volumes_by_path()  # (pool, volume) of each volume's file
        self.virt_type: str = virt_type
        self.timeout = spec.shutdown_timeout if spec.shutdown_timeout is not None else settings.shutdown_timeout
        self.active = domain is not None and domain.power.active
        self.claimed: set[tuple[str, str]] = claimed  # volumes some VM in the manifests attaches
        self.scope = settings.scope
        self.password_salt = settings.password_salt
        self.desired: model.DesiredState = desired
        self.revision: str = desired.revision
        self.changes: list[FieldChange] = []
        self.notes: list[str] = []
        self.problems: list[model.Problem] = []
        self.creating: set[tuple[str, str]] = set()  # volumes this plan creates (their records start pending)
        self.deleting: set[tuple[str, str]] = set()  # volumes this plan deletes (their records go after them)

    def build(self, base: dict, requires: tuple[str, ...]) -> plans.ResourcePlan:
        spec, domain = self.spec, self.domain
        stopping = domain is not None and self._should_stop()
        storage_steps, owned_volumes, deletions = self._plan_volumes(stopping)
        definition = self._definition(owned_volumes, install=self._install_now())
        if self.problems:  # a refused change (a shrink) leaves the whole VM as it is
            return plans.ResourcePlan(**base, problems=tuple(self.problems), notes=tuple(self.notes))
        steps: list[plans.Step] = list(storage_steps)
        actions: list[Action] = []

        if domain is None:
            actions.append(Action.CREATE)
            self._note_attached_media(None, definition)
            self._describe_creation(definition)
            if self.creating:  # intent before effect: the domain records the volumes before they exist
                intent = self._with_intent(definition)
                steps = [plans.DefineDomain(spec.name, definition.uuid, domxml.render(intent), create=True,
                                            creates=self._absent(self.creating)),
                         *storage_steps, plans.DefineDomain(spec.name, definition.uuid, domxml.render(definition))]
            else:
                steps.append(plans.DefineDomain(spec.name, definition.uuid, domxml.render(definition), create=True))
            if spec.autostart:
                steps.append(plans.SetAutostart(spec.name, True))
            if spec.run_strategy is not model.RunStrategy.HALTED:
                steps.append(plans.StartDomain(spec.name))
                actions.append(Action.START)
                if definition.owner.install_pending or definition.owner.start_pending:
                    # Booted once (from the install media): from now on it boots from its disks,
                    # and its first start is done.
                    after = _started(self._definition(owned_volumes, install=self._install_always()))
                    steps.append(plans.DefineDomain(spec.name, after.uuid, domxml.render(after)))
                if definition.owner.install_pending:
                    self.notes.append("the install kernel is used for this first boot only; later boots use the disks")
            return plans.ResourcePlan(
                **base, actions=tuple(actions), changes=tuple(self.changes), steps=tuple(steps),
                notes=tuple(self.notes), problems=tuple(self.problems), requires=requires,
            )

        observed = domain.definition
        self._note_attached_media(observed, definition)
        self._diff_definition(observed, definition)
        intended = {(v.pool, v.name) for v in observed.owner.volumes if v.pending} if observed.owner is not None else set()
        announce = self.creating - intended
        if announce:  # intent before effect: record the new volumes before creating them
            intent = self._with_intent(definition)
            xml = domxml.patch(domain.xml, intent, volumes_by_path=self.actual.volumes_by_path()) if domain.xml else domxml.render(intent)
            steps.insert(0, plans.DefineDomain(spec.name, domain.uuid, xml, creates=self._absent(announce)))
        if definition != observed or announce:  # the second clears the pending records: the volumes are complete
            xml = (domxml.patch(domain.xml, definition, volumes_by_path=self.actual.volumes_by_path())
                   if domain.xml else domxml.render(definition))
            steps.append(plans.DefineDomain(spec.name, domain.uuid, xml))
            if observed.owner is not None and observed.owner.install_pending and not definition.owner.install_pending:
                self.notes.append("the VM has booted its install media; its next boot uses the disks")
        if self.active and definition.memory != observed.memory and domain.live is not None:
            if definition.memory <= domain.live.max_memory:
                steps.append(plans.SetMemoryLive(spec.name, definition.memory))
        if domain.autostart != spec.autostart:
            self.changes.append(FieldChange("autostart", _yes_no(domain.autostart), _yes_no(spec.autostart), Impact.LIVE))
            steps.append(plans.SetAutostart(spec.name, spec.autostart))
        if steps:
            actions.append(Action.UPDATE)
        starting = self._should_start()
        if stopping and not starting:
            steps.append(plans.StopDomain(spec.name, self.timeout))
        # Volumes go while the domain is off: after a stop, before a start.
        steps.extend(deletions)
        if self.deleting:  # the records of deleted volumes go only once the volumes are gone
            final = self._without_records(definition, self.deleting)
            xml = domxml.patch(domain.xml, final, volumes_by_path=self.actual.volumes_by_path()) if domain.xml else domxml.render(final)
            steps.append(plans.DefineDomain(spec.name, domain.uuid, xml))
        if starting:
            steps.append(plans.StartDomain(spec.name))
            actions.append(Action.START)
            if definition.owner.install_pending or definition.owner.start_pending:
                after = self._without_records(_started(self._definition(owned_volumes, install=self._install_always())),
                                              self.deleting)
                steps.append(plans.DefineDomain(spec.name, after.uuid, domxml.render(after) if not domain.xml else
                                                domxml.patch(domain.xml, after)))
            if definition.owner.install_pending:
                self.notes.append("the install kernel is used for this first boot only; later boots use the disks")
        elif stopping:
            actions.append(Action.STOP)
        if deletions and Action.UPDATE not in actions:
            actions.insert(0, Action.UPDATE)
        old_owner = observed.owner
        if not self.changes and old_owner is not None and old_owner.digest != spec.digest:
            self.changes.append(FieldChange(
                "digest", _short_digest(old_owner.digest), _short_digest(spec.digest), Impact.LIVE,
                note="the manifest changed in ways that do not alter the VM (labels, formatting of values)",
            ))
        self._note_pending_restart()
        return plans.ResourcePlan(
            **base, actions=tuple(actions), changes=tuple(self.changes), steps=tuple(steps),
            notes=tuple(self.notes), problems=tuple(self.problems), requires=requires,
        )

    # -- power --

    def _should_start(self) -> bool:
        domain, strategy = self.domain, self.spec.run_strategy
        if domain.power is model.PowerState.TRANSITIONAL:
            self.notes.append("domain is in transition (shutting down or saving); the next pass decides its power")
            return False
        if domain.power is model.PowerState.PAUSED and strategy is not model.RunStrategy.HALTED:
            self.notes.append("domain is paused; kvmops leaves paused domains alone (virsh resume to continue)")
        if domain.power.active:
            return False
        reason = domain.shutoff_reason
        if strategy is model.RunStrategy.ALWAYS:
            self.notes.append(f"runStrategy Always: domain is off ({reason or 'unknown reason'}), starting it")
            return True
        if strategy is model.RunStrategy.RERUN_ON_FAILURE and (
            domain.power is model.PowerState.CRASHED or reason in (model.ShutoffReason.CRASHED, model.ShutoffReason.FAILED)
        ):
            self.notes.append(f"runStrategy RerunOnFailure: domain stopped ({reason}), restarting it")
            return True
        if strategy is model.RunStrategy.MANUAL and reason is model.ShutoffReason.FAILED:
            self.notes.append("runStrategy Manual: the domain's first start failed, starting it")
            return True
        owner = domain.definition.owner
        if owner is not None and owner.start_pending and strategy is not model.RunStrategy.HALTED:
            self.notes.append(f"runStrategy {strategy}: the VM's first start was interrupted, starting it")
            return True
        return False

    def _should_stop(self) -> bool:
        domain = self.domain
        return (
            self.spec.run_strategy is model.RunStrategy.HALTED
            and domain.power in (model.PowerState.RUNNING, model.PowerState.PAUSED)
        )

    # -- storage --

    def _plan_volumes(self, stopping: bool) -> tuple[list[plans.Step], tuple[model.OwnedVolume, ...], list[plans.Step]]:
        """Return (volume steps before the define, the ownership records, deletions after it)."""
        spec, domain, actual = self.spec, self.domain, self.actual
        owner = domain.definition.owner if domain is not None else None
        live_targets = {d.target for d in domain.live.disks} if (self.active and domain.live) else set()
        live_volumes = {(d.pool, d.volume) for d in domain.live.disks} if (self.active and domain.live) else set()
        steps: list[plans.Step] = []
        records: list[model.OwnedVolume] = []
        attached_volumes: set[tuple[str, str]] = set()
        for disk in spec.disks:
            if disk.path is not None:
                # Attached as-is: nothing to create or grow.  A file that is a pool's volume keeps
                # its record (an adopted domain's says "not created": never deleted).
                resolved = self.by_path.get(disk.path)
                if resolved is not None:
                    attached_volumes.add(resolved)
                    recorded = owner.volume(*resolved) if owner is not None else None
                    records.append(recorded if recorded is not None else
                                   model.OwnedVolume(*resolved, model.DeletionPolicy.RETAIN, created=False))
                if domain is None or not any(self._attaches(disk, d) for d in domain.definition.disks):
                    self.notes.append(f"attaches existing file {disk.path} as-is as disk {disk.name}: kvmops did not "
                                      "create it and never resizes, writes or deletes it")
                continue
            volume = actual.volumes.get((disk.pool, disk.volume))
            recorded = owner.volume(disk.pool, disk.volume) if owner is not None else None
            path = f"disks[{disk.name}]"
            if volume is not None and recorded is not None and recorded.pending:
                if (disk.pool, disk.volume) in live_volumes:
                    # The guest was started on it since (by hand): it holds the guest's data now,
                    # so it is kept as it is, and its record completed.
                    self.notes.append(f"volume {disk.pool}/{disk.volume} was created by an interrupted apply and is "
                                      "in use by the running guest: kept as it is")
                else:
                    steps.append(self._redo_interrupted_creation(path, volume))
                    volume = None
            if volume is None:
                steps.append(self._new_volume(disk))
                self.creating.add((disk.pool, disk.volume))
                attached = domain is not None and any(
                    (d.pool, d.volume) == (disk.pool, disk.volume) for d in domain.definition.disks
                )
                if attached and not (recorded is not None and recorded.pending):  # pending: it never existed
                    self.changes.append(FieldChange(
                        f"{path}.volume", "(missing)", f"{disk.pool}/{disk.volume} {format_bytes(disk.size)}", Impact.REPLACE,
                        note="the volume has vanished from its pool; a new, empty one is created",
                    ))
                created = True
            else:
                created = recorded.created if recorded is not None else False
                if recorded is None:
                    self.notes.append(
                        f"attaches existing volume {disk.pool}/{disk.volume}, which kvmops did not create: used as-is, "
                        "never resized or deleted"
                    )
                if volume.capacity < disk.size and self._may_grow(disk, volume, created):
                    if self.active and (disk.pool, disk.volume) in live_volumes and disk.target in live_targets:
                        steps.append(plans.ResizeDisk(spec.name, domain.uuid, disk.target, disk.size, disk.pool, disk.volume))
                    else:
                        steps.append(plans.ResizeVolume(disk.pool, disk.volume, disk.size))
                    self.changes.append(FieldChange(
                        f"{path}.size", format_bytes(volume.capacity), format_bytes(disk.size), Impact.LIVE,
                        note="grown in place; grow the guest's partition and filesystem to use it",
                    ))
                elif volume.capacity > disk.size:
                    self.problems.append(spec.origin.problem(f"spec.disks[{spec.disks.index(disk)}].size", (
                        f"disk {disk.name!r} would shrink from {format_bytes(volume.capacity)} to {format_bytes(disk.size)}; "
                        "kvmops never shrinks a volume (it destroys data). Set size to "
                        f"{format_bytes(round_up(volume.capacity, MIB))} or more"
                    )))
            records.append(model.OwnedVolume(disk.pool, disk.volume, disk.deletion_policy, created))

        seed = spec.cloud_init
        if seed is not None:
            recorded = owner.volume(seed.pool, seed.volume) if owner is not None else None
            present = (seed.pool, seed.volume) in actual.volumes
            if present and (recorded is None or recorded.digest != seed.digest or recorded.pending):
                self._may_rewrite_seed(seed, recorded)
            if not present or recorded is None or recorded.digest != seed.digest or recorded.pending:
                uuid = domain.uuid if domain is not None else (spec.uuid or new_uuid(self.scope, spec))
                steps.append(plans.WriteSeed(seed.pool, seed.volume, seed.files, seed.digest, spec.name, uuid))
                self.creating.add((seed.pool, seed.volume))
                if domain is not None and present and recorded is not None:
                    self.changes.append(FieldChange(
                        "cloudInit", _short_digest(recorded.digest), _short_digest(seed.digest), self._restart_or_live(),
                        note="seed ISO regenerated; cloud-init reads it at the next boot",
                    ))
            records.append(model.OwnedVolume(seed.pool, seed.volume, model.DeletionPolicy.DELETE, True, seed.digest))

        deletions: list[plans.Step] = []
        wanted = {(d.pool, d.volume) for d in spec.disks if d.path is None} | attached_volumes
        if seed is not None:
            wanted.add((seed.pool, seed.volume))
        for record in owner.volumes if owner is not None else ():
            if (record.pool, record.name) in wanted:
                continue
            volume = actual.volumes.get((record.pool, record.name))
            if volume is None:
                self.changes.append(FieldChange(
                    f"volume {record.pool}/{record.name}", "(record)", None, Impact.LIVE,
                    note="the volume no longer exists; its record is dropped from the domain's metadata",
                ))
                continue
            if (record.pool, record.name) in self.claimed:
                self.notes.append(f"volume {record.pool}/{record.name} is detached and kept: another VM in the manifests uses it")
                continue
            if record.created and (shared := _kept_for_users(actual, record, spec.name, detached=True)) is not None:
                records.append(record)  # deleted by a later pass once no other domain uses it
                self.notes.append(shared)
                continue
            if record.created and owner is not None and not owner.bound_uuid:
                records.append(record)  # the definition below binds the mark; the next pass may delete
                self.notes.append(f"volume {record.pool}/{record.name} is detached and kept until this VM's kvmops mark "
                                  "names it (written by an older kvmops; bound by this apply)")
                continue
            if not (record.created and record.deletion_policy is model.DeletionPolicy.DELETE):
                self.notes.append(f"volume {record.pool}/{record.name} is detached and kept (deletionPolicy Retain)")
                continue
            if record.digest and not (self.active and not stopping):  # a generated seed: no data of anyone's
                deletions.append(plans.DeleteVolume(record.pool, record.name, spec.name, domain.uuid))
                records.append(record)  # kept until the volume is gone: a crash in between must not orphan it
                self.deleting.add((record.pool, record.name))
                self.changes.append(FieldChange("cloudInit", _short_digest(record.digest), None, self._restart_or_live(),
                                                note="generated seed ISO removed"))
                continue
            if record.digest:
                records.append(record)
                continue
            if self.active and not stopping:
                records.append(record)  # still ours to delete, once QEMU no longer has it open
                self.notes.append(
                    f"DATA LOSS pending: volume {record.pool}/{record.name} ({format_bytes(volume.capacity)}) will be "
                    "deleted once the VM is stopped (deletionPolicy Delete)"
                )
                continue
            deletions.append(plans.DeleteVolume(record.pool, record.name, spec.name, domain.uuid))
            records.append(record)  # kept until the volume is gone: a crash in between must not orphan it
            self.deleting.add((record.pool, record.name))
            self.changes.append(FieldChange(
                f"volume {record.pool}/{record.name}", format_bytes(volume.capacity), None, Impact.DATA_LOSS,
                note="DATA LOSS: the volume is deleted (deletionPolicy Delete)",
            ))
        return steps, tuple(records), deletions

    def _attaches(self, disk: model.DiskSpec, device: model.DiskDevice) -> bool:
        """Return whether observed ``device`` is the file a ``path:`` disk names (as itself or as a pool volume)."""
        if device.pool is None:
            return device.path == disk.path
        return self.by_path.get(disk.path) == (device.pool, device.volume)

    def _path_device(self, disk: model.DiskSpec) -> model.DiskDevice:
        """Return the device of a ``path:`` disk, named as a pool volume when the file is one (as observed disks are)."""
        self._check_host_file(disk.host_file, disk.path or "", f"spec.disks[{self.spec.disks.index(disk)}].path")
        resolved = self.by_path.get(disk.path)
        if resolved is not None:
            return model.DiskDevice(target=disk.target, bus=disk.bus, pool=resolved[0], volume=resolved[1], format=disk.format)
        return model.DiskDevice(target=disk.target, bus=disk.bus, path=disk.path, format=disk.format)

    def _may_rewrite_seed(self, seed: model.CloudInitSpec, recorded: model.OwnedVolume | None) -> None:
        """Add a problem unless the existing seed volume is this VM's own and no other domain uses it."""
        if recorded is None:
            self.problems.append(self.spec.origin.problem("spec.cloudInit", (
                f"volume {seed.pool}/{seed.volume} already exists and kvmops did not create it for this VM; the "
                "cloud-init seed would overwrite it, and kvmops never writes a volume it did not create. Remove it "
                "(virsh vol-delete) if it is a leftover, or give the seed another pool"
            )))
            return
        users = volume_users(self.actual, seed.pool, seed.volume, besides=self.spec.name)
        if users:
            self.problems.append(self.spec.origin.problem("spec.cloudInit", (
                f"the cloud-init seed {seed.pool}/{seed.volume} is also used by domain {', '.join(users)}; kvmops "
                "will not rewrite a volume another domain uses. Detach it there first"
            )))

    def _may_grow(self, disk: model.DiskSpec, volume: model.ObservedVolume, created: bool) -> bool:
        """Return whether ``disk``'s smaller volume may be grown; if not, add the problem saying why."""
        field = f"spec.disks[{self.spec.disks.index(disk)}].size"
        keep = f"set size to {format_bytes(round_up(volume.capacity, MIB))}"
        if not created:
            self.problems.append(self.spec.origin.problem(field, (
                f"volume {disk.pool}/{disk.volume} ({format_bytes(volume.capacity)}) was not created by kvmops, which "
                f"never resizes or writes a volume it did not create; {keep} to use it as it is, grow it yourself "
                f"(virsh vol-resize), or name a new volume"
            )))
            return False
        users = volume_users(self.actual, disk.pool, disk.volume, besides=self.spec.name)
        if users:
            self.problems.append(self.spec.origin.problem(field, (
                f"volume {disk.pool}/{disk.volume} is also used by domain {', '.join(users)}; kvmops never resizes a "
                f"volume another domain uses. Detach it there, or {keep}"
            )))
            return False
        return True

    def _redo_interrupted_creation(self, path: str, volume: model.ObservedVolume) -> plans.Step:
        """Return the step removing a volume an interrupted apply was creating, so it is created again.

        The domain's record of it is still pending: kvmops wrote that record, having checked
        that the name was free, before it created the volume, and clears it only once the
        volume is complete and before the domain may start from it.  So the volume is
        kvmops' own and holds nothing a guest wrote, but whether its creation (a copy of an
        image, a seed upload) finished is unknown: "it exists" is not "it is complete".
        """
        self.changes.append(FieldChange(
            f"{path}.volume", f"{volume.pool}/{volume.name} (incomplete)", f"{volume.pool}/{volume.name}", Impact.LIVE,
            note="an interrupted apply was creating this volume (no guest has used it); it is created again",
        ))
        return plans.DeleteVolume(volume.pool, volume.name)

    def _with_intent(self, definition: model.DomainDefinition) -> model.DomainDefinition:
        """Return ``definition`` with the records of the volumes this plan creates marked pending."""
        owner = definition.owner
        volumes = tuple(
            dataclasses.replace(v, created=True, pending=True) if (v.pool, v.name) in self.creating else v
            for v in owner.volumes
        )
        return dataclasses.replace(definition, owner=dataclasses.replace(owner, volumes=volumes))

    def _absent(self, volumes: set[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        """Return the ``volumes`` that do not exist now: the executor checks they still do not."""
        return tuple(sorted(v for v in volumes if v not in self.actual.volumes))

    @staticmethod
    def _without_records(definition: model.DomainDefinition, gone: set[tuple[str, str]]) -> model.DomainDefinition:
        """Return ``definition`` without the records of the volumes in ``gone``."""
        owner = definition.owner
        volumes = tuple(v for v in owner.volumes if (v.pool, v.name) not in gone)
        return dataclasses.replace(definition, owner=dataclasses.replace(owner, volumes=volumes))

    def _new_volume(self, disk: model.DiskSpec) -> plans.Step:
        """Return the step creating ``disk``'s volume: empty, an overlay on its image, or a copy of it."""
        if disk.image is None:
            return plans.CreateVolume(disk.pool, disk.volume, disk.size, storagexml.render_volume(disk.volume, disk.size))
        image = self.desired.images[disk.image]
        if disk.clone == "copy":
            return plans.CloneVolume(disk.pool, disk.volume, image.pool, image.volume, disk.size,
                                     storagexml.render_volume(disk.volume, disk.size))
        backing = self._volume_path(image.pool, image.volume)
        return plans.CreateVolume(disk.pool, disk.volume, disk.size,
                                  storagexml.render_volume(disk.volume, disk.size, backing=(backing, image.format)))

    def _pool_directory(self, pool: str) -> str | None:
        observed = self.actual.pools.get(pool)
        if observed is not None and observed.path:
            return observed.path
        declared = self.desired.pools.get(pool)
        return declared.path if declared is not None else None

    def _volume_path(self, pool: str, name: str) -> str:
        volume = self.actual.volumes.get((pool, name))
        if volume is not None and volume.path:
            return volume.path
        directory = self._pool_directory(pool)
        if directory is None:
            self.problems.append(self.spec.origin.problem("spec", f"cannot tell where pool {pool!r} keeps {name}"))
            return name
        return f"{directory}/{name}"

    def _check_host_file(self, kind: str, path: str, field: str) -> None:
        """Add a problem at ``field`` when the shell found ``path`` missing, or not something libvirt attaches.

        ``kind`` is what the shell saw on a local host (``model.HOST_FILE_KINDS``); "" when
        it could not look (a remote host, ``kvmops diff``, the test driver): nothing is said.
        """
        if kind in ("", "file", "block device"):
            return
        why = ("does not exist on the host; create it or fix the path" if kind == "missing"
               else f"is a {kind} on the host, not a file or block device; fix the path")
        problem = self.spec.origin.problem(field, f"{path} {why}")
        if problem not in self.problems:  # a definition is built more than once per plan
            self.problems.append(problem)

    def _file_path(self, ref: model.FileRef, field: str = "spec") -> str:
        if not ref.pool:
            self._check_host_file(ref.host_file, ref.path or "", f"{field}.path")
            return ref.path or ""  # any existing file, by its absolute path
        if ref.volume is not None:
            return self._volume_path(ref.pool, ref.volume)
        self._check_host_file(ref.host_file, f"{ref.path} in pool {ref.pool}", f"{field}.path")
        directory = self._pool_directory(ref.pool)
        if directory is None:
            self.problems.append(self.spec.origin.problem("spec", f"cannot tell the directory of pool {ref.pool!r}"))
            return ref.path or ""
        if (ref.host_path and host_is_local(self.actual.host.uri)
                and not ref.host_path.startswith(ref.host_directory.rstrip("/") + "/")):
            self.problems.append(self.spec.origin.problem(f"{field}.path", (
                f"{ref.path} in pool {ref.pool} leads to {ref.host_path}, outside the pool's directory "
                f"({ref.host_directory}); libvirt would hand that host file to the guest. Put the file itself in the "
                "pool directory, not a symlink to elsewhere"
            )))
        return f"{directory}/{ref.path}"

    def _first_start_pending(self) -> bool:
        """Return whether the VM still owes the one start at creation of ``Manual`` and ``RerunOnFailure``.

        Recorded in the mark from the first definition until the definition written right
        after that start: a crash in between leaves a VM that the next pass still starts,
        since its shut-off reason cannot tell "never started" from "stopped on purpose".
        """
        if self.spec.run_strategy not in (model.RunStrategy.MANUAL, model.RunStrategy.RERUN_ON_FAILURE):
            return False
        if self.domain is None:
            return True
        owner = self.domain.definition.owner if self.domain.definition is not None else None
        return owner is not None and owner.start_pending and not self.active

    def _install_always(self) -> bool:
        """Return whether the install media stays in the definition after the first boot (``firstBootOnly: false``)."""
        return self.spec.install is not None and not self.spec.install.first_boot_only

    def _install_now(self) -> bool:
        """Return whether the domain boots its install media (kernel, initrd) next time."""
        install = self.spec.install
        if install is None:
            return False
        if not install.first_boot_only or self.domain is None:
            return True
        owner = self.domain.definition.owner if self.domain.definition is not None else None
        return owner is not None and owner.install_pending and not self.active

    # -- definition --

    def _definition(self, owned_volumes: tuple[model.OwnedVolume, ...], *, install: bool) -> model.DomainDefinition:
        spec, domain = self.spec, self.domain
        observed = domain.definition if domain is not None else None
        machine = spec.machine
        if observed is not None and (machine is None or fields.machine_matches(machine, observed.machine)):
            machine = observed.machine  # unmanaged, or an alias (q35) of what libvirt wrote (pc-q35-7.2)
        cpu_mode, cpu_model = spec.cpu_mode, spec.cpu_model
        if cpu_mode is None and observed is not None:
            cpu_mode, cpu_model = observed.cpu_mode, observed.cpu_model
        boot = spec.boot
        if not boot and observed is not None and observed.boot == fields.LIBVIRT_BOOT:
            boot = observed.boot  # `boot: []` is no order, and libvirt writes what no order means
        kernel = initrd = cmdline = None
        if install and spec.install is not None:
            kernel = self._file_path(spec.install.kernel, "spec.install.kernel")
            initrd = self._file_path(spec.install.initrd, "spec.install.initrd") if spec.install.initrd is not None else None
            cmdline = spec.install.cmdline or None
        used = {d.target for d in spec.disks} | ({spec.cdrom_target} if spec.cdrom_target else set())
        spare = (f"sd{domxml.device_letters(i)}" for i in range(64) if f"sd{domxml.device_letters(i)}" not in used)
        cdroms = []
        if spec.cdrom is not None or spec.cdrom_empty:
            cdroms.append(self._cdrom_device(spec.cdrom_target or next(spare), observed))
        if spec.cloud_init is not None:
            seed = spec.cloud_init
            cdroms.append(model.DiskDevice(target=next(spare), bus="sata", pool=seed.pool, volume=seed.volume, device="cdrom"))
        uuid = observed.uuid if observed is not None else (spec.uuid or new_uuid(self.scope, spec))
        return model.DomainDefinition(
            name=spec.name,
            uuid=uuid,
            virt_type=self.virt_type,
            vcpus=spec.vcpus,
            memory=spec.memory,
            max_memory=spec.max_memory,
            disks=tuple(model.DiskDevice(target=d.target, bus=d.bus, pool=d.pool, volume=d.volume) if d.path is None
                        else self._path_device(d) for d in spec.disks),
            nics=self._nics(observed, uuid),
            console=spec.console,
            graphics=spec.graphics,
            owner=model.Ownership(
                spec.manifest, spec.digest, spec.run_strategy, owned_volumes, scope=self.scope,
                shutdown_timeout=spec.shutdown_timeout,
                revision=self.revision or (observed.owner.revision if observed is not None and observed.owner else ""),
                keep_nvram=spec.keep_nvram,
                graphics_password_digest=self._password_digest(observed, uuid),
                install_pending=install and spec.install is not None and spec.install.first_boot_only,
                bound_name=spec.name, bound_uuid=uuid or "",
                start_pending=self._first_start_pending(),
            ),
            firmware=spec.firmware,
            machine=machine,
            cpu_mode=cpu_mode,
            cpu_model=cpu_model,
            boot=boot,
            kernel=kernel,
            initrd=initrd,
            cmdline=cmdline,
            cdroms=tuple(cdroms),
            guest_agent=spec.guest_agent,
            graphics_listen=spec.graphics_listen if spec.graphics != "none" else None,
            graphics_password=spec.graphics_password,
        )

    def _cdrom_device(self, target: str, observed: model.DomainDefinition | None) -> model.DiskDevice:
        """Return the CD-ROM drive of the manifest: media of a pool, any existing file, or none.

        kvmops did not create the media, so libvirt must not chown it (it never gives
        read-only media back): ``relabel`` is off for media kvmops attaches.  A drive found
        as it is (an adopted domain's ``path:`` CD-ROM, same file, same target) keeps the
        relabelling it had: adopting writes what is there and changes nothing.
        """
        spec, ref = self.spec, self.spec.cdrom
        bus = spec.cdrom_bus
        if ref is None:
            return model.DiskDevice(target=target, bus=bus, device="cdrom")
        if ref.pool and ref.volume is not None:
            return model.DiskDevice(target=target, bus=bus, pool=ref.pool, volume=ref.volume, device="cdrom", relabel=False)
        if ref.pool:
            path = self._file_path(ref, "spec.cdrom")
            if (found := self.actual.volumes_by_path().get(path)) is not None:
                # A file at the top of a dir pool is one of its volumes, and is read back as one.
                return model.DiskDevice(target=target, bus=bus, pool=found[0], volume=found[1], device="cdrom", relabel=False)
            return model.DiskDevice(target=target, bus=bus, path=path, device="cdrom", relabel=False)
        self._check_host_file(ref.host_file, ref.path or "", "spec.cdrom.path")
        resolved = self.by_path.get(ref.path)
        device = (model.DiskDevice(target=target, bus=bus, pool=resolved[0], volume=resolved[1], device="cdrom", relabel=False)
                  if resolved is not None else
                  model.DiskDevice(target=target, bus=bus, path=ref.path, device="cdrom", relabel=False))
        found = next((d for d in (observed.cdroms if observed is not None else ())
                      if dataclasses.replace(d, relabel=False) == device), None)
        return found if found is not None else device

    def _password_digest(self, observed: model.DomainDefinition | None, uuid: str | None) -> str:
        """Return the graphics password digest for the mark: the observed one while it still matches.

        A new digest is salted per domain (its UUID) and per pass (``password_salt``).
        """
        secret = self.spec.graphics_password
        if secret is None:
            return ""
        old = observed.owner.graphics_password_digest if observed is not None and observed.owner is not None else ""
        if old and not password.is_legacy(old) and password.matches(old, secret):
            return old
        return password.digest(secret, password_salt(self.password_salt, uuid or self.spec.name))

    def _nics(self, observed: model.DomainDefinition | None, uuid: str) -> tuple[model.NicDevice, ...]:
        """Return the NICs to define: observed MACs kept; a new domain's unpinned NICs get MACs now.

        A plan is complete data: a MAC left to libvirt would differ between two
        definitions in one plan, and between the plan and what is applied.
        """
        nics = _resolve_macs(self.spec.nics, observed.nics if observed is not None else ())
        if all(nic.mac for nic in nics):
            return nics
        taken = {n.mac for d in self.actual.domains.values() for n in d.nics if n.mac}
        taken |= {n.mac for n in nics if n.mac}
        resolved = []
        for index, nic in enumerate(nics):
            if nic.mac is None:
                nic = dataclasses.replace(nic, mac=new_mac(f"{uuid}/{index}", taken))
                taken.add(nic.mac)
            resolved.append(nic)
        return tuple(resolved)

    def _restart_or_live(self) -> Impact:
        return Impact.RESTART if self.active else Impact.LIVE

    def _diff_definition(self, old: model.DomainDefinition, new: model.DomainDefinition) -> None:
        restart = self._restart_or_live()
        add = self.changes.append
        for declared in fields.DOMAIN_FIELDS:
            if not declared.differs(old, new):
                continue
            before, after = declared.text(old), declared.text(new)
            if declared.label == "maxMemory":
                add(FieldChange("maxMemory", before, after, restart,
                                note="" if self.spec.max_memory != self.spec.memory or not self.active
                                else "follows memory (maxMemory is not set)"))
            elif declared.label == "memory":
                live = self.active and self.domain.live is not None and new.memory <= self.domain.live.max_memory
                add(FieldChange("memory", before, after, Impact.LIVE if (live or not self.active) else Impact.RESTART,
                                note="balloon" if live else ""))
            else:
                add(FieldChange(declared.label, before, after, restart))
        if not self._cdrom_change_is_the_seed(old, new):
            before = ", ".join(d.source for d in old.cdroms) or None
            after = ", ".join(d.source for d in new.cdroms) or None
            if before != after:
                add(FieldChange("cdrom", before, after, restart))
        if [d.source for d in old.cdroms] == [d.source for d in new.cdroms]:
            placed_before = ", ".join(f"{d.target} ({d.bus})" for d in old.cdroms)
            placed_after = ", ".join(f"{d.target} ({d.bus})" for d in new.cdroms)
            if placed_before != placed_after:
                add(FieldChange("cdrom.target", placed_before, placed_after, restart))
        relabelled = {d.source for d in old.cdroms if d.relabel}
        for cdrom in new.cdroms:
            if not cdrom.relabel and cdrom.source in relabelled:
                add(FieldChange(
                    "cdrom.ownership", "chowned by libvirt at start", "left as it is", restart,
                    note=f"{cdrom.source} is not kvmops': libvirt no longer relabels it (QEMU's user must be able to read it)",
                ))
        self._diff_disks(old.disks, new.disks, restart)
        self._diff_nics(old.nics, new.nics, restart)
        self._diff_owner(old.owner, new.owner)

    def _cdrom_change_is_the_seed(self, old: model.DomainDefinition, new: model.DomainDefinition) -> bool:
        """Return whether the CD-ROMs differ only by the cloud-init seed, which has its own change line."""
        seed = self.spec.cloud_init
        if seed is None:
            return False
        def without_seed(devices):
            return [d for d in devices if (d.pool, d.volume) != (seed.pool, seed.volume)]
        return without_seed(old.cdroms) == without_seed(new.cdroms)

    def _diff_disks(self, old: tuple[model.DiskDevice, ...], new: tuple[model.DiskDevice, ...], restart: Impact) -> None:
        names = {(d.pool, d.volume) if d.path is None else _device_key(self._path_device(d)): d.name for d in self.spec.disks}
        old_by_source = {_device_key(d): d for d in old}
        new_by_source = {_device_key(d): d for d in new}
        old_by_target = {d.target: d for d in old}
        for key, disk in new_by_source.items():
            path = f"disks[{names[key]}]"
            previous = old_by_source.get(key)
            if previous is None:
                displaced = old_by_target.get(disk.target)
                if displaced is not None and _device_key(displaced) not in new_by_source:
                    self.changes.append(FieldChange(
                        f"{path}.volume", displaced.source, disk.source, Impact.REPLACE,
                        note=f"{disk.target} now points at another volume; the old one is detached, not deleted",
                    ))
                else:
                    self.changes.append(FieldChange(path, None, f"{disk.source} as {disk.target} ({disk.bus})", restart))
                continue
            if previous.bus != disk.bus:
                self.changes.append(FieldChange(f"{path}.bus", previous.bus, disk.bus, restart))
            if previous.target != disk.target:
                self.changes.append(FieldChange(f"{path}.target", previous.target, disk.target, restart))
        for key, disk in old_by_source.items():
            if key in new_by_source:
                continue
            replaced = any(d.target == disk.target for d in new) and any(
                c.impact is Impact.REPLACE and c.old == disk.source for c in self.changes
            )
            if not replaced:
                self.changes.append(FieldChange(f"disks[{disk.target}]", disk.source, None, restart, note="detached"))

    def _diff_nics(self, old: tuple[model.NicDevice, ...], new: tuple[model.NicDevice, ...], restart: Impact) -> None:
        old_by_mac = {n.mac: n for n in old}
        matched = set()
        for index, nic in enumerate(new):
            previous = old_by_mac.get(nic.mac) if nic.mac else None
            path = f"networks[{index}]"
            if previous is None:
                self.changes.append(FieldChange(path, None, _nic_text(nic), restart))
                continue
            matched.add(nic.mac)
            if (previous.kind, previous.source) != (nic.kind, nic.source):
                self.changes.append(FieldChange(f"{path}.{nic.kind}", f"{previous.kind} {previous.source}", f"{nic.kind} {nic.source}", restart))
            if previous.model != nic.model:
                self.changes.append(FieldChange(f"{path}.model", previous.model, nic.model, restart))
        for nic in old:
            if nic.mac not in matched:
                self.changes.append(FieldChange(f"networks[{nic.mac}]", _nic_text(nic), None, restart, note="removed"))

    def _diff_owner(self, old: model.Ownership | None, new: model.Ownership) -> None:
        if old is None:
            self.changes.append(FieldChange("metadata", None, "kvmops ownership", Impact.LIVE))
            return
        if old.bound_uuid != new.bound_uuid:
            self.changes.append(FieldChange(
                "metadata.boundTo", "(none: written by an older kvmops)", new.written_for(), Impact.LIVE,
                note="the mark now names its domain, so a copy of it on a clone proves nothing",
            ))
        if old.manifest != new.manifest:
            self.changes.append(FieldChange("manifest", old.manifest, new.manifest, Impact.LIVE))
        if old.run_strategy != new.run_strategy:
            self.changes.append(FieldChange("runStrategy", old.run_strategy, new.run_strategy, Impact.LIVE))
        if old.graphics_password_digest != new.graphics_password_digest:
            secret = self.spec.graphics_password
            if password.is_legacy(old.graphics_password_digest) and secret is not None and password.matches(
                old.graphics_password_digest, secret
            ):
                self.changes.append(FieldChange(
                    "graphics.password", "(set, unsalted digest)", "(set)", Impact.LIVE,
                    note="same password; its digest in the mark becomes a salted scrypt digest",
                ))
            else:
                self.changes.append(FieldChange(
                    "graphics.password", "(set)" if old.graphics_password_digest else "(none)",
                    "(set)" if new.graphics_password_digest else "(none)", self._restart_or_live(),
                    note="the password itself is never shown",
                ))
        if old.start_pending and not new.start_pending:
            self.changes.append(FieldChange("firstStart", "pending", "done", Impact.LIVE,
                                            note="the VM has started since an interrupted apply recorded it"))
        if old.keep_nvram != new.keep_nvram:
            self.changes.append(FieldChange("keepNvram", _yes_no(old.keep_nvram), _yes_no(new.keep_nvram), Impact.LIVE))
        if old.shutdown_timeout != new.shutdown_timeout:
            self.changes.append(FieldChange(
                "shutdownTimeout", _seconds(old.shutdown_timeout), _seconds(new.shutdown_timeout), Impact.LIVE
            ))
        names = {(d.pool, d.volume): d.name for d in self.spec.disks}
        for volume in new.volumes:
            before = old.volume(volume.pool, volume.name)
            if before is not None and before.deletion_policy != volume.deletion_policy and (volume.pool, volume.name) in names:
                note = "the volume will be deleted when this disk or VM is removed" if volume.deletion_policy is model.DeletionPolicy.DELETE else ""
                self.changes.append(FieldChange(
                    f"disks[{names[(volume.pool, volume.name)]}].deletionPolicy", before.deletion_policy, volume.deletion_policy,
                    Impact.LIVE, note=note,
                ))

    def _describe_creation(self, definition: model.DomainDefinition) -> None:
        spec = self.spec
        add = self.changes.append
        add(FieldChange("virtType", None, definition.virt_type, Impact.LIVE))
        add(FieldChange("vcpus", None, str(spec.vcpus), Impact.LIVE))
        add(FieldChange("memory", None, _kib(spec.memory), Impact.LIVE))
        if spec.max_memory != spec.memory:
            add(FieldChange("maxMemory", None, _kib(spec.max_memory), Impact.LIVE))
        for disk in spec.disks:
            add(FieldChange(
                f"disks[{disk.name}]", None,
                f"{disk.pool}/{disk.volume} {format_bytes(disk.size)} as {disk.target} ({disk.bus}), {disk.deletion_policy}"
                if disk.path is None else f"existing file {disk.path} as {disk.target} ({disk.bus}), attached as-is",
                Impact.LIVE,
            ))
        for index, nic in enumerate(definition.nics):
            add(FieldChange(f"networks[{index}]", None, _nic_text(nic), Impact.LIVE))
        add(FieldChange("console", None, "serial" if spec.console else "none", Impact.LIVE))
        add(FieldChange("graphics", None, spec.graphics + (f" on {spec.graphics_listen}" if spec.graphics != "none" else "")
                        + (" with a password" if spec.graphics_password is not None else ""), Impact.LIVE))
        optional = (
            ("firmware", definition.firmware if definition.firmware != "bios" else None),
            ("machine", spec.machine),
            ("cpu", fields.cpu_text(definition) if spec.cpu_mode else None),
            ("boot", ", ".join(spec.boot) if spec.boot != ("hd",) else None),
            ("install", fields.install_text(definition)),
            ("cdrom", str(spec.cdrom) if spec.cdrom else ("empty drive" if spec.cdrom_empty else None)),
            ("cloudInit", f"seed {spec.cloud_init.pool}/{spec.cloud_init.volume} ({_short_digest(spec.cloud_init.digest)})"
             if spec.cloud_init else None),
            ("guestAgent", "true" if spec.guest_agent else None),
        )
        for path, value in optional:
            if value:
                add(FieldChange(path, None, value, Impact.LIVE))
        add(FieldChange("autostart", None, _yes_no(spec.autostart), Impact.LIVE))
        add(FieldChange("runStrategy", None, spec.run_strategy, Impact.LIVE))

    def _note_attached_media(self, old: model.DomainDefinition | None, new: model.DomainDefinition) -> None:
        """Say in words that install media and a CD-ROM kvmops did not create are attached as they are."""
        before = {d.source for d in old.cdroms} if old is not None else set()
        for cdrom in new.cdroms:
            if not cdrom.relabel and cdrom.source not in before:
                self.notes.append(
                    f"attaches existing file {cdrom.source} as a CD-ROM, which kvmops did not create: read-only, never "
                    "written, deleted or relabelled (QEMU's user must be able to read it)"
                )
        for path in (new.kernel, new.initrd):
            if path and (old is None or path not in (old.kernel, old.initrd)):
                self.notes.append(f"boots existing file {path}, which kvmops did not create: read as it is, never written")

    def _note_pending_restart(self) -> None:
        domain = self.domain
        if not (self.active and domain.live is not None):
            return
        pending = [f"{name} {old} -> {new}" for name, old, new in restart_pending(domain.live, domain.definition)]
        if pending:
            self.notes.append("restart pending (changed earlier, takes effect at next boot): " + "; ".join(pending))


def _device_key(device: model.DiskDevice) -> tuple[str, str]:
    """Return what identifies a disk: its pool volume, or its file."""
    return (device.pool, device.volume or "") if device.pool is not None else ("", device.path or "")


def password_salt(entropy: bytes, uuid: str) -> bytes:
    """Return the 16-byte salt of a domain's new password digest: unique per domain, random per pass."""
    return hashlib.sha256(b"kvmops/graphics-password/" + entropy + b"/" + uuid.encode()).digest()[:16]


_UUID_NAMESPACE = uuids.UUID("2b1c0f4e-6e6b-4c1e-9a57-6b766d6f7073")


def new_uuid(scope: str, spec: model.VMSpec) -> str:
    """Return the UUID a new domain gets: derived from its scope, name and manifest content.

    The plan names the domain's identity before it exists (a plan is complete data), and
    the same manifest always plans the same identity.
    """
    return str(uuids.uuid5(_UUID_NAMESPACE, f"{scope}/{spec.name}/{spec.digest}"))


def new_mac(seed: str, taken: set[str]) -> str:
    """Return a MAC in QEMU's 52:54:00 range derived from ``seed``, avoiding ``taken`` ones."""
    for attempt in range(1000):
        digest = hashlib.sha256(f"{seed}/{attempt}".encode()).digest()
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])
        if mac not in taken:
            return mac
    raise ValueError("no free MAC address found")  # 1000 collisions in 2**24: not this universe


def restart_pending(live: model.DomainDefinition, config: model.DomainDefinition) -> list[tuple[str, str, str]]:
    """Return (field, running value, configured value) for fields that differ until a reboot.

    The declared fields (:data:`reconciler.core.fields.DOMAIN_FIELDS`) and the device
    collections; memory is left out: the balloon moves it live, and the guest may lag behind.
    """
    def disks(d: model.DomainDefinition) -> list[str]:
        return [f"{x.target}={x.source}" for x in d.disks]

    def nics(d: model.DomainDefinition) -> list[str]:
        return [_nic_text(x) for x in d.nics]

    pending = fields.restart_pending(live, config)
    for label, before, after in (
        ("disks", ", ".join(disks(live)) or "none", ", ".join(disks(config)) or "none"),
        ("networks", ", ".join(nics(live)) or "none", ", ".join(nics(config)) or "none"),
        ("cdrom", ", ".join(d.source for d in live.cdroms) or "none", ", ".join(d.source for d in config.cdroms) or "none"),
    ):
        if before != after:
            pending.append((label, before, after))
    return pending


def _resolve_macs(wanted: tuple[model.NicSpec, ...], observed: tuple[model.NicDevice, ...]) -> tuple[model.NicDevice, ...]:
    """Return the NICs to define, keeping observed MACs for NICs whose manifest pins none.

    A NIC with a pinned MAC is that MAC.  The others take the MACs no pinned NIC claims,
    matched first on the same network and model, then the same network, then by
    position, so that adding, removing or re-pointing a NIC never moves another
    NIC's address.
    """
    pinned = {nic.mac for nic in wanted if nic.mac}
    spare = [nic for nic in observed if nic.mac and nic.mac not in pinned]
    macs: list[str | None] = [nic.mac for nic in wanted]
    matchers = (
        lambda want, have: (want.kind, want.source, want.model) == (have.kind, have.source, have.model),
        lambda want, have: (want.kind, want.source) == (have.kind, have.source),
        lambda want, have: True,
    )
    for matches in matchers:
        for index, nic in enumerate(wanted):
            if macs[index] is not None:
                continue
            found = next((have for have in spare if matches(nic, have)), None)
            if found is not None:
                macs[index] = found.mac
                spare.remove(found)
    return tuple(
        model.NicDevice(kind=nic.kind, source=nic.source, model=nic.model, mac=mac) for nic, mac in zip(wanted, macs)
    )


# --- prune ------------------------------------------------------------------------------


def _prune_suspension(
    desired: model.DesiredState, problems: list[model.Problem], orphans: list, settings: Settings
) -> str | None:
    if not orphans:
        return None
    if problems:
        return (
            f"{len(problems)} problem(s) in the manifests: while any manifest is broken or cannot be planned, no "
            "domain is removed (a broken manifest may still mean to declare it)"
        )
    if not settings.prune:
        return settings.no_prune_reason
    if not desired.vms and not settings.allow_empty:
        return (
            f"the manifests declare no VirtualMachine but kvmops manages {len(orphans)} resource(s); refusing to "
            "remove them all (pass --allow-empty if that is really what you want)"
        )
    return None


def _plan_prune(
    domain: model.ObservedDomain, actual: model.ActualState, settings: Settings, wanted: set[tuple[str, str]],
    pruned: dict[str, model.ObservedDomain] | None = None,
) -> plans.ResourcePlan:
    owner = domain.definition.owner if domain.definition is not None else None
    steps: list[plans.Step] = []
    changes: list[FieldChange] = []
    notes: list[str] = []
    requires: list[str] = []
    actions = [Action.DELETE]
    if domain.power.active:
        timeout = owner.shutdown_timeout if owner is not None and owner.shutdown_timeout is not None else settings.shutdown_timeout
        steps.append(plans.StopDomain(domain.name, timeout))
        actions.append(Action.STOP)
    undefine = plans.UndefineDomain(domain.name, domain.uuid, keep_nvram=owner.keep_nvram if owner is not None else False)
    changes.append(FieldChange("domain", f"{domain.name} ({domain.power})", None, Impact.LIVE))
    for record in owner.volumes if owner is not None else ():
        volume = actual.volumes.get((record.pool, record.name))
        if volume is None:
            continue
        co_pruned = _pruned_together(actual, record, domain.name, pruned or {})
        if (record.pool, record.name) in wanted:
            notes.append(f"volume {record.pool}/{record.name} is kept: a VM in the manifests uses it")
        elif co_pruned and max(co_pruned) > domain.name:
            notes.append(f"volume {record.pool}/{record.name} is kept here: it is deleted with VM {max(co_pruned)} "
                         "(also pruned by this plan, which records it with deletionPolicy Delete too) once this VM is gone")
        elif co_pruned:
            # Every other user is pruned by this plan and asks for the deletion too: the last
            # of them by name deletes it, after the others' resources (their undefines) succeeded.
            requires.extend(f"VirtualMachine/{name}" for name in sorted(co_pruned))
            steps.append(plans.DeleteVolume(record.pool, record.name, domain.name, domain.uuid, tuple(sorted(co_pruned))))
            changes.append(FieldChange(
                f"volume {record.pool}/{record.name}", format_bytes(volume.capacity), None, Impact.DATA_LOSS,
                note=f"DATA LOSS: deleted with the VM (deletionPolicy Delete), after VM {', '.join(sorted(co_pruned))} "
                     "(also pruned, sharing it) is gone",
            ))
        elif (shared := _kept_for_users(actual, record, domain.name)) is not None:
            notes.append(shared)
        elif record.created and record.deletion_policy is model.DeletionPolicy.DELETE and record.digest:
            # The cloud-init seed: generated from the manifest, no data of anyone's.
            steps.append(plans.DeleteVolume(record.pool, record.name, domain.name, domain.uuid))
            changes.append(FieldChange(
                f"volume {record.pool}/{record.name}", "cloud-init seed", None, Impact.LIVE,
                note="generated seed ISO removed with the VM (not data)",
            ))
        elif record.created and record.deletion_policy is model.DeletionPolicy.DELETE:
            steps.append(plans.DeleteVolume(record.pool, record.name, domain.name, domain.uuid))
            changes.append(FieldChange(
                f"volume {record.pool}/{record.name}", format_bytes(volume.capacity), None, Impact.DATA_LOSS,
                note="DATA LOSS: deleted with the VM (deletionPolicy Delete)",
            ))
        else:
            why = "deletionPolicy Retain" if record.created else "kvmops did not create it"
            notes.append(f"volume {record.pool}/{record.name} is kept ({why})")
    if domain.definition is not None and domain.definition.firmware == "efi":
        nvram = _nvram_path(domain)
        if undefine.keep_nvram:
            notes.append(f"UEFI NVRAM {nvram} is kept (keepNvram)")
        else:
            changes.append(FieldChange(
                "nvram", nvram, None, Impact.LIVE,
                note="the UEFI NVRAM (EFI variables: boot entries) is deleted with the domain; keepNvram: true keeps it",
            ))
    # The domain goes last: its mark is the only record that these volumes are kvmops' to
    # delete, so a crash before the undefine leaves the next pass able to finish.
    steps.append(undefine)
    return plans.ResourcePlan(
        kind="VirtualMachine", name=domain.name, actions=tuple(actions), changes=tuple(changes),
        steps=tuple(steps), manifest=owner.manifest if owner is not None else None,
        notes=("no manifest declares this VM any more", *notes), requires=tuple(requires),
    )


def _pruned_together(
    actual: model.ActualState, record: model.OwnedVolume, domain: str, pruned: dict[str, model.ObservedDomain]
) -> set[str]:
    """Return the other VMs pruned with ``domain`` that use ``record``'s volume, if the volume may go with them.

    Empty unless ``domain`` and every other user of the volume are pruned by this plan and
    each records it as created by kvmops with deletionPolicy Delete; any other user keeps it.
    """
    def deletes(name: str, owned: model.OwnedVolume | None) -> bool:
        return owned is not None and owned.created and owned.deletion_policy is model.DeletionPolicy.DELETE and name in pruned

    if not deletes(domain, record):
        return set()
    keys = {(record.pool, record.name)}
    volume = actual.volumes.get((record.pool, record.name))
    if volume is not None and volume.path:
        keys.add(("", posixpath.normpath(volume.path)))
    users = {d.name for d in actual.domains.values() if d.name != domain and keys.intersection(d.storage)}
    for name in users:
        other = pruned.get(name)
        owner = other.definition.owner if other is not None and other.definition is not None else None
        if not deletes(name, owner.volume(record.pool, record.name) if owner is not None else None):
            return set()
    return users


def _nvram_path(domain: model.ObservedDomain) -> str:
    """Return where ``domain`` keeps its UEFI variables, as its XML says, or in words."""
    if domain.xml:
        try:
            path = domxml.parse_tree(domain.xml).findtext("os/nvram")
        except domxml.DomainXMLError:
            path = None
        if path and path.strip():
            return path.strip()
    return "(libvirt's NVRAM file of the domain)"


def volume_users(actual: model.ActualState, pool: str, name: str, *, besides: str) -> list[str]:
    """Return, in words, every domain but ``besides`` whose storage includes volume ``pool/name``.

    Any domain counts: foreign, another scope's, shut off or running.  Such a volume is
    never deleted or resized, whoever recorded it.
    """
    keys = {(pool, name)}
    volume = actual.volumes.get((pool, name))
    if volume is not None and volume.path:
        keys.add(("", posixpath.normpath(volume.path)))
    users = []
    for other in sorted(actual.domains.values(), key=lambda d: d.name):
        if other.name != besides and keys.intersection(other.storage):
            if not other.owned:
                whose = "foreign"
            else:
                whose = f"kvmops, scope {scope_of(other)}"
            users.append(f"{other.name} ({whose}, {other.power})")
    return users


def _kept_for_users(actual: model.ActualState, record: model.OwnedVolume, domain: str, *, detached: bool = False) -> str | None:
    """Return the note keeping ``record``'s volume because other domains use it, or None."""
    users = volume_users(actual, record.pool, record.name, besides=domain)
    if not users:
        return None
    how = "is detached and kept" if detached else "is kept"
    return f"volume {record.pool}/{record.name} {how}: also used by domain {', '.join(users)}"


def _started(definition: model.DomainDefinition) -> model.DomainDefinition:
    """Return ``definition`` as written once the domain has started: its first start is no longer pending."""
    return dataclasses.replace(definition, owner=dataclasses.replace(definition.owner, start_pending=False))


# --- words ------------------------------------------------------------------------------


def _kib(value: int) -> str:
    return format_bytes(value * KIB)


def _seconds(value: float | None) -> str:
    return "default" if value is None else f"{value:g}s"


def _yes_no(value: bool) -> str:
    return "true" if value else "false"


def _short_digest(digest: str) -> str:
    return digest[:19] if digest else "(none)"


def _nic_text(nic: model.NicDevice) -> str:
    mac = f" mac {nic.mac}" if nic.mac else ""
    return f"{nic.kind} {nic.source} ({nic.model or 'default model'}){mac}"

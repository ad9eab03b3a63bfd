"""Carry out a :class:`~reconciler.core.plan.Plan` against libvirt.

The executor decides nothing: it runs each resource's steps in order, one small
idempotent operation per step kind, and stops a resource at its first failure.  What it
does check, at the last moment, are the preconditions that keep the rules true even
when the world moved since the plan was made: a domain about to be changed still
carries kvmops' mark and the planned UUID, a domain about to be created does not exist,
a volume about to be created is not someone else's.

Pools go first, one at a time; then VMs run concurrently on a bounded pool of threads,
because starting and stopping QEMU dominates and independent VMs need not wait for each
other; then what requires a VM (a network removed after the VMs that used it), one at a
time.  A resource whose requirement failed (a VM whose pool failed) is skipped.  ``cancel`` stops the work between steps,
never inside one, so no domain is left half-defined.

Moving a VM between hosts takes two connections.  A plan runs against one host's
hypervisor, as always; ``hosts`` maps the other hosts' names (those that steps name, e.g.
:class:`~reconciler.core.plan.MigrateDomain`'s ``destination``) to their hypervisors.  A
migration belongs to the plan of the host the VM leaves: its :class:`MigrateDomain` runs
on that plan's hypervisor (the source) and its :class:`DeleteMovedVolume` steps, after it,
delete what the VM left there.  Before a migration the executor checks the source domain
is still kvmops' with the planned UUID and that the destination has no domain of that name
or UUID; after it, that the domain runs (or, offline, is defined) on the destination with
the same UUID and kvmops' mark, and is gone from the source.  A failed check fails the
step, so no later step (no volume deletion) runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import xml.etree.ElementTree as ET
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from reconciler import errors, logconfig
from reconciler.adapters import hypervisor as hv
from reconciler.core import plan as plans
from reconciler.core import domxml, hostdirs, model, planner, storagexml

DEFAULT_WORKERS = 4
STOP_POLL_SECONDS = 0.1
PREREQUISITE_KINDS = ("StoragePool", "Network", "Image")  # in this order, before any VM
SUBJECTS = {"VirtualMachine": "vm", "StoragePool": "pool", "Network": "network", "Image": "image"}

log = logconfig.get_logger("kvmops.execute")


@dataclass(frozen=True)
class StepOutcome:
    """How one step went."""

    description: str
    ok: bool
    detail: str = ""  # the error, or "already done" for a no-op
    duration_ms: int = 0


@dataclass(frozen=True)
class ResourceOutcome:
    """How one resource's steps went: ``converged``, ``failed`` or ``skipped``."""

    kind: str
    name: str
    status: str
    steps: tuple[StepOutcome, ...] = ()
    error: str | None = None
    retryable: bool = False


@dataclass(frozen=True)
class ApplyReport:
    """Every resource the plan touched and how it ended."""

    outcomes: tuple[ResourceOutcome, ...]
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        """Return whether every resource converged."""
        return not self.cancelled and all(o.status == "converged" for o in self.outcomes)

    @property
    def failures(self) -> tuple[ResourceOutcome, ...]:
        """Return the resources that failed or were skipped."""
        return tuple(o for o in self.outcomes if o.status != "converged")


def execute(
    plan: plans.Plan,
    hypervisor: hv.Hypervisor,
    *,
    workers: int = DEFAULT_WORKERS,
    cancel: threading.Event | None = None,
    hosts: Mapping[str, hv.Hypervisor] | None = None,
) -> ApplyReport:
    """Run every step of ``plan`` on ``hypervisor``; return what happened to each resource.

    ``hosts``: the hypervisors of other hosts, by name, for steps that reach another host
    (migrations); without it such steps fail with a clear error.
    """
    hosts = hosts or {}
    cancel = cancel or threading.Event()
    outcomes: list[ResourceOutcome] = []
    broken = {r.key for r in plan.resources if r.problems}
    first, vms, last = phases(plan)

    def run_one(resource: plans.ResourcePlan) -> ResourceOutcome:
        if _blocked(resource, broken):
            return _skip(resource, broken)
        return _run_resource(resource, hypervisor, cancel, hosts)

    def run_in_turn(resources: tuple[plans.ResourcePlan, ...]) -> None:
        for resource in resources:
            outcome = run_one(resource)
            outcomes.append(outcome)
            if outcome.status != "converged":
                broken.add(resource.key)

    run_in_turn(first)
    # VMs run in parallel, in waves: one that requires other VMs (the last user of a volume
    # they share) runs once those have ended, and is skipped if any of them did not converge.
    remaining = list(vms)
    pending = {r.key for r in remaining}
    while remaining:
        wave = [r for r in remaining if not pending.intersection(k for k in r.requires if k != r.key)] or remaining
        remaining = [r for r in remaining if r not in wave]
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(wave))), thread_name_prefix="kvmops-apply") as pool:
            # each task runs in a copy of the caller's context, so its log lines keep reconcile_id
            done = list(pool.map(lambda r: contextvars.copy_context().run(run_one, r), wave))
        outcomes.extend(done)
        for resource, outcome in zip(wave, done):
            pending.discard(resource.key)
            if outcome.status != "converged":
                broken.add(resource.key)
    run_in_turn(last)
    return ApplyReport(tuple(outcomes), cancelled=cancel.is_set())


def phases(plan: plans.Plan) -> tuple[tuple[plans.ResourcePlan, ...], ...]:
    """Return the changed resources of ``plan`` in the order they run, as three phases.

    Pools, networks and images first, one at a time (VMs require them); then the VMs,
    side by side; last, one at a time, whatever requires a VM of this plan: a network
    removed once the VMs that used it are gone.  The plan's ``requires`` decide; a
    resource whose requirement failed is skipped.
    """
    vms = tuple(r for r in plan.changes if r.kind not in PREREQUISITE_KINDS)
    vm_keys = {r.key for r in vms}
    others = [r for r in plan.changes if r.kind in PREREQUISITE_KINDS]
    last = tuple(r for r in others if vm_keys.intersection(r.requires))
    first = tuple(r for r in others if not vm_keys.intersection(r.requires))
    return first, vms, last


def _blocked(resource: plans.ResourcePlan, broken: set[str]) -> list[str]:
    return [key for key in resource.requires if key in broken]


def _skip(resource: plans.ResourcePlan, broken: set[str]) -> ResourceOutcome:
    message = f"skipped: {', '.join(_blocked(resource, broken))} is not ready"
    log.warning("resource_skipped", **{SUBJECTS.get(resource.kind, "resource"): resource.name}, reason=message)
    return ResourceOutcome(resource.kind, resource.name, "skipped", error=message)


def _run_resource(
    resource: plans.ResourcePlan, hypervisor: hv.Hypervisor, cancel: threading.Event,
    hosts: Mapping[str, hv.Hypervisor] | None = None,
) -> ResourceOutcome:
    subject = {SUBJECTS.get(resource.kind, "resource"): resource.name}
    done: list[StepOutcome] = []
    for step in resource.steps:
        if cancel.is_set():
            return ResourceOutcome(resource.kind, resource.name, "skipped", tuple(done), error="cancelled before " + step.describe())
        started = time.monotonic()
        try:
            if type(step) in _FLEET_RUNNERS:
                detail = _FLEET_RUNNERS[type(step)](hypervisor, hosts or {}, step, cancel) or ""
            else:
                detail = _RUNNERS[type(step)](hypervisor, step, cancel) or ""
        except errors.KvmopsError as exc:
            duration = _ms(started)
            done.append(StepOutcome(step.describe(), False, str(exc), duration))
            log.error("step_failed", **subject, action=step.kind, error=str(exc), retryable=exc.retryable, duration_ms=duration)
            return ResourceOutcome(resource.kind, resource.name, "failed", tuple(done), error=str(exc), retryable=exc.retryable)
        duration = _ms(started)
        done.append(StepOutcome(step.describe(), True, detail, duration))
        log.info(_EVENTS[type(step)], **subject, action=step.kind, duration_ms=duration, **({"detail": detail} if detail else {}))
    return ResourceOutcome(resource.kind, resource.name, "converged", tuple(done))


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


# --- one runner per step kind: (hypervisor, step, cancel) -> detail ----------------------


def _define_pool(h: hv.Hypervisor, step: plans.DefinePool, _cancel) -> str | None:
    directory = ET.fromstring(step.xml).findtext("target/path") or ""
    if planner.host_is_local(h.uri) and directory:
        # The plan judged the path a moment ago; a symlink put there since must not turn it into /etc.
        resolved = os.path.realpath(directory)
        why = hostdirs.system_directory(resolved)
        if why is not None:
            raise errors.OperationRefused(
                f"pool {step.name}: {directory} now leads to {resolved}, a system directory ({why}); not defined. "
                "Remove the symlink or choose another directory"
            )
    h.define_pool(step.xml, step.name)


def _build_pool(h: hv.Hypervisor, step: plans.BuildPool, _cancel) -> str | None:
    h.build_pool(step.name)


def _start_pool(h: hv.Hypervisor, step: plans.StartPool, _cancel) -> str | None:
    return None if h.start_pool(step.name) else "already active"


def _set_pool_autostart(h: hv.Hypervisor, step: plans.SetPoolAutostart, _cancel) -> str | None:
    h.set_pool_autostart(step.name, step.autostart)


def _create_volume(h: hv.Hypervisor, step: plans.CreateVolume, _cancel) -> str | None:
    if h.volume_exists(step.pool, step.name):
        raise errors.OperationRefused(
            f"volume {step.pool}/{step.name} appeared after the plan was made; kvmops will not claim it as its own. "
            "Plan again to use it as an existing volume"
        )
    h.create_volume(step.pool, step.xml, step.name)


def _resize_volume(h: hv.Hypervisor, step: plans.ResizeVolume, _cancel) -> str | None:
    if h.volume_capacity(step.pool, step.name) >= step.capacity:
        return "already large enough"
    _ensure_unshared(h, step.pool, step.name, "grow")
    h.resize_volume(step.pool, step.name, step.capacity)


def _resize_disk(h: hv.Hypervisor, step: plans.ResizeDisk, _cancel) -> str | None:
    h.ensure_owned(step.domain, step.uuid)
    pool, name = step.pool, step.volume
    if pool and name:
        _ensure_unshared(h, pool, name, "grow", besides=step.domain)
    h.block_resize(step.domain, step.target, step.capacity)


def _delete_volume(h: hv.Hypervisor, step: plans.DeleteVolume, _cancel) -> str | None:
    if not h.volume_exists(step.pool, step.name):
        return "already gone"
    if step.domain:
        h.ensure_owned(step.domain, step.uuid or None)
        if h.domain_power(step.domain)[0].active:
            raise errors.OperationRefused(
                f"domain {step.domain} is running again; not deleting its volume {step.pool}/{step.name}. Plan again"
            )
    still = [name for name in step.after if h.domain_exists(name)]
    if still:
        raise errors.OperationRefused(
            f"volume {step.pool}/{step.name} is shared with domain {', '.join(still)}, which is still defined; it is "
            "deleted only once that domain is gone (the next pass finishes it)"
        )
    _ensure_unshared(h, step.pool, step.name, "delete", besides=step.domain or "")
    return None if h.delete_volume(step.pool, step.name) else "already gone"


def _ensure_unshared(h: hv.Hypervisor, pool: str, name: str, verb: str, *, besides: str = "") -> None:
    """Refuse to ``verb`` volume ``pool/name`` while any domain but its shut-off owner (or ``besides``) uses it."""
    others = [
        f"{domain} ({'running' if running else 'shut off'})"
        for domain, running, owner in h.volume_users(pool, name) if domain != besides and (running or not owner)
    ]
    if others:
        raise errors.OwnershipError(
            f"volume {pool}/{name} is used by domain {', '.join(others)} since the plan was made; kvmops will not "
            f"{verb} it. Plan again"
        )


def _ensure_own_created_volume(h: hv.Hypervisor, domain: str, uuid: str, pool: str, name: str, verb: str) -> None:
    """Refuse to ``verb`` volume ``pool/name`` unless ``domain``'s own mark records it as created by kvmops."""
    if domain:
        h.ensure_owned(domain, uuid or None)
        owner, _binding = domxml.mark_binding(domxml.parse_tree(h.domain_xml(domain)))
        record = owner.volume(pool, name) if owner is not None else None
        if record is not None and record.created:
            return
    raise errors.OwnershipError(
        f"volume {pool}/{name} exists and kvmops did not create it for domain {domain or '(none)'}; kvmops will not "
        f"{verb} it. Remove it (virsh vol-delete) if it is a leftover, or plan again"
    )


def _define_domain(h: hv.Hypervisor, step: plans.DefineDomain, _cancel) -> str | None:
    if step.create:
        if h.domain_exists(step.name):
            raise errors.OwnershipError(
                f"a domain named {step.name} appeared after the plan was made; kvmops will not overwrite it. Plan again"
            )
    else:
        h.ensure_owned(step.name, step.uuid)
    for pool, volume in step.creates:
        # The definition records these volumes as kvmops' (pending) before they exist: a
        # volume already there now is someone else's and must not be claimed.
        if h.volume_exists(pool, volume):
            raise errors.OperationRefused(
                f"volume {pool}/{volume} appeared after the plan was made; kvmops will not claim it as its own. "
                "Plan again to use it as an existing volume"
            )
    _ensure_media_inside_pools(h, step)
    h.define_domain(step.xml, step.name)


def _ensure_media_inside_pools(h: hv.Hypervisor, step: plans.DefineDomain) -> None:
    """Refuse a CD-ROM, kernel or initrd file in a pool directory that leads (symlinks) out of it.

    libvirt, as root, hands QEMU whatever the path resolves to.  Only where libvirt runs
    on this machine do this machine's symlinks say anything.
    """
    if not planner.host_is_local(h.uri):
        return
    root = ET.fromstring(step.xml)
    files = [d.get("file") for d in root.iterfind("devices/disk[@device='cdrom']/source")]
    files += [root.findtext("os/kernel"), root.findtext("os/initrd")]
    directories = [p.path for p in h.list_pools() if p.path]
    for path in filter(None, files):
        for directory in directories:
            if not os.path.normpath(path).startswith(os.path.normpath(directory) + "/"):
                continue
            real, inside = os.path.realpath(path), os.path.realpath(directory)
            if not real.startswith(inside.rstrip("/") + "/"):
                raise errors.OwnershipError(
                    f"{path} in the directory of a storage pool leads to {real}, outside that pool ({directory}); "
                    "kvmops will not hand that host file to the guest. Put the file itself in the pool directory"
                )
            break


def _set_autostart(h: hv.Hypervisor, step: plans.SetAutostart, _cancel) -> str | None:
    h.ensure_owned(step.name)
    h.set_autostart(step.name, step.autostart)


def _set_memory_live(h: hv.Hypervisor, step: plans.SetMemoryLive, _cancel) -> str | None:
    h.ensure_owned(step.name)
    h.set_memory_live(step.name, step.memory)


def _start_domain(h: hv.Hypervisor, step: plans.StartDomain, _cancel) -> str | None:
    h.ensure_owned(step.name)
    return None if h.start_domain(step.name) else "already running"


def _stop_domain(h: hv.Hypervisor, step: plans.StopDomain, cancel: threading.Event) -> str | None:
    h.ensure_owned(step.name)
    if not h.shutdown_domain(step.name):
        return "already stopped"
    deadline = time.monotonic() + step.timeout
    while time.monotonic() < deadline:
        if not h.domain_power(step.name)[0].active:
            return "shut down by the guest"
        if cancel.wait(STOP_POLL_SECONDS):
            # kvmops itself is stopping: the guest keeps its ACPI request and its time;
            # pulling the plug because *we* were asked to exit would punish the guest.
            raise errors.RetryableHypervisorError(
                f"shutdown of {step.name} requested but not awaited: kvmops is stopping; the next pass finishes it"
            )
    h.destroy_domain(step.name)
    return f"destroyed: the guest did not power off within {step.timeout:g}s"


def _undefine_domain(h: hv.Hypervisor, step: plans.UndefineDomain, _cancel) -> str | None:
    h.ensure_owned(step.name, step.uuid, bound=True)
    if h.domain_power(step.name)[0].active:
        raise errors.OperationRefused(f"domain {step.name} is running again; not undefining it. Plan again")
    h.undefine_domain(step.name, keep_nvram=step.keep_nvram)


def _clone_volume(h: hv.Hypervisor, step: plans.CloneVolume, _cancel) -> str | None:
    if h.volume_exists(step.pool, step.name):
        raise errors.OperationRefused(
            f"volume {step.pool}/{step.name} appeared after the plan was made; kvmops will not claim it. Plan again"
        )
    h.clone_volume(step.pool, step.xml, step.name, step.source_pool, step.source)
    if h.volume_capacity(step.pool, step.name) < step.capacity:
        h.resize_volume(step.pool, step.name, step.capacity)


def _import_image(h: hv.Hypervisor, step: plans.ImportImage, cancel: threading.Event) -> str | None:
    complete = model.image_complete_volume(step.name)
    if h.volume_exists(step.pool, step.name):
        if h.volume_exists(step.pool, complete):
            return "already imported"
        _ensure_image_unused(h, step.pool, step.name)  # before the download: it would be replaced
    source = step.url or step.path

    def progress(done: int, total: int | None) -> None:
        share = f"{done * 100 // total}%" if total else f"{done // (1024 * 1024)} MiB"
        log.info("image_download_progress", image=step.name, done_bytes=done, total_bytes=total, progress=share)

    from reconciler.adapters import fetch  # urllib and ssl: only for the rare import

    verified = fetch.download(step.url, step.path, step.sha256, progress=progress, tree=step.tree)  # nameless: a kill frees it
    partial = model.image_partial_volume(step.name)
    try:
        if h.volume_exists(step.pool, partial):
            h.delete_volume(step.pool, partial)  # left over by an interrupted import
        length = fetch.size(verified)
        h.create_volume(step.pool, storagexml.render_volume(partial, length, image_format="raw"), partial)
        h.upload_volume(step.pool, partial, fetch.copy_chunks(verified), length)
        h.refresh_pool(step.pool)
        # From here on the final name is being (re)written: its completion record goes first.
        if h.volume_exists(step.pool, complete):
            h.delete_volume(step.pool, complete)
        if h.volume_exists(step.pool, step.name):
            _ensure_image_unused(h, step.pool, step.name)
            # Replacing it is safe: the name carries the image's sha256 and is kvmops' own
            # (validation refuses a disk volume of that name), and with no completion
            # record it is what an interrupted copy left.  A complete copy would hold
            # exactly the bytes about to be written, so overlays built on it read the same
            # data, and a running guest keeps the old file open anyway.
            h.delete_volume(step.pool, step.name)
        # Only a complete, verified upload becomes the image: the final name is a copy of it,
        # and the completion record is written only once that copy has finished.
        h.clone_volume(step.pool, storagexml.render_volume(step.name, 0, image_format=step.format), step.name,
                       step.pool, partial)
        h.create_volume(step.pool, storagexml.render_volume(complete, 0, image_format="raw"), complete)
    finally:
        with contextlib.suppress(errors.KvmopsError):
            h.delete_volume(step.pool, partial)
        verified.close()
    return f"{length} bytes from {source}, sha256 verified"


def _ensure_image_unused(h: hv.Hypervisor, pool: str, name: str) -> None:
    """Refuse to replace image volume ``pool/name`` while any domain or overlay volume uses it."""
    users = [f"domain {domain} ({'running' if running else 'shut off'})" for domain, running, _owner in h.volume_users(pool, name)]
    users += [f"overlay {overlay}" for overlay in h.volumes_backed_by(pool, name)]
    if users:
        raise errors.OwnershipError(
            f"image volume {pool}/{name} has no completion record but is used by {', '.join(users)}; kvmops will not "
            f"replace it. Check it (virsh vol-download {pool} {name} FILE; sha256sum FILE) and, if it matches, record it: "
            f"virsh vol-create-as {pool} {model.image_complete_volume(name)} 0 --format raw"
        )


def _write_seed(h: hv.Hypervisor, step: plans.WriteSeed, _cancel) -> str | None:
    from reconciler.core import seediso  # pycdlib: only when a seed is written

    image = seediso.build(step.files)
    if h.volume_exists(step.pool, step.name):
        _ensure_own_created_volume(h, step.domain, step.uuid, step.pool, step.name, "rewrite")
        _ensure_unshared(h, step.pool, step.name, "rewrite", besides=step.domain)
        h.delete_volume(step.pool, step.name)  # a running guest keeps the old one open until it stops
    h.create_volume(step.pool, storagexml.render_volume(step.name, len(image), image_format="raw"), step.name)
    h.upload_volume(step.pool, step.name, [image], len(image))


def _define_network(h: hv.Hypervisor, step: plans.DefineNetwork, _cancel) -> str | None:
    if step.create:
        if h.network_exists(step.name):
            raise errors.OwnershipError(
                f"a network named {step.name} appeared after the plan was made; kvmops will not overwrite it. Plan again"
            )
    elif not h.network_owned(step.name):
        raise errors.OwnershipError(f"network {step.name} is not managed by kvmops; refusing to change it")
    h.define_network(step.xml, step.name)


def _start_network(h: hv.Hypervisor, step: plans.StartNetwork, _cancel) -> str | None:
    return h.start_network(step.name)


def _set_network_autostart(h: hv.Hypervisor, step: plans.SetNetworkAutostart, _cancel) -> str | None:
    h.set_network_autostart(step.name, step.autostart)


def _update_dhcp_host(h: hv.Hypervisor, step: plans.UpdateDhcpHost, _cancel) -> str | None:
    h.update_dhcp_host(step.network, step.xml, add=step.add)


def _remove_network(h: hv.Hypervisor, step: plans.RemoveNetwork, _cancel) -> str | None:
    if not h.network_owned(step.name):
        raise errors.OwnershipError(f"network {step.name} is not managed by kvmops; refusing to remove it")
    h.remove_network(step.name)


# --- steps that reach another host: (hypervisor, hosts, step, cancel) -> detail ----------


def _peer(hosts: Mapping[str, hv.Hypervisor], name: str) -> hv.Hypervisor:
    try:
        return hosts[name]
    except KeyError:
        raise errors.PlanningError(f"this step needs host {name}, and the executor was given no connection to it") from None


def _migrate_domain(source: hv.Hypervisor, hosts: Mapping[str, hv.Hypervisor], step: plans.MigrateDomain,
                    _cancel: threading.Event) -> str | None:
    if step.source in hosts and hosts[step.source].uri != source.uri:
        raise errors.PlanningError(
            f"the migration of {step.name} leaves host {step.source}, but runs in the plan of {source.uri}"
        )
    destination = _peer(hosts, step.destination)
    source.ensure_owned(step.name, step.uuid, bound=True)
    there = destination.domain_name_by_uuid(step.uuid)
    if there is not None or destination.domain_exists(step.name):
        raise errors.OwnershipError(
            f"host {step.destination} already has a domain {there or step.name} (UUID {step.uuid} or name "
            f"{step.name}); not migrating {step.name} there, a VM must never run twice. Plan again"
        )
    live = step.mode is not plans.MigrationMode.OFFLINE
    power = source.domain_power(step.name)[0]
    if live and not power.active:
        raise errors.OperationRefused(f"domain {step.name} is not running; a live migration needs it running. Plan again")
    if not live and power is not model.PowerState.SHUTOFF:
        raise errors.OperationRefused(
            f"domain {step.name} is {power.value}; an offline migration moves a shut-off domain only. Plan again"
        )
    disks = _writable_disks(source.domain_xml(step.name))
    pools = sorted({pool for pool, _volume in disks if pool})
    shared = {pool: source.shares_pool_with(pool, destination) for pool in pools}
    if step.mode is plans.MigrationMode.LIVE:
        unshared = [pool for pool in pools if not shared[pool]]
        if unshared:
            raise errors.OperationRefused(
                f"pool {', '.join(unshared)} is not shared between {step.source} and {step.destination} (a file "
                f"created in it on {step.source} does not appear on {step.destination}); a live migration without "
                "storage copy would leave the guest without its disks. Plan again"
            )
    volumes = [(pool, volume) for pool, volume in disks if pool and not shared[pool]]
    if step.mode is plans.MigrationMode.LIVE_COPY_STORAGE:
        overlap = [pool for pool in pools if shared[pool]]
        if overlap:
            raise errors.OperationRefused(
                f"pool {', '.join(overlap)} is shared with {step.destination}: copying its volumes onto themselves "
                "would destroy them; the move must be live without storage copy. Plan again"
            )
    for pool, volume in volumes:
        if destination.volume_exists(pool, volume):
            raise errors.OwnershipError(
                f"volume {pool}/{volume} already exists on {step.destination}; kvmops will not overwrite it with "
                f"{step.name}'s disk. Remove it there if it is a leftover, or plan again"
            )
    copied: list[tuple[str, str]] = []
    if step.mode is plans.MigrationMode.OFFLINE:
        for pool, volume in volumes:  # libvirt moves no storage offline
            source.send_volume(pool, volume, destination)
            copied.append((pool, volume))

    def progress(done: int, total: int | None) -> None:
        share = f"{done * 100 // total}%" if total else f"{done // (1024 * 1024)} MiB"
        log.info("migration_progress", vm=step.name, destination=step.destination, done_bytes=done, total_bytes=total,
                 progress=share)

    try:
        seconds = source.migrate(step.name, step.uuid, step.destination_uri, step.mode, xml=step.xml or None,
                                 progress=progress, shared_storage_proven=all(pool for pool, _ in disks))
    except errors.KvmopsError:
        if destination.domain_name_by_uuid(step.uuid) is None:  # our copies, unused: nothing refers to them
            for pool, volume in copied:
                with contextlib.suppress(errors.KvmopsError):
                    destination.delete_volume(pool, volume)
        raise
    _verify_moved(source, destination, step)
    copies = f", {len(volumes)} volume(s) copied" if volumes else ""
    return f"{step.mode.value} migration by libvirt in {seconds * 1000:.0f} ms{copies}; runs on {step.destination}" if live \
        else f"offline migration by libvirt in {seconds * 1000:.0f} ms{copies}; defined on {step.destination}"


def _writable_disks(xml: str) -> list[tuple[str | None, str | None]]:
    """Return (pool, volume) of every disk of the domain that QEMU writes: (None, None) for a file outside any pool."""
    root = domxml.parse_tree(xml)
    disks = []
    for element in root.iterfind("devices/disk"):
        if element.get("device", "disk") not in ("disk", "lun") or element.find("readonly") is not None:
            continue
        source = element.find("source")
        if source is None:
            continue
        disks.append((source.get("pool"), source.get("volume")) if source.get("pool") else (None, None))
    return disks


def _verify_moved(source: hv.Hypervisor, destination: hv.Hypervisor, step: plans.MigrateDomain) -> None:
    """Raise unless domain ``step.uuid`` is on the destination (running, when live), kvmops', and gone from the source."""
    there = destination.domain_name_by_uuid(step.uuid)
    if there != step.name:
        raise errors.OperationRefused(
            f"libvirt reported the migration of {step.name} done, but {step.destination} has "
            f"{'no domain with its UUID' if there is None else 'it under the name ' + there}; check both hosts"
        )
    destination.ensure_owned(step.name, step.uuid)
    if step.mode is not plans.MigrationMode.OFFLINE and not destination.domain_power(step.name)[0].active:
        raise errors.OperationRefused(f"{step.name} was migrated to {step.destination} but does not run there; check it")
    left = source.domain_name_by_uuid(step.uuid)
    if left is not None:
        raise errors.OperationRefused(
            f"{step.name} runs on {step.destination} but is still defined on {step.source} (as {left}); it must not "
            f"start there: undefine it on {step.source} (virsh undefine {left}) once you have checked it"
        )


def _delete_moved_volume(source: hv.Hypervisor, hosts: Mapping[str, hv.Hypervisor], step: plans.DeleteMovedVolume,
                         _cancel: threading.Event) -> str | None:
    destination = _peer(hosts, step.destination)
    if not source.volume_exists(step.pool, step.name):
        return "already gone"
    if source.domain_name_by_uuid(step.uuid) is not None:
        raise errors.OperationRefused(
            f"domain {step.domain} (UUID {step.uuid}) is still defined here; not deleting its volume "
            f"{step.pool}/{step.name}. Plan again"
        )
    if destination.domain_name_by_uuid(step.uuid) != step.domain:
        raise errors.OperationRefused(
            f"domain {step.domain} (UUID {step.uuid}) is not on {step.destination}; its volume {step.pool}/{step.name} "
            "here may be its only copy, not deleted. Plan again"
        )
    destination.ensure_owned(step.domain, step.uuid)
    if not destination.volume_exists(step.pool, step.name):
        raise errors.OperationRefused(
            f"{step.destination} has no volume {step.pool}/{step.name}: the one here may be {step.domain}'s only copy; "
            "not deleted"
        )
    if source.shares_pool_with(step.pool, destination):
        raise errors.OperationRefused(
            f"pool {step.pool} is shared with {step.destination}: {step.pool}/{step.name} is {step.domain}'s disk "
            "there too; not deleted"
        )
    _ensure_unshared(source, step.pool, step.name, "delete")
    return None if source.delete_volume(step.pool, step.name) else "already gone"


_FLEET_RUNNERS: dict[type, Callable] = {
    plans.MigrateDomain: _migrate_domain,
    plans.DeleteMovedVolume: _delete_moved_volume,
}

_RUNNERS: dict[type, Callable] = {
    plans.DefinePool: _define_pool,
    plans.BuildPool: _build_pool,
    plans.StartPool: _start_pool,
    plans.SetPoolAutostart: _set_pool_autostart,
    plans.CreateVolume: _create_volume,
    plans.ResizeVolume: _resize_volume,
    plans.ResizeDisk: _resize_disk,
    plans.DeleteVolume: _delete_volume,
    plans.DefineDomain: _define_domain,
    plans.SetAutostart: _set_autostart,
    plans.SetMemoryLive: _set_memory_live,
    plans.StartDomain: _start_domain,
    plans.StopDomain: _stop_domain,
    plans.UndefineDomain: _undefine_domain,
    plans.CloneVolume: _clone_volume,
    plans.ImportImage: _import_image,
    plans.WriteSeed: _write_seed,
    plans.DefineNetwork: _define_network,
    plans.StartNetwork: _start_network,
    plans.SetNetworkAutostart: _set_network_autostart,
    plans.UpdateDhcpHost: _update_dhcp_host,
    plans.RemoveNetwork: _remove_network,
}
_EVENTS: dict[type, str] = {
    plans.DefinePool: "pool_defined",
    plans.BuildPool: "pool_built",
    plans.StartPool: "pool_started",
    plans.SetPoolAutostart: "pool_autostart_set",
    plans.CreateVolume: "volume_created",
    plans.ResizeVolume: "volume_grown",
    plans.ResizeDisk: "disk_grown",
    plans.DeleteVolume: "volume_deleted",
    plans.DefineDomain: "domain_defined",
    plans.SetAutostart: "autostart_set",
    plans.SetMemoryLive: "memory_set_live",
    plans.StartDomain: "domain_started",
    plans.StopDomain: "domain_stopped",
    plans.UndefineDomain: "domain_undefined",
    plans.CloneVolume: "volume_cloned",
    plans.ImportImage: "image_imported",
    plans.WriteSeed: "seed_written",
    plans.DefineNetwork: "network_defined",
    plans.StartNetwork: "network_started",
    plans.SetNetworkAutostart: "network_autostart_set",
    plans.UpdateDhcpHost: "dhcp_host_updated",
    plans.RemoveNetwork: "network_removed",
    plans.MigrateDomain: "domain_migrated",
    plans.DeleteMovedVolume: "moved_volume_deleted",
}

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

A host that stops answering in the middle (its libvirtd stopped or hung, the network cut)
is given up by the connection's keepalive: the step waiting on it fails as a lost
connection, and the resources not begun yet on that host are skipped, not tried on a dead
connection.  A step whose call does not return while libvirtd still answers (a hung
storage mount, a stuck QEMU) is abandoned after ``step_timeout`` seconds (its guest's
shutdown wait added, for a stop): it fails as :class:`~reconciler.errors.StepTimedOut`,
the call may still take effect in libvirtd, and the other resources go on.  Either way
the next pass finds a state the intent-before-effect records make safe to finish
(docs/design.md, "Crash safety").
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
import threading
import xml.etree.ElementTree as ET
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from reconciler import defaults, errors, logconfig
from reconciler.adapters import hypervisor as hv
from reconciler.adapters.trash import PoolTrash
from reconciler.core import plan as plans
from reconciler.core import actual, domxml, fleet, hostdirs, model, planner, redaction, storagexml, trash
from reconciler.runtime import deadlines

DEFAULT_WORKERS = defaults.DEFAULT_WORKERS
STOP_POLL_SECONDS = 0.1
PREREQUISITE_KINDS = ("StoragePool", "Network", "Image")  # in this order, before any VM
SUBJECTS = {"VirtualMachine": "vm", "StoragePool": "pool", "Network": "network", "Image": "image", "Trash": "trash"}

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
    step_timeout: float | None = None,
) -> ApplyReport:
    """Run every step of ``plan`` on ``hypervisor``; return what happened to each resource.

    ``hosts``: the hypervisors of other hosts, by name, for steps that reach another host
    (migrations); without it such steps fail with a clear error. ``step_timeout``: the
    seconds a step may take before it is abandoned (None: no limit).
    """
    hosts = hosts or {}
    cancel = cancel or threading.Event()
    outcomes: list[ResourceOutcome] = []
    broken = {r.key for r in plan.resources if r.problems}
    first, vms, last = phases(plan)
    lost: list[str] = []  # the resource that failed as the connection went, once it has

    def run_one(resource: plans.ResourcePlan) -> ResourceOutcome:
        if _blocked(resource, broken):
            return _skip(resource, broken)
        if lost or not hypervisor.alive:  # (a local check: no call to libvirtd)
            return _skip_unreachable(resource, lost[0] if lost else None)
        outcome = _run_resource(resource, hypervisor, cancel, hosts, step_timeout)
        if outcome.status == "failed" and outcome.retryable and not lost and not hypervisor.alive:
            lost.append(f"{resource.kind} {resource.name}")
        return outcome

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


def _skip_unreachable(resource: plans.ResourcePlan, failed: str | None) -> ResourceOutcome:
    while_ = f"while {failed} ran (its error says why)" if failed else "before it began"
    message = f"not begun: the connection to libvirtd was lost {while_}"
    log.warning("resource_skipped", **{SUBJECTS.get(resource.kind, "resource"): resource.name}, reason=message)
    return ResourceOutcome(resource.kind, resource.name, "skipped", error=message, retryable=True)


def _run_resource(
    resource: plans.ResourcePlan, hypervisor: hv.Hypervisor, cancel: threading.Event,
    hosts: Mapping[str, hv.Hypervisor] | None = None, step_timeout: float | None = None,
) -> ResourceOutcome:
    subject = {SUBJECTS.get(resource.kind, "resource"): resource.name}
    done: list[StepOutcome] = []
    for step in resource.steps:
        if cancel.is_set():
            return ResourceOutcome(resource.kind, resource.name, "skipped", tuple(done), error="cancelled before " + step.describe())
        started = time.monotonic()
        try:
            if type(step) in _FLEET_RUNNERS:
                run = functools.partial(_FLEET_RUNNERS[type(step)], hypervisor, hosts or {}, step, cancel)
            else:
                run = functools.partial(_RUNNERS[type(step)], hypervisor, step, cancel)
            limit = step_deadline(step, step_timeout)
            detail = deadlines.call_within(
                run, limit, lambda: step_timed_out(step, _host_label(hosts or {}, hypervisor), limit or 0.0,
                                                   watched=hypervisor.keepalive is not None)) or ""
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


def step_deadline(step: plans.Step, step_timeout: float | None) -> float | None:
    """Return the seconds ``step`` may run before it is abandoned: ``step_timeout``, plus a stop's wait for its guest."""
    if step_timeout is None:
        return None
    return step_timeout + step.timeout if isinstance(step, plans.StopDomain) else step_timeout


def step_timed_out(step: plans.Step, host: str, seconds: float, *, watched: bool) -> errors.StepTimedOut:
    """Return the error of ``step``, abandoned on ``host`` after ``seconds`` (``watched``: its libvirtd answers keepalives)."""
    alive = "libvirtd still answers keepalive probes, but this call has not returned" if watched else \
        "its libvirt call has not returned"
    return errors.StepTimedOut(
        f"{step.describe()} on host {host} did not finish within {seconds:g} s: {alive} (a hung storage mount or a "
        "stuck QEMU can do that); kvmops stopped waiting, and the call may still take effect. Check the host (virsh -c "
        "ITS-URI list, its libvirtd log), then apply again; if the step is only slow (a large copy or migration), give "
        "it more time with --step-timeout (stepTimeout: in the configuration file)"
    )


def _host_label(hosts: Mapping[str, hv.Hypervisor], hypervisor: hv.Hypervisor) -> str:
    """Return the Host name of ``hypervisor`` in a fleet, else its URI (without any password)."""
    return _host_of(hosts, hypervisor) or redaction.redact_url(hypervisor.uri)


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
    _ensure_deletable(h, step)
    return None if h.delete_volume(step.pool, step.name) else "already gone"


def _move_volume_to_trash(h: hv.Hypervisor, step: plans.MoveVolumeToTrash, _cancel) -> str | None:
    if not h.volume_exists(step.pool, step.name):
        return "already gone"
    if not os.path.lexists(step.path):
        # moved by a pass that died before its refresh: libvirt still lists the file it no longer has
        h.refresh_pool(step.pool)
        return "already gone (in the trash)"
    _ensure_deletable(h, step)
    if h.pool_directory(step.pool) != step.pool_path or h.volume_path(step.pool, step.name) != step.path:
        raise errors.OperationRefused(
            f"pool {step.pool} or its volume {step.name} moved since the plan was made (planned: {step.path}); plan again"
        )
    record = trash.TrashEntry(
        pool=step.pool, volume=step.name, entry=step.entry, scope=step.scope, vm=step.domain, vm_uuid=step.uuid,
        deleted_at=step.deleted_at, capacity=step.capacity, reason=step.reason,
    )
    PoolTrash(step.pool, step.pool_path).move_in(step.path, record)
    h.refresh_pool(step.pool)  # libvirt forgets the volume: it is no volume any more, only a file in the trash
    return None


def _purge_trash_entry(h: hv.Hypervisor, step: plans.PurgeTrashEntry, _cancel) -> str | None:
    if h.pool_directory(step.pool) != step.pool_path:
        raise errors.OperationRefused(f"pool {step.pool} is no longer at {step.pool_path}; plan again")
    return PoolTrash(step.pool, step.pool_path).purge(step.directory, expect_volume=step.holds_volume)


def _ensure_deletable(h: hv.Hypervisor, step: plans.DeleteVolume | plans.MoveVolumeToTrash) -> None:
    """Refuse unless the volume's domain is still kvmops' and off, the domains sharing it are gone, no one else uses it."""
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


def _mark_of(h: hv.Hypervisor, domain: str) -> model.Ownership | None:
    """Return the kvmops mark domain ``domain`` carries now (its persistent definition's; a transient one's own), or None."""
    owner, _binding = domxml.mark_binding(domxml.parse_tree(h.domain_xml(domain)))
    return owner


def _ensure_own_created_volume(h: hv.Hypervisor, domain: str, uuid: str, pool: str, name: str, verb: str) -> None:
    """Refuse to ``verb`` volume ``pool/name`` unless ``domain``'s own mark records it as created by kvmops."""
    if domain:
        h.ensure_owned(domain, uuid or None)
        owner = _mark_of(h, domain)
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
                    cancel: threading.Event) -> str | None:
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
    if step.held_paused and power is not model.PowerState.RUNNING:
        raise errors.OperationRefused(
            f"domain {step.name} is {power.value}; the plan moves it running and resumes it on {step.destination}, "
            "which would undo that. Plan again"
        )
    if not live and not step.stop_first and power is not model.PowerState.SHUTOFF:
        raise errors.OperationRefused(
            f"domain {step.name} is {power.value}; an offline migration moves a shut-off domain only. Plan again"
        )
    proven, replaced = _check_storage(source, destination, step)
    nvram = _check_nvram(source, destination, step) if step.nvram else None
    if nvram is not None and nvram[1] and destination.has_file(nvram[0]):
        replaced.append(model.NVRAM)  # proven a partial copy by _check_nvram
    # Every check is done: only now may the guest stop.
    stopped = ""
    if step.stop_first and power is not model.PowerState.SHUTOFF:
        stopped = _stop_domain(source, plans.StopDomain(step.name, step.shutdown_timeout), cancel) or ""
    carried = [*step.sends, *_copied_volumes(source, step)]
    if nvram is not None and nvram[1]:
        carried.append(model.NVRAM)
    intent = _record_intent(source, step, carried)
    sent: list[tuple[str, str]] = []
    try:
        for pool, volume in replaced:  # what a move cut short left there, proven ours by the record
            if (pool, volume) == model.NVRAM:
                destination.delete_file(nvram[0])
            else:
                destination.delete_volume(pool, volume)
        for pool, volume in step.sends:  # libvirt copies no read-only disk, and no storage offline
            source.send_volume(pool, volume, destination)
            sent.append((pool, volume))
        if nvram is not None and nvram[1]:  # libvirt carries no NVRAM file: the boot entries would be lost
            source.send_file(nvram[0], destination)
            sent.append(model.NVRAM)

        def progress(done: int, total: int | None) -> None:
            share = f"{done * 100 // total}%" if total else f"{done // (1024 * 1024)} MiB"
            log.info("migration_progress", vm=step.name, destination=step.destination, done_bytes=done,
                     total_bytes=total, progress=share)

        held = step.held_paused
        try:
            seconds = source.migrate(step.name, step.uuid, step.destination_uri, step.mode, xml=step.xml or None,
                                     progress=progress, shared_storage_proven=proven, copy_disks=step.copies,
                                     held_paused=held)
        except errors.OperationRefused as exc:
            if not held or exc.code != hv.UNKNOWN_SHARED_STORAGE:
                raise
            # libvirt does not know the storage of a disk it does not copy to be shared (kvmops proved it is):
            # there the source gives each disk file back to root as it lets go, before a guest held paused could
            # open it, so the guest moves as libvirt moves it by default, resumed before the source lets go.
            held = False
            log.info("migration_unpaused", vm=step.name, destination=step.destination,
                     reason="libvirt does not know the storage of a disk it does not copy to be shared")
            seconds = source.migrate(step.name, step.uuid, step.destination_uri, step.mode,
                                     xml=_without_hand_over(step.xml) or None, progress=progress,
                                     shared_storage_proven=proven, copy_disks=step.copies)
    except errors.KvmopsError:
        if destination.domain_name_by_uuid(step.uuid) is None:  # our copies, unused: nothing refers to them
            with contextlib.suppress(errors.KvmopsError):
                for pool, volume in carried:
                    if (pool, volume) == model.NVRAM:
                        if model.NVRAM in sent:
                            destination.delete_file(nvram[0])
                    elif (pool, volume) in sent or destination.volume_exists(pool, volume):
                        destination.delete_volume(pool, volume)  # sent by kvmops, or created by libvirt for a copy
                if source.domain_name_by_uuid(step.uuid) == step.name:
                    source.set_owner(step.name, intent)  # the copies are gone, the move is not happening: no record
            if stopped and source.domain_name_by_uuid(step.uuid) == step.name:
                with contextlib.suppress(errors.KvmopsError):  # it stopped for the move only: it runs again here
                    source.start_domain(step.name)
        raise
    _verify_moved(source, destination, step)
    resumed = "" if held == step.held_paused else ", unpaused (libvirt does not know its shared storage)"
    if held:  # libvirt's job has returned: the source's copy is gone (verified), the guest may run
        began = time.monotonic()
        _end_hand_over(destination, step.name)
        resumed = f", resumed there {(time.monotonic() - began) * 1000:.0f} ms later"
    started = ""
    if step.start_after:
        started = "; started there" if destination.start_domain(step.name) else "; already running there"
    volumes = [item for item in sent if item != model.NVRAM]
    copies = f", {len(volumes)} volume(s) copied by kvmops" if volumes else ""
    if model.NVRAM in sent:
        copies += ", its UEFI NVRAM copied by kvmops"
    if live:
        return (f"{step.mode.value} migration by libvirt in {seconds * 1000:.0f} ms{copies}{resumed}; "
                f"runs on {step.destination}")
    return (f"{'stopped (' + stopped + '), ' if stopped else ''}offline migration by libvirt in {seconds * 1000:.0f} ms"
            f"{copies}; defined on {step.destination}{started}")


def _without_hand_over(xml: str) -> str:
    """Return the definition ``xml`` of a move without its record of a hand-over held paused."""
    if not xml:
        return xml
    owner = domxml.parse_owner(domxml.parse_tree(xml))
    return domxml.remark(xml, dataclasses.replace(owner, resume_after_move=False)) if owner is not None else xml


def _end_hand_over(h: hv.Hypervisor, name: str) -> bool:
    """Resume domain ``name``, held paused at the hand-over of its move, then drop that record from its mark; return
    whether it was paused. In that order: a kill in between leaves the record on a running guest, which the next
    pass drops (:class:`~reconciler.core.plan.ResumeMovedDomain`); the other order would leave it paused for good."""
    resumed = h.resume_domain(name)
    owner = _mark_of(h, name)
    if owner is not None and owner.resume_after_move:
        h.set_owner(name, dataclasses.replace(owner, resume_after_move=False))
    return resumed


def _resume_moved_domain(_h: hv.Hypervisor, hosts: Mapping[str, hv.Hypervisor], step: plans.ResumeMovedDomain,
                         _cancel: threading.Event) -> str | None:
    target = _peer(hosts, step.host)
    if target.domain_name_by_uuid(step.uuid) != step.name:
        raise errors.OperationRefused(
            f"{step.host} has no domain {step.name} with UUID {step.uuid}; not resuming it. Plan again"
        )
    target.ensure_owned(step.name, step.uuid, bound=True)
    owner = _mark_of(target, step.name)
    if owner is None or not owner.resume_after_move:
        return "its hand-over is already over"
    source = _peer(hosts, step.source)
    left = source.domain_name_by_uuid(step.uuid)
    if left is not None:
        here, there = source.domain_record(left), target.domain_record(step.name)
        if here is None or there is None or not fleet.is_finished_move(actual.domain(here), step.source,
                                                                      actual.domain(there), step.host):
            raise errors.OperationRefused(
                f"{step.source} still holds {step.name} (as {left}), which libvirt may run there: not resuming it "
                f"on {step.host}. Plan again"
            )
    if _end_hand_over(target, step.name):
        return f"resumed; {step.source} holds it no longer"
    return f"not paused ({target.domain_power(step.name)[0].value}): the record of its hand-over dropped"


def _check_storage(source: hv.Hypervisor, destination: hv.Hypervisor,
                   step: plans.MigrateDomain) -> tuple[bool, list[tuple[str, str]]]:
    """Refuse the move unless each storage of the domain goes where the plan says; return whether every writable
    disk libvirt does not copy was just proven shared (a pool, or the very file, seen by both hosts), and the
    destination volumes an earlier, interrupted move of this domain left, which this one replaces."""
    disks = _writable_disks(source.domain_xml(step.name))
    copy_all = step.mode is plans.MigrationMode.LIVE_COPY_STORAGE and not step.copies
    copied = {target for target, _pool, _volume, _path in disks} if copy_all else set(step.copies)
    sent = set(step.sends)
    shared: dict[str, bool] = {}

    def pool_shared(pool: str) -> bool:
        if pool not in shared:
            shared[pool] = source.shares_pool_with(pool, destination)
        return shared[pool]

    proven = True
    replaced: list[tuple[str, str]] = []
    for target, pool, volume, path in disks:
        moves = target in copied or (pool, volume) in sent
        if path is not None:
            if moves:
                raise errors.OperationRefused(
                    f"disk {target} of {step.name} is the file {path}, outside any pool: kvmops never writes a file it "
                    "did not create, so it is not copied. Plan again"
                )
            if path not in step.shared_files or not source.shares_file_with(path, destination):
                raise errors.OperationRefused(
                    f"disk {target} of {step.name} is the file {path}, outside any pool, and {step.destination} does "
                    f"not see that very file (a probe file created next to it on {step.source} does not appear there, "
                    "or the path is missing): kvmops cannot copy a file it did not create. Put it on storage both "
                    "hosts share, or move the VM yourself"
                )
            continue
        if not pool:
            raise errors.OperationRefused(f"disk {target} of {step.name} has no file kvmops can name; not migrating it")
        if moves and pool_shared(pool):
            raise errors.OperationRefused(
                f"pool {pool} is shared with {step.destination}: copying {pool}/{volume} onto itself would destroy "
                "it. Plan again"
            )
        if not moves and not pool_shared(pool):
            raise errors.OperationRefused(
                f"pool {pool} is not shared between {step.source} and {step.destination} (a file created in it on "
                f"{step.source} does not appear on {step.destination}) and the plan does not copy {pool}/{volume}: "
                "the guest would lose that disk. Plan again"
            )
    for pool, volume in (*step.sends, *((p, v) for t, p, v, _ in disks if t in copied and p)):
        if pool_shared(pool):
            raise errors.OperationRefused(
                f"pool {pool} is shared with {step.destination}: copying {pool}/{volume} onto itself would destroy "
                "it. Plan again"
            )
        if destination.volume_exists(pool, volume):
            if (pool, volume) in replaced:
                continue
            if _partial_copy(source, destination, step, pool, volume):
                _ensure_unshared(destination, pool, volume, "replace")
                replaced.append((pool, volume))
                continue
            raise errors.OwnershipError(
                f"volume {pool}/{volume} already exists on {step.destination}; kvmops will not overwrite it with "
                f"{step.name}'s copy. Remove it there if it is a leftover, or plan again"
            )
    for pool, name in step.media:
        if pool and "/" not in name:
            present = destination.volume_exists(pool, name)
        else:
            directory = next((p.path for p in destination.list_pools() if p.name == pool), None) if pool else ""
            present = directory is not None and destination.has_file(f"{directory}/{name}" if pool else name)
        if not present:
            where = f"{pool}/{name}" if pool else name
            raise errors.OperationRefused(
                f"{step.destination} has no {where}, read-only media of {step.name} that kvmops did not create and "
                f"does not copy; put it there (the same file), then plan again"
            )
    return proven, replaced


def _partial_copy(source: hv.Hypervisor, destination: hv.Hypervisor, step: plans.MigrateDomain, pool: str,
                  name: str) -> bool:
    """Return whether ``pool/name`` on the destination is a copy an interrupted move of this domain began:
    the plan says it replaces it, and the source's mark still records sending it there."""
    if (pool, name) not in step.replaces:
        return False
    owner = _mark_of(source, step.name)
    return owner is not None and model.Sending(step.destination, pool, name) in owner.sending


def _check_nvram(source: hv.Hypervisor, destination: hv.Hypervisor, step: plans.MigrateDomain) -> tuple[str, bool] | None:
    """Return the path of the domain's UEFI NVRAM and whether there is one to copy (a domain never started has
    none yet); refuse when the destination has that file already, unless it is a copy an interrupted move began."""
    path = source.nvram_path(step.name)
    if path is None:
        return None
    present = source.has_file(path)
    if present and destination.has_file(path) and not _partial_copy(source, destination, step, *model.NVRAM):
        raise errors.OwnershipError(
            f"{step.destination} has {path} already, the UEFI NVRAM file of {step.name}'s name; kvmops will not "
            f"overwrite it with {step.name}'s. Remove it there if it is a leftover, or plan again"
        )
    return path, present


def _copied_volumes(source: hv.Hypervisor, step: plans.MigrateDomain) -> list[tuple[str, str]]:
    """Return the volumes libvirt copies (and creates on the destination) in a live move with storage copy."""
    if step.mode is not plans.MigrationMode.LIVE_COPY_STORAGE:
        return []
    return [(pool, volume) for target, pool, volume, _path in _writable_disks(source.domain_xml(step.name))
            if pool and volume and (not step.copies or target in step.copies)]


def _record_intent(source: hv.Hypervisor, step: plans.MigrateDomain,
                   carried: list[tuple[str, str]]) -> model.Ownership:
    """Record in the source's mark, before any copy and before libvirt is asked to migrate, that this move to the
    destination is begun (``moving_to``) and each copy it makes there (``sending``); return the mark without these
    records (to put back if the move fails and its copies are removed)."""
    owner = _mark_of(source, step.name)
    records = tuple(model.Sending(step.destination, pool, name) for pool, name in carried)
    wanted = dataclasses.replace(owner, sending=tuple(dict.fromkeys((*owner.sending, *records))),
                                 moving_to=step.destination)
    if (wanted, wanted.moving_to) != (owner, owner.moving_to):  # (moving_to counts in no comparison of marks)
        source.set_owner(step.name, wanted)
    return dataclasses.replace(owner, sending=tuple(r for r in owner.sending if r not in records), moving_to="")


def _writable_disks(xml: str) -> list[tuple[str, str | None, str | None, str | None]]:
    """Return (target, pool, volume, path) of every disk of the domain that QEMU writes; path for a file outside pools."""
    root = domxml.parse_tree(xml)
    disks = []
    for element in root.iterfind("devices/disk"):
        if element.get("device", "disk") not in ("disk", "lun") or element.find("readonly") is not None:
            continue
        source = element.find("source")
        if source is None:
            continue
        target = element.find("target")
        dev = target.get("dev", "") if target is not None else ""
        if source.get("pool"):
            disks.append((dev, source.get("pool"), source.get("volume"), None))
        else:
            disks.append((dev, None, None, source.get("file") or source.get("dev") or ""))
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
    nvram = (step.pool, step.name) == model.NVRAM
    if not nvram and not source.volume_exists(step.pool, step.name):
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
    if step.running and not destination.domain_power(step.domain)[0].active:
        raise errors.OperationRefused(
            f"{step.domain} does not run on {step.destination}; its old copy {step.pool}/{step.name} here is deleted "
            "only once it does (the next pass finishes it)"
        )
    owner = _mark_of(destination, step.domain)
    kind, record = _copy_record(step, step.source or _host_of(hosts, source))
    if owner is None or record not in getattr(owner, kind):
        what = "a copy a move began here" if step.abandoned else "the copy it left here"
        raise errors.OwnershipError(
            f"the mark of {step.domain} on {step.destination} does not record {step.pool}/{step.name} as {what}; "
            "kvmops cannot prove this volume is that copy, not deleted"
        )
    if nvram:
        if source.domain_exists(step.domain):
            raise errors.OperationRefused(
                f"a domain named {step.domain} is defined here: the UEFI NVRAM file of that name may be its own; "
                "not deleted"
            )
        # the copy went to the very path the destination uses, so that path names the file left here
        path = destination.nvram_path(step.domain)
        if path is None or not destination.has_file(path):
            raise errors.OperationRefused(
                f"{step.destination} has no UEFI NVRAM file for {step.domain}: the one here may hold its only boot "
                "entries; not deleted"
            )
        return None if source.delete_file(path) else "already gone"
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


def _copy_record(step: plans.DeleteMovedVolume | plans.ForgetMovedVolume,
                 here: str) -> tuple[str, model.Sending | model.LeftBehind]:
    """Return the field of the destination's mark, and the record in it, that prove ``step``'s volume on host ``here``
    a move's copy: one it began there and cut short (``abandoned``), else the one it left there."""
    if step.abandoned:
        return "sending", model.Sending(here, step.pool, step.name)
    return "left_behind", model.LeftBehind(here, step.pool, step.name)


def _discard_moved_source(source: hv.Hypervisor, hosts: Mapping[str, hv.Hypervisor], step: plans.DiscardMovedSource,
                          _cancel: threading.Event) -> str | None:
    destination = _peer(hosts, step.destination)
    here, there = source.domain_record(step.name), destination.domain_record(step.name)
    if here is None:
        return "already gone"
    if there is None or there.uuid != step.uuid or here.uuid != step.uuid or not fleet.is_finished_move(
            actual.domain(here), step.source, actual.domain(there), step.destination):
        raise errors.OperationRefused(
            f"{step.name} here and on {step.destination} no longer prove a move to {step.destination} that libvirt "
            f"finished there (it runs there, this half does not, both marks record that move); not discarding it. "
            "Plan again"
        )
    # libvirt's own end of the move: the source's QEMU goes; the NVRAM is a copy the move left, deleted next
    return f"{_discard_stale_copy(source, step.name, step.uuid)}; it runs on {step.destination}"


def _discard_stale_copy(h: hv.Hypervisor, name: str, uuid: str) -> str:
    """Destroy (if active) and undefine the stale copy ``name`` of a move on ``h``, proven so by the caller; keep its
    volumes and UEFI NVRAM, copies the marks record; return what was done, in words."""
    h.ensure_owned(name, uuid, bound=True)
    destroyed = h.destroy_domain(name)
    with contextlib.suppress(errors.ObjectNotFound):  # a transient copy is gone once destroyed
        h.undefine_domain(name, keep_nvram=True)
    return f"{'destroyed and ' if destroyed else ''}undefined"


def _discard_cancelled_arrival(destination: hv.Hypervisor, hosts: Mapping[str, hv.Hypervisor],
                               step: plans.DiscardCancelledArrival, _cancel: threading.Event) -> str | None:
    source = _peer(hosts, step.source)
    here, there = source.domain_record(step.name), destination.domain_record(step.name)
    if there is None:
        return "already gone"
    if here is None or here.uuid != step.uuid or there.uuid != step.uuid or not fleet.is_cancelled_move(
            actual.domain(here), step.source, actual.domain(there), step.destination):
        raise errors.OperationRefused(
            f"{step.name} here and on {step.source} no longer prove a move from {step.source} whose end this host "
            f"lost (the copy here held at the hand-over and never resumed, {step.source} keeping the guest); not "
            "discarding it. Plan again"
        )
    return f"{_discard_stale_copy(destination, step.name, step.uuid)}; the guest is on {step.source}"


def _host_of(hosts: Mapping[str, hv.Hypervisor], hypervisor: hv.Hypervisor) -> str:
    """Return the name under which ``hosts`` knows ``hypervisor``."""
    return next((name for name, h in hosts.items() if h is hypervisor or h.uri == hypervisor.uri), "")


def _forget_moved_volume(source: hv.Hypervisor, hosts: Mapping[str, hv.Hypervisor], step: plans.ForgetMovedVolume,
                         _cancel: threading.Event) -> str | None:
    destination = _peer(hosts, step.destination)
    destination.ensure_owned(step.domain, step.uuid)
    owner = _mark_of(destination, step.domain)
    kind, record = _copy_record(step, step.source)
    records = getattr(owner, kind) if owner is not None else ()
    if record not in records:
        return "already forgotten"
    destination.set_owner(step.domain, dataclasses.replace(owner, **{kind: tuple(r for r in records if r != record)}))
    return None


def _record_roster(h: hv.Hypervisor, step: plans.RecordRoster, _cancel) -> str | None:
    if not h.domain_exists(step.domain):
        return "gone"
    h.ensure_owned(step.domain, step.uuid)
    owner = _mark_of(h, step.domain)
    if owner is None or owner.roster == step.hosts:
        return "already recorded"
    h.set_roster(step.domain, step.hosts)  # its own element: a mark written meanwhile by another step stays whole
    return None


_FLEET_RUNNERS: dict[type, Callable] = {
    plans.MigrateDomain: _migrate_domain,
    plans.DeleteMovedVolume: _delete_moved_volume,
    plans.ForgetMovedVolume: _forget_moved_volume,
    plans.DiscardMovedSource: _discard_moved_source,
    plans.ResumeMovedDomain: _resume_moved_domain,
    plans.DiscardCancelledArrival: _discard_cancelled_arrival,
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
    plans.MoveVolumeToTrash: _move_volume_to_trash,
    plans.PurgeTrashEntry: _purge_trash_entry,
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
    plans.RecordRoster: _record_roster,
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
    plans.MoveVolumeToTrash: "volume_moved_to_trash",
    plans.PurgeTrashEntry: "trash_entry_purged",
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
    plans.ForgetMovedVolume: "moved_volume_forgotten",
    plans.DiscardMovedSource: "moved_source_discarded",
    plans.ResumeMovedDomain: "moved_domain_resumed",
    plans.DiscardCancelledArrival: "cancelled_arrival_discarded",
    plans.RecordRoster: "roster_recorded",
}

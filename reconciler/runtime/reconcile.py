"""One reconcile pass: read manifests, observe libvirt, plan, and (for apply) execute.

Shared by the CLI's ``plan``/``apply`` and by the controller, so that a pass is the same
whoever starts it.  Every pass re-reads the manifests and re-observes libvirt: nothing
is cached between passes (level-triggered, as controller-runtime puts it), except that a
controller pass woken by some VMs' events re-observes only those VMs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from reconciler import defaults, errors
from reconciler.adapters import manifests
from reconciler.core import actual as actual_state
from reconciler.core import desired as desired_state
from reconciler.core import model, planner
from reconciler.core import plan as plans
from reconciler.runtime import cancellation

if TYPE_CHECKING:  # imported where used: `validate` and `diff` never load libvirt, `plan` never the executor
    from reconciler.adapters import hypervisor as hv
    from reconciler.runtime import execute


@dataclass(frozen=True)
class PlanResult:
    """A plan and the two states it was made from."""

    desired: model.DesiredState
    actual: model.ActualState
    plan: plans.Plan


@dataclass(frozen=True)
class ApplyResult:
    """What an apply pass planned, what it did, and what a fresh plan says afterwards."""

    planned: PlanResult
    report: execute.ApplyReport
    after: plans.Plan | None  # None when the pass was cancelled, or libvirtd could not be asked afterwards
    unverified: str | None = None  # why the result could not be checked (the connection was lost)

    @property
    def converged(self) -> bool:
        """Return whether everything succeeded and nothing is left to do or wrong."""
        return (
            self.report.ok
            and self.after is not None
            and not self.after.has_changes
            and not self.after.problems
        )


def load_desired(path: str, *, revision: str = "") -> model.DesiredState:
    """Return the desired state of the manifests under ``path``; raise if ``path`` is missing.

    ``revision`` (a git commit) is recorded in every domain this pass defines or changes.
    """
    loaded = manifests.load(path)
    files = manifests.TreeFiles(loaded.tree)
    desired = with_host_pool_paths(desired_state.build(loaded, read_file=files.read, check_file=files.check))
    desired = with_host_image_paths(desired)
    return dataclasses.replace(desired, revision=revision) if revision else desired


def relabel(problems: tuple[model.Problem, ...], labels: dict[str, str]) -> tuple[model.Problem, ...]:
    """Return ``problems`` naming revisions (``main:manifests/web.yaml``) instead of scratch directories."""
    result = []
    for problem in problems:
        for scratch, label in labels.items():
            if problem.file.startswith(scratch):
                problem = dataclasses.replace(problem, file=label + problem.file[len(scratch):])
                break
        result.append(problem)
    return tuple(result)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Hold Python's cyclic garbage collector off for the block.

    A pass allocates hundreds of thousands of small acyclic objects (YAML mappings, XML
    elements, model values); each would-be collection walks all of them, which made a
    1,000-VM plan a third slower and grow faster than linearly.  Reference counting still
    frees them; any cycles are collected when the block ends.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def timed(settings: planner.Settings) -> planner.Settings:
    """Return ``settings`` with the clock's time (epoch seconds) as the plan's now, unless it has one.

    The core has no clock: volumes moved to the trash count as deleted at this time, and
    trash entries are purged once ``trashRetention`` has passed since theirs.
    """
    return settings if settings.now else dataclasses.replace(settings, now=int(time.time()))


def salted(settings: planner.Settings) -> planner.Settings:
    """Return ``settings`` with fresh random entropy for new password digests, unless it has some."""
    return settings if settings.password_salt else dataclasses.replace(settings, password_salt=secrets.token_bytes(16))


def with_host_pool_paths(desired: model.DesiredState) -> model.DesiredState:
    """Return ``desired`` with each pool's directory as this machine resolves it (symlinks followed).

    The planner refuses a new pool in a system directory, and a symlink such as
    ``/srv/pool -> /etc`` must not get around that.  It uses these paths only when
    libvirt runs on this machine: elsewhere this machine's files say nothing.
    """
    if not desired.pools:
        return desired
    pools = {name: dataclasses.replace(spec, host_path=os.path.realpath(spec.path)) for name, spec in desired.pools.items()}
    return dataclasses.replace(desired, pools=MappingProxyType(pools))


def with_host_image_paths(desired: model.DesiredState) -> model.DesiredState:
    """Return ``desired`` with each image file (``source.path``) as this machine resolves it.

    The host policy's ``imageSources`` directories are judged on where the file really is,
    symlinks followed, and the manifest tree may be given as a relative path.
    """
    if not any(image.path for image in desired.images.values()):
        return desired
    images = {
        name: dataclasses.replace(image, host_path=os.path.realpath(os.path.join(image.tree, image.path)))
        if image.path else image
        for name, image in desired.images.items()
    }
    return dataclasses.replace(desired, images=MappingProxyType(images))


def with_host_file_paths(desired: model.DesiredState, actual: model.ActualState) -> model.DesiredState:
    """Return ``desired`` with the files its VMs name by path looked at on this machine (a local libvirt).

    A symlink in a pool directory may point at any host file, which libvirt (root) would
    hand to QEMU; the planner refuses one that leads out of its pool, so CD-ROM and install
    files named inside pools get their resolved ``host_path``.  And every disk, CD-ROM,
    kernel and initrd given by path gets ``host_file``, what that path is on the host
    (:data:`~reconciler.core.model.HOST_FILE_KINDS`), so the plan says that a missing one is
    missing before libvirt fails at define or start.  Not on the test driver, whose host
    has no files.
    """
    look = not actual.host.test_driver

    def resolved(ref: model.FileRef | None) -> model.FileRef | None:
        if ref is None or ref.path is None:
            return ref
        if not ref.pool:
            return dataclasses.replace(ref, host_file=host_file(ref.path)) if look else ref
        pool = actual.pools.get(ref.pool)
        directory = pool.path if pool is not None and pool.path else (
            desired.pools[ref.pool].path if ref.pool in desired.pools else None)
        if not directory:
            return ref
        path = os.path.join(directory, ref.path)
        return dataclasses.replace(ref, host_path=os.path.realpath(path), host_directory=os.path.realpath(directory),
                                   host_file=host_file(path) if look else "")

    vms = {}
    for name, vm in desired.vms.items():
        if vm.cdrom is None and vm.install is None and not (look and any(d.path for d in vm.disks)):
            vms[name] = vm  # nothing to resolve: a spec is copied only when it names files
            continue
        install = vm.install
        if install is not None:
            install = dataclasses.replace(install, kernel=resolved(install.kernel), initrd=resolved(install.initrd))
        disks = tuple(dataclasses.replace(d, host_file=host_file(d.path)) if look and d.path else d for d in vm.disks)
        vms[name] = dataclasses.replace(vm, cdrom=resolved(vm.cdrom), install=install, disks=disks)
    return dataclasses.replace(desired, vms=MappingProxyType(vms))


def host_file(path: str) -> str:
    """Return what ``path`` is on this machine (one of ``model.HOST_FILE_KINDS``), or "" when it cannot be seen."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError:
        return ""  # not ours to see (permissions): libvirt, as root, may still reach it
    for test, kind in ((stat.S_ISREG, "file"), (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return ""


def make_plan(path: str, hypervisor: hv.Hypervisor, *, settings: planner.Settings, revision: str = "",
              desired: model.DesiredState | None = None) -> PlanResult:
    """Return the plan converging ``hypervisor`` on the manifests under ``path`` (or ``desired``, already loaded)."""
    from reconciler.runtime import observe

    settings = timed(salted(settings))
    with gc_paused():
        desired = desired if desired is not None else load_desired(path, revision=revision)
        actual = observe.observe(hypervisor)
        if planner.host_is_local(hypervisor.uri):
            desired = with_host_file_paths(desired, actual)
        return PlanResult(desired, actual, planner.plan_changes(desired, actual, settings=settings))


def apply(
    path: str,
    hypervisor: hv.Hypervisor,
    *,
    settings: planner.Settings,
    workers: int = defaults.DEFAULT_WORKERS,
    cancel: threading.Event | None = None,
    planned: PlanResult | None = None,
    step_timeout: float | None = None,
) -> ApplyResult:
    """Plan (unless ``planned`` is given), execute, then plan again to verify convergence.

    ``step_timeout``: the seconds a step may take before it is abandoned (None: no limit).

    The second plan is made at the first one's time: the trash entries this apply made are
    not due then, whatever the retention (with 1s, a pass a second later purges them).
    """
    from reconciler.runtime import execute, observe

    settings = timed(settings)
    planned = planned or make_plan(path, hypervisor, settings=settings)
    report = execute.execute(planned.plan, hypervisor, workers=workers, cancel=cancel, step_timeout=step_timeout)
    if report.cancelled:
        return ApplyResult(planned, report, None)
    try:
        with gc_paused():
            actual = observe.observe(hypervisor)
    except errors.ConnectionLost as exc:
        # What was done and what was not must still be told: the report is worth more than this one error.
        return ApplyResult(planned, report, None, unverified=str(exc))
    with gc_paused():
        after = planner.plan_changes(planned.desired, actual, settings=settings)
    return ApplyResult(planned, report, after)


def plan_and_apply(
    path: str,
    hypervisor: hv.Hypervisor,
    *,
    settings: planner.Settings,
    show_plan: Callable[[plans.Plan], None],
    lock: contextlib.AbstractContextManager,
    revision: str = "",
    desired: model.DesiredState | None = None,
    workers: int = defaults.DEFAULT_WORKERS,
    step_timeout: float | None = None,
) -> tuple[PlanResult, ApplyResult | None]:
    """Plan, ``show_plan``, and carry the plan out when it has changes (``kvmops apply``).

    The host ``lock`` is held from the observation to the last step; SIGINT and SIGTERM let
    the steps in progress finish. The apply result is None when the plan had nothing to do.
    """
    with lock:
        planned = make_plan(path, hypervisor, settings=settings, revision=revision, desired=desired)
        show_plan(planned.plan)
        if not planned.plan.has_changes:
            return planned, None
        cancel = threading.Event()
        with cancellation.on_signals(cancel):
            return planned, apply(path, hypervisor, settings=settings, workers=workers, planned=planned, cancel=cancel,
                                  step_timeout=step_timeout)


def host_problems_on(desired: model.DesiredState, hypervisor: hv.Hypervisor) -> list[model.Problem]:
    """Return what ``validate --connect`` adds: the pools and networks the host refuses or lacks for ``desired``."""
    pools = {pool.name: pool for pool in hypervisor.list_pools()}
    networks = {record.name: actual_state.network(record) for record in hypervisor.list_networks()}
    return planner.host_problems(desired, pools, networks, hypervisor.uri)

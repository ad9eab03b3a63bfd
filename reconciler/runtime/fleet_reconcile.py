"""One pass over a fleet: reach every Host, observe them side by side, plan, apply.

The fleet's counterpart of :mod:`reconciler.runtime.reconcile`, used when the manifests
declare ``kind: Host``; without any Host, kvmops drives the one ``--connect`` host exactly
as before, and none of this runs.

* :func:`connect` opens one libvirt connection per Host, several at once (bounded): a Host
  that does not answer is recorded with its error, never raised, so one dead hypervisor
  cannot stop the others.
* :func:`observe_all` observes every connected Host at once (bounded); a Host whose
  observation fails becomes :class:`~reconciler.core.fleet.HostUnreachable`.
* Connecting to a Host and observing it each get ``host_timeout`` seconds
  (:mod:`reconciler.runtime.deadlines`): a Host that is stopped or cut off is unreachable
  after that long, its connection abandoned (never waited for again), and the other Hosts
  are planned and converge on time. Each connection has libvirt keepalives giving a
  silent libvirtd up after about ``host_timeout`` too, so a Host that stops answering
  in the middle of the apply fails the step waiting on it, and its other steps are not
  begun; each step also gets ``step_timeout`` seconds (:mod:`reconciler.runtime.execute`).
* :func:`make_plan` runs :func:`reconciler.core.fleet.plan_fleet` on that.
* :func:`apply` carries the fleet plan out in three phases: every host's own changes
  (pools, networks, images, VMs), hosts side by side; then the migrations, each on its
  source host, once the destination's pools, networks and images it requires converged;
  then every host's removals (prunes), hosts side by side, so a host is only cleaned up
  after what moves off it has moved.  An unreachable host's section is an error and
  nothing is done there; every other host converges.  Then it observes again and plans
  again, to tell whether the fleet converged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from reconciler import defaults, errors, logconfig
from reconciler.adapters import hypervisor as hv
from reconciler.core import actual, fleet, model, planner, snapshot
from reconciler.core import plan as plans
from reconciler.runtime import cancellation, deadlines, execute, observe, reconcile

DEFAULT_HOST_WORKERS = defaults.DEFAULT_HOST_WORKERS
DEFAULT_HOST_TIMEOUT = defaults.DEFAULT_HOST_TIMEOUT

log = logconfig.get_logger("kvmops.fleet")

@dataclass
class FleetConnections:
    """One open connection per reachable Host (``hypervisors``), and why each other Host was not reached.

    A context manager: leaving it closes every connection, each given ``timeout`` seconds
    (a connection to a Host that stopped answering is left to close on its own).
    """

    hypervisors: dict[str, hv.Hypervisor]
    unreachable: dict[str, str]
    uris: dict[str, str]
    timeout: float = DEFAULT_HOST_TIMEOUT
    abandoned: dict[str, hv.Hypervisor] = dataclasses.field(default_factory=dict)

    def abandon(self, name: str, why: str) -> None:
        """Make Host ``name`` unreachable for ``why``: its connection is never used (nor waited for) again."""
        hypervisor = self.hypervisors.pop(name, None)
        if hypervisor is not None:
            # kept referenced: dropping the last reference would close it, which waits for the Host's answer, and
            # may free what a call still running on it uses
            hypervisor.abandon()
            self.abandoned[name] = hypervisor
        self.unreachable[name] = why

    def look_at_each(self, look: Callable[[str, hv.Hypervisor], object], *, workers: int, what: str,
                     hosts: Collection[str] | None = None,
                     abandon_on: type[errors.KvmopsError] = errors.HostTimedOut) -> dict[str, object]:
        """Return, for each connected Host (of ``hosts``, if given), ``look(name, hypervisor)`` or the error it raised,
        ``workers`` Hosts at a time.

        Each look gets :func:`~reconciler.runtime.deadlines.look_timeout` of ``timeout``: a
        Host that answers is only busy. One whose answer is an ``abandon_on`` (its look given
        up, by default) is abandoned: its look may still run on that connection.
        """
        answers = deadlines.call_each(
            {name: (lambda name=name, hypervisor=hypervisor: look(name, hypervisor))
             for name, hypervisor in self.hypervisors.items() if hosts is None or name in hosts},
            timeout=deadlines.look_timeout(self.timeout), workers=workers, what=what)
        for name, answer in answers.items():
            if isinstance(answer, abandon_on):
                self.abandon(name, str(answer))
        return answers

    def close(self) -> None:
        """Close every connection (not the abandoned ones)."""
        for hypervisor in self.hypervisors.values():
            deadlines.close_within(hypervisor.close, self.timeout)
        self.hypervisors = {}

    def __enter__(self) -> FleetConnections:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def connect(
    desired: model.DesiredState,
    *,
    read_only: bool,
    workers: int = DEFAULT_HOST_WORKERS,
    timeout: float = DEFAULT_HOST_TIMEOUT,
    opener: Callable[..., hv.Hypervisor] | None = None,
) -> FleetConnections:
    """Return connections to every Host of ``desired``, opened ``workers`` at a time (see :func:`connect_to`)."""
    return connect_to({name: host.uri for name, host in desired.hosts.items()}, read_only=read_only, workers=workers,
                      timeout=timeout, opener=opener)


def connect_to(
    uris: Mapping[str, str],
    *,
    read_only: bool,
    workers: int = DEFAULT_HOST_WORKERS,
    timeout: float = DEFAULT_HOST_TIMEOUT,
    opener: Callable[..., hv.Hypervisor] | None = None,
) -> FleetConnections:
    """Return connections to the Hosts ``uris`` names (Host -> URI), opened ``workers`` at a time.

    ``opener`` (default :meth:`Hypervisor.open`) opens one URI; whatever it raises for a
    Host makes that Host unreachable, with the error as its reason, and so does not
    answering within ``timeout`` seconds (the connection, should it open later, is closed).
    """
    keepalive = hv.KeepAlive.within(timeout)
    open_one = opener or (lambda uri, read_only: hv.Hypervisor.open(uri, read_only=read_only, keepalive=keepalive))
    hosts = dict(sorted(uris.items()))
    answers = deadlines.call_each(
        {name: (lambda uri=uri: open_one(uri, read_only=read_only)) for name, uri in hosts.items()},
        timeout=timeout, workers=workers, what="being connected to", late=lambda hypervisor: hypervisor.close())
    unreachable = {name: str(answer) for name, answer in answers.items() if isinstance(answer, errors.KvmopsError)}
    for name, error in unreachable.items():
        log.info("host_unreachable", host=name, error=error)
    return FleetConnections(
        hypervisors={name: answer for name, answer in answers.items() if name not in unreachable},  # type: ignore[misc]
        unreachable=unreachable,
        uris=hosts,
        timeout=timeout,
    )


def observe_all(connections: FleetConnections, *, workers: int = DEFAULT_HOST_WORKERS) -> dict[str, object]:
    """Return what each Host shows now, or why it could not be seen, observed ``workers`` at a time.

    A Host whose connection falls silent (its keepalive gives up after about
    ``connections.timeout``) or whose look takes longer than
    :func:`~reconciler.runtime.deadlines.look_timeout` of it is unreachable, and abandoned
    in ``connections``: nothing else (the apply, the look after it) waits for it.
    """
    # timed out (a HostTimedOut is a ConnectionLost), or its keepalive gave up: never used again
    answers = connections.look_at_each(lambda _name, hypervisor: observe.observe(hypervisor), workers=workers,
                                       what="being observed", abandon_on=errors.ConnectionLost)
    for name, answer in answers.items():
        if isinstance(answer, errors.KvmopsError):
            log.info("host_unreachable", host=name, error=str(answer))
    observed: dict[str, object] = {name: fleet.HostUnreachable(name, error) for name, error in connections.unreachable.items()}
    observed.update({name: fleet.HostUnreachable(name, str(answer)) if isinstance(answer, errors.KvmopsError) else answer
                     for name, answer in answers.items()})
    return dict(sorted(observed.items()))


@dataclass(frozen=True)
class FleetPlanResult:
    """A fleet plan and what it was made from."""

    desired: model.DesiredState
    observed: Mapping[str, object]  # host -> ActualState | HostUnreachable
    plan: fleet.FleetPlan
    settings: planner.Settings
    evacuate: frozenset[str] = frozenset()
    only_host: str | None = None


def plan_from(
    desired: model.DesiredState,
    observed: Mapping[str, object],
    *,
    settings: planner.Settings,
    evacuate: Collection[str] = frozenset(),
    only_host: str | None = None,
    arriving: Mapping[str, str] | None = None,
) -> FleetPlanResult:
    """Return the fleet plan of ``desired`` against ``observed`` (live, or a fleet snapshot).

    ``arriving``: VMs whose creation on a Host is in progress (see :func:`fleet.plan_fleet`).
    """
    settings = reconcile.timed(reconcile.salted(settings))
    with reconcile.gc_paused():
        for host in sorted(evacuate):
            refuse_unsafe_evacuation(desired, observed, settings, host)
        plan = fleet.plan_fleet(desired, observed, settings, evacuate=frozenset(evacuate), only_host=only_host,
                                arriving=arriving or {})
    return FleetPlanResult(desired, observed, plan, settings, frozenset(evacuate), only_host)


def make_plan(
    desired: model.DesiredState,
    connections: FleetConnections,
    *,
    settings: planner.Settings,
    evacuate: Collection[str] = frozenset(),
    only_host: str | None = None,
    workers: int = DEFAULT_HOST_WORKERS,
) -> FleetPlanResult:
    """Observe every connected Host and return the plan converging the fleet on ``desired``.

    Every Host is observed even with ``only_host``: where the other hosts' VMs are decides
    placement, so planning one host alone would place them again.
    """
    with reconcile.gc_paused():
        observed = observe_all(connections, workers=workers)
    return plan_from(desired, observed, settings=settings, evacuate=evacuate, only_host=only_host)


def plan_live(
    desired: model.DesiredState,
    *,
    settings: planner.Settings,
    evacuate: Collection[str] = frozenset(),
    only_host: str | None = None,
    host_workers: int = DEFAULT_HOST_WORKERS,
    host_timeout: float = DEFAULT_HOST_TIMEOUT,
    looked: Mapping[str, tuple[str, object]] | None = None,
    opener: Callable[..., hv.Hypervisor] | None = None,
) -> FleetPlanResult:
    """Connect to every Host read-only, observe them and return the fleet plan (``kvmops plan`` in a fleet).

    ``looked`` (Host -> (URI, what it showed)): Hosts observed moments ago, while the
    manifests were read (:mod:`reconciler.runtime.early_look`). What a Host showed is
    taken only for a Host ``desired`` declares at that very URI; every other Host of
    ``desired`` is connected to and observed now, and what the others showed is dropped.
    """
    looked = looked or {}
    seen = {name: shown for name, (uri, shown) in looked.items()
            if name in desired.hosts and desired.hosts[name].uri == uri}
    unseen = {name: host.uri for name, host in desired.hosts.items() if name not in seen}
    observed: dict[str, object] = dict(seen)
    if unseen:
        observed.update({name: shown for name, (_uri, shown) in look_at(
            unseen, host_workers=host_workers, host_timeout=host_timeout, opener=opener).items()})
    return plan_from(desired, dict(sorted(observed.items())), settings=settings, evacuate=evacuate,
                     only_host=only_host)


def look_at(
    uris: Mapping[str, str],
    *,
    host_workers: int = DEFAULT_HOST_WORKERS,
    host_timeout: float = DEFAULT_HOST_TIMEOUT,
    opener: Callable[..., hv.Hypervisor] | None = None,
) -> dict[str, tuple[str, object]]:
    """Connect read-only to the Hosts ``uris`` names, observe them and close; return Host -> (URI, what it showed).

    What a Host showed is its actual state, or :class:`~reconciler.core.fleet.HostUnreachable`.
    """
    with connect_to(uris, read_only=True, workers=max(1, host_workers), timeout=host_timeout,
                    opener=opener) as connections, reconcile.gc_paused():
        observed = observe_all(connections, workers=host_workers)
    return {name: (uris[name], shown) for name, shown in observed.items()}


@dataclass(frozen=True)
class InterpretedFleetSnapshot:
    """A fleet snapshot as a plan takes it: each snapshotted Host interpreted, the others' errors, and each Host's line."""

    observed: Mapping[str, model.ActualState]
    unreachable: Mapping[str, str]
    descriptions: Mapping[str, str]  # host -> what its section says it was planned on
    taken_at: str

    def describe(self, host: str) -> str:
        """Return the line host ``host``'s plan made from this snapshot carries."""
        return self.descriptions.get(host) or snapshot.unsnapshotted_host_line(self.taken_at)


def interpret_snapshot(taken: snapshot.FleetSnapshot) -> InterpretedFleetSnapshot:
    """Return ``taken`` interpreted: every domain XML it holds read into the model (most of planning on it)."""
    return InterpretedFleetSnapshot(
        observed={name: actual.interpret(s.observation) for name, s in taken.hosts.items()},
        unreachable=dict(taken.unreachable), descriptions={name: taken.describe(name) for name in taken.hosts},
        taken_at=taken.taken_at)


def plan_from_snapshot(
    desired: model.DesiredState,
    taken: InterpretedFleetSnapshot,
    *,
    settings: planner.Settings,
    evacuate: Collection[str] = frozenset(),
    only_host: str | None = None,
) -> fleet.FleetPlan:
    """Return the fleet plan against a fleet snapshot, each host's section saying which snapshot it was planned on."""
    observed: dict[str, object] = dict(taken.observed)
    observed.update({name: fleet.HostUnreachable(name, error) for name, error in taken.unreachable.items()})
    result = plan_from(desired, observed, settings=settings, evacuate=evacuate, only_host=only_host)
    return dataclasses.replace(result.plan, hosts=tuple(
        dataclasses.replace(h, plan=dataclasses.replace(h.plan, snapshot=taken.describe(h.host)))
        if h.plan is not None else h for h in result.plan.hosts))


def plan_and_apply(
    desired: model.DesiredState,
    *,
    settings: planner.Settings,
    show_plan: Callable[[fleet.FleetPlan], None],
    lock: Callable[[list[str]], contextlib.AbstractContextManager],
    evacuate: Collection[str] = frozenset(),
    only_host: str | None = None,
    workers: int = execute.DEFAULT_WORKERS,
    host_workers: int = DEFAULT_HOST_WORKERS,
    host_timeout: float = DEFAULT_HOST_TIMEOUT,
    step_timeout: float | None = None,
) -> tuple[FleetPlanResult, FleetApplyResult | None]:
    """Plan the fleet, ``show_plan`` it, and carry it out when it has changes (``kvmops apply`` in a fleet).

    The host lock of every connected Host (``lock(uris)``) is held from the observation to
    the last step; SIGINT and SIGTERM let the steps in progress finish. The apply result
    is None when the plan had nothing to do. ``host_timeout`` bounds connecting to each
    Host and each look at it (:func:`connect`, :func:`observe_all`), and how long a Host
    may be silent in the middle of a step; ``step_timeout`` bounds each step.
    """
    with connect(desired, read_only=False, workers=max(1, host_workers), timeout=host_timeout) as connections:
        with lock([h.uri for h in connections.hypervisors.values()]):
            planned = make_plan(desired, connections, settings=settings, evacuate=evacuate, only_host=only_host,
                                workers=host_workers)
            show_plan(planned.plan)
            if not planned.plan.has_changes:
                return planned, None
            cancel = threading.Event()
            with cancellation.on_signals(cancel):
                return planned, apply(planned, connections, workers=workers, host_workers=host_workers, cancel=cancel,
                                      step_timeout=step_timeout)


def check_live(
    desired: model.DesiredState,
    *,
    settings: planner.Settings,
    only_host: str | None = None,
    host_workers: int = DEFAULT_HOST_WORKERS,
    host_timeout: float = DEFAULT_HOST_TIMEOUT,
) -> fleet.FleetCheck:
    """Connect to every Host read-only, observe them and check each one against its share (``validate --live``).

    Every Host is observed even with ``only_host``: where the VMs are decides each Host's
    share. A Host that does not answer within ``host_timeout`` is unreachable, in its section.
    """
    with connect(desired, read_only=True, workers=max(1, host_workers), timeout=host_timeout) as connections:
        with reconcile.gc_paused():
            observed = observe_all(connections, workers=host_workers)
    return fleet.check_hosts(desired, observed, reconcile.salted(settings), only_host=only_host)


@contextlib.contextmanager
def connected_to_domain(
    desired: model.DesiredState,
    name: str,
    *,
    only_host: str | None = None,
    host_workers: int = DEFAULT_HOST_WORKERS,
    host_timeout: float = DEFAULT_HOST_TIMEOUT,
) -> Iterator[tuple[str, hv.Hypervisor]]:
    """Yield the Host that defines domain ``name`` (``only_host``: that Host) and a read-only connection to it.

    For the commands that act on one VM of a fleet (``wait``, ``ssh``, ``import``): each
    Host gets ``host_timeout`` seconds to be connected to, and
    :func:`~reconciler.runtime.deadlines.look_timeout` of it to say whether it has the
    domain. Refuses a name no reachable Host defines (naming the Hosts that did not
    answer), and one several Hosts define (``--host`` picks one).
    """
    require_host(only_host, desired)
    if only_host is not None:
        desired = dataclasses.replace(desired, hosts={only_host: desired.hosts[only_host]})
    with connect(desired, read_only=True, workers=max(1, host_workers), timeout=host_timeout) as connections:
        answers = connections.look_at_each(lambda _host, hypervisor: hypervisor.domain_exists(name),
                                           workers=host_workers, what=f"asked for domain {name}")
        for host, answer in answers.items():
            if isinstance(answer, errors.KvmopsError):
                connections.unreachable[host] = str(answer)
        having = sorted(host for host, answer in answers.items() if answer is True)
        if not having:
            silent = sorted(connections.unreachable)
            if only_host is not None:
                why = f" (it does not answer: {connections.unreachable[only_host]})" if silent else ""
                raise errors.ObjectNotFound(f"no domain named {name} on Host {only_host}{why}")
            unreachable = f" (unreachable: {', '.join(silent)})" if silent else ""
            raise errors.ObjectNotFound(f"no domain named {name} on any reachable Host{unreachable}; "
                                        "`kvmops status --manifests PATH` lists the VMs")
        if len(having) > 1:
            raise errors.KvmopsError(f"{name} is defined on {', '.join(having)}: give --host NAME")
        yield having[0], connections.hypervisors[having[0]]


def require_host(name: str | None, desired: model.DesiredState) -> None:
    """Refuse a Host name (``--host``, ``drain HOST``) the manifests do not declare; None passes."""
    if name is not None and name not in desired.hosts:
        raise errors.KvmopsError(f"no Host named {name!r} in the manifests (Hosts: {', '.join(sorted(desired.hosts))})")


def refuse_unsafe_evacuation(desired: model.DesiredState, observed: Mapping[str, object], settings: planner.Settings,
                             host: str) -> None:
    """Raise when a VM of ``host`` (declared dead, and unreachable) has a disk that is not on a shared pool.

    A host that answers is left to the plan, which says to drain it instead.
    """
    if host not in desired.hosts or isinstance(observed.get(host), model.ActualState):
        return
    stranded = fleet.plan_fleet(desired, observed, settings, only_host=host).host(host).vms
    refusals = fleet.evacuation_refusals(desired, stranded)
    if refusals:
        raise errors.KvmopsError(
            f"evacuate {host}: refused, nothing planned: {'; '.join(refusals)}. Only VMs whose disks are all on "
            "shared pools (shared: true) can start elsewhere from the same disks; bring the host back, or restore "
            "those disks yourself"
        )


@dataclass(frozen=True)
class FleetApplyResult:
    """What a fleet apply planned, did on each host and between hosts, and what a fresh plan says afterwards."""

    planned: FleetPlanResult
    reports: Mapping[str, execute.ApplyReport]  # per reachable host that had changes: its own resources
    migrations: execute.ApplyReport
    after: fleet.FleetPlan | None  # None when cancelled
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        """Return whether every resource that was run converged."""
        return not self.cancelled and self.migrations.ok and all(r.ok for r in self.reports.values())

    @property
    def converged(self) -> bool:
        """Return whether everything succeeded, every host answered, and a fresh plan is empty and clean."""
        after = self.after
        return (
            self.ok and after is not None and not after.has_changes and not after.problems and not after.unreachable
            and not any(h.plan is not None and h.plan.problems for h in after.hosts)
        )


def is_migration(resource: plans.ResourcePlan) -> bool:
    """Return whether ``resource`` moves a VM to another host (it runs between the hosts' own changes and removals)."""
    return plans.Action.MIGRATE in resource.actions


def is_removal(resource: plans.ResourcePlan) -> bool:
    """Return whether ``resource`` removes something (a prune): such work waits until the migrations ran."""
    return plans.Action.DELETE in resource.actions


def apply(
    planned: FleetPlanResult,
    connections: FleetConnections,
    *,
    workers: int = execute.DEFAULT_WORKERS,
    host_workers: int = DEFAULT_HOST_WORKERS,
    cancel: threading.Event | None = None,
    migrations_from: str | None = None,
    step_timeout: float | None = None,
) -> FleetApplyResult:
    """Carry out ``planned`` on the connected hosts, then plan again to verify convergence.

    ``workers`` bounds the VMs worked on at once on one host, ``host_workers`` the hosts.
    ``migrations_from`` runs only the migrations leaving that host (a host's agent runs
    the moves off its own host, never another's). ``step_timeout`` bounds each step.
    A host whose connection broke meanwhile is unreachable in the plan made afterwards,
    with :func:`lost_during_apply` as its reason.
    """
    cancel = cancel or threading.Event()
    hypervisors = connections.hypervisors
    host_plans = {h.host: h.plan for h in planned.plan.hosts if h.plan is not None and h.host in hypervisors}

    def run_hosts(select: Callable[[plans.ResourcePlan], bool]) -> dict[str, execute.ApplyReport]:
        return execute_hosts({name: dataclasses.replace(plan, resources=tuple(r for r in plan.resources if select(r)))
                              for name, plan in host_plans.items()}, hypervisors, workers=workers,
                             host_workers=host_workers, cancel=cancel, step_timeout=step_timeout)

    first = run_hosts(lambda r: not is_removal(r) and not is_migration(r))
    moved = run_migrations(planned.plan, hypervisors, first, workers=host_workers, cancel=cancel,
                           only_from=migrations_from, step_timeout=step_timeout)
    last = run_hosts(lambda r: is_removal(r) and not is_migration(r))
    reports = {name: execute.ApplyReport(
        (*first.get(name, execute.ApplyReport(())).outcomes, *last.get(name, execute.ApplyReport(())).outcomes),
        cancelled=cancel.is_set(),
    ) for name in sorted({*first, *last})}
    if cancel.is_set():
        return FleetApplyResult(planned, reports, moved, None, cancelled=True)
    for name, hypervisor in list(hypervisors.items()):
        if not hypervisor.alive:
            connections.abandon(name, lost_during_apply(name))
    after = make_plan(planned.desired, connections, settings=planned.settings, evacuate=planned.evacuate,
                      only_host=planned.only_host, workers=host_workers).plan
    return FleetApplyResult(planned, reports, moved, after)


def execute_hosts(
    host_plans: Mapping[str, plans.Plan], hypervisors: Mapping[str, hv.Hypervisor], *, workers: int,
    host_workers: int, cancel: threading.Event, step_timeout: float | None,
) -> dict[str, execute.ApplyReport]:
    """Carry out each Host's plan that has changes on its connection, ``host_workers`` Hosts at once; return their reports.

    ``workers`` bounds the resources worked on at once on one Host; every step may reach
    the other Hosts (``hypervisors``) and gets ``step_timeout`` seconds.
    """
    parts = {name: plan for name, plan in host_plans.items() if plan.has_changes}

    def run(name: str) -> tuple[str, execute.ApplyReport]:
        log.info("host_apply_started", host=name, resources=len(parts[name].changes))
        return name, execute.execute(parts[name], hypervisors[name], workers=workers, cancel=cancel,
                                     hosts=hypervisors, step_timeout=step_timeout)

    if not parts:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(host_workers, len(parts))), thread_name_prefix="kvmops-host") as pool:
        return dict(pool.map(run, sorted(parts)))


def lost_during_apply(host: str) -> str:
    """Return why Host ``host``, whose connection broke in the middle of the apply, is unreachable afterwards."""
    return (
        f"host {host} was lost in the middle of the apply (its libvirtd stopped answering or went away: stopped, "
        "hung, restarted, or the network to it cut); its pruning waits and its VMs are Unknown until it answers. "
        "Check the host (virsh -c ITS-URI list), then apply again: the next apply finishes its part"
    )


def run_migrations(
    plan: fleet.FleetPlan, hypervisors: Mapping[str, hv.Hypervisor], first: Mapping[str, execute.ApplyReport],
    *, workers: int, cancel: threading.Event, only_from: str | None, step_timeout: float | None = None,
) -> execute.ApplyReport:
    """Run each migration on its source host, skipping one whose destination's prerequisites did not converge."""
    broken = {f"{host}:{o.kind}/{o.name}" for host, report in first.items() for o in report.outcomes
              if o.status != "converged"}
    chosen = [m for m in plan.migrations if only_from is None or _source(m) == only_from]

    def run(resource: plans.ResourcePlan) -> execute.ResourceOutcome:
        source = _source(resource)
        blocked = [key for key in resource.requires if key in broken]
        if blocked:
            return execute.ResourceOutcome(resource.kind, resource.name, "skipped",
                                           error=f"skipped: {', '.join(blocked)} is not ready")
        if source not in hypervisors:
            return execute.ResourceOutcome(resource.kind, resource.name, "failed",
                                           error=f"host {source} is not connected", retryable=True)
        single = plans.Plan(hypervisors[source].uri, (resource,))
        report = execute.execute(single, hypervisors[source], workers=1, cancel=cancel, hosts=hypervisors,
                                 step_timeout=step_timeout)
        return report.outcomes[0] if report.outcomes else execute.ResourceOutcome(
            resource.kind, resource.name, "skipped", error="cancelled")

    if not chosen:
        return execute.ApplyReport(())
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(chosen))), thread_name_prefix="kvmops-migrate") as pool:
        outcomes = tuple(pool.map(run, chosen))
    return execute.ApplyReport(outcomes, cancelled=cancel.is_set())


def _source(migration: plans.ResourcePlan) -> str:
    return next(step.source for step in migration.steps if isinstance(step, plans.MigrateDomain))



def restricted(plan: fleet.FleetPlan, host: str | None) -> fleet.FleetPlan:
    """Return ``plan`` with only host ``host``'s section (the migrations off it included; all of it for None).

    Missing hosts stay: they hold back VMs and pruning on every host, this one too."""
    if host is None:
        return plan
    return dataclasses.replace(plan, hosts=tuple(h for h in plan.hosts if h.host == host or h.missing))

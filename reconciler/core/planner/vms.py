"""Plan one VirtualMachine: refuse what is not ours, then build its steps (:class:`VMPlanBuilder`).

The builder is assembled from its parts: the volumes (:mod:`.storage`), the definition
(:mod:`.domain_definition`) and the change lines (:mod:`.domain_diff`); the power
decisions and the order of the steps are here.
"""

from __future__ import annotations

from reconciler.core import disposal, domxml, model, trash
from reconciler.core import plan as plans
from reconciler.core.plan import Action, FieldChange, Impact
from reconciler.core.planner.domain_definition import VMDefinition, started
from reconciler.core.planner.domain_diff import VMDiff
from reconciler.core.planner.host import resolve_virt_type
from reconciler.core.planner.marks import scope_of
from reconciler.core.planner.networks import network_problems
from reconciler.core.planner.pools import pool_problems
from reconciler.core.planner.settings import Settings
from reconciler.core.planner.sharing import wanted_volumes
from reconciler.core.planner.storage import VMStorage
from reconciler.core.planner.words import short_digest, yes_no


def plan_vm(
    spec: model.VMSpec,
    domain: model.ObservedDomain | None,
    actual: model.ActualState,
    desired: model.DesiredState,
    settings: Settings,
    wanted: set[tuple[str, str]],
) -> plans.ResourcePlan:
    """Return the plan of VM ``spec``, or its problems: a domain not ours (or another scope's) is never touched."""
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
    requires = [f"StoragePool/{name}" for _, name in spec.pools_by_field() if name in desired.pools]
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
    builder = VMPlanBuilder(spec, domain, actual, virt_type, settings, wanted, desired)
    return builder.build(base, tuple(dict.fromkeys(requires)))


def desired_definition(
    spec: model.VMSpec, domain: model.ObservedDomain | None, actual: model.ActualState,
    desired: model.DesiredState, settings: Settings,
) -> model.DomainDefinition:
    """Return the definition a plan would give ``spec`` on this host (for ``kvmops adopt``)."""
    virt_type, why = resolve_virt_type(spec.virt_type or settings.virt_type, actual.host)
    if virt_type is None:
        raise ValueError(why)
    builder = VMPlanBuilder(spec, domain, actual, virt_type, settings, wanted_volumes(desired), desired)
    _steps, owned, _deletions = builder._plan_volumes(stopping=False)
    return started(builder._definition(owned, install=builder._install_now()))  # it exists: no creation start owed


class VMPlanBuilder(VMStorage, VMDefinition, VMDiff):
    """Collects the changes and steps for one VM; used once, by :func:`plan_vm`."""

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
        self.settings = settings
        self.fleet, self.host, self.roster = settings.fleet, settings.host, settings.roster
        self.password_salt = settings.password_salt
        self.desired: model.DesiredState = desired
        self.revision: str = desired.revision
        self.changes: list[FieldChange] = []
        self.notes: list[str] = []
        self.problems: list[model.Problem] = []
        self.creating: set[tuple[str, str]] = set()  # volumes this plan creates (their records start pending)
        self.deleting: set[tuple[str, str]] = set()  # volumes this plan deletes (their records go after them)
        self.restored: list[trash.TrashEntry] = []  # claims of restored volumes this VM records as created again

    def build(self, base: dict, requires: tuple[str, ...]) -> plans.ResourcePlan:
        spec, domain = self.spec, self.domain
        stopping = domain is not None and self._should_stop()
        storage_steps, owned_volumes, deletions = self._plan_volumes(stopping)
        definition = self._definition(owned_volumes, install=self._install_now())
        if self.problems:  # a refused change (a shrink) leaves the whole VM as it is
            return plans.ResourcePlan(**base, problems=tuple(self.problems), notes=tuple(self.notes))
        claims = self._claim_removals()  # after the definition that records the restored volumes as created
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
            steps.extend(claims)
            if spec.autostart:
                steps.append(plans.SetAutostart(spec.name, True))
            if spec.run_strategy is not model.RunStrategy.HALTED:
                steps.append(plans.StartDomain(spec.name))
                actions.append(Action.START)
                if definition.owner.install_pending or definition.owner.start_pending:
                    # Booted once (from the install media): from now on it boots from its disks,
                    # and its first start is done.
                    after = started(self._definition(owned_volumes, install=self._install_always()))
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
            if observed.owner is not None and observed.owner.roster != definition.owner.roster:
                # The roster does not count as a difference (core.fleet records it on its own), but a
                # definition written anyway carries the current one: the plan says so.
                self.changes.append(FieldChange(
                    "metadata.hosts", ", ".join(observed.owner.roster) or "(none)",
                    ", ".join(definition.owner.roster) or "(none)", Impact.LIVE,
                    note="the fleet's Hosts, recorded in every mark"))
            if observed.owner is not None and observed.owner.install_pending and not definition.owner.install_pending:
                self.notes.append("the VM has booted its install media; its next boot uses the disks")
        if self.active and definition.memory != observed.memory and domain.live is not None:
            if definition.memory <= domain.live.max_memory:
                steps.append(plans.SetMemoryLive(spec.name, definition.memory))
        if domain.autostart != spec.autostart:
            self.changes.append(FieldChange("autostart", yes_no(domain.autostart), yes_no(spec.autostart), Impact.LIVE))
            steps.append(plans.SetAutostart(spec.name, spec.autostart))
        if steps:
            actions.append(Action.UPDATE)
        starting = self._should_start()
        if stopping and not starting:
            steps.append(plans.StopDomain(spec.name, self.timeout))
        # Volumes go while the domain is off: after a stop, before a start.
        steps.extend(deletions)
        steps.extend(claims)
        if claims and Action.UPDATE not in actions:
            actions.insert(0, Action.UPDATE)
        if self.deleting:  # the records of deleted volumes go only once the volumes are gone
            final = self._without_records(definition, self.deleting)
            xml = domxml.patch(domain.xml, final, volumes_by_path=self.actual.volumes_by_path()) if domain.xml else domxml.render(final)
            steps.append(plans.DefineDomain(spec.name, domain.uuid, xml))
        if starting:
            steps.append(plans.StartDomain(spec.name))
            actions.append(Action.START)
            if definition.owner.install_pending or definition.owner.start_pending:
                after = self._without_records(started(self._definition(owned_volumes, install=self._install_always())),
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
                "digest", short_digest(old_owner.digest), short_digest(spec.digest), Impact.LIVE,
                note="the manifest changed in ways that do not alter the VM (labels, formatting of values)",
            ))
        self._note_pending_restart()
        return plans.ResourcePlan(
            **base, actions=tuple(actions), changes=tuple(self.changes), steps=tuple(steps),
            notes=tuple(self.notes), problems=tuple(self.problems), requires=requires,
        )

    # -- power --

    def _claim_removals(self) -> list[plans.Step]:
        """Return the removal of the trash's claims of the restored volumes this VM records as created again."""
        steps = []
        for claim in self.restored:
            step, change = disposal.consume_claim(claim, self.actual)
            steps.append(step)
            self.changes.append(change)
            self.notes.append(f"volume {claim.pool}/{claim.volume} was restored from the trash (deleted "
                              f"{trash.format_instant(claim.deleted_at)} from this VM): kvmops records it as the volume "
                              "it created, as before")
        return steps

    def _should_start(self) -> bool:
        domain, strategy = self.domain, self.spec.run_strategy
        if domain.power is model.PowerState.TRANSITIONAL:
            self.notes.append("domain is in transition (being started, shutting down or saving); the next pass decides its power")
            return False
        if domain.power is model.PowerState.PAUSED and domain.paused_by_migration:
            self.notes.append("domain is paused by a migration that libvirt ended without finishing it; kvmops leaves "
                              "it alone: check that no other host runs it, then virsh resume it")
        elif domain.power is model.PowerState.PAUSED and strategy is not model.RunStrategy.HALTED:
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

"""Plan the removal of owned domains no manifest declares, and decide when no pruning may happen at all."""

from __future__ import annotations

import posixpath

from reconciler.core import disposal, domxml, model
from reconciler.core import plan as plans
from reconciler.core.plan import Action, FieldChange, Impact
from reconciler.core.planner.settings import Settings
from reconciler.core.planner.sharing import kept_for_users
from reconciler.core.quantity import format_bytes


def prune_suspension(
    desired: model.DesiredState, problems: list[model.Problem], orphans: list, settings: Settings
) -> str | None:
    """Return why no orphan may be pruned in this pass (broken manifests, --no-prune, an empty set), or None."""
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


def plan_prune(
    domain: model.ObservedDomain, actual: model.ActualState, settings: Settings, wanted: set[tuple[str, str]],
    pruned: dict[str, model.ObservedDomain] | None = None,
) -> plans.ResourcePlan:
    """Return the removal of owned ``domain``, no longer declared: stopped, Delete volumes gone, undefined last."""
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
            removal, loss = disposal.removal(
                volume, actual, retention=settings.trash_retention, now=settings.now, scope=settings.scope,
                domain=domain.name, uuid=domain.uuid, reason=f"pruned with VM {domain.name}", after=tuple(sorted(co_pruned)),
            )
            steps.append(removal)
            changes.append(FieldChange(
                f"volume {record.pool}/{record.name}", format_bytes(volume.capacity), None, Impact.DATA_LOSS,
                note=f"DATA LOSS: removed with the VM (deletionPolicy Delete), after VM {', '.join(sorted(co_pruned))} "
                     "(also pruned, sharing it) is gone", loss=loss,
            ))
        elif (shared := kept_for_users(actual, record, domain.name)) is not None:
            notes.append(shared)
        elif record.created and record.deletion_policy is model.DeletionPolicy.DELETE and record.digest:
            # The cloud-init seed: generated from the manifest, no data of anyone's.
            steps.append(plans.DeleteVolume(record.pool, record.name, domain.name, domain.uuid))
            changes.append(FieldChange(
                f"volume {record.pool}/{record.name}", "cloud-init seed", None, Impact.LIVE,
                note="generated seed ISO removed with the VM (not data)",
            ))
        elif record.created and record.deletion_policy is model.DeletionPolicy.DELETE:
            removal, loss = disposal.removal(
                volume, actual, retention=settings.trash_retention, now=settings.now, scope=settings.scope,
                domain=domain.name, uuid=domain.uuid, reason=f"pruned with VM {domain.name}",
            )
            steps.append(removal)
            changes.append(FieldChange(
                f"volume {record.pool}/{record.name}", format_bytes(volume.capacity), None, Impact.DATA_LOSS,
                note="DATA LOSS: removed with the VM (deletionPolicy Delete)", loss=loss,
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
    using = actual.storage_users()
    users = {d.name for key in keys for d in using.get(key, ()) if d.name != domain}
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

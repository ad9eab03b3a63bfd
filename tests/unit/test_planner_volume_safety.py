"""Volumes the planner must not touch: those another domain uses, and those kvmops did not create."""

from __future__ import annotations

import dataclasses

from reconciler.core import actual, domxml, model, planner
from reconciler.core import plan as plans
from tests.unit import builders as b

RUNNING, SHUTOFF = model.PowerState.RUNNING, model.PowerState.SHUTOFF
DELETE = model.DeletionPolicy.DELETE


def web(*disks: model.DiskSpec, **fields) -> model.VMSpec:
    return b.vm("web", disks=disks or (b.disk("root", b.GIB, policy=DELETE),), **fields)


def foreign_user(name: str = "foo", *, source: str | None = None, power: model.PowerState = RUNNING) -> model.DomainRecord:
    """Return the raw record of a hand-made domain whose disk is the file ``source``."""
    source = source or f"{b.POOL_PATH}/web-root.qcow2"
    xml = (f"<domain type='kvm'><name>{name}</name><uuid>{b.OTHER_UUID}</uuid><memory>65536</memory><devices>"
           f"<disk type='file' device='disk'><source file='{source}'/><target dev='vda' bus='virtio'/></disk>"
           "</devices></domain>")
    return model.DomainRecord(name, b.OTHER_UUID, xml, power, None if power.active else model.ShutoffReason.SHUTDOWN,
                              False, True)


def with_foreign(state: model.ActualState, *records: model.DomainRecord) -> model.ActualState:
    """Return ``state`` plus the domains of ``records``, read the way observations are."""
    by_path = state.volumes_by_path()
    domains = dict(state.domains)
    domains.update({r.name: actual.domain(r, by_path) for r in records})
    return dataclasses.replace(state, domains=domains)


def plan(desired, state, **settings) -> plans.Plan:
    return planner.plan_changes(desired, state, settings=planner.Settings(**settings))


def vm_plan(result: plans.Plan, name: str = "web") -> plans.ResourcePlan:
    (found,) = [r for r in result.resources if r.name == name]
    return found


REMOVALS = (plans.DeleteVolume, plans.MoveVolumeToTrash)  # a volume moved to the trash is gone from its pool too


def steps(resource: plans.ResourcePlan, kind: type | tuple[type, ...]) -> list:
    return [s for s in resource.steps if isinstance(s, kind)]


# --- 2. a volume another domain uses ---------------------------------------------------


def test_a_foreign_domain_using_a_file_is_seen_using_the_pool_volume_behind_it():
    """A foreign domain naming the volume's file path is read as using that pool volume."""
    state = with_foreign(b.actual(volumes=b.volumes_of(web())), foreign_user())
    assert state.domains["foo"].storage == ((b.POOL, "web-root.qcow2"),)
    assert planner.volume_users(state, b.POOL, "web-root.qcow2", besides="web") == ["foo (foreign, running)"]


def test_pruning_keeps_a_delete_volume_a_foreign_domain_uses_and_names_the_user():
    """A pruned VM's Delete volume that a running foreign domain also uses is not deleted; the plan names that domain."""
    spec = web()
    state = with_foreign(b.actual(b.domain(b.definition(spec), power=SHUTOFF), volumes=b.volumes_of(spec)), foreign_user())
    prune = vm_plan(plan(b.desired(b.vm("other")), state))
    assert steps(prune, plans.UndefineDomain) and not steps(prune, REMOVALS)
    assert not [c for c in prune.changes if c.impact is plans.Impact.DATA_LOSS]
    assert "volume vmstore/web-root.qcow2 is kept: also used by domain foo (foreign, running)" in prune.notes


def test_pruning_keeps_a_delete_volume_a_vm_of_another_scope_uses():
    """A kvmops VM of another scope counts as a user just as a foreign domain does, shut off or not."""
    spec, other = web(), b.vm("elsewhere", disks=(b.disk("root", b.GIB, volume="web-root.qcow2"),))
    theirs = b.definition(other, uuid=b.OTHER_UUID)
    theirs = dataclasses.replace(theirs, owner=dataclasses.replace(theirs.owner, scope="team-b"))
    state = b.actual(b.domain(b.definition(spec), power=SHUTOFF), b.domain(theirs, power=SHUTOFF), volumes=b.volumes_of(spec))
    state = dataclasses.replace(state, domains={
        name: dataclasses.replace(d, storage=((b.POOL, "web-root.qcow2"),)) for name, d in state.domains.items()
    })
    prune = vm_plan(plan(b.desired(b.vm("other")), state))
    assert not steps(prune, REMOVALS)
    assert "volume vmstore/web-root.qcow2 is kept: also used by domain elsewhere (kvmops, scope team-b, shutoff)" in prune.notes


def test_a_detached_delete_volume_stays_recorded_while_another_domain_uses_it():
    """A Delete disk removed from a stopped VM is not deleted while a foreign domain uses its volume; the record stays for a later pass."""
    spec = web(b.disk("root", b.GIB, policy=DELETE), b.disk("data", b.GIB, target="vdb"))
    state = with_foreign(b.actual(b.domain(b.definition(spec), power=SHUTOFF), volumes=b.volumes_of(spec)), foreign_user())
    smaller = web(b.disk("data", b.GIB, target="vdb"), run_strategy=model.RunStrategy.HALTED)
    result = vm_plan(plan(b.desired(smaller), state))
    assert not steps(result, REMOVALS)
    assert "volume vmstore/web-root.qcow2 is detached and kept: also used by domain foo (foreign, running)" in result.notes
    (define,) = steps(result, plans.DefineDomain)
    assert domxml.parse(define.xml).owner.volume(b.POOL, "web-root.qcow2") is not None


def test_a_volume_another_domain_uses_is_never_grown():
    """Growing a disk whose volume a foreign domain also uses is a problem on the size field; nothing is resized."""
    spec = web()
    state = with_foreign(b.actual(b.domain(b.definition(spec), power=SHUTOFF), volumes=b.volumes_of(spec)),
                         foreign_user(power=SHUTOFF))
    result = plan(b.desired(web(b.disk("root", 2 * b.GIB, policy=DELETE))), state)
    (problem,) = result.problems
    assert problem.path == "spec.disks[0].size"
    assert "volume vmstore/web-root.qcow2 is also used by domain foo (foreign, shutoff); kvmops never resizes" in problem.message
    assert not vm_plan(result).steps


# --- 3. volumes kvmops did not create --------------------------------------------------


def test_an_existing_volume_kvmops_did_not_create_is_never_grown():
    """A new VM naming an existing 38-byte file as its disk gets a problem naming file, line and field, not a resize."""
    existing = b.volume(b.POOL, "web-root.qcow2", 38)
    result = plan(b.desired(web()), b.actual(volumes=(existing,)))
    (problem,) = result.problems
    assert (problem.file, problem.path) == ("manifests/vms/web.yaml", "spec.disks[0].size")
    assert problem.line is not None
    assert "volume vmstore/web-root.qcow2 (38 B) was not created by kvmops" in problem.message
    assert "never resizes or writes a volume it did not create" in problem.message
    assert not vm_plan(result).steps


def test_an_adopted_domain_s_volume_is_never_grown():
    """A volume recorded as not created by kvmops (an adopted domain's) is not grown when the manifest asks for more."""
    spec = web()
    state = b.actual(b.domain(b.definition(spec, created=False), power=SHUTOFF), volumes=b.volumes_of(spec))
    result = plan(b.desired(web(b.disk("root", 2 * b.GIB, policy=DELETE))), state)
    assert [p.path for p in result.problems] == ["spec.disks[0].size"]
    assert not any(isinstance(s, (plans.ResizeVolume, plans.ResizeDisk)) for r in result.resources for s in r.steps)


def test_attaching_an_existing_volume_is_a_decision_the_plan_states():
    """A new VM whose disk names an existing, large-enough volume says it attaches it as-is and will never resize or delete it."""
    existing = b.volume(b.POOL, "web-root.qcow2", b.GIB)
    result = vm_plan(plan(b.desired(web()), b.actual(volumes=(existing,))))
    assert ("attaches existing volume vmstore/web-root.qcow2, which kvmops did not create: used as-is, never resized "
            "or deleted") in result.notes
    (define,) = steps(result, plans.DefineDomain)
    assert domxml.parse(define.xml).owner.volume(b.POOL, "web-root.qcow2").created is False


def with_cdrom(spec: model.VMSpec) -> model.VMSpec:
    return dataclasses.replace(spec, cdrom=model.FileRef(b.POOL, volume="media.iso"))


def test_a_cdrom_kvmops_did_not_create_is_defined_so_that_libvirt_never_chowns_it():
    """The CD-ROM's source carries a DAC seclabel with relabel='no', the plan says the file is attached as-is, and the definition reads back converged."""
    spec = with_cdrom(web(run_strategy=model.RunStrategy.HALTED))
    state = b.actual(volumes=(*b.volumes_of(spec), b.volume(b.POOL, "media.iso", b.MIB)))
    result = vm_plan(plan(b.desired(spec), state))
    (define,) = steps(result, plans.DefineDomain)
    seclabel = domxml.parse_tree(define.xml).find("devices/disk[@device='cdrom']/source/seclabel")
    assert (seclabel.get("model"), seclabel.get("relabel")) == ("dac", "no")
    assert any(n.startswith("attaches existing file vmstore/media.iso as a CD-ROM, which kvmops did not create") for n in result.notes)
    defined = domxml.parse(define.xml)
    after = dataclasses.replace(state, domains={"web": b.domain(defined, power=SHUTOFF)})
    assert not plan(b.desired(spec), after).has_changes


def test_a_cdrom_defined_by_an_older_kvmops_is_patched_to_stop_relabelling():
    """A domain whose CD-ROM libvirt still relabels gets a change saying so, and the patched XML keeps the plan empty."""
    spec = with_cdrom(web(run_strategy=model.RunStrategy.HALTED))
    state = b.actual(volumes=(*b.volumes_of(spec), b.volume(b.POOL, "media.iso", b.MIB)))
    (define,) = steps(vm_plan(plan(b.desired(spec), state)), plans.DefineDomain)
    old_xml = define.xml.replace("<seclabel model=\"dac\" relabel=\"no\" />", "")
    assert "seclabel" not in old_xml
    old = b.domain(domxml.parse(old_xml), power=SHUTOFF)
    old = dataclasses.replace(old, xml=old_xml)
    result = vm_plan(plan(b.desired(spec), dataclasses.replace(state, domains={"web": old})))
    assert [c.path for c in result.changes] == ["cdrom.ownership"]
    (patch,) = steps(result, plans.DefineDomain)
    after = dataclasses.replace(old, definition=domxml.parse(patch.xml), xml=patch.xml)
    assert not plan(b.desired(spec), dataclasses.replace(state, domains={"web": after})).has_changes


def test_relabelling_off_survives_a_patch_of_an_unrelated_field():
    """Patching vcpus of a domain whose CD-ROM is not relabelled keeps the seclabel, once."""
    spec = with_cdrom(web(run_strategy=model.RunStrategy.HALTED))
    state = b.actual(volumes=(*b.volumes_of(spec), b.volume(b.POOL, "media.iso", b.MIB)))
    (define,) = steps(vm_plan(plan(b.desired(spec), state)), plans.DefineDomain)
    patched = domxml.patch(define.xml, dataclasses.replace(domxml.parse(define.xml), vcpus=4))
    assert patched.count("relabel=\"no\"") == 1
    assert domxml.parse(patched).cdroms[0].relabel is False


def with_seed(spec: model.VMSpec, digest: str = "sha256:" + "1" * 64) -> model.VMSpec:
    return dataclasses.replace(spec, cloud_init=model.CloudInitSpec(
        files=(("user-data", b"#cloud-config\n"),), digest=digest, pool=b.POOL, volume="web-seed.iso"))


def test_a_seed_would_never_overwrite_a_volume_kvmops_did_not_create():
    """A new VM whose seed volume name is taken by someone's volume gets a problem on spec.cloudInit, not a rewrite."""
    spec = with_seed(web())
    state = b.actual(volumes=(*b.volumes_of(spec), b.volume(b.POOL, "web-seed.iso", b.MIB)))
    result = plan(b.desired(spec), state)
    (problem,) = result.problems
    assert problem.path == "spec.cloudInit" and "kvmops did not create it for this VM" in problem.message
    assert not vm_plan(result).steps


def test_a_seed_another_domain_uses_is_never_rewritten():
    """A changed seed is not regenerated while a foreign domain (a clone sharing the CD-ROM) uses the old one."""
    spec = with_seed(web())
    config = b.definition(spec)
    config = dataclasses.replace(config, owner=dataclasses.replace(config.owner, volumes=(
        *config.owner.volumes, model.OwnedVolume(b.POOL, "web-seed.iso", DELETE, True, "sha256:" + "0" * 64))))
    state = b.actual(b.domain(config, power=SHUTOFF),
                     volumes=(*b.volumes_of(spec), b.volume(b.POOL, "web-seed.iso", b.MIB)))
    state = with_foreign(state, foreign_user(source=f"{b.POOL_PATH}/web-seed.iso"))
    result = plan(b.desired(spec), state)
    (problem,) = result.problems
    assert "is also used by domain foo (foreign, running)" in problem.message
    assert not any(isinstance(s, plans.WriteSeed) for s in vm_plan(result).steps)


def test_a_detached_volume_of_an_unbound_mark_waits_for_the_binding():
    """A Delete volume detached from a VM whose mark names no domain is kept this pass; the definition binds the mark and keeps the record."""
    spec = web(b.disk("root", b.GIB, policy=DELETE), b.disk("data", b.GIB, target="vdb"))
    config = b.definition(spec)
    config = dataclasses.replace(config, owner=dataclasses.replace(config.owner, bound_name="", bound_uuid=""))
    state = b.actual(b.domain(config, power=SHUTOFF), volumes=b.volumes_of(spec))
    smaller = web(b.disk("data", b.GIB, target="vdb"), run_strategy=model.RunStrategy.HALTED)
    result = vm_plan(plan(b.desired(smaller), state))
    assert not steps(result, REMOVALS)
    (define,) = steps(result, plans.DefineDomain)
    owner = domxml.parse(define.xml).owner
    assert owner.bound_uuid == b.UUID and owner.volume(b.POOL, "web-root.qcow2") is not None

"""Never touch what is not kvmops': clones, shared volumes, files kvmops did not create.

On the real libvirtd with QEMU: clones are made with ``virt-clone`` itself, other users of
a volume are hand-made domains (defined the way a person would with virsh), and files are
looked at with ``stat`` and ``qemu-img``.  Every ``plan``/``apply`` runs in the test's
own scope; pruning runs only this test's objects (see
:func:`tests.e2e.test_engine.apply_pruning_own_objects`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess

import libvirt
import pytest

from reconciler import errors
from reconciler.adapters import hypervisor as hv
from reconciler.core import plan as plans
from reconciler.runtime import execute
from tests import factories
from tests.e2e.commands import apply_ok, kvmops, output, plan_is_empty
from tests.e2e.test_engine import apply_pruning_own_objects, disk, resource_block, vm, volume_file, write_pool

MIB = 1024 * 1024
OWNER_NS = "https://kvmops.dev/xmlns/owner/v1"

pytestmark = pytest.mark.e2e


def clone(host, original: str, suffix: str) -> libvirt.virDomain:
    """Clone domain ``original`` with virt-clone (disks copied), as an operator would."""
    name = host.name(suffix)
    done = subprocess.run(
        ["virt-clone", "--connect", host.uri, "--original", original, "--name", name, "--auto-clone"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return host.domain(name)


def plan_json(host, *, prune: bool = True) -> dict:
    result = kvmops(host, "plan", host.manifests, "--output", "json", prune=prune)
    assert result.returncode in (0, 1), output(result)
    return json.loads(result.stdout)


# --- 1. a clone carries a copied mark --------------------------------------------------


def test_a_virt_clone_of_a_managed_vm_is_foreign_and_never_pruned(host):
    """virt-clone copies web's mark into the clone: the plan calls the clone foreign with a warning, pruning leaves it defined and unchanged."""
    write_pool(host)
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", runStrategy="Halted", disks=[
        disk(host, "root", deletionPolicy="Delete"),
    ]))
    apply_ok(host)
    copy = clone(host, host.name("web"), "web-clone")
    assert "kvmops" in copy.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), "virt-clone copies the metadata"
    xml = copy.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    data = plan_json(host)
    assert copy.name() in data["foreign"]
    assert copy.name() not in [r["name"] for r in data["resources"]]
    assert any(w.startswith(f"domain {copy.name()} carries a copied kvmops mark (written for domain {host.name('web')}, "
                            f"UUID {host.domain(host.name('web')).UUIDString()}); treated as foreign")
               for w in data["warnings"]), data["warnings"]

    planned, report = apply_pruning_own_objects(host)
    assert report.ok, report
    assert host.domain(copy.name()) is not None
    assert copy.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == xml
    plan_is_empty(host)


def test_the_executor_refuses_to_undefine_a_clone_at_the_last_moment(host):
    """Even a plan that names the clone (made before the check existed, or by a bug) cannot undefine it: the step fails and the clone stays."""
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", runStrategy="Halted"))
    apply_ok(host)
    copy = clone(host, host.name("web"), "web-clone")
    forged = plans.Plan(uri=host.uri, resources=(plans.ResourcePlan(
        kind="VirtualMachine", name=copy.name(), actions=(plans.Action.DELETE,),
        steps=(plans.UndefineDomain(copy.name(), copy.UUIDString()),),
    ),))
    with hv.Hypervisor.open(host.uri) as hypervisor:
        report = execute.execute(forged, hypervisor)
        with pytest.raises(errors.OwnershipError, match="copied from another domain"):
            hypervisor.ensure_owned(copy.name(), copy.UUIDString())
    (outcome,) = report.outcomes
    assert outcome.status == "failed" and "copied from another domain" in outcome.error, outcome
    assert host.domain(copy.name()) is not None


def test_a_manifest_naming_a_clone_is_refused_and_the_clone_left_alone(host):
    """A manifest declaring the clone's name is a problem naming the copied mark; the clone's XML does not change."""
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", runStrategy="Halted"))
    apply_ok(host)
    copy = clone(host, host.name("web"), "web-clone")
    xml = copy.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    factories.write(host.manifests, "vms/clone.yaml", vm(host, "web-clone", memory="48MiB", runStrategy="Halted"))

    result = kvmops(host, "apply", host.manifests)
    assert result.returncode == 1, output(result)
    assert "carries a kvmops mark copied from another domain" in result.stdout, output(result)
    assert copy.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == xml


# --- 2. a volume another domain uses ---------------------------------------------------


def define_foreign_user(host, suffix: str, path, *, start: bool) -> libvirt.virDomain:
    """Define (and start) a hand-made domain, no kvmops mark, whose disk is the qcow2 file ``path``."""
    domain = host.connection.defineXML(f"""
        <domain type='qemu'>
          <name>{host.name(suffix)}</name>
          <memory unit='MiB'>32</memory>
          <vcpu>1</vcpu>
          <os><type arch='x86_64'>hvm</type></os>
          <devices>
            <disk type='file' device='disk'>
              <driver name='qemu' type='qcow2'/><source file='{path}'/><target dev='vda' bus='virtio'/>
            </disk>
            <serial type='pty'/><console type='pty'/>
          </devices>
        </domain>""")
    if start:
        domain.create()
    return domain


def test_pruning_never_deletes_a_delete_volume_a_running_foreign_domain_uses(host):
    """A pruned VM's Delete volume that a running, unmanaged domain has open stays on disk, and the plan names that domain."""
    write_pool(host)
    manifest = factories.write(host.manifests, "vms/web.yaml", vm(host, "web", runStrategy="Halted", disks=[
        disk(host, "root", deletionPolicy="Delete"),
    ]))
    factories.write(host.manifests, "vms/other.yaml", vm(host, "other", runStrategy="Halted"))
    apply_ok(host)
    root = volume_file(host, "web", "root")
    user = define_foreign_user(host, "user", root, start=True)

    manifest.unlink()
    plan = kvmops(host, "plan", host.manifests, prune=True)
    assert plan.returncode == 0, output(plan)
    block = resource_block(plan.stdout, "VirtualMachine", host.name("web"))
    assert (f"volume {host.pool}/{root.name} is kept: also used by domain {user.name()} (foreign, running)") in block, block
    assert "DATA LOSS" not in plan.stdout, plan.stdout

    planned, report = apply_pruning_own_objects(host)
    assert report.ok, report
    assert host.domain(host.name("web")) is None
    assert root.is_file() and host.volume_capacity(root.name) == 64 * MIB
    assert user.isActive() == 1
    plan_is_empty(host)


@pytest.mark.parametrize("through_symlink", [False, True], ids=["by-path", "through-a-symlink"])
def test_the_executor_refuses_a_deletion_once_another_domain_uses_the_volume(host, through_symlink):
    """A planned deletion of a volume that a foreign domain started using after the plan was made fails; the volume stays."""
    write_pool(host)
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", runStrategy="Halted", disks=[disk(host, "root")]))
    apply_ok(host)
    root = volume_file(host, "web", "root")
    if through_symlink:
        (host.workdir / "elsewhere.qcow2").symlink_to(root)
    define_foreign_user(host, "user", host.workdir / "elsewhere.qcow2" if through_symlink else root, start=False)
    late = plans.Plan(uri=host.uri, resources=(plans.ResourcePlan(
        kind="VirtualMachine", name=host.name("gone"), actions=(plans.Action.DELETE,),
        steps=(plans.DeleteVolume(host.pool, root.name),),
    ),))
    with hv.Hypervisor.open(host.uri) as hypervisor:
        (outcome,) = execute.execute(late, hypervisor).outcomes
    assert outcome.status == "failed" and f"is used by domain {host.name('user')} (shut off)" in outcome.error, outcome
    assert root.is_file()


# --- 3. files kvmops did not create ----------------------------------------------------


def test_an_existing_file_named_as_a_disk_is_never_grown(host):
    """With a pool over an existing directory, a disk naming an existing 38-byte file is refused (file, line, field); the file is untouched."""
    host.pool_path.mkdir(parents=True)
    existing = host.pool_path / "notes.img"
    existing.write_bytes(b"precious notes, not a disk image!!!!\n\n"[:38])
    before = (existing.stat().st_size, existing.read_bytes())
    write_pool(host)
    apply_ok(host)  # the pool now exists over the directory, and libvirt lists the file as one of its volumes
    path = factories.write(host.manifests, "vms/web.yaml", vm(host, "web", runStrategy="Halted", disks=[
        disk(host, "root", "16MiB", volume="notes.img"),
    ]))

    result = kvmops(host, "apply", host.manifests)
    assert result.returncode == 1, output(result)
    assert f"{path}:" in result.stdout and "spec.disks[0].size: volume " in result.stdout, output(result)
    assert "was not created by kvmops, which never resizes or writes a volume it did not create" in result.stdout
    assert (existing.stat().st_size, existing.read_bytes()) == before
    assert host.domain(host.name("web")) is None


def test_a_cdrom_kvmops_did_not_create_keeps_its_owner_through_start_and_removal(host):
    """A world-readable ISO attached as a CD-ROM boots with its owner unchanged, the plan says it is attached as-is, and it stays root's after the VM is pruned."""
    host.pool_path.mkdir(parents=True)
    iso = host.pool_path / "media.iso"
    iso.write_bytes(b"\0" * MIB)
    os.chmod(iso, 0o644)
    owner = (iso.stat().st_uid, iso.stat().st_gid)
    write_pool(host)
    manifest = factories.write(host.manifests, "vms/web.yaml", vm(host, "web", cdrom={"pool": host.pool, "volume": "media.iso"}))
    factories.write(host.manifests, "vms/other.yaml", vm(host, "other", runStrategy="Halted"))

    result = apply_ok(host)
    assert host.is_running(host.name("web"))
    assert (iso.stat().st_uid, iso.stat().st_gid) == owner, "libvirt must not chown media kvmops did not create"
    assert (f"attaches existing file {host.pool}/media.iso as a CD-ROM, which kvmops did not create") in result.stdout
    plan_is_empty(host)

    manifest.unlink()
    planned, report = apply_pruning_own_objects(host)
    assert report.ok, report
    assert host.domain(host.name("web")) is None
    assert (iso.stat().st_uid, iso.stat().st_gid, iso.stat().st_mode & 0o777) == (*owner, 0o644)


def test_a_root_only_cdrom_fails_the_start_with_a_clear_message_and_keeps_its_owner(host):
    """A CD-ROM only root may read is never chowned for QEMU: the start fails saying which file and what to do, and the file stays root's 0600."""
    host.pool_path.mkdir(parents=True)
    iso = host.pool_path / "secret.iso"
    iso.write_bytes(b"\0" * MIB)
    os.chmod(iso, 0o600)
    write_pool(host)
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", cdrom={"pool": host.pool, "volume": "secret.iso"}))

    result = kvmops(host, "apply", host.manifests)
    assert (iso.stat().st_uid, iso.stat().st_gid, iso.stat().st_mode & 0o777) == (0, 0, 0o600)
    assert result.returncode == 1, output(result)
    assert f"may not read {iso}" in result.stdout + result.stderr, output(result)
    assert f"chmod o+r {iso}" in result.stdout + result.stderr, output(result)
    assert "Traceback" not in result.stderr
    assert (iso.stat().st_uid, iso.stat().st_gid, iso.stat().st_mode & 0o777) == (0, 0, 0o600)


def test_the_vnc_password_digest_read_only_clients_see_is_salted_and_the_second_plan_empty(host):
    """A read-only connection sees a salted scrypt digest in the mark, never the password nor its plain sha256; apply then plan is empty."""
    secret = "Tr0ub4do"  # VNC passwords are at most 8 characters
    (host.manifests / "vms").mkdir(parents=True)
    (host.manifests / "vms" / "vnc.pass").write_text(secret + "\n", encoding="utf-8")
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", runStrategy="Halted",
                                                       graphics={"type": "vnc", "passwordFile": "vnc.pass"}))
    result = apply_ok(host)
    assert secret not in result.stdout + result.stderr
    plan_is_empty(host)

    reader = libvirt.openReadOnly(host.uri)
    try:
        xml = reader.lookupByName(host.name("web")).XMLDesc(0)
    finally:
        reader.close()
    assert "scrypt$16384$8$1$" in xml, xml
    assert secret not in xml and hashlib.sha256(secret.encode()).hexdigest() not in xml


def strip_binding(host, name: str) -> None:
    """Rewrite domain ``name``'s mark the way kvmops wrote it before marks named their domain."""
    domain = host.domain(name)
    owner = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    legacy = re.sub(r' (domain|uuid)="[^"]*"', "", owner)
    domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, legacy, "kvmops", OWNER_NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    assert "uuid=" not in domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG)


def test_a_mark_from_an_older_kvmops_is_bound_by_the_next_apply_and_never_pruned_before(host):
    """An unbound mark keeps its VM managed: apply binds it (metadata.boundTo); without a manifest it is kept with a warning, not pruned."""
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", runStrategy="Halted"))
    orphan = factories.write(host.manifests, "vms/old.yaml", vm(host, "old", runStrategy="Halted"))
    apply_ok(host)
    for suffix in ("web", "old"):
        strip_binding(host, host.name(suffix))
    orphan.unlink()

    data = plan_json(host)
    assert host.name("old") not in [r["name"] for r in data["resources"]], "an unbound mark never justifies a prune"
    assert any(w.startswith(f"domain {host.name('old')} carries a kvmops mark written by an older kvmops")
               for w in data["warnings"]), data["warnings"]
    (web,) = [r for r in data["resources"] if r["name"] == host.name("web")]
    assert [c["path"] for c in web["changes"]] == ["metadata.boundTo"], web

    planned, report = apply_pruning_own_objects(host)
    assert report.ok, report
    assert host.domain(host.name("old")) is not None
    owner = host.domain(host.name("web")).metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS,
                                                   libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    assert f'uuid="{host.domain(host.name("web")).UUIDString()}"' in owner
    plan_is_empty(host)


# --- a bridge on the host that kvmops did not make ----------------------------------


def test_a_network_whose_bridge_name_is_taken_by_a_host_bridge_fails_clearly_and_leaves_that_bridge(host):
    """A host bridge that kvmops' network did not leave behind (another MAC address) is never deleted: the
    start fails with one line naming the bridge and what to do, and the bridge is still there."""
    bridge = "kvo" + host.prefix[-6:]
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True, capture_output=True)
    try:
        factories.write(host.manifests, "networks/net.yaml", {
            "apiVersion": "kvmops/v1", "kind": "Network", "metadata": {"name": host.name("net")},
            "spec": {"mode": "isolated", "bridge": bridge}})
        result = kvmops(host, "apply", host.manifests, "--allow-empty")

        assert result.returncode == 1, output(result)
        assert f"its bridge {bridge} already exists on the host, with MAC address" in result.stdout + result.stderr, output(result)
        assert f"ip link delete {bridge}" in result.stdout + result.stderr, output(result)
        assert os.path.isdir(f"/sys/class/net/{bridge}/bridge")
    finally:
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True)

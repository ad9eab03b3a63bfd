"""What a new user hit (issue 9), on a real libvirtd with QEMU: each converges in one apply and stays so.

* a CD-ROM given by path at the top of its pool directory (a file libvirt also lists as
  a volume of that pool);
* a VM on a ``mode: bridge`` Network (libvirt shows its NIC as ``type='bridge'`` while
  it runs);
* VMs removed together with the network they use;
* a VM without a boot order (`boot: []`).
"""

from __future__ import annotations

import os

from tests import factories
from tests.e2e.commands import apply_ok, kvmops, output, plan_is_empty
from tests.e2e.test_engine import vm, write_pool

MIB = 1024 * 1024


def isolated_network(host, suffix: str, bridge: str) -> dict:
    """Return an isolated Network document (no addresses) whose Linux bridge is ``bridge``."""
    return {"apiVersion": "kvmops/v1", "kind": "Network", "metadata": {"name": host.name(suffix)},
            "spec": {"mode": "isolated", "bridge": bridge}}


def test_a_cdrom_by_path_at_the_top_of_its_pool_converges_in_one_apply(host):
    """`cdrom: {pool, path: file.iso}` with the ISO at the top of the pool directory: apply exits 0, then the plan is empty."""
    host.pool_path.mkdir(parents=True)
    iso = host.pool_path / "file.iso"
    iso.write_bytes(b"\0" * MIB)
    os.chmod(iso, 0o644)
    write_pool(host)
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", cdrom={"pool": host.pool, "path": "file.iso"}))

    apply_ok(host)
    assert host.is_running(host.name("web"))
    plan_is_empty(host)


def test_a_vm_on_a_bridge_mode_network_has_nothing_pending_after_a_fresh_boot(host):
    """A running VM on a bridge-mode Network plans empty and its status is not RestartRequired."""
    bridge = "kvn" + host.prefix[-6:]
    factories.write(host.manifests, "networks/base.yaml", isolated_network(host, "base", bridge))
    factories.write(host.manifests, "networks/lan.yaml", {
        "apiVersion": "kvmops/v1", "kind": "Network", "metadata": {"name": host.name("lan")},
        "spec": {"mode": "bridge", "bridge": bridge},
    })
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", networks=[{"network": host.name("lan")}]))

    apply_ok(host)
    assert host.is_running(host.name("web"))
    planned = plan_is_empty(host)
    assert "restart pending" not in planned.stdout, output(planned)
    status = kvmops(host, "status", host.name("web"), "--output", "json")
    assert status.returncode == 0, output(status)
    assert "RestartRequired" not in status.stdout, output(status)


def test_vms_and_the_network_they_use_are_removed_by_one_apply(host):
    """Removing two running VMs' manifests with their Network's: one apply removes all three and exits 0."""
    network = host.name("net")
    factories.write(host.manifests, "networks/net.yaml", isolated_network(host, "net", "kvp" + host.prefix[-6:]))
    for suffix in ("a", "b"):
        factories.write(host.manifests, f"vms/{suffix}.yaml", vm(host, suffix, networks=[{"network": network}]))
    factories.write(host.manifests, "vms/keep.yaml", vm(host, "keep", runStrategy="Halted"))
    apply_ok(host)

    for relpath in ("networks/net.yaml", "vms/a.yaml", "vms/b.yaml"):
        (host.manifests / relpath).unlink()
    result = kvmops(host, "apply", host.manifests, prune=True)  # the test's own scope: only its objects are pruned

    assert result.returncode == 0, output(result)
    assert "Fix the errors above" not in result.stdout
    assert host.domain(host.name("a")) is None and host.domain(host.name("b")) is None
    assert network not in [n.name() for n in host.connection.listAllNetworks(0)]
    plan_is_empty(host)


def test_a_vm_without_a_boot_order_converges_in_one_apply(host):
    """`boot: []` writes no <os><boot>, and libvirt keeps its default (<boot dev='hd'/>): apply exits 0, then the plan is empty."""
    factories.write(host.manifests, "vms/web.yaml", vm(host, "web", runStrategy="Halted", boot=[]))

    apply_ok(host)
    assert "<boot dev='hd'/>" in host.domain(host.name("web")).XMLDesc(0)
    plan_is_empty(host)


def test_a_disk_cdrom_or_kernel_path_missing_on_the_host_is_a_located_problem_of_the_plan(host):
    """A `path:` that does not exist on the host, or is a directory, is a FILE:LINE problem of the plan (exit 1):
    it says so before an apply would fail in libvirt, and the apply defines nothing."""
    missing, directory = host.workdir / "missing.qcow2", host.workdir / "isos"
    directory.mkdir()
    factories.write(host.manifests, "vms/web.yaml", vm(
        host, "web", runStrategy="Halted", disks=[{"name": "root", "path": str(missing)}],
        cdrom={"path": str(directory)}, install={"kernel": {"path": str(host.workdir / "vmlinuz")}, "cmdline": ""}))

    planned = kvmops(host, "plan", host.manifests)
    applied = kvmops(host, "apply", host.manifests)

    assert planned.returncode == 1, output(planned)
    said = planned.stdout + planned.stderr
    assert f"vms/web.yaml:" in said, output(planned)
    assert f"spec.disks[0].path: {missing} does not exist on the host; create it or fix the path" in said, output(planned)
    assert f"spec.cdrom.path: {directory} is a directory on the host, not a file or block device; fix the path" in said
    assert f"spec.install.kernel.path: {host.workdir / 'vmlinuz'} does not exist on the host" in said, output(planned)
    assert applied.returncode == 1 and host.domain(host.name("web")) is None, output(applied)

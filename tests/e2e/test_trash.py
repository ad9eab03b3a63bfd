"""Deletion you can undo, on the real libvirtd: a pruned VM's Delete volume goes to its pool's trash, comes back
with its bytes intact, is reattached and treated as kvmops' own again; an entry past its retention is purged.

Everything through the shipped command (``kvmops apply``, ``kvmops trash list|restore``), in the test's own
scope and pool directory; the bytes are checked with ``qemu-io`` and sha256 on the volume's file itself.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
import yaml

from tests import factories
from tests.e2e.commands import apply_ok, kvmops, output, plan_is_empty

pytestmark = pytest.mark.e2e

OWNER_NS = "https://kvmops.dev/xmlns/owner/v1"
MARKER_OFFSET = "1M"
MARKER_LENGTH = "64k"


def web(host) -> dict:
    return factories.vm(host.name("web"), virtType="qemu", shutdownTimeout=1, runStrategy="Halted", disks=[
        factories.disk("root", host.pool, "32MiB"),
        factories.disk("data", host.pool, "32MiB", deletionPolicy="Delete"),
    ])


def declare(host) -> Path:
    factories.write(host.manifests, "pools/pool.yaml", factories.pool(host.pool, str(host.pool_path)))
    factories.write(host.manifests, "vms/keep.yaml", factories.vm(host.name("keep"), virtType="qemu",
                                                                  runStrategy="Halted"))
    return factories.write(host.manifests, "vms/web.yaml", web(host))


def qemu_io(path: Path, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(path)], capture_output=True, text=True,
                          timeout=60)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trash_files(host, volume: str) -> list[Path]:
    return sorted((host.pool_path / ".kvmops-trash").glob(f"*/{volume}"))


def trash_entries(host) -> list[Path]:
    directory = host.pool_path / ".kvmops-trash"
    return sorted(p for p in directory.iterdir() if not p.name.startswith(".")) if directory.exists() else []


def volume_records(host, name: str) -> dict:
    root = ET.fromstring(host.domain(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    return {v.get("name"): (v.get("deletionPolicy"), v.get("created"))
            for v in root.iter(f"{{{OWNER_NS}}}volume")}


def write_config(host, retention: str) -> Path:
    path = host.workdir / "config.yaml"
    path.write_text(yaml.safe_dump({"policy": {"trashRetention": retention}}), encoding="utf-8")
    return path


def prune_web(host, *options: str) -> tuple[str, subprocess.CompletedProcess]:
    """Converge VMs web and keep, delete web's manifest and apply again with pruning (and ``options``); return web's
    data volume and that apply."""
    manifest = declare(host)
    apply_ok(host)
    manifest.unlink()
    return f"{host.name('web')}-data.qcow2", kvmops(host, "apply", host.manifests, *options, prune=True)


def test_a_pruned_volume_is_restored_from_the_trash_with_its_bytes_and_reattached_as_kvmops_own(host):
    """Write a marker, prune the VM, restore the volume, declare the VM again: same bytes, same disk, created again."""
    manifest = declare(host)
    apply_ok(host)
    name, data = host.name("web"), f"{host.name('web')}-data.qcow2"
    data_file = host.pool_path / data
    written = qemu_io(data_file, f"write -P 0x5a {MARKER_OFFSET} {MARKER_LENGTH}")
    assert written.returncode == 0, written.stderr
    digest = sha256(data_file)

    manifest.unlink()
    pruned = kvmops(host, "apply", host.manifests, prune=True)
    assert pruned.returncode == 0, output(pruned)
    assert f"DATA LOSS: VirtualMachine {name}: volume {host.pool}/{data} moved to the trash, final after " in pruned.stdout
    assert host.domain(name) is None
    assert not data_file.exists() and host.volume_capacity(data) is None
    (trashed,) = trash_files(host, data)
    assert sha256(trashed) == digest
    record = json.loads((trashed.parent / "entry.json").read_text())
    assert (record["pool"], record["volume"], record["vm"], record["scope"]) == (host.pool, data, name, host.prefix)
    assert (host.pool_path / f"{name}-root.qcow2").exists()  # Retain: never touched

    listed = host.kvmops("trash", "list", "--connect", host.uri, "--output", "json")
    assert listed.returncode == 0, output(listed)
    (row,) = [r for r in json.loads(listed.stdout)["entries"] if r["pool"] == host.pool]
    assert (row["volume"], row["vm"], row["state"][:17]) == (data, name, "restorable until ")

    restored = host.kvmops("trash", "restore", data, "--pool", host.pool, "--connect", host.uri)
    assert restored.returncode == 0, output(restored)
    assert f"restored volume {host.pool}/{data}" in restored.stdout
    assert data_file.exists() and host.volume_capacity(data) == 32 * 1024 * 1024  # libvirt lists it again
    assert trash_files(host, data) == []

    again = host.kvmops("trash", "restore", data, "--pool", host.pool, "--connect", host.uri)
    assert again.returncode == 1 and "no volume named" in again.stderr, output(again)

    factories.write(host.manifests, "vms/web.yaml", web(host))
    reattached = apply_ok(host)
    assert "restored from the trash" in reattached.stdout, output(reattached)
    assert volume_records(host, name)[data] == ("Delete", "true")  # kvmops' own creation again: Delete applies
    disks = ET.fromstring(host.domain(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).iterfind("devices/disk/source")
    assert (host.pool, data) in [(d.get("pool"), d.get("volume")) for d in disks]
    assert trash_entries(host) == []  # the claim was consumed by the definition
    plan_is_empty(host)

    read = qemu_io(data_file, f"read -P 0x5a {MARKER_OFFSET} {MARKER_LENGTH}")
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout + read.stderr, read.stdout
    assert sha256(data_file) == digest


def test_restoring_over_a_volume_of_the_same_name_is_refused(host):
    data, pruned = prune_web(host)
    assert pruned.returncode == 0, output(pruned)
    host.connection.storagePoolLookupByName(host.pool).createXML(
        f"<volume><name>{data}</name><capacity unit='MiB'>1</capacity></volume>", 0)

    refused = host.kvmops("trash", "restore", data, "--pool", host.pool, "--connect", host.uri)

    assert refused.returncode == 1 and "will not overwrite it" in refused.stderr, output(refused)
    assert len(trash_files(host, data)) == 1
    assert host.volume_capacity(data) == 1024 * 1024


RETENTION = 8


def test_an_entry_is_purged_by_a_pass_after_its_retention_and_the_plan_says_it_is_final(host):
    """trashRetention 8s: the apply that prunes keeps the volume in the trash; a plan once the 8 s have run out
    shows the purge as final DATA LOSS; applying it leaves nothing, and the next plan is empty.

    8 s, not less: the pruning apply looks again after its steps, and on a busy machine a
    retention run out by then is a purge that apply did not do (it reports "not converged").
    """
    config = write_config(host, f"{RETENTION}s")
    data, pruned = prune_web(host, "--config", str(config))
    assert pruned.returncode == 0, output(pruned)
    assert "Converged" in pruned.stdout, output(pruned)
    assert len(trash_files(host, data)) == 1

    (entry,) = trash_entries(host)
    deleted_at = json.loads((entry / "entry.json").read_text(encoding="utf-8"))["deletedAt"]
    time.sleep(max(0.0, deleted_at + RETENTION - time.time()))  # until the retention has run out, and no longer
    plan = kvmops(host, "plan", host.manifests, "--config", config, prune=True)
    assert plan.returncode == 0, output(plan)
    assert (f"trash entry {host.pool}/{data} (deleted " in plan.stdout
            and "is purged: final, it can no longer be restored" in plan.stdout), output(plan)
    assert kvmops(host, "apply", host.manifests, "--config", config, prune=True).returncode == 0
    assert trash_entries(host) == []
    after = kvmops(host, "plan", host.manifests, "--config", config, "--detailed-exitcode", prune=True)
    assert after.returncode == 0 and "No changes." in after.stdout, output(after)


def test_a_retention_of_zero_deletes_at_once(host):
    data, pruned = prune_web(host, "--config", str(write_config(host, "0")))

    assert pruned.returncode == 0, output(pruned)
    assert f"volume {host.pool}/{data} deleted at once: trashRetention is 0" in pruned.stdout
    assert not (host.pool_path / data).exists() and trash_files(host, data) == []

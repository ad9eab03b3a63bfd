"""Kill -9 at every step boundary on a real libvirtd: the next pass finishes, nothing leaks, nothing is lost.

The libvirtd is the session's lab host (``lab_host``), not the machine's: what a kill leaves
until the next pass (a trash entry without its record, which any scope's pass may remove; a
partial volume) would be in the plan of every other test and session on the machine's
libvirtd meanwhile.

Each test enumerates the boundaries of one operation with the executor's test hook
(``KVMOPS_TEST_CRASH_AT=N``: kvmops SIGKILLs itself right before its Nth mutating
libvirt call; ``--parallel 1`` keeps the order fixed): for N = 1, 2, ... it runs the
operation with the hook until a run no longer reaches call N, and after every crash
runs kvmops again without it and checks the world, not the calls made (that re-run's
own verification, a fresh observation and plan after its steps, must find nothing left:
``apply_converged``; a separate ``kvmops plan`` checks the end of each test):

* creating a VM (pool, Delete and Retain disks, domain): the next apply converges, and
  removing the VM afterwards deletes every Delete volume and keeps the Retain one: a
  volume created before its domain recorded it is still known as kvmops';
* adding a Delete disk to an existing VM, and removing one: the same;
* pruning a VM: the next prune removes the domain and its Delete volume, keeps the Retain one;
* importing an image: the next apply leaves the verified image (its bytes match the
  manifest's sha256), no ``.kvmops-partial-*`` volume and no temporary download file;
  a final volume that an interrupted copy left half-written (what a libvirtd killed
  mid-copy leaves; libvirtd is not killed here, so the test writes that state itself) is
  replaced, never accepted.
"""

from __future__ import annotations

import hashlib
import signal

import libvirt
import pytest

from tests import factories
from tests.e2e.commands import apply_converged, apply_ok, kvmops, output, plan_is_empty

MIB = 1024 * 1024
MAX_STEPS = 40  # far more mutating calls than any operation here makes

pytestmark = pytest.mark.e2e


@pytest.fixture
def host(lab_host):
    """Return this test's host on the session's lab libvirtd (see the module's docstring)."""
    return lab_host


def write_pool(host) -> None:
    factories.write(host.manifests, "pools/pool.yaml", factories.pool(host.pool, str(host.pool_path)))


def write_vm(host, *, extra: bool = False, strategy: str = "Halted") -> str:
    """Declare VM ``vm`` (never started unless ``strategy`` says) with a Retain disk, a Delete disk, and
    ``extra`` (Delete) if asked."""
    disks = [factories.disk("root", host.pool, "16MiB"),
             factories.disk("scratch", host.pool, "8MiB", deletionPolicy="Delete")]
    if extra:
        disks.append(factories.disk("extra", host.pool, "8MiB", deletionPolicy="Delete"))
    name = host.name("vm")
    factories.write(host.manifests, "vms/vm.yaml", factories.vm(
        name, virtType="qemu", runStrategy=strategy, shutdownTimeout=1, disks=disks))
    return name


def crashed_at(host, step: int, *args: str, prune: bool = False) -> bool:
    """Run kvmops ``args`` with the crash hook at ``step``; return whether it was killed there."""
    host.env["KVMOPS_TEST_CRASH_AT"] = str(step)
    try:
        result = kvmops(host, *args, "--parallel", "1", prune=prune)
    finally:
        del host.env["KVMOPS_TEST_CRASH_AT"]
    if result.returncode == -signal.SIGKILL:
        assert f"SIGKILL before mutating call {step}:" in result.stderr, output(result)
        return True
    assert result.returncode == 0, output(result)
    return False


def pool_files(host) -> set[str]:
    """Return the names of the volumes in the test's pool (after a refresh), the trash directory aside."""
    try:
        pool = host.connection.storagePoolLookupByName(host.pool)
        pool.refresh(0)
    except libvirt.libvirtError:
        return set()
    return set(pool.listVolumes()) - {".kvmops-trash"}


def trashed(host, volume: str) -> int:
    """Return how many copies of ``volume`` the pool's trash holds; fail on an entry holding nothing (a leak of
    records) or a file without its record (a leak of data nobody can restore)."""
    directory = host.pool_path / ".kvmops-trash"
    entries = [e for e in directory.iterdir() if not e.name.startswith(".")] if directory.exists() else []
    for entry in entries:
        files = {p.name for p in entry.iterdir()}
        assert "entry.json" in files and files - {"entry.json"}, f"trash entry {entry.name} holds {sorted(files)}"
    return sum(1 for entry in entries if (entry / volume).exists())


def prune_everything(host) -> None:
    """Remove every manifest but the pool's and apply with pruning: kvmops removes what it owns."""
    for path in (host.manifests / "vms").glob("*.yaml"):
        path.unlink()
    result = kvmops(host, "apply", host.manifests, "--allow-empty", prune=True)
    assert result.returncode == 0, output(result)


def forget_retained(host, *names: str) -> None:
    """Delete volumes kvmops keeps on purpose (Retain), so the next round starts from an empty pool."""
    pool = host.connection.storagePoolLookupByName(host.pool)
    for name in names:
        if name in pool_files(host):
            pool.storageVolLookupByName(name).delete(0)


@pytest.mark.parametrize("strategy", ["Halted", "Manual"])
def test_a_crash_at_any_step_of_creating_a_vm_leaks_no_volume(host, strategy):
    """After a kill -9 at any step of creating a VM, the next apply converges (a Manual VM is running: its
    start at creation happens once, even if the crash came before it), and removing the VM later deletes
    its Delete volume and keeps its Retain volume."""
    write_pool(host)
    apply_ok(host)  # the pool first: then call N of a run is the VM's Nth
    crashes = 0
    for step in range(1, MAX_STEPS):
        name = write_vm(host, strategy=strategy)
        if not crashed_at(host, step, "apply", host.manifests):
            break
        crashes += 1
        apply_converged(host)
        assert host.is_running(name) == (strategy == "Manual"), f"crash before mutating call {step}"
        assert pool_files(host) == {f"{name}-root.qcow2", f"{name}-scratch.qcow2"}, step
        prune_everything(host)
        assert host.domain(name) is None, step
        assert pool_files(host) == {f"{name}-root.qcow2"}, f"crash before mutating call {step}: a volume leaked or was lost"
        assert trashed(host, f"{name}-scratch.qcow2") == crashes, f"crash before mutating call {step}: not in the trash"
        forget_retained(host, f"{name}-root.qcow2")
    assert crashes >= 3, "each volume and the domain are a boundary"
    plan_is_empty(host)  # after the run that was not killed


def test_a_crash_at_any_step_of_adding_and_removing_a_disk_leaks_no_volume(host):
    """After a kill -9 at any step of adding a Delete disk to a VM, or of removing it, the next apply
    converges and the volume is deleted exactly when its disk leaves the manifests."""
    write_pool(host)
    name = write_vm(host)
    apply_ok(host)
    for step in range(1, MAX_STEPS):
        write_vm(host, extra=True)
        if not crashed_at(host, step, "apply", host.manifests):
            break
        apply_converged(host)
        assert f"{name}-extra.qcow2" in pool_files(host), step
        write_vm(host)
        apply_converged(host)
        assert f"{name}-extra.qcow2" not in pool_files(host), f"crash before mutating call {step}: the added volume leaked"
    apply_ok(host)  # the disk is gone from the manifests again
    for step in range(1, MAX_STEPS):
        write_vm(host, extra=True)
        apply_ok(host)
        write_vm(host)
        if not crashed_at(host, step, "apply", host.manifests):
            break
        apply_converged(host)
        assert f"{name}-extra.qcow2" not in pool_files(host), f"crash before mutating call {step}: the removed volume leaked"
        assert {f"{name}-root.qcow2", f"{name}-scratch.qcow2"} <= pool_files(host), step
    plan_is_empty(host)


def test_a_crash_at_any_step_of_pruning_a_vm_leaks_no_volume(host):
    """After a kill -9 at any step of pruning a VM, the next prune removes the domain and its Delete volume
    and keeps its Retain volume."""
    write_pool(host)
    name = host.name("vm")
    factories.write(host.manifests, "vms/vm.yaml", factories.vm(
        name, virtType="qemu", shutdownTimeout=1, runStrategy="Always",
        disks=[factories.disk("root", host.pool, "16MiB"),
               factories.disk("scratch", host.pool, "8MiB", deletionPolicy="Delete")]))
    crashes = 0
    for step in range(1, MAX_STEPS):
        apply_ok(host)
        (host.manifests / "vms" / "vm.yaml").rename(host.workdir / "vm.yaml")
        try:
            if not crashed_at(host, step, "apply", host.manifests, "--allow-empty", prune=True):
                break
            crashes += 1
            prune_everything(host)
            assert host.domain(name) is None, step
            assert pool_files(host) == {f"{name}-root.qcow2"}, f"crash before mutating call {step}: a volume leaked or was lost"
            # each round's scratch volume, moved by the crashed run or by the next: once, with its record
            assert trashed(host, f"{name}-scratch.qcow2") == crashes, f"crash before mutating call {step}"
        finally:
            (host.workdir / "vm.yaml").rename(host.manifests / "vms" / "vm.yaml")
    assert crashes >= 5, "stop, the trash record, the move, the pool's refresh and undefine are each a boundary"
    assert host.domain(name) is None and pool_files(host) == {f"{name}-root.qcow2"}


# --- images ----------------------------------------------------------------------------


def write_image(host, source) -> str:
    """Declare Image ``base`` from the local file ``source``; return its final volume's name."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    factories.write(host.manifests, "images/base.yaml", {
        "apiVersion": "kvmops/v1", "kind": "Image", "metadata": {"name": "base"},
        "spec": {"pool": host.pool, "source": {"path": source.name}, "sha256": digest, "format": "raw"},
    })
    return f"base-{digest[:12]}.raw"


def image_source(host) -> object:
    """Write a 24 MiB raw image with content on every MiB into the manifest tree; return its path."""
    source = host.manifests / "images" / "base.raw"
    source.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "wb") as out:
        for index in range(24):
            out.write(hashlib.sha256(str(index).encode()).digest() * (MIB // 32))
    return source


def volume_sha256(host, name: str) -> str:
    return hashlib.sha256((host.pool_path / name).read_bytes()).hexdigest()


def test_a_crash_at_any_step_of_an_image_import_leaves_no_partial_volume_and_no_temporary_file(host):
    """After a kill -9 at any step of importing an image, the next apply leaves exactly the verified image,
    no .kvmops-partial-* volume, and no download in the temporary directory, not even right after the kill."""
    downloads = host.workdir / "tmp"
    downloads.mkdir()
    host.env["TMPDIR"] = str(downloads)
    write_pool(host)
    apply_ok(host)  # the pool first: then call N of a run is the import's Nth
    source = image_source(host)
    final = write_image(host, source)
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    crashes = 0
    for step in range(1, MAX_STEPS):
        for name in pool_files(host):
            host.connection.storagePoolLookupByName(host.pool).storageVolLookupByName(name).delete(0)
        if not crashed_at(host, step, "apply", host.manifests):
            break
        crashes += 1
        assert list(downloads.iterdir()) == [], f"crash before mutating call {step}: the download was left behind"
        apply_converged(host)
        assert not [n for n in pool_files(host) if n.startswith(".kvmops-partial-")], step
        assert final in pool_files(host), step
        assert volume_sha256(host, final) == expected, step
    assert crashes >= 5
    plan_is_empty(host)


def test_a_half_written_image_volume_is_replaced_not_accepted(host):
    """A final image volume holding only part of the image (left by a copy that never finished) is
    planned as a repair and replaced by a verified copy; it never reads as "No changes"."""
    write_pool(host)
    apply_ok(host)  # the pool first: then call N of a run is the import's Nth
    source = image_source(host)
    final = write_image(host, source)
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    apply_ok(host)
    # What libvirtd killed in the middle of createXMLFrom leaves: the final name, the full
    # size, the first part of the content and zeros after it.
    path = host.pool_path / final
    data = bytearray(path.read_bytes())
    data[len(data) // 3:] = bytes(len(data) - len(data) // 3)
    path.write_bytes(bytes(data))
    for name in pool_files(host):  # and no trace of the completed import
        if name != final and name.startswith("."):
            host.connection.storagePoolLookupByName(host.pool).storageVolLookupByName(name).delete(0)

    plan = kvmops(host, "plan", host.manifests, "--detailed-exitcode")
    assert plan.returncode == 2, output(plan)
    assert "No changes." not in plan.stdout, output(plan)
    assert "interrupted" in plan.stdout, output(plan)
    apply_ok(host)
    plan_is_empty(host)
    assert volume_sha256(host, final) == expected
    assert not [n for n in pool_files(host) if n.startswith(".kvmops-partial-")]


def test_a_leftover_partial_volume_of_an_image_no_longer_declared_is_swept(host):
    """A .kvmops-partial-* volume left by an interrupted import whose Image left the manifests is removed
    by the next apply, and the plan says what it is."""
    write_pool(host)
    apply_ok(host)  # the pool first: then call N of a run is the import's Nth
    source = image_source(host)
    write_image(host, source)
    for step in range(1, MAX_STEPS):  # the first kill that leaves the temporary volume behind
        assert crashed_at(host, step, "apply", host.manifests), "no step left a .kvmops-partial-* volume"
        if any(n.startswith(".kvmops-partial-") for n in pool_files(host)):
            break
    (host.manifests / "images" / "base.yaml").unlink()
    plan = kvmops(host, "plan", host.manifests)
    assert ".kvmops-partial-" in plan.stdout and "interrupted" in plan.stdout, output(plan)
    apply_ok(host)
    plan_is_empty(host)
    assert not [n for n in pool_files(host) if n.startswith(".kvmops-partial-")]

"""Two lab hosts with a shared and a local pool, and the tiny guest on them: what the migration tests and bench/migrate.py share.

Each host logs the guest's serial console to its own ``/var/log/libvirt/qemu`` (a
directory private to the host's namespace), so the source's and the destination's logs
never mix.  Two pools exist on both hosts: ``shared`` (one directory both hosts see,
standing for NFS) and ``local`` (``/var/lib/libvirt/images/...``: the same path on both
hosts, different files, as on real machines).  Guests boot with the heartbeat
(:data:`tests.e2e.tinyguest.HEARTBEAT`): their uptime, every second, on the console.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt

from reconciler.adapters import hypervisor as hv
from reconciler.core import domxml, model, storagexml
from reconciler.core import plan as plans
from reconciler.runtime import execute
from tests import lab as labs
from tests.e2e import tinyguest
from tests.e2e.conftest import sweep

DISK_BYTES = 64 * 1024 * 1024


@dataclass
class Fleet:
    """Two lab hosts, a connection to each, and the names of their two pools."""

    lab: labs.Lab
    hosts: dict[str, hv.Hypervisor]
    prefix: str

    @property
    def shared(self) -> str:
        return f"{self.prefix}-shared"

    @property
    def local(self) -> str:
        return f"{self.prefix}-local"

    def lab_host(self, host: str) -> labs.LabHost:
        return self.lab.hosts[int(host[1:]) - 1]

    def serial_log(self, host: str, name: str) -> Path:
        """Return where ``host``'s virtlogd writes the serial console of ``name`` (seen from outside)."""
        return self.lab_host(host).directory / "log" / "qemu" / f"{name}-serial.log"

    def file_of(self, host: str, pool: str, volume: str) -> Path:
        """Return the file of volume ``pool/volume`` on ``host``, seen from outside the host's namespace."""
        path = next(v.path for v in self.hosts[host].list_volumes(pool) if v.name == volume)
        if path.startswith("/var/lib/libvirt/"):
            return self.lab_host(host).directory / "lib" / path[len("/var/lib/libvirt/"):]
        return Path(path)


@contextlib.contextmanager
def started_lab(name: str, hosts: int = 2) -> Iterator[labs.Lab]:
    """Yield lab ``name`` of ``hosts`` hosts, bound to this process; removed, lab and all, whatever happens.

    Whatever happens includes ``KeyboardInterrupt`` (the ``finally`` runs) and this process
    being killed: the hosts' namespaces die with it (``bound``), and ``scripts/lab sweep``
    (or the next session's :func:`tests.lab.sweep_abandoned`) removes what a namespace
    cannot hold.
    """
    lab = labs.Lab(name).start(hosts)
    try:
        yield lab
    finally:
        lab.stop()


def reset(lab: labs.Lab, prefix: str) -> None:
    """Remove from every host of ``lab`` what a test named ``prefix-...`` left: domains, pools and their volumes,
    networks, and the files of its pools; a host whose libvirtd a test killed is started again first.  Objects of
    other prefixes are never touched."""
    def clean(host: labs.LabHost) -> None:
        if host.libvirtd_pid is None:
            host.start_daemons()
        connection = libvirt.open(host.uri)
        try:
            sweep(connection, prefix + "-")
        finally:
            connection.close()
        for leftover in (*(host.directory / "lib" / "images").glob(f"{prefix}-*"),
                         *(host.directory / "lib" / "qemu" / "nvram").glob(f"{prefix}-*")):
            _remove(leftover)
        # (the guests' logs stay: names unique to the test, and what finds a guest's cgroup should its libvirtd die)

    labs.each_at_once(clean, lab.hosts)
    for leftover in lab.shared.glob(f"{prefix}-*"):
        _remove(leftover)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def on_lab(lab: labs.Lab, prefix: str, hosts: int = 2) -> Iterator[Fleet]:
    """Yield a :class:`Fleet` of ``lab``'s first ``hosts`` hosts whose pools and objects are named ``prefix-...``;
    afterwards every object of that prefix is removed from the lab (:func:`reset`), whatever happened."""
    connections: dict[str, hv.Hypervisor] = {}
    try:
        connections = {f"h{i}": hv.Hypervisor.open(host.uri) for i, host in enumerate(lab.hosts[:hosts], 1)}
        world = Fleet(lab, connections, prefix)
        shared = lab.shared / f"{prefix}-pool"
        shared.mkdir()
        os.chmod(shared, 0o755)
        for connection in connections.values():
            for pool, path in ((world.shared, shared), (world.local, f"/var/lib/libvirt/images/{world.local}")):
                connection.define_pool(
                    f"<pool type='dir'><name>{pool}</name><target><path>{path}</path></target></pool>", pool)
                connection.build_pool(pool)
                connection.start_pool(pool)
        yield world
    finally:
        for connection in connections.values():
            with contextlib.suppress(Exception):
                connection.close()
        reset(lab, prefix)


@contextlib.contextmanager
def two_hosts(name: str) -> Iterator[Fleet]:
    """Yield lab ``name`` of two hosts with a shared and a local pool on each; removed, lab and all, afterwards."""
    with started_lab(name, 2) as lab, on_lab(lab, name) as world:
        yield world


def tiny_vm(fleet: Fleet, guest: tinyguest.Guest, host: str, name: str, pool: str, *, start: bool = True,
            boot: bool = True, seed: bool = False, path_disk: str | None = None) -> tuple[str, str]:
    """Define (and start) the tiny guest ``name`` on ``host`` with a disk in ``pool``, marked as kvmops'; return (UUID, MAC).

    ``start`` and ``boot``: return once the guest has booted (READY on its console);
    ``start`` alone: return once it runs, booting still (for what QEMU alone decides).

    ``seed``: also a read-only CD-ROM ``NAME-cidata.iso`` in ``pool`` (kvmops' own, Delete), as a
    cloud-init seed is; ``path_disk``: also a writable disk that is that file, outside any pool.
    """
    h = fleet.hosts[host]
    volume = f"{name}-root.qcow2"
    h.create_volume(pool, storagexml.render_volume(volume, DISK_BYTES), volume)
    records = [model.OwnedVolume(pool, volume, model.DeletionPolicy.DELETE, created=True)]
    extra = ""
    if seed:
        iso = f"{name}-cidata.iso"
        h.create_volume(pool, storagexml.render_volume(iso, 1024 * 1024, image_format="raw"), iso)
        h.upload_volume(pool, iso, [b"seed" * 1024], 4096)
        records.append(model.OwnedVolume(pool, iso, model.DeletionPolicy.DELETE, created=True, digest="seed"))
        extra += f"""
    <disk type='volume' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source pool='{pool}' volume='{iso}'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>"""
    if path_disk is not None:
        extra += f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{path_disk}'/>
      <target dev='vdb' bus='virtio'/>
    </disk>"""
    mac = "52:54:00:%02x:%02x:%02x" % tuple(uuid.uuid4().bytes[:3])
    heartbeat = tinyguest.Guest(guest.kernel, guest.initrd, f"{guest.cmdline} {tinyguest.HEARTBEAT}")
    xml = tinyguest.domain_xml(name, heartbeat, network=None, serial_log=Path(f"/var/log/libvirt/qemu/{name}-serial.log"))
    xml = xml.replace("<devices>", f"""<devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='{pool}' volume='{volume}'/>
      <target dev='vda' bus='virtio'/>
    </disk>{extra}
    <interface type='user'>
      <mac address='{mac}'/>
      <model type='virtio'/>
    </interface>""", 1)
    h.define_domain(xml, name)
    domain_uuid = next(d.uuid for d in h.list_domains() if d.name == name)
    h.set_owner(name, model.Ownership(
        manifest=f"vms/{name}.yaml", digest="test", run_strategy=model.RunStrategy.ALWAYS,
        volumes=tuple(records),
        bound_name=name, bound_uuid=domain_uuid,
    ))
    if start:
        h.start_domain(name)
        if boot:
            tinyguest.wait_for_ready(fleet.serial_log(host, name), timeout=120)
    return domain_uuid, mac


def uptimes(log: Path) -> list[float]:
    """Return every uptime the guest printed into ``log``."""
    try:
        return [float(u) for u in tinyguest.UPTIME.findall(log.read_text(errors="replace"))]
    except FileNotFoundError:
        return []


def past_any_reboot(log: Path, margin: float = 2.0) -> float:
    """Return an uptime the guest printed into ``log`` that a guest booted again could not print first.

    The guest's first heartbeat comes a boot's time after it started; once it has printed
    ``margin`` seconds more than that, a guest that booted again would print a smaller
    uptime first.  (Waiting for a fixed uptime instead costs seconds for nothing.)
    """
    wait_for_uptime(log, 0)
    return wait_for_uptime(log, uptimes(log)[0] + margin)


def wait_for_uptime(log: Path, at_least: float, timeout: float = 60) -> float:
    """Return the first uptime in ``log`` of at least ``at_least`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [u for u in uptimes(log) if u >= at_least]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no uptime of at least {at_least} s in {log}; it ends with {log.read_text(errors='replace')[-500:]!r}")


def move(fleet: Fleet, name: str, domain_uuid: str, mode: plans.MigrationMode, *steps: plans.Step,
         xml: str = "", source: str = "h1", destination: str = "h2", **fields) -> execute.ApplyReport:
    """Run a migration resource from ``source`` to ``destination``, as a fleet plan hands it to the executor.

    Without ``xml``, the destination's definition is the source's with its mark naming the
    copies that ``steps`` delete as left on ``source`` (as the fleet planner writes it).
    """
    plan = migration(fleet, name, domain_uuid, mode, *steps, xml=xml, source=source, destination=destination, **fields)
    return execute.execute(plan, fleet.hosts[source], hosts=fleet.hosts)


def migration(fleet: Fleet, name: str, domain_uuid: str, mode: plans.MigrationMode, *steps: plans.Step,
              xml: str = "", source: str = "h1", destination: str = "h2", **fields) -> plans.Plan:
    """Return the plan of ``source`` holding that migration resource (see :func:`move`).

    A running guest moved live is held paused at the hand-over, as the fleet planner moves it
    (``held_paused=False`` moves it as libvirt does by default).
    """
    if "held_paused" not in fields:
        fields["held_paused"] = (mode is not plans.MigrationMode.OFFLINE
                                 and fleet.hosts[source].domain_power(name)[0] is model.PowerState.RUNNING)
    if not xml:
        current = fleet.hosts[source].domain_xml(name)
        owner = domxml.parse_owner(domxml.parse_tree(current))
        left = tuple(model.LeftBehind(source, s.pool, s.name) for s in steps if isinstance(s, plans.DeleteMovedVolume))
        xml = domxml.remark(current, dataclasses.replace(owner, host=destination, left_behind=left,
                                                         resume_after_move=fields["held_paused"]))
    migrate = plans.MigrateDomain(name, domain_uuid, source, destination, fleet.hosts[destination].uri, mode, xml,
                                  **fields)
    resource = plans.ResourcePlan("VirtualMachine", name, (plans.Action.MIGRATE,), steps=(migrate, *steps))
    return plans.Plan(fleet.hosts[source].uri, (resource,))


def heartbeat(uri: str, name: str, timeout: float = 30) -> tuple[float, str]:
    """Return (uptime, eth0's address) from the next heartbeat domain ``name`` prints on its console, read through ``uri``.

    For a guest whose serial console is a pty (a kvmops VM's ``console: serial``): the
    console is opened through libvirt (``virDomainOpenConsole``, taking it over from any
    other reader), as ``virsh console`` does, so it works on whichever host runs the guest.
    """
    import threading

    import libvirt

    connection = libvirt.open(uri)
    stream = connection.newStream(0)
    received = bytearray()
    found: list[tuple[float, str]] = []

    def read() -> None:
        with contextlib.suppress(libvirt.libvirtError):
            while not found:
                data = stream.recv(4096)
                if not data:  # the console closed
                    return
                received.extend(data)
                lines = received.decode(errors="replace").replace("\r", "").split("\n")
                for line in lines[:-1]:  # whole lines only
                    match = tinyguest.HEARTBEAT_LINE.search(line)
                    if match:
                        found.append((float(match.group(1)), match.group(2)))

    try:
        connection.lookupByName(name).openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            raise AssertionError(f"no heartbeat from {name} on {uri} within {timeout:g} s; the console showed "
                                 f"{bytes(received[-500:]).decode(errors='replace')!r}")
        return found[0]
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        connection.close()


def qemu_pid(name: str) -> int | None:
    """Return the pid of the QEMU process running domain ``name`` (``-name guest=NAME,...``), or None."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.startswith(f"guest={name},".encode()) or arg == f"guest={name}".encode() for arg in argv):
            return int(entry.name)
    return None


def kill_libvirtd_in_a_start(daemon: labs.LabHost, name: str, attempts: int = 5) -> int:
    """Destroy domain ``name`` until its start (by a controller) is caught half done; kill ``daemon``'s libvirtd then.

    Returns the pid of the half-started QEMU, stopped (SIGSTOP): a libvirtd started again
    shows the domain paused, "starting up", for as long as that QEMU does not answer it,
    and then kills it without a lifecycle event (libvirt 9.0).
    """
    starting = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP)
    connection = libvirt.open(daemon.uri)
    try:
        for _ in range(attempts):
            connection.lookupByName(name).destroy()
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(libvirt.libvirtError):
                    state = tuple(connection.lookupByName(name).state())
                    # libvirt says "starting up" a moment before it spawns the QEMU: wait for that QEMU to be there
                    if state == starting and (pid := qemu_pid(name)) is not None:
                        daemon.kill_libvirtd()
                        os.kill(pid, signal.SIGSTOP)
                        return pid
                    if state[0] == libvirt.VIR_DOMAIN_RUNNING:
                        break  # started before a look caught it starting: again
                assert time.monotonic() < deadline, f"nothing started {name} again within 20 s"
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            connection.close()
    raise AssertionError(f"no start of {name} caught half done in {attempts} attempts")

"""A lab of private libvirtd daemons on this machine, each a simulated hypervisor.

Each host of a :class:`Lab` is a ``libvirtd`` with its own ``virtlogd``, living in its own
mount, UTS and PID namespaces, so tests may kill it (``kill -9``), restart it, and throw
it away without disturbing the machine's own libvirtd (``qemu:///system``, which other
people use).  A host has:

* its own state: directories of the lab bind-mounted, inside its namespace only, over
  ``/run/libvirt`` (hence ``/var/run/libvirt``), ``/var/lib/libvirt``,
  ``/var/cache/libvirt``, ``/var/log/libvirt`` and ``/etc/libvirt`` (a fresh configuration:
  the machine's networks, pools and domains are not copied in);
* its own hostname (UTS namespace), ``host_uuid`` (libvirtd.conf) and pid files (``-p``);
* a socket reached from outside as ``qemu+unix:///system?socket=<lab>/<host>/run/libvirt-sock``.

The mounts live as long as a *holder*: ``unshare --mount --uts --pid --fork --mount-proc``
runs a tiny process that is PID 1 of the host's namespaces (it reaps orphans, as an init
must).  Daemons are started with ``nsenter`` into it, so killing libvirtd leaves the
namespaces, the guests (QEMU survives libvirtd, as on a real host) and the mounts in place.
When the holder dies, the kernel kills every process of its PID namespace (libvirtd,
virtlogd, QEMU, dnsmasq) and the mount namespace goes with them: whatever happens to the
caller, no process and no mount outlives a host.  Hosts started by tests are bound to the
test process (``bound=True``: the holder is killed when the process that started it dies).

What a namespace cannot hold, because the network namespace is the machine's (so lab
hosts can reach each other over 127.0.0.1, e.g. to migrate): the bridges and firewall
rules of libvirt networks, and the cgroup directories of guests.  :meth:`LabHost.stop`
destroys networks and guests through libvirt first, then removes any bridge, firewall
rule and cgroup directory of the host's own that is left (after a crash of the caller,
:func:`sweep_abandoned` does it for labs whose owner died).  The machine's libvirtd is
never touched; libvirt's global, empty ``LIBVIRT_*`` iptables chains stay, because the
machine's libvirtd creates them only once per process and relies on them.

Give a lab's networks an explicit bridge name (:func:`bridge_name`) and no NAT where you
can, so that they never collide with the machine's ``virbr*``.

Usage (``scripts/lab`` runs this module as root)::

    scripts/lab start [--name kvmops-lab] [--hosts 3]     # prints each host's URI and Host manifest
    scripts/lab status|stop [--name kvmops-lab]           # status: the same; stop: removes every trace
    scripts/lab kill|restart --host kvmops-lab-h1 [--name kvmops-lab]
    scripts/lab sweep                                     # labs whose owner is gone
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

LAB_ROOT = Path(os.environ.get("KVMOPS_LAB_ROOT", "/var/tmp"))
STATE_FILE = "lab.json"
# inside the namespace -> the host's directory of the same role
MASKED = {
    "/run/libvirt": "run",
    "/var/lib/libvirt": "lib",
    "/var/cache/libvirt": "cache",
    "/var/log/libvirt": "log",
    "/etc/libvirt": "etc",
}
LIBVIRTD_PID = "/run/libvirt/libvirtd.pid"
VIRTLOGD_PID = "/run/libvirt/virtlogd.pid"
START_TIMEOUT = 30.0
PR_SET_PDEATHSIG = 1
# Lab hosts share the machine's network namespace, so two of them (of any lab) must not
# hand the same port to incoming migrations: each takes a block of its own, away from the
# machine's libvirtd (49152-49215), claimed by a lock its namespace holder keeps open.
MIGRATION_PORT_BLOCKS = range(50000, 60000, 16)
MIGRATION_PORT_LOCKS = Path("/run/lock/kvmops-lab-migration-ports")

# PID 1 of a host's namespaces: mount the host's directories, take its hostname, then
# reap orphans (daemons double-fork and are reparented to it) until killed.
_HOLDER = r"""
import os, socket, subprocess, sys, time
base, hostname, masked = sys.argv[1], sys.argv[2], sys.argv[3:]
for pair in masked:
    inside, outside = pair.split("=", 1)
    subprocess.run(["mount", "--bind", os.path.join(base, outside), inside], check=True)
socket.sethostname(hostname)
open(os.path.join(base, "ready"), "w").close()
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.5)
"""


def claim_migration_ports() -> tuple[int, int, int]:
    """Return an open file descriptor locking a block of migration ports no other lab host holds, and its first and last port.

    The block stays claimed as long as the descriptor is open in some process (the host's
    namespace holder inherits it), so a host killed by any means gives its block back.
    """
    MIGRATION_PORT_LOCKS.mkdir(parents=True, exist_ok=True)
    for low in MIGRATION_PORT_BLOCKS:
        descriptor = os.open(MIGRATION_PORT_LOCKS / str(low), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue
        return descriptor, low, low + MIGRATION_PORT_BLOCKS.step - 1
    raise RuntimeError(f"every block of migration ports is held by a lab host (see {MIGRATION_PORT_LOCKS})")


def bridge_name(prefix: str, suffix: str = "0") -> str:
    """Return a Linux bridge name (at most 15 characters) private to ``prefix``."""
    name = f"{prefix}-{suffix}"
    if len(name) <= 15:
        return name
    return f"kv{hashlib.sha256(prefix.encode()).hexdigest()[:8]}-{suffix}"[:15]


def process_start(pid: int) -> str | None:
    """Return the start time of process ``pid`` (clock ticks since boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int | None, started: str | None) -> bool:
    """Return whether process ``pid``, started at ``started``, still runs (a zombie is dead: pid 1 may never reap it)."""
    return pid is not None and started is not None and process_start(pid) == started and not _zombie(pid)


def _bind_to_parent() -> None:
    """Have the kernel SIGKILL this (child) process when the thread that started it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class LabHost:
    """One simulated hypervisor: a libvirtd and a virtlogd in namespaces of their own."""

    name: str
    directory: Path
    host_uuid: str
    holder_pid: int | None = None
    holder_started: str | None = None

    @property
    def socket(self) -> Path:
        """Return the path of libvirtd's read-write socket, seen from outside."""
        return self.directory / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        """Return the libvirt URI that reaches this host from outside its namespaces."""
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def pools(self) -> Path:
        """Return a directory for this host's storage pools (readable by QEMU's user)."""
        return self.directory / "pools"

    # --- the namespaces -------------------------------------------------------------

    def create(self, *, bound: bool) -> None:
        """Write a fresh configuration and start the holder of the namespaces."""
        self.wait_for_holder(self.spawn(bound=bound))

    def spawn(self, *, bound: bool) -> subprocess.Popen:
        """Write a fresh configuration and launch the holder of the namespaces; return it, not yet ready.

        With ``bound``, call it from the thread that lives as long as the lab should: the kernel
        kills the holder when the *thread* that launched it ends (``PR_SET_PDEATHSIG``).
        """
        for inside, outside in MASKED.items():
            (self.directory / outside).mkdir(parents=True, exist_ok=True)
        (self.directory / "log" / "qemu").mkdir(exist_ok=True)  # guests' serial logs may be written there first
        etc = self.directory / "etc"
        for sub in ("qemu/networks/autostart", "qemu/autostart", "storage/autostart", "secrets", "hooks"):
            (etc / sub).mkdir(parents=True, exist_ok=True)
        if Path("/etc/libvirt/nwfilter").is_dir() and not (etc / "nwfilter").exists():
            shutil.copytree("/etc/libvirt/nwfilter", etc / "nwfilter")
        (etc / "libvirt.conf").write_text("", encoding="ascii")
        (etc / "libvirtd.conf").write_text(f'host_uuid = "{self.host_uuid}"\n', encoding="ascii")
        (etc / "virtlogd.conf").write_text("", encoding="ascii")
        self.pools.mkdir(exist_ok=True)
        for path in (self.directory, self.pools, self.directory / "lib"):
            os.chmod(path, 0o755)  # QEMU runs as libvirt-qemu and must reach its disks
        (self.directory / "ready").unlink(missing_ok=True)
        argv = ["unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc", "--propagation", "private",
                "--kill-child", "--", sys.executable, "-c", _HOLDER, str(self.directory), self.name,
                *(f"{inside}={outside}" for inside, outside in MASKED.items())]
        ports, low, high = claim_migration_ports()
        try:
            # namespaces = []: QEMU stays in the host's mount namespace (its /run/libvirt)
            (etc / "qemu.conf").write_text(
                f"namespaces = []\nmigration_port_min = {low}\nmigration_port_max = {high}\n", encoding="ascii")
            with open(self.directory / "holder.log", "ab") as log:  # the child keeps its own copy
                return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                        preexec_fn=_bind_to_parent if bound else None, pass_fds=(ports,))
        finally:
            os.close(ports)  # the holder keeps the block claimed

    def wait_for_holder(self, process: subprocess.Popen) -> None:
        """Return once the holder ``process`` (from :meth:`spawn`) has mounted and named the host; record its pid."""
        deadline = time.monotonic() + START_TIMEOUT
        while not (self.directory / "ready").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lab host {self.name}: namespace holder failed, see {self.directory}/holder.log")
            time.sleep(0.02)
        holder = self._child_of(process.pid)
        self.holder_pid, self.holder_started = holder, process_start(holder)

    @staticmethod
    def _child_of(pid: int) -> int:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii").split()
        return int(children[0])

    @property
    def alive(self) -> bool:
        """Return whether the namespaces exist (their holder runs)."""
        return _alive(self.holder_pid, self.holder_started)

    def members(self) -> list[int]:
        """Return the (machine) pids of every process in this host's PID namespace."""
        if not self.alive:
            return []
        namespace = os.readlink(f"/proc/{self.holder_pid}/ns/pid")
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "ns" / "pid") == namespace:
                        pids.append(int(entry.name))
        return pids

    def _inside(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.holder_pid), "-m", "-u", "-p", "--", *argv],
                              capture_output=True, text=True, timeout=START_TIMEOUT)

    def _daemon_pid(self, pidfile: str) -> int | None:
        """Return the machine pid of the daemon whose pid file (inside) is ``pidfile``."""
        try:
            inner = int((self.directory / MASKED["/run/libvirt"] / Path(pidfile).name).read_text().strip())
        except (OSError, ValueError):
            return None
        for pid in self.members():
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                nspid = next(line.split()[-1] for line in status.splitlines() if line.startswith("NSpid:"))
                if int(nspid) == inner and not _zombie(pid):
                    return pid
        return None

    # --- the daemons ----------------------------------------------------------------

    @property
    def libvirtd_pid(self) -> int | None:
        """Return the machine pid of this host's libvirtd, or None when it is not running."""
        return self._daemon_pid(LIBVIRTD_PID)

    def start_daemons(self) -> None:
        """Start virtlogd and libvirtd (whichever is not running) and wait until libvirtd answers."""
        if self._daemon_pid(VIRTLOGD_PID) is None:
            done = self._inside("virtlogd", "-d", "-p", VIRTLOGD_PID)
            if done.returncode != 0:
                raise RuntimeError(f"lab host {self.name}: virtlogd did not start: {done.stderr.strip()}")
        deadline = time.monotonic() + START_TIMEOUT
        while self.libvirtd_pid is None:
            done = self._inside("libvirtd", "-d", "-p", LIBVIRTD_PID)
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:  # (a dying libvirtd may hold its pid file a moment longer)
                raise RuntimeError(f"lab host {self.name}: libvirtd did not start: {done.stderr.strip()}")
            time.sleep(0.1)
        self.wait_until_answering()

    def wait_until_answering(self, timeout: float = START_TIMEOUT) -> None:
        """Return once libvirtd accepts connections; raise after ``timeout`` seconds."""
        import libvirt

        libvirt.registerErrorHandler(lambda _c, _e: None, None)  # each refused attempt is expected, not news
        deadline = time.monotonic() + timeout
        while True:
            try:
                libvirt.open(self.uri).close()
                return
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"lab host {self.name}: libvirtd does not answer at {self.uri}") from None
                time.sleep(0.05)

    def kill_libvirtd(self, signum: int = signal.SIGKILL) -> bool:
        """Send libvirtd ``signum`` and wait until it is gone (guests, virtlogd and dnsmasq keep running).

        SIGKILL is a crash; SIGTERM a clean stop (SIGKILL follows if it is not gone within
        ten seconds).  Return whether libvirtd ran.
        """
        pid = self.libvirtd_pid
        if pid is None:
            return False
        os.kill(pid, signum)
        # Gone, not just a zombie: a zombie leader may still have threads holding its files
        # (the pid file's lock); the holder reaps it once the last thread is dead.
        deadline = time.monotonic() + 10
        while process_start(pid) is not None:
            if time.monotonic() > deadline:
                if signum == signal.SIGKILL:
                    break
                os.kill(pid, signal.SIGKILL)
                signum, deadline = signal.SIGKILL, time.monotonic() + 10
            time.sleep(0.005)
        return True

    def restart_libvirtd(self) -> None:
        """Start libvirtd again after :meth:`kill_libvirtd`, and wait until it answers."""
        self.start_daemons()

    def pause_libvirtd(self) -> bool:
        """Stop libvirtd with SIGSTOP: its socket still accepts, nothing answers (a hung daemon). Return whether it ran."""
        pid = self.libvirtd_pid
        if pid is None:
            return False
        os.kill(pid, signal.SIGSTOP)
        return True

    def resume_libvirtd(self) -> None:
        """Let a libvirtd stopped by :meth:`pause_libvirtd` run again (SIGCONT; harmless when it runs)."""
        pid = self.libvirtd_pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    # --- removal --------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Remove the host: guests, networks, processes, mounts, bridges, rules; return what was forced."""
        forced: list[str] = []
        if self.alive:
            try:
                self.resume_libvirtd()  # a paused libvirtd would hang the cleanup below
                self.start_daemons()
                self._destroy_guests_and_networks()
            except Exception as exc:  # noqa: BLE001 (removal goes on whatever happened)
                forced.append(f"libvirtd cleanup failed ({exc}); killing the namespace")
            self._kill_namespace()
        forced += self._remove_leftovers()
        return forced

    def _destroy_guests_and_networks(self) -> None:
        import libvirt

        libvirt.registerErrorHandler(lambda _c, _e: None, None)
        connection = libvirt.open(self.uri)
        try:
            def destroy(domain) -> None:
                with contextlib.suppress(libvirt.libvirtError):
                    domain.destroy()

            # concurrently: tearing a TCG guest down takes a while, and a host may have dozens
            each_at_once(destroy, connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
            for network in connection.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_ACTIVE):
                with contextlib.suppress(libvirt.libvirtError):
                    network.destroy()
        finally:
            connection.close()

    def _kill_namespace(self) -> None:
        members = self.members()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.holder_pid, signal.SIGKILL)  # PID 1 of the namespace: the kernel kills the rest
        deadline = time.monotonic() + 15
        while any(process_start(pid) is not None and not _zombie(pid) for pid in members):
            if time.monotonic() > deadline:
                raise RuntimeError(f"lab host {self.name}: processes {members} survive their namespace")
            time.sleep(0.05)

    def bridges(self) -> set[str]:
        """Return the bridge names of every network this host defined or ran."""
        import xml.etree.ElementTree as ET

        names = set()
        for directory in (self.directory / "run" / "network", self.directory / "etc" / "qemu" / "networks"):
            for path in directory.glob("*.xml"):
                with contextlib.suppress(ET.ParseError, OSError):
                    for bridge in ET.parse(path).iter("bridge"):
                        if bridge.get("name"):
                            names.add(bridge.get("name"))
        return names

    def _remove_leftovers(self) -> list[str]:
        forced = []
        for bridge in sorted(self.bridges()):
            if Path(f"/sys/class/net/{bridge}").exists():
                subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=10)
                forced.append(f"bridge {bridge} deleted")
            forced += _delete_firewall_rules(bridge)
        forced += self._remove_guest_cgroups()
        return forced

    def _remove_guest_cgroups(self) -> list[str]:
        """Remove the cgroup directories of guests this host's libvirtd did not clean up."""
        # every guest this host ever started has a log; a libvirtd killed while a guest
        # stopped never removed that guest's cgroups
        names = {path.stem for path in (self.directory / "log" / "qemu").glob("*.log")}
        names |= {path.stem for path in (self.directory / "etc" / "qemu").glob("*.xml")}
        names |= {path.stem for path in (self.directory / "run" / "qemu").glob("*.xml")}
        forced = []
        for name in names:
            # libvirt's names without systemd: machine/qemu-<id>-<name>.libvirt-qemu.  A cgroup
            # that still has processes (another daemon's guest of the same name) cannot be removed.
            leaf = re.compile(rf"qemu-\d+-{re.escape(name)}\.libvirt-qemu")
            for path in Path("/sys/fs/cgroup").glob("*/machine/*"):
                if leaf.fullmatch(path.name):
                    for sub in sorted(path.rglob("*"), key=lambda p: -len(p.parts)):
                        if sub.is_dir():
                            with contextlib.suppress(OSError):
                                sub.rmdir()
                    with contextlib.suppress(OSError):
                        path.rmdir()
                        forced.append(f"cgroup {path} removed")
        return forced


def each_at_once(function, items) -> list:
    """Return ``[function(item) for item in items]``, computed in threads at once (each waits on other processes)."""
    items = list(items)
    if len(items) < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(function, items))


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _delete_firewall_rules(bridge: str) -> list[str]:
    """Delete every iptables rule that names ``bridge`` as its in- or out-interface."""
    deleted = []
    for table in ("filter", "nat", "mangle"):
        saved = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, timeout=10)
        for line in saved.stdout.splitlines():
            words = line.split()
            if line.startswith("-A ") and any(words[i] in ("-i", "-o") and words[i + 1] == bridge
                                              for i in range(len(words) - 1)):
                subprocess.run(["iptables", "-w", "-t", table, "-D", *words[1:]], capture_output=True, timeout=10)
                deleted.append(f"iptables -t {table} {line}")
    return deleted


class Lab:
    """N lab hosts under ``<root>/<name>``; the first brick of a fleet on one machine.

    ``Lab(name).start(hosts=N)`` creates ``<name>-h1`` ... ``<name>-hN``; ``stop()``
    removes every trace.  A directory ``shared`` under the lab is visible to every host
    (it is not masked by their namespaces): it stands for shared storage.
    """

    def __init__(self, name: str, root: Path = LAB_ROOT) -> None:
        self.name = name
        self.directory = root / name
        self.hosts: list[LabHost] = []

    @property
    def shared(self) -> Path:
        """Return the directory every host sees (shared storage)."""
        return self.directory / "shared"

    def host(self, name: str) -> LabHost:
        """Return the host called ``name``."""
        return next(h for h in self.hosts if h.name == name)

    def start(self, hosts: int = 1, *, bound: bool = True) -> Lab:
        """Create ``hosts`` hosts and start their daemons; with ``bound``, they die with this process."""
        sweep_abandoned(self.directory.parent, self.name)
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o755)
        self.shared.mkdir(exist_ok=True)
        os.chmod(self.shared, 0o755)
        (self.directory / "owner").write_text(
            f"{os.getpid()} {process_start(os.getpid())}\n" if bound else "cli\n", encoding="ascii")
        holders: list[subprocess.Popen] = []
        try:
            # Holders are launched from this thread (a bound holder dies with the thread that
            # launched it) and recorded before anything runs in them, so that a stop or a
            # sweep finds them; then every host's daemons start at once.
            for index in range(1, hosts + 1):
                host = LabHost(f"{self.name}-h{index}", self.directory / f"h{index}", str(uuid.uuid4()))
                self.hosts.append(host)
                holders.append(host.spawn(bound=bound))
            for host, holder in zip(self.hosts, holders):
                host.wait_for_holder(holder)
                self.save()
            each_at_once(LabHost.start_daemons, self.hosts)
        except BaseException:
            try:
                self.stop()
            finally:
                for holder in holders:  # any not yet recorded: unshare's --kill-child takes the holder along
                    with contextlib.suppress(OSError):
                        holder.kill()
            raise
        return self

    def save(self) -> None:
        """Record the hosts in ``lab.json``, so another process can stop them."""
        state = [{"name": h.name, "directory": str(h.directory), "host_uuid": h.host_uuid,
                  "holder_pid": h.holder_pid, "holder_started": h.holder_started} for h in self.hosts]
        (self.directory / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="ascii")

    @classmethod
    def load(cls, name: str, root: Path = LAB_ROOT) -> Lab:
        """Return the lab ``name`` as ``lab.json`` describes it."""
        lab = cls(name, root)
        with contextlib.suppress(FileNotFoundError):
            for entry in json.loads((lab.directory / STATE_FILE).read_text(encoding="ascii")):
                entry["directory"] = Path(entry["directory"])
                lab.hosts.append(LabHost(**entry))
        return lab

    def stop(self) -> list[str]:
        """Remove every host and the lab's directory; return what had to be forced."""
        forced = [line for lines in each_at_once(LabHost.stop, self.hosts) for line in lines]
        shutil.rmtree(self.directory, ignore_errors=True)
        return forced


def sweep_abandoned(root: Path = LAB_ROOT, name: str | None = None) -> list[str]:
    """Remove labs under ``root`` (or just ``name``) whose owner process is gone."""
    removed = []
    for state in sorted(root.glob(f"{name or '*'}/{STATE_FILE}")):
        directory = state.parent
        try:
            owner = (directory / "owner").read_text(encoding="ascii").split()
        except FileNotFoundError:
            owner = []
        if owner == ["cli"] and (name is None or "*" in name):
            continue  # started by hand: stopped by hand
        if len(owner) == 2 and _alive(int(owner[0]), owner[1]):
            continue
        Lab.load(directory.name, root).stop()
        removed.append(directory.name)
    return removed


def main(argv: list[str] | None = None) -> int:
    """``scripts/lab``: start, inspect, crash and remove a lab by hand."""
    parser = argparse.ArgumentParser(prog="scripts/lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "status", "stop", "kill", "restart", "sweep"])
    parser.add_argument("--name", default="kvmops-lab")
    parser.add_argument("--hosts", type=int, default=1)
    parser.add_argument("--host", help="for kill/restart: the host's name (default: the first)")
    args = parser.parse_args(argv)
    if args.command == "sweep":
        print("\n".join(sweep_abandoned()) or "nothing to sweep")
        return 0
    if args.command == "start":
        lab = Lab(args.name).start(args.hosts, bound=False)
    else:
        lab = Lab.load(args.name)
        if not lab.hosts:
            print(f"no lab {args.name} under {LAB_ROOT}", file=sys.stderr)
            return 1
    if args.command == "stop":
        for line in lab.stop():
            print("forced:", line)
        print(f"lab {args.name} removed")
        return 0
    if args.command in ("kill", "restart"):
        host = lab.host(args.host) if args.host else lab.hosts[0]
        if args.command == "kill":
            print(f"{host.name}: libvirtd {'killed' if host.kill_libvirtd() else 'was not running'}")
        else:
            host.restart_libvirtd()
            print(f"{host.name}: libvirtd running (pid {host.libvirtd_pid})")
        return 0
    for host in lab.hosts:
        state = f"libvirtd pid {host.libvirtd_pid}" if host.alive and host.libvirtd_pid else "libvirtd down"
        print(f"{host.name}\t{host.uri}\t{state if host.alive else 'namespace gone'}")
    print(f"\n# Host manifests for this lab: paste into a file of your manifest directory (e.g. hosts.yaml).\n"
          f"# Shared storage: a StoragePool with shared: true and path {lab.shared}/<pool>.")
    print(host_manifests(lab), end="")
    return 0


def host_manifests(lab: Lab) -> str:
    """Return one kvmops ``Host`` manifest per host of ``lab``, as multi-document YAML ready to paste.

    Each host gets a label ``rack: r<N>`` (to try ``spreadBy: rack``) and ``lab: <name>``.
    """
    documents = []
    for index, host in enumerate(lab.hosts, 1):
        documents.append(
            "---\n"
            "apiVersion: kvmops/v1\n"
            "kind: Host\n"
            "metadata:\n"
            f"  name: {host.name}\n"
            f"  labels: {{lab: {lab.name}, rack: r{index}}}\n"
            "spec:\n"
            f"  uri: {host.uri}\n"
        )
    return "".join(documents)


if __name__ == "__main__":
    sys.exit(main())

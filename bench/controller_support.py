"""Shared plumbing for the ``kvmops run`` benchmarks (controller_latency.py, controller_idle.py).

Not a benchmark itself.  It provides:

* naming: every libvirt object and directory is named ``kvmops-bench2-<bench>-*`` (the
  pool directory under /var/tmp, mode 0755 so QEMU can read the images); nothing
  outside that prefix is ever touched;
* :class:`Libvirt`: a few connections to spread concurrent teardown over (libvirtd serves
  only five calls at a time per client), the sweep of leftovers and the pool;
* :class:`EventRecorder`: libvirt lifecycle events received *in the benchmark process*
  (``virEventRegisterDefaultImpl`` + ``domainEventRegisterAny``), time-stamped with
  ``time.monotonic`` in the callback, so latencies need no polling;
* :class:`ControllerProcess`: ``kvmops run`` as a subprocess with JSON logs in a file, its
  ``/healthz`` and ``/metrics``, ``/proc`` readings, and a clean stop.

The controller is always started with ``--no-prune``: the daemon is shared, and every
domain carrying kvmops' mark that our manifests do not declare (other engineers'
``kvmops-e2e-*`` and ``kvmops-bench-*`` VMs) would otherwise be shut down and undefined
by our controller.  By default it also gets ``--scope kvmops-bench2-<bench>`` (when this
kvmops has scopes), the way a controller sharing a host is meant to run: it then ignores
the lifecycle events of domains other manifest sets own.  ``--scope ''`` on the
benchmarks drops it (scope "default", shared with other people's kvmops VMs, whose
every event then wakes our controller).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import libvirt

REPO = Path(__file__).resolve().parents[1]
URI = os.environ.get("KVMOPS_BENCH_URI", "qemu:///system")
BASE_PREFIX = "kvmops-bench2-"
WORK_ROOT = Path("/var/tmp")
CONNECTIONS = 4  # libvirtd's max_client_requests is 5 per connection
CLK_TCK = os.sysconf("SC_CLK_TCK")

libvirt.registerErrorHandler(lambda _context, _error: None, None)

VM_MANIFEST = """\
apiVersion: kvmops/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  vcpus: 1
  memory: 64MiB
  virtType: qemu
  disks:
    - name: root
      pool: {pool}
      size: 64MiB
  console: serial
  graphics: none
  runStrategy: Always
"""

VOLUME_XML = """\
<volume>
  <name>{name}</name>
  <capacity unit="bytes">{capacity}</capacity>
  <allocation unit="bytes">0</allocation>
  <target><format type="qcow2"/></target>
</volume>"""

LIFECYCLE = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}


# --- naming -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    """Every name one benchmark uses, all under ``<base><bench>-`` (``kvmops-bench2-<bench>-`` by default)."""

    bench: str
    base: str = BASE_PREFIX

    @property
    def prefix(self) -> str:
        return f"{self.base}{self.bench}-"

    @property
    def pool(self) -> str:
        return f"{self.prefix}pool"

    @property
    def workdir(self) -> Path:
        return WORK_ROOT / f"{self.prefix}work"

    @property
    def pool_path(self) -> Path:
        return self.workdir / "pool"

    @property
    def manifests(self) -> Path:
        return self.workdir / "manifests"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "controller.pid"

    def vm(self, index: int) -> str:
        return f"{self.prefix}vm-{index:02d}"

    def ours(self, name: str) -> bool:
        return name.startswith(self.prefix)


def write_manifest(directory: Path, name: str, pool: str) -> None:
    """Write ``<name>.yaml`` atomically: a hidden temporary file, then a rename."""
    temporary = directory / f".{name}.yaml.tmp"
    temporary.write_text(VM_MANIFEST.format(name=name, pool=pool), encoding="utf-8")
    os.replace(temporary, directory / f"{name}.yaml")


# --- statistics -----------------------------------------------------------------------------


def p95(values: Sequence[float]) -> float:
    """Return the 95th percentile by nearest rank (the 19th of 20 values)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def summary_row(label: str, values: Sequence[float], scale: float = 1000.0, unit: str = "ms") -> str:
    if not values:
        return f"{label:<44} {'(no samples)':>10}"
    v = [x * scale for x in values]
    return (f"{label:<44} {statistics.median(v):8.0f} {p95(v):8.0f} {min(v):8.0f} {max(v):8.0f} {len(v):4d}  {unit}")


def summary_header() -> str:
    return f"{'':<44} {'median':>8} {'p95':>8} {'min':>8} {'max':>8} {'n':>4}"


def load1() -> float:
    return os.getloadavg()[0]


def code_version() -> str:
    """Return the commit the benchmark runs and whether reconciler/ differs from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "reconciler")
    return f"git {commit}" + (" + uncommitted changes in reconciler/" if dirty else "")


# --- libvirt: connections, sweep, pool ---------------------------------------------------------


class Libvirt:
    """A few connections to one libvirtd, and the benchmark's housekeeping on them."""

    def __init__(self, names: Names, uri: str = URI, count: int = CONNECTIONS) -> None:
        self.names = names
        self.uri = uri
        self.count = count
        self.items = [libvirt.open(uri) for _ in range(count)]
        self.main = self.items[0]

    def close(self) -> None:
        for connection in self.items:
            with contextlib.suppress(libvirt.libvirtError):
                connection.close()

    def alive(self) -> bool:
        try:
            return all(connection.isAlive() for connection in self.items) and bool(self.main.getLibVersion())
        except libvirt.libvirtError:
            return False

    def ensure_alive(self, timeout: float = 120) -> bool:
        """Reopen the connections if libvirtd was restarted under them; return True if it was."""
        if self.alive():
            return False
        self.close()
        self.items = open_with_retry(self.uri, self.count, timeout)
        self.main = self.items[0]
        return True

    def map(self, function: Callable[[libvirt.virConnect, str], None], names: Iterable[str]) -> None:
        """Call ``function(connection, name)`` for every name, concurrently over the connections."""
        names = list(names)
        if not names:
            return
        jobs = [(self.items[i % len(self.items)], name) for i, name in enumerate(names)]
        with ThreadPoolExecutor(max_workers=min(len(jobs), 4 * len(self.items))) as executor:
            list(executor.map(lambda job: function(*job), jobs))

    def our_domains(self, *, active_only: bool = False) -> list[str]:
        flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE if active_only else 0
        return [d.name() for d in self.main.listAllDomains(flags) if self.names.ours(d.name())]

    def foreign_running(self) -> int:
        """Return how many domains outside our prefix run (other people's load)."""
        return sum(1 for d in self.main.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                   if not d.name().startswith(BASE_PREFIX))

    def remove_domains(self) -> int:
        """Destroy concurrently, then undefine, every domain of our prefix; return how many."""
        names = self.our_domains()

        def destroy(connection: libvirt.virConnect, name: str) -> None:
            with contextlib.suppress(libvirt.libvirtError):
                domain = connection.lookupByName(name)
                if domain.isActive():
                    domain.destroy()

        def undefine(connection: libvirt.virConnect, name: str) -> None:
            with contextlib.suppress(libvirt.libvirtError):
                domain = connection.lookupByName(name)
                try:
                    domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                         | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
                except libvirt.libvirtError:
                    domain.undefine()

        self.map(destroy, names)
        self.map(undefine, names)
        return len(names)

    def remove_everything(self) -> None:
        """Remove every domain, volume, pool and directory of our prefix (and only those)."""
        self.remove_domains()
        pools = [p for p in self.main.listAllStoragePools(0) if self.names.ours(p.name())]
        for pool in pools:
            with contextlib.suppress(libvirt.libvirtError):
                if not pool.isActive():
                    pool.create(0)
                pool.refresh(0)
                volumes = [v.name() for v in pool.listAllVolumes(0)]
                pool_name = pool.name()

                def delete(connection: libvirt.virConnect, volume: str, pool_name: str = pool_name) -> None:
                    with contextlib.suppress(libvirt.libvirtError):
                        connection.storagePoolLookupByName(pool_name).storageVolLookupByName(volume).delete(0)

                self.map(delete, volumes)
            with contextlib.suppress(libvirt.libvirtError):
                if pool.isActive():
                    pool.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                pool.undefine()
        if self.names.workdir.name.startswith(self.names.prefix):
            shutil.rmtree(self.names.workdir, ignore_errors=True)

    def create_pool(self) -> None:
        """Define, build and start our dir pool under /var/tmp, readable by QEMU (0755)."""
        self.names.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.names.workdir, 0o755)
        xml = (f"<pool type='dir'><name>{self.names.pool}</name>"
               f"<target><path>{self.names.pool_path}</path></target></pool>")
        pool = self.main.storagePoolDefineXML(xml, 0)
        pool.build(0)
        os.chmod(self.names.pool_path, 0o755)
        pool.create(0)

    def create_volume(self, name: str, capacity: int) -> None:
        pool = self.main.storagePoolLookupByName(self.names.pool)
        pool.createXML(VOLUME_XML.format(name=name, capacity=capacity), 0)


def open_with_retry(uri: str, count: int, timeout: float) -> list[libvirt.virConnect]:
    """Open ``count`` connections, waiting up to ``timeout`` s for libvirtd to answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return [libvirt.open(uri) for _ in range(count)]
        except libvirt.libvirtError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


class Disrupted(Exception):
    """libvirtd went away during a measurement (someone restarted it): the try does not count."""


# --- libvirt events in this process --------------------------------------------------------------

_event_loop_started = False


def start_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread (once)."""
    global _event_loop_started
    if _event_loop_started:
        return
    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=run, name="bench-libvirt-events", daemon=True).start()
    _event_loop_started = True


@dataclass(frozen=True)
class Event:
    monotonic: float
    wall: float
    name: str
    kind: str  # defined, started, stopped, ...
    detail: int


class EventRecorder:
    """Every domain lifecycle event libvirtd sends, time-stamped on arrival."""

    def __init__(self, uri: str = URI) -> None:
        start_event_loop()
        self._uri = uri
        self._condition = threading.Condition()
        self.events: list[Event] = []
        self.disconnects: list[float] = []  # monotonic times libvirtd dropped our connection
        self._connect()

    def _connect(self) -> None:
        self._connection = open_with_retry(self._uri, 1, 120)[0]
        self._connection.setKeepAlive(2, 3)
        self._connection.registerCloseCallback(self._on_close, None)
        self._callback = self._connection.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None)

    def _on_close(self, _connection, _reason, _opaque) -> None:
        with self._condition:
            self.disconnects.append(time.monotonic())
            self._condition.notify_all()

    def disconnected_since(self, since: float) -> bool:
        with self._condition:
            return any(t >= since for t in self.disconnects)

    def reconnect(self) -> None:
        """Open a new connection and watch events again, after libvirtd was restarted."""
        self.close()
        self._connect()

    def _on_event(self, _connection, domain, event, detail, _opaque) -> None:
        now, wall = time.monotonic(), time.time()
        record = Event(now, wall, domain.name(), LIFECYCLE.get(event, str(event)), detail)
        with self._condition:
            self.events.append(record)
            self._condition.notify_all()

    def wait_for(self, name: str, kind: str, *, after: float, timeout: float) -> Event | None:
        """Return the first ``kind`` event of ``name`` received at or after ``after`` (monotonic).

        Raises :class:`Disrupted` if the connection to libvirtd broke since ``after``.
        """
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for event in self.events:
                    if event.monotonic >= after and event.name == name and event.kind == kind:
                        return event
                if any(t >= after for t in self.disconnects):
                    raise Disrupted(f"libvirtd dropped the connection while waiting for {name} {kind}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._condition.wait(remaining)

    def between(self, start: float, end: float) -> list[Event]:
        with self._condition:
            return [e for e in self.events if start <= e.monotonic < end]

    def last_event_time(self) -> float:
        with self._condition:
            return self.events[-1].monotonic if self.events else 0.0

    def wait_quiet(self, quiet: float, *, timeout: float, names: Callable[[str], bool] = lambda _n: True) -> bool:
        """Wait until no event (of ``names``) arrived for ``quiet`` seconds; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._condition:
                relevant = [e.monotonic for e in self.events if names(e.name)]
            last = relevant[-1] if relevant else 0.0
            if time.monotonic() - last >= quiet:
                return True
            time.sleep(min(0.05, quiet))
        return False

    def close(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            self._connection.domainEventDeregisterAny(self._callback)
        with contextlib.suppress(libvirt.libvirtError):
            self._connection.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            self._connection.close()


# --- the controller process ---------------------------------------------------------------------


def parse_timestamp(value: str) -> float:
    """Return the epoch seconds of structlog's ISO UTC timestamp."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class ProcSample:
    monotonic: float
    wall: float
    cpu_ticks: int  # utime + stime, all threads
    rss_kib: int
    hwm_kib: int


class ControllerProcess:
    """``kvmops run`` in a subprocess, its log in a file, its HTTP listener, its /proc."""

    def __init__(self, names: Names, *, uri: str = URI, resync_interval: float = 600,
                 extra: Sequence[str] = (), profile_to: Path | None = None, scope: str | None = None) -> None:
        self.names = names
        self.log_path = names.workdir / "controller.log"
        launcher = [sys.executable]
        if profile_to is not None:
            launcher += ["-m", "cProfile", "-o", str(profile_to)]
        self.argv = [
            *launcher, "-m", "reconciler", "--log-format", "json", "run", str(names.manifests),
            "--connect", uri, "--resync-interval", f"{resync_interval:g}", "--state-dir", str(names.state_dir),
            "--listen", "127.0.0.1:0", "--no-prune", *scope_args(scope), *extra,
        ]
        self.process: subprocess.Popen | None = None
        self.address: str | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command_line(self) -> str:
        return " ".join(self.argv)

    def start(self, *, timeout: float = 30) -> None:
        self.names.state_dir.mkdir(parents=True, exist_ok=True)
        env = kvmops_env()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=log, cwd=REPO, env=env)
        self.names.pidfile.write_text(f"{self.process.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.records():
                if record.get("event") == "listener_started":
                    self.address = record["address"]
                    return
            if self.process.poll() is not None:
                raise SystemExit(f"kvmops run exited {self.process.returncode}:\n{self.log_tail()}")
            time.sleep(0.05)
        raise SystemExit(f"kvmops run did not start listening within {timeout}s:\n{self.log_tail()}")

    def get(self, path: str, *, timeout: float = 5) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.address}{path}", timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_healthy(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            status, body = self.get("/healthz")
            if status == 200:
                return
            last = body.strip()
            time.sleep(0.2)
        raise SystemExit(f"the controller is not healthy after {timeout}s: {last}\n{self.log_tail()}")

    def metrics(self) -> dict[str, float]:
        """Return every series of /metrics as {'name{labels}': value}."""
        _status, body = self.get("/metrics")
        series = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                series[key] = float(value)
        return series

    @staticmethod
    def total(series: dict[str, float], name: str) -> float:
        return sum(v for k, v in series.items() if k == name or k.startswith(name + "{"))

    def records(self) -> list[dict]:
        """Return the controller's JSON log lines so far."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        records = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    if "timestamp" in record:
                        record["_t"] = parse_timestamp(record["timestamp"])
                    records.append(record)
        return records

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise SystemExit(f"kvmops run died (exit {self.process.returncode}):\n{self.log_tail()}")

    def sample(self) -> ProcSample:
        """Read CPU ticks (utime+stime) from /proc/<pid>/stat and VmRSS/VmHWM from status."""
        now, wall = time.monotonic(), time.time()
        with open(f"/proc/{self.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of the line)
        rss = hwm = 0
        with open(f"/proc/{self.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
        return ProcSample(now, wall, ticks, rss, hwm)

    def stop(self, *, timeout: float = 45) -> int | None:
        """SIGTERM, wait, then SIGKILL; return the exit status."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        with contextlib.suppress(FileNotFoundError):
            self.names.pidfile.unlink()
        return process.returncode


def kvmops_env() -> dict[str, str]:
    """Return the environment kvmops runs in: this repository first, no settings from the caller."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("KVMOPS_CONNECT", "KVMOPS_CONFIG", "KVMOPS_SCOPE", "KVMOPS_STATE_DIR"):
        env.pop(name, None)
    return env


_scope_supported: bool | None = None


def scope_args(scope: str | None) -> list[str]:
    """Return ``--scope NAME`` if a scope is wanted and this kvmops has the option, else []."""
    global _scope_supported
    if not scope:
        return []
    if _scope_supported is None:
        result = subprocess.run([sys.executable, "-m", "reconciler", "run", "--help"], capture_output=True,
                                text=True, env=kvmops_env(), cwd=REPO, timeout=60)
        _scope_supported = "--scope" in result.stdout
        if not _scope_supported:
            print("note: this kvmops has no --scope option; running without a scope", flush=True)
    return ["--scope", scope] if _scope_supported else []


def stop_leftover_controller(names: Names) -> None:
    """Stop a controller a crashed earlier run of this benchmark left behind (by its pid file).

    Only that pid, and only if its command line is a ``kvmops run`` on our manifest
    directory: a live leftover controller would restart the domains the sweep destroys.
    """
    try:
        pid = int(names.pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if b"reconciler" in cmdline and str(names.manifests).encode() in cmdline:
        print(f"stopping leftover controller pid {pid}", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def recover(lv: Libvirt, recorder: EventRecorder, controller: ControllerProcess, *, timeout: float = 180) -> None:
    """After a libvirtd restart: reconnect ourselves, wait for the controller to be healthy again."""
    print("  libvirtd was restarted by someone else: reconnecting; this try does not count", flush=True)
    time.sleep(1)
    lv.ensure_alive(timeout)
    recorder.reconnect()
    controller.wait_healthy(timeout=timeout)


def sweep(lv: Libvirt) -> None:
    """Remove what an earlier run left behind (controller first, then libvirt objects)."""
    stop_leftover_controller(lv.names)
    lv.remove_everything()


def prepare(lv: Libvirt) -> None:
    """Create the pool and the manifest and state directories."""
    lv.create_pool()
    lv.names.manifests.mkdir(parents=True, exist_ok=True)
    lv.names.state_dir.mkdir(parents=True, exist_ok=True)


def teardown(lv: Libvirt, controller: ControllerProcess | None, keep_log: str | None = None) -> None:
    """Stop the controller (so it restarts nothing), then remove every object of our prefix."""
    print(f"\ncleaning up {lv.names.prefix}* ...", flush=True)
    if controller is not None:
        status = controller.stop()
        print(f"  controller stopped (exit {status})", flush=True)
        if keep_log and controller.log_path.exists():
            shutil.copyfile(controller.log_path, keep_log)
            print(f"  controller log kept in {keep_log}", flush=True)
    started = time.monotonic()
    if lv.ensure_alive():
        print("  (libvirtd had been restarted: reconnected)", flush=True)
    count = len(lv.our_domains())
    lv.remove_everything()
    left = lv.our_domains()
    print(f"  {count} domain(s) destroyed and undefined, volumes, pool and {lv.names.workdir} removed "
          f"in {time.monotonic() - started:.1f} s" + (f"; LEFT OVER: {left}" if left else ""), flush=True)

"""Fixtures for end-to-end tests on a real libvirtd with QEMU (``qemu:///system``).

Every libvirt object a test creates is named with a prefix (``$KVMOPS_TEST_PREFIX``,
default ``kvmops-e2e``) and removed afterwards, whatever happened: domains are destroyed
concurrently (tearing down QEMU takes seconds here), then undefined; the test's pool is
emptied, stopped and undefined; its directory deleted.  Leftovers from an interrupted
earlier run are swept at the start of the session.

The host may be shared: other people, other test sessions and benchmarks run their own
libvirt objects on the same libvirtd at the same time.  So a session only ever sweeps
what is provably its own or provably abandoned: each test's work directory holds an
``owner`` file naming the test process (pid and start time); a ``<prefix>-<6 hex>``
whose owner is still alive belongs to a concurrent session and is never touched.  Each
test also gets a private ``KVMOPS_STATE_DIR`` (the host lock of ``kvmops apply``), since
its objects are its own and it need not queue behind unrelated runs.

``scripts/test`` runs the suite in pytest-xdist workers, a test file per worker at a time
(``--dist loadfile``): each worker is a session of its own to all of this (its own pid in
the owner files, its own lab), and the other workers are concurrent sessions like any other.

Beware: ``kvmops apply`` prunes *every* domain carrying kvmops' mark that its manifests do
not declare, whoever created it.  On a shared host, pass ``--no-prune`` unless pruning is
what the test is about, and then execute only the plan's steps for the test's own prefix.

When ``KVMOPS_E2E=required`` (set by ``scripts/test``) an unreachable libvirtd fails the
tests instead of skipping them, so CI cannot go green without running them.

No test stops, kills or restarts the machine's libvirtd: a test that needs a libvirtd to
die uses the session's lab (the ``lab`` and ``lab_host`` fixtures): one private libvirtd
of :mod:`tests.lab`, in namespaces of its own, started once for the session and removed,
with everything it ran, at its end.  Its connection (:class:`LibvirtConnection`) reopens
itself after a restart.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest

from tests import lab as labs
from tests.lab import process_start

SYSTEM_URI = os.environ.get("KVMOPS_E2E_URI", "qemu:///system")
PREFIX = os.environ.get("KVMOPS_TEST_PREFIX", "kvmops-e2e")
WORK_ROOT = Path(os.environ.get("KVMOPS_E2E_WORKDIR", "/var/tmp"))

pytestmark = pytest.mark.e2e
libvirt.registerErrorHandler(lambda _context, _error: None, None)


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


class LibvirtConnection:
    """A ``libvirt.virConnect`` to ``uri`` that reopens itself when libvirtd restarted under it.

    Every attribute is the current connection's.  A method call that fails because the
    connection broke (libvirtd was restarted) is retried once on a fresh connection; objects
    obtained earlier (a ``virDomain``) still belong to the old connection and stay broken.
    """

    def __init__(self, uri: str, connection: libvirt.virConnect) -> None:
        self.uri = uri
        self._connection = connection

    @property
    def alive(self) -> bool:
        """Return whether the current connection still works."""
        try:
            return self._connection.isAlive() == 1
        except libvirt.libvirtError:
            return False

    def reconnect(self) -> None:
        """Replace the connection by a new one (raises ``libvirtError`` while libvirtd is down)."""
        fresh = libvirt.open(self.uri)
        old, self._connection = self._connection, fresh
        try:
            old.close()
        except libvirt.libvirtError:
            pass

    def __getattr__(self, name: str):
        attribute = getattr(self._connection, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            try:
                return getattr(self._connection, name)(*args, **kwargs)
            except libvirt.libvirtError:
                if self.alive:
                    raise
            self.reconnect()
            return getattr(self._connection, name)(*args, **kwargs)

        call.__name__ = name
        return call


def _connect() -> LibvirtConnection | None:
    try:
        return LibvirtConnection(SYSTEM_URI, libvirt.open(SYSTEM_URI))
    except libvirt.libvirtError:
        return None


def sweep(connection: libvirt.virConnect, prefix: str) -> None:
    """Remove every domain, pool and network whose name starts with ``prefix``."""
    domains = [d for d in connection.listAllDomains(0) if d.name().startswith(prefix)]

    def destroy(domain: libvirt.virDomain) -> None:
        try:
            if domain.isActive():
                domain.destroy()
        except libvirt.libvirtError:
            pass

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(destroy, domains))
    for domain in domains:
        try:
            domain.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
            )
        except libvirt.libvirtError:
            pass
    for storage in connection.listAllStoragePools(0):
        if not storage.name().startswith(prefix):
            continue
        # Each step on its own: one volume that cannot be deleted (a directory a test made
        # inside the pool) must not keep the pool defined.
        with contextlib.suppress(libvirt.libvirtError):
            if not storage.isActive():
                storage.create(0)
            storage.refresh(0)
        with contextlib.suppress(libvirt.libvirtError):
            for volume in storage.listAllVolumes(0):
                with contextlib.suppress(libvirt.libvirtError):
                    volume.delete(0)
        with contextlib.suppress(libvirt.libvirtError):
            storage.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            storage.undefine()
    for network in connection.listAllNetworks(0):
        if not network.name().startswith(prefix):
            continue
        try:
            if network.isActive():
                network.destroy()
            network.undefine()
        except libvirt.libvirtError:
            pass


OWNER_FILE = "owner"
_TOKEN = re.compile(r"^" + re.escape(PREFIX) + r"-([0-9a-f]{6})(?:-|$)")
_session_prefixes: set[str] = set()



def _claim(workdir: Path) -> None:
    """Record in ``workdir`` that this process owns the objects of its prefix."""
    (workdir / OWNER_FILE).write_text(f"{os.getpid()} {process_start(os.getpid())}\n", encoding="ascii")


def _abandoned(prefix: str) -> bool:
    """Return whether the objects of ``prefix`` belong to no live test process."""
    workdir = WORK_ROOT / prefix
    try:
        pid, started = (workdir / OWNER_FILE).read_text(encoding="ascii").split()
        return process_start(int(pid)) != started
    except FileNotFoundError:
        # No owner file: abandoned unless the directory is young (a session with an older
        # conftest may be setting it up right now).
        try:
            return time.time() - workdir.stat().st_mtime > 15 * 60
        except FileNotFoundError:
            return True
    except (OSError, ValueError):
        return True


def sweep_abandoned(connection: libvirt.virConnect) -> None:
    """Remove the objects and work directories of earlier, dead test sessions only."""
    names = [d.name() for d in connection.listAllDomains(0)]
    names += [p.name() for p in connection.listAllStoragePools(0)]
    names += [n.name() for n in connection.listAllNetworks(0)]
    names += [path.name for path in WORK_ROOT.glob(f"{PREFIX}-*")]
    prefixes = {f"{PREFIX}-{match.group(1)}" for match in map(_TOKEN.match, names) if match}
    for prefix in sorted(prefixes):
        if _abandoned(prefix):
            sweep(connection, prefix + "-")
            shutil.rmtree(WORK_ROOT / prefix, ignore_errors=True)


@pytest.fixture(scope="session")
def system_connection():
    """Return a connection to the real libvirtd, after sweeping leftovers of dead earlier runs."""
    connection = _connect()
    if connection is None:
        message = f"libvirtd is not reachable at {SYSTEM_URI} (scripts/test starts it)"
        if os.environ.get("KVMOPS_E2E") == "required":
            pytest.fail(message)
        pytest.skip(message)
    sweep_abandoned(connection)
    yield connection
    for prefix in sorted(_session_prefixes):  # normally none left: each test sweeps its own
        sweep(connection, prefix + "-")
    with contextlib.suppress(libvirt.libvirtError):
        connection.close()


@dataclass
class Host:
    """A real libvirtd, a private name prefix, a pool directory and a manifest directory."""

    connection: libvirt.virConnect
    prefix: str
    workdir: Path
    manifests: Path
    pool_path: Path
    uri: str = SYSTEM_URI
    env: dict = field(default_factory=dict)

    @property
    def pool(self) -> str:
        """Return the name of this test's storage pool."""
        return f"{self.prefix}-pool"

    def name(self, suffix: str) -> str:
        """Return a libvirt object name private to this test."""
        return f"{self.prefix}-{suffix}"

    def kvmops(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """Run the kvmops command as a separate process, against this host."""
        argv = [sys.executable, "-m", "reconciler", "--log-format", "json", *args]
        if args and args[0] in ("plan", "apply") and "--connect" not in args:
            argv += ["--connect", self.uri]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **self.env})

    def domain(self, name: str) -> libvirt.virDomain | None:
        """Return the libvirt domain ``name``, or None."""
        try:
            return self.connection.lookupByName(name)
        except libvirt.libvirtError:
            return None

    def is_running(self, name: str) -> bool:
        """Return whether domain ``name`` exists and is running."""
        domain = self.domain(name)
        return domain is not None and domain.isActive() == 1

    def volume_capacity(self, name: str) -> int | None:
        """Return the capacity in bytes of volume ``name`` in this test's pool, or None."""
        try:
            storage = self.connection.storagePoolLookupByName(self.pool)
            storage.refresh(0)
            return storage.storageVolLookupByName(name).info()[1]
        except libvirt.libvirtError:
            return None

    def wait(self, predicate, timeout: float = 30.0) -> bool:
        """Return True once ``predicate()`` holds, False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.1)
        return predicate()


@pytest.fixture
def host(system_connection):
    """Return a :class:`Host` whose libvirt objects and files are removed after the test."""
    prefix = f"{PREFIX}-{uuid.uuid4().hex[:6]}"
    workdir = WORK_ROOT / prefix
    pool_path = workdir / "pool"
    manifests = workdir / "manifests"
    manifests.mkdir(parents=True)
    os.chmod(workdir, 0o755)  # QEMU (user libvirt-qemu) must reach the pool's images
    _claim(workdir)
    _session_prefixes.add(prefix)
    env = {"KVMOPS_STATE_DIR": str(workdir / "state")}
    try:
        yield Host(system_connection, prefix, workdir, manifests, pool_path, env=env)
    finally:
        try:
            sweep(system_connection, prefix + "-")
            _session_prefixes.discard(prefix)  # else the end of the session tries again
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_guest():
    """Return a tiny bootable guest (:class:`tests.e2e.tinyguest.Guest`: kernel, initrd, cmdline).

    Built once per machine into ``$KVMOPS_E2E_CACHE`` (default ``/var/tmp/kvmops-e2e-cache``)
    and then taken from there.  It boots under TCG in a few seconds with libvirt's direct
    kernel boot, prints ``TINYGUEST READY ip=<addr>`` on its serial console once it has a
    DHCP lease and powers off at once on an ACPI shutdown: see tests/e2e/tinyguest.py.
    """
    from tests.e2e import tinyguest

    return tinyguest.build()


# --- the lab: a libvirtd that tests may kill -------------------------------------------


def start_lab_or_skip(name: str, hosts: int = 1) -> labs.Lab:
    """Start a lab of ``hosts`` hosts called ``name``; skip (fail when KVMOPS_E2E=required) without root or its tools."""
    missing = [tool for tool in ("unshare", "nsenter", "libvirtd", "virtlogd") if shutil.which(tool) is None]
    why = f"a lab libvirtd needs root and {', '.join(missing) or 'namespaces'}"
    if os.geteuid() != 0 or missing:
        if os.environ.get("KVMOPS_E2E") == "required":
            pytest.fail(why)
        pytest.skip(why)
    labs.sweep_abandoned(labs.LAB_ROOT, f"{PREFIX}-lab-*")
    return labs.Lab(name).start(hosts)


LAB_HOSTS = 3  # the most any test needs: a fleet (the crash suite kills h1; migrations use h1 and h2)


@pytest.fixture(scope="session")
def lab():
    """Return the session's lab (:class:`tests.lab.Lab`): three private libvirtd daemons that tests may kill.

    Started at its first use (its hosts at once, about a second), once per session, so
    once per xdist worker that runs a test needing it, and shared by every test there
    that needs a libvirtd of its own: one to kill (:func:`lab_host`, on h1), a fleet, a
    migration's two hosts.  Tests share it by name: each names its objects with a prefix of
    its own and removes them from every host afterwards (:func:`lab_host`,
    :func:`tests.e2e.labfleet.reset`), so the hosts are as fresh for the next test.  The lab
    is removed with everything it ran at the end of the session, whatever happened (also on
    KeyboardInterrupt); one a killed session abandoned goes with the next session's first
    lab, or with ``scripts/lab sweep``.
    """
    started = start_lab_or_skip(f"{PREFIX}-lab-{uuid.uuid4().hex[:6]}", LAB_HOSTS)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def lab_host(lab):
    """Return a :class:`Host` on the session's lab libvirtd, whose objects and files are removed after the test."""
    daemon = lab.hosts[0]
    if daemon.libvirtd_pid is None:  # an earlier test killed it
        daemon.restart_libvirtd()
    prefix = f"{PREFIX}-{uuid.uuid4().hex[:6]}"
    workdir = WORK_ROOT / prefix
    manifests = workdir / "manifests"
    manifests.mkdir(parents=True)
    os.chmod(workdir, 0o755)
    _claim(workdir)
    connection = LibvirtConnection(daemon.uri, libvirt.open(daemon.uri))
    env = {"KVMOPS_STATE_DIR": str(workdir / "state")}
    try:
        yield Host(connection, prefix, workdir, manifests, daemon.pools / prefix, uri=daemon.uri, env=env)
    finally:
        try:
            if daemon.libvirtd_pid is None:
                daemon.restart_libvirtd()
            sweep(connection, prefix + "-")
            with contextlib.suppress(libvirt.libvirtError):
                connection.close()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

"""Fixtures for end-to-end tests on a real libvirtd with QEMU (``qemu:///system``).

Every libvirt object a test creates is named with a prefix (``$KVMOPS_TEST_PREFIX``,
default ``kvmops-e2e``) and removed afterwards, whatever happened: domains are destroyed
concurrently (tearing down QEMU takes seconds here), then undefined; the test's pool is
emptied, stopped and undefined; its directory deleted.  Leftovers from an interrupted
earlier run are swept at the start of the session.

When ``KVMOPS_E2E=required`` (set by ``scripts/test``) an unreachable libvirtd fails the
tests instead of skipping them, so CI cannot go green without running them.
"""

from __future__ import annotations

import os
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

SYSTEM_URI = os.environ.get("KVMOPS_E2E_URI", "qemu:///system")
PREFIX = os.environ.get("KVMOPS_TEST_PREFIX", "kvmops-e2e")
WORK_ROOT = Path(os.environ.get("KVMOPS_E2E_WORKDIR", "/var/tmp"))

pytestmark = pytest.mark.e2e
libvirt.registerErrorHandler(lambda _context, _error: None, None)


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


def _connect() -> libvirt.virConnect | None:
    try:
        return libvirt.open(SYSTEM_URI)
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
        try:
            if not storage.isActive():
                storage.create(0)
            storage.refresh(0)
            for volume in storage.listAllVolumes(0):
                volume.delete(0)
            storage.destroy()
        except libvirt.libvirtError:
            pass
        try:
            storage.undefine()
        except libvirt.libvirtError:
            pass
    for network in connection.listAllNetworks(0):
        if not network.name().startswith(prefix):
            continue
        try:
            if network.isActive():
                network.destroy()
            network.undefine()
        except libvirt.libvirtError:
            pass


@pytest.fixture(scope="session")
def system_connection():
    """Return a connection to the real libvirtd, after sweeping leftovers of earlier runs."""
    connection = _connect()
    if connection is None:
        message = f"libvirtd is not reachable at {SYSTEM_URI} (scripts/test starts it)"
        if os.environ.get("KVMOPS_E2E") == "required":
            pytest.fail(message)
        pytest.skip(message)
    sweep(connection, PREFIX + "-")
    for stale in WORK_ROOT.glob(f"{PREFIX}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    yield connection
    sweep(connection, PREFIX + "-")
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
    try:
        yield Host(system_connection, prefix, workdir, manifests, pool_path)
    finally:
        sweep(system_connection, prefix + "-")
        shutil.rmtree(workdir, ignore_errors=True)

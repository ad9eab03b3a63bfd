"""Fixtures for integration tests on libvirt's in-process test driver.

Each test gets its own ``test:///<file>`` URI: the test driver builds a fresh, private
host from that file for every connection, so tests never share state.  The host has a
``default`` dir pool and a ``default`` network, like a freshly installed libvirt.

Because every connection starts again from the file, a test that runs the CLI
(``cli.main([...])``) and then wants to look at the host afterwards needs the CLI to use
the test's own connection: :func:`pin_connection` routes ``Hypervisor.open`` for one URI
to an already open :class:`~reconciler.adapters.hypervisor.Hypervisor` (and leaves it
open), so the command and the test see one and the same host.  Nothing is faked: the
command talks to the real test driver through the real adapter.

:func:`world` builds the host most CLI tests start from: ``web``, a running domain kvmops
owns and ``web.yaml`` declares; ``orphan``, a running domain kvmops owns that no
manifest declares (so a normal apply prunes it), with one Retain and one Delete volume
it created; and ``legacy``, a running foreign domain.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest
import structlog

from reconciler.adapters import hypervisor as hv
from reconciler.adapters import manifests
from reconciler.core import desired, domxml
from tests import factories

NODE_XML = """\
<node>
  <pool type='dir'>
    <name>default</name>
    <target><path>/var/lib/libvirt/images</path></target>
    {volumes}
  </pool>
  <network>
    <name>default</name>
    <bridge name='virbr0'/>
    <forward/>
    <ip address='192.168.122.1' netmask='255.255.255.0'/>
  </network>
  {extra}
</node>
"""

WEB_UUID = "5a1d6c3e-0000-4000-8000-00000000000a"
ORPHAN_UUID = "5a1d6c3e-0000-4000-8000-00000000000b"
LEGACY_UUID = "5a1d6c3e-0000-4000-8000-00000000000c"
WEB_MAC = "52:54:00:00:00:0a"


REPOSITORY = Path(__file__).resolve().parents[2]


def single_threaded(code: str, *, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh single-threaded interpreter (kvmops forks a child only there: a test runner may have
    threads)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPOSITORY)


def node_uri(directory: Path, extra: str = "", *, volumes: str = "") -> str:
    """Write a test-driver host description into ``directory``; return its URI.

    ``extra`` is XML put into ``<node>`` (domains, pools); ``volumes`` is XML put into
    the ``default`` pool (``<volume>`` elements, see :func:`volume_xml`).
    """
    path = directory / "node.xml"
    path.write_text(NODE_XML.format(extra=extra, volumes=volumes), encoding="utf-8")
    return f"test://{path}"


def volume_xml(name: str, mib: int = 64) -> str:
    """Return a ``<volume>`` for the ``default`` pool of :data:`NODE_XML`."""
    return f"<volume><name>{name}</name><capacity unit='MiB'>{mib}</capacity></volume>"


def owned_domain_xml(
    name: str,
    uuid: str,
    *,
    manifest: str = "",
    digest: str = "",
    volumes: tuple[tuple[str, str, bool], ...] = (),
    mac: str | None = None,
    memory_mib: int = 64,
) -> str:
    """Return the XML of a domain carrying kvmops' ownership mark.

    ``volumes`` are (volume in the ``default`` pool, deletionPolicy, created) triples,
    attached as vda, vdb, ... and recorded in the mark.
    """
    records = "".join(
        f'<kvmops:volume pool="default" name="{volume}" deletionPolicy="{policy}" created="{str(created).lower()}"/>'
        for volume, policy, created in volumes
    )
    disks = "".join(
        f"<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source pool='default' volume='{volume}'/><target dev='vd{chr(ord('a') + i)}' bus='virtio'/></disk>"
        for i, (volume, _policy, _created) in enumerate(volumes)
    )
    nic = (
        f"<interface type='network'><mac address='{mac}'/><source network='default'/><model type='virtio'/></interface>"
        if mac else ""
    )
    return f"""
  <domain type='test'>
    <name>{name}</name>
    <uuid>{uuid}</uuid>
    <metadata>
      <kvmops:owner xmlns:kvmops="{domxml.NAMESPACE}" manifest="{manifest}" digest="{digest}" runStrategy="Always" domain="{name}" uuid="{uuid}">{records}</kvmops:owner>
    </metadata>
    <memory unit='KiB'>{memory_mib * 1024}</memory>
    <currentMemory unit='KiB'>{memory_mib * 1024}</currentMemory>
    <vcpu placement='static'>1</vcpu>
    <os><type arch='x86_64'>hvm</type></os>
    <devices>
      {disks}{nic}
      <serial type='pty'><target port='0'/></serial>
      <console type='pty'><target type='serial' port='0'/></console>
    </devices>
  </domain>"""


def foreign_domain_xml(name: str, uuid: str, *, volume: str | None = None) -> str:
    """Return the XML of a domain someone else made: no kvmops metadata."""
    disk = (
        f"<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source pool='default' volume='{volume}'/><target dev='vda' bus='virtio'/></disk>"
        if volume else ""
    )
    return f"""
  <domain type='test'>
    <name>{name}</name>
    <uuid>{uuid}</uuid>
    <memory unit='KiB'>131072</memory>
    <vcpu placement='static'>2</vcpu>
    <os><type arch='x86_64'>hvm</type></os>
    <devices>{disk}</devices>
  </domain>"""


def host_state(hypervisor: hv.Hypervisor) -> dict:
    """Return everything a test can observe on the host, for before/after comparisons.

    Domains with their UUID, power state, autostart and full persistent XML; pools;
    the volumes of every active pool with their capacity.
    """
    pools = {pool.name: pool for pool in hypervisor.list_pools()}
    return {
        "domains": {
            record.name: (record.uuid, record.power, record.autostart, record.persistent, record.inactive_xml)
            for record in hypervisor.list_domains()
        },
        "pools": pools,
        "volumes": {
            (volume.pool, volume.name): volume.capacity
            for pool in pools.values() if pool.active
            for volume in hypervisor.list_volumes(pool.name)
        },
    }


class Pinned(contextlib.nullcontext):
    """An open connection the test owns, handed to the code under test: used (and entered) as it, never closed."""

    def __getattr__(self, name):
        return getattr(self.enter_result, name)

    def close(self) -> None:
        """Pinned connections stay open (the test owns them); what was watched through this one is no longer."""
        hypervisor = self.enter_result
        watched, hypervisor._event_callbacks = hypervisor._event_callbacks, []
        for callback_id in watched:
            with contextlib.suppress(libvirt.libvirtError):
                hypervisor._connection.domainEventDeregisterAny(callback_id)
        if hypervisor._close_callback:
            with contextlib.suppress(libvirt.libvirtError):
                hypervisor._connection.unregisterCloseCallback()
            hypervisor._close_callback = False


def pin_connection(monkeypatch: pytest.MonkeyPatch, hypervisor: hv.Hypervisor) -> None:
    """Make the CLI use ``hypervisor`` whenever it opens ``hypervisor.uri``; other URIs open normally."""
    original = hv.Hypervisor.open.__func__

    def open_pinned(cls, uri: str, **options):
        if uri == hypervisor.uri:
            return Pinned(hypervisor)
        return original(cls, uri, **options)

    monkeypatch.setattr(hv.Hypervisor, "open", classmethod(open_pinned))


@dataclass
class World:
    """A host with an owned, a declared, an orphaned and a foreign domain, and its manifests."""

    hypervisor: hv.Hypervisor
    uri: str
    manifests: Path  # holds web.yaml, which matches the web domain exactly

    def state(self) -> dict:
        """Return the host's observable state now."""
        return host_state(self.hypervisor)

    def domains(self) -> set[str]:
        """Return the names of the domains on the host now."""
        return {record.name for record in self.hypervisor.list_domains()}

    def volumes(self) -> set[str]:
        """Return the names of the volumes in the ``default`` pool now."""
        return {volume.name for volume in self.hypervisor.list_volumes("default")}


WEB_DOCUMENT = factories.vm(
    "web", disks=[factories.disk("root", "default", "64MiB", deletionPolicy="Delete")],
    networks=[{"network": "default", "mac": WEB_MAC}],
)


def web_digest(manifest_dir: Path) -> str:
    """Return the digest kvmops records for the web.yaml written into ``manifest_dir``."""
    built = desired.build(manifests.load(manifest_dir / "web.yaml"))
    assert not built.problems, built.problems
    return built.vms["web"].digest


@pytest.fixture(autouse=True)
def isolated_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Keep each test's CLI runs to itself: no inherited kvmops settings, no lock files outside
    ``tmp_path``, and structlog restored afterwards (``cli.main`` binds it to the captured stderr)."""
    for name in ("KVMOPS_CONNECT", "KVMOPS_LOG_FORMAT", "KVMOPS_VIRT_TYPE", "KVMOPS_CONFIG", "KVMOPS_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KVMOPS_STATE_DIR", str(tmp_path / "state"))
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def uri(tmp_path: Path) -> str:
    """Return the URI of a fresh, private test-driver host."""
    return node_uri(tmp_path)


@pytest.fixture
def hypervisor(uri: str):
    """Return a connection to a fresh test-driver host; its state lives as long as it does."""
    with hv.Hypervisor.open(uri) as connection:
        yield connection


@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    """Return an empty manifest directory."""
    directory = tmp_path / "manifests"
    directory.mkdir()
    return directory


@pytest.fixture
def world(tmp_path: Path, manifest_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Return the standard host (see the module docstring), pinned for the CLI."""
    factories.write(manifest_dir, "web.yaml", WEB_DOCUMENT)
    domains = (
        owned_domain_xml("web", WEB_UUID, manifest="web.yaml", digest=web_digest(manifest_dir),
                         volumes=(("web-root.qcow2", "Delete", True),), mac=WEB_MAC)
        + owned_domain_xml("orphan", ORPHAN_UUID, manifest="orphan.yaml", digest="sha256:0",
                           volumes=(("orphan-keep.qcow2", "Retain", True), ("orphan-scratch.qcow2", "Delete", True)))
        + foreign_domain_xml("legacy", LEGACY_UUID, volume="legacy-disk.qcow2")
    )
    volumes = "".join(volume_xml(name) for name in (
        "web-root.qcow2", "orphan-keep.qcow2", "orphan-scratch.qcow2", "legacy-disk.qcow2",
    ))
    host = tmp_path / "host"
    host.mkdir()
    world_uri = node_uri(host, domains, volumes=volumes)
    with hv.Hypervisor.open(world_uri) as connection:
        pin_connection(monkeypatch, connection)
        yield World(connection, world_uri, manifest_dir)


SHARED_URI = "test:///default"  # one host for every connection in this process


@dataclass
class Leftovers:
    """Domains and pools a test put on the shared host, to remove once every controller has stopped."""

    domains: list[str] = field(default_factory=list)
    pools: list[str] = field(default_factory=list)


@pytest.fixture
def leftovers() -> Iterator[Leftovers]:
    """Return the test's leftovers; everything in it is removed from test:///default at the very end.

    Controllers depend on this fixture, so they are stopped before the removal: a running
    controller would see the undefine event and define the VM again.
    """
    found = Leftovers()
    yield found
    connection = libvirt.open(SHARED_URI)
    try:
        for name in found.domains:
            try:
                domain = connection.lookupByName(name)
            except libvirt.libvirtError:
                continue
            if domain.isActive():
                domain.destroy()
            if domain.isPersistent():
                domain.undefine()
        for name in found.pools:
            try:
                pool = connection.storagePoolLookupByName(name)
            except libvirt.libvirtError:
                continue
            if pool.isActive():
                pool.destroy()
            pool.undefine()
    finally:
        connection.close()


class Exec(Exception):
    """Raised instead of replacing the test process with ssh."""


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record every attempt to exec a program, and stop it: the test process is never replaced by ssh."""
    seen: list[list[str]] = []

    def record(program, argv):
        seen.append([program, *argv])
        raise Exec(program)

    monkeypatch.setattr(os, "execvp", record)
    return seen

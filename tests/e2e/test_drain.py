"""Draining a host moves its running guest live, and the guest keeps its address and its uptime.

On a lab of three private libvirtd daemons (:mod:`tests.lab`), driven through the CLI as a
user would: Host manifests, a StoragePool ``shared: true`` (a directory every lab host
sees) holding the tiny guest's kernel, initrd and disk, and the tiny guest
(:mod:`tests.e2e.tinyguest`, with its heartbeat: uptime and eth0's address every second).

What "keeps its IP address" means, honestly. A live migration moves the guest's memory,
so the guest always keeps the address it has; what matters is whether that address still
works on the destination. Per-host NAT networks are separate networks: the guest keeps
its address, but it only works there if the destination's network has the same subnet
(and a static DHCP host entry for its MAC, so a renewal gives it the same address). Lab
hosts share the machine's network namespace, where two networks may not have the same
subnet (libvirt refuses the second: its route exists), so this test takes the case where
the address is the same on every host by construction: one L2 segment every host joins.
A ``mode: bridge`` Network on every Host (``hosts`` selector) names one Linux bridge;
that bridge, its subnet and its DHCP server (a static host entry: the guest's MAC gets
one address) are an isolated Network on h3, standing for the LAN and its DHCP server.
After the move the guest still answers at that address (from its new host's QEMU), its
heartbeat on the destination's console shows the same address, and its uptime shows it
never rebooted.

`kvmops wait --for ip` and `status` cannot name the address of a NIC on a ``mode: bridge``
network here: libvirt has no DHCP lease for it (the network that serves the bridge is
another one), the tiny guest runs no agent, and libvirt's ARP source fails on this machine
(libvirt 9.0: ``virsh domifaddr --source arp`` says "internal error: wrong nlmsg len").
So the address is proven from both ends instead: the guest's own view, and an ICMP echo.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from reconciler.adapters import hypervisor as hv
from reconciler.core import model
from tests import lab as labs
from tests.e2e import labfleet
from tests.e2e.labfleet import heartbeat

pytestmark = pytest.mark.e2e

REPOSITORY = Path(__file__).resolve().parents[2]


def free_subnet() -> str:
    """Return a /24 (``"10.a.b"``) no route of this machine uses."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    while True:
        subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
        if f"{subnet}.0/24" not in routes:
            return subnet


def answers_ping(address: str, timeout: float = 2.0) -> bool:
    """Return whether ``address`` answers an ICMP echo (root: a raw socket; the machine has no ping tool)."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw:
        raw.settimeout(timeout)
        ident = os.getpid() & 0xFFFF
        header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
        payload = b"kvmops-drain"
        total = sum(struct.unpack(f"!{(len(header) + len(payload)) // 2}H", header + payload))
        total = (total >> 16) + (total & 0xFFFF)
        checksum = ~(total + (total >> 16)) & 0xFFFF
        raw.sendto(struct.pack("!BBHHH", 8, 0, checksum, ident, 1) + payload, (address, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                packet, (sender, _port) = raw.recvfrom(1024)
            except socket.timeout:
                return False
            icmp = packet[(packet[0] & 0x0F) * 4:]
            if sender == address and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
                return True
        return False


def answers_ping_within(address: str, seconds: float = 15.0) -> bool:
    """Return whether ``address`` answers an echo within ``seconds``, asking every two seconds.

    Right after a live move the host's bridge may still forward to the source's tap until
    the guest's self-announcement or the tap's removal updates it: a first echo can be lost.
    """
    deadline = time.monotonic() + seconds
    while True:
        if answers_ping(address):
            return True
        if time.monotonic() >= deadline:
            return False


class DrainLab:
    """A three-host lab, its manifests, and the CLI run against them."""

    def __init__(self, lab: labs.Lab, manifests: Path, prefix: str) -> None:
        self.lab = lab
        self.manifests = manifests
        self.prefix = prefix
        self.names = [f"h{i}" for i in range(1, len(lab.hosts) + 1)]
        self.state_dir = manifests.parent / "state"

    def uri(self, host: str) -> str:
        return self.lab.hosts[self.names.index(host)].uri

    def write(self, file: str, *documents: dict) -> None:
        (self.manifests / file).write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")

    def kvmops(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "reconciler", *argv], capture_output=True, text=True,
                              timeout=timeout, cwd=REPOSITORY,
                              env={**os.environ, "KVMOPS_STATE_DIR": str(self.state_dir), "NO_COLOR": "1"})

    def where(self, name: str) -> list[str]:
        """Return the hosts that have a domain named ``name``."""
        found = []
        for host in self.names:
            with hv.Hypervisor.open(self.uri(host), read_only=True) as h:
                if h.domain_exists(name):
                    found.append(host)
        return found


@pytest.fixture
def drain_lab(lab, tmp_path_factory):
    """Return the session's three-host lab with Host manifests for this test; what it made is removed afterwards."""
    prefix = f"{lab.name}-d{uuid.uuid4().hex[:4]}"
    try:
        manifests = tmp_path_factory.mktemp("drain") / "manifests"
        manifests.mkdir()
        world = DrainLab(lab, manifests, prefix)
        world.write("hosts.yaml", *({
            "apiVersion": "kvmops/v1", "kind": "Host",
            "metadata": {"name": name, "labels": {"lab": prefix, "rack": f"r{i}"}},
            "spec": {"uri": world.uri(name)}} for i, name in enumerate(world.names, 1)))
        yield world
    finally:
        labfleet.reset(lab, prefix)


def test_a_drained_hosts_guest_moves_live_keeps_its_address_and_is_not_rebooted(drain_lab, tiny_guest):
    world = drain_lab
    prefix = world.prefix
    shared = world.lab.shared / f"{prefix}-pool"
    shared.mkdir(mode=0o755)
    for source in (tiny_guest.kernel, tiny_guest.initrd):  # files of the pool's directory: its volumes once it starts
        shutil.copyfile(source, shared / source.name)
        os.chmod(shared / source.name, 0o644)
    subnet, bridge = free_subnet(), labs.bridge_name(prefix, "lan")
    mac = "52:54:00:%02x:%02x:%02x" % tuple(uuid.uuid4().bytes[:3])
    address = f"{subnet}.50"
    pool, lan, name = f"{prefix}-shared", f"{prefix}-lan", f"{prefix}-tiny"
    world.write("storage.yaml", {
        "apiVersion": "kvmops/v1", "kind": "StoragePool", "metadata": {"name": pool},
        "spec": {"path": str(shared), "shared": True}})  # made on the hosts whose VMs use it, and no others
    world.write("networks.yaml", {
        # the LAN every host joins, and its DHCP server, which gives the guest's MAC one address
        "apiVersion": "kvmops/v1", "kind": "Network", "metadata": {"name": f"{prefix}-dhcp"},
        "spec": {"mode": "isolated", "bridge": bridge, "hosts": {"rack": "r3"}, "ipv4": {
            "address": f"{subnet}.1", "prefix": 24,
            "dhcp": {"start": f"{subnet}.100", "end": f"{subnet}.199", "hosts": [{"mac": mac, "ip": address}]}}},
    }, {
        "apiVersion": "kvmops/v1", "kind": "Network", "metadata": {"name": lan},
        "spec": {"mode": "bridge", "bridge": bridge, "hosts": {"lab": prefix}},
    })
    networks = world.kvmops("apply", str(world.manifests))  # the LAN first: the guest's NIC needs its bridge
    assert networks.returncode == 0, networks.stdout[-3000:] + networks.stderr[-2000:]

    world.write("tiny.yaml", {
        "apiVersion": "kvmops/v1", "kind": "VirtualMachine", "metadata": {"name": name},
        "spec": {"memory": "128MiB", "virtType": "qemu", "machine": "pc",
                 "install": {"kernel": {"pool": pool, "volume": tiny_guest.kernel.name},
                             "initrd": {"pool": pool, "volume": tiny_guest.initrd.name},
                             "cmdline": f"{tiny_guest.cmdline} tinyguest.heartbeat"},
                 "disks": [{"name": "root", "pool": pool, "size": "8MiB", "deletionPolicy": "Delete"}],
                 "networks": [{"network": lan, "mac": mac}],
                 "placement": {"hostSelector": {"lab": prefix}}},
    })
    created = world.kvmops("apply", str(world.manifests))
    assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-2000:]
    (home,) = world.where(name)
    with hv.Hypervisor.open(world.uri(home), read_only=True) as h:
        domain_uuid = next(d.uuid for d in h.list_domains() if d.name == name)
    deadline = time.monotonic() + 120
    while (seen := heartbeat(world.uri(home), name, timeout=60))[1] == "none" or seen[0] < 10:
        assert time.monotonic() < deadline, f"the guest has no address after {seen[0]} s of uptime"
        # (no sleep: each heartbeat() waits for the guest's next line, printed every second)
    assert seen[1] == f"{address}/24"  # the DHCP server's static entry for its MAC
    assert answers_ping(address)

    planned = world.kvmops("drain", home, str(world.manifests))
    assert planned.returncode == 0, planned.stdout[-3000:] + planned.stderr[-2000:]
    assert re.search(rf"→ VirtualMachine {name} .* migrate", planned.stdout), planned.stdout[-3000:]
    move = re.search(rf"~ host +{home} -> (h\d) +\(live\) +live migration, disks on shared storage", planned.stdout)
    assert move, planned.stdout[-3000:]
    destination = move.group(1)
    assert world.where(name) == [home]  # a plan moves nothing

    before, started = heartbeat(world.uri(home), name)[0], time.monotonic()
    drained = world.kvmops("drain", home, str(world.manifests), "--apply")
    assert drained.returncode == 0, drained.stdout[-4000:] + drained.stderr[-2000:]
    assert "Fleet converged" in drained.stdout, drained.stdout[-3000:]
    assert "the cordon holds for this command only" in drained.stderr

    assert world.where(name) == [destination]
    with hv.Hypervisor.open(world.uri(destination), read_only=True) as h:
        assert h.domain_power(name)[0] is model.PowerState.RUNNING
        assert h.domain_name_by_uuid(domain_uuid) == name
        assert f"<mac address='{mac}'/>" in (h.live_xml(name) or "")
    after, now_address = heartbeat(world.uri(destination), name)
    elapsed = time.monotonic() - started
    # One boot: a guest started again on the destination would have been up for less than
    # the time since the drain began; this one has been up since before it.
    assert after > before and after > elapsed, (before, after, elapsed)
    assert now_address == f"{address}/24"
    assert answers_ping_within(address)  # from its new host's QEMU: the old one is gone
    status = world.kvmops("status", "--manifests", str(world.manifests))
    section = status.stdout.split(f"Host {destination} ", 1)[1].split("\n\n", 1)[0]
    assert re.search(rf"{name} +running ", section), status.stdout

    # drain cordons for that command only (its Host manifest still says schedulable); placement
    # is sticky, so nothing moves back and the next plan is empty
    replanned = world.kvmops("plan", str(world.manifests), "--detailed-exitcode")
    assert replanned.returncode == 0, replanned.stdout[-3000:]
    detail = re.search(r"live migration by libvirt in [0-9]+ ms", drained.stdout)
    print(f"\ndrain --apply took {elapsed:.1f} s; {detail.group(0) if detail else 'no migration time reported'}")
    assert ipaddress.ip_address(address) in ipaddress.ip_network(f"{subnet}.0/24")

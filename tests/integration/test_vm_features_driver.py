"""VM features end to end on libvirt's test driver, through the ``kvmops`` command.

Networks (create, mark, DHCP hosts live, prune), first-boot-only install media, ``import``
and ``adopt --manifests``, ``status``, ``doctor``, ``wait`` and ``ssh``.  The test driver
cannot upload volumes, so Image imports and cloud-init seeds are checked as planned
steps only.  Every command talks to the real test driver through the real adapter,
pinned to the test's own connection (see ``conftest.pin_connection``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from reconciler import cli
from reconciler.adapters import hypervisor as hv
from reconciler.core import domxml, model, netxml
from tests import factories
from tests.integration.conftest import WEB_MAC, node_uri, pin_connection, volume_xml

SECRET = "hunter2-never-in-a-plan"
IMAGE_SHA = "ab" * 32
IMAGES = "/var/lib/libvirt/images"
LEGACY_UUID = "7c0e5d8a-3f1b-4a2c-9e6d-1b2c3d4e5f60"
LEGACY = f"""
  <domain type='test'>
    <name>legacy</name>
    <uuid>{LEGACY_UUID}</uuid>
    <memory unit='KiB'>262144</memory>
    <currentMemory unit='KiB'>262144</currentMemory>
    <vcpu placement='static'>2</vcpu>
    <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><boot dev='hd'/></os>
    <devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
        <source file='{IMAGES}/legacy.qcow2'/><target dev='vda' bus='virtio'/></disk>
      <interface type='network'><mac address='52:54:00:12:34:56'/><source network='default'/><model type='virtio'/></interface>
      <interface type='network'><mac address='52:54:00:a1:b2:c4'/><source network='default'/><model type='e1000e'/></interface>
      <serial type='pty'><target port='0'/></serial>
      <console type='pty'><target type='serial' port='0'/></console>
      <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
      <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>
    </devices>
  </domain>"""


def kvmops(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Run ``kvmops argv``; return (exit status, stdout, stderr)."""
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Return a fresh test-driver host (a default pool with vmlinuz and legacy.qcow2, the default network, the
    foreign domain legacy), pinned so that the CLI and the test see the same host."""
    directory = tmp_path / "host"
    directory.mkdir()
    uri = node_uri(directory, LEGACY, volumes=volume_xml("vmlinuz", 8) + volume_xml("legacy.qcow2", 128))
    with hv.Hypervisor.open(uri) as connection:
        pin_connection(monkeypatch, connection)
        yield connection


def lab(*hosts: dict, **spec: object) -> dict:
    return {"apiVersion": "kvmops/v1", "kind": "Network", "metadata": {"name": "lab"}, "spec": {
        "mode": "nat", "bridge": "kvlab0", **spec,
        "ipv4": {"address": "192.168.150.1", "prefix": 24,
                 "dhcp": {"start": "192.168.150.100", "end": "192.168.150.199", "hosts": list(hosts)}},
    }}


DB_HOST = {"mac": "52:54:00:6b:3c:01", "ip": "192.168.150.10", "name": "db"}
WEB_HOST = {"mac": "52:54:00:6b:3c:02", "ip": "192.168.150.11", "name": "web"}


def networks(connection: hv.Hypervisor) -> dict[str, tuple[bool, bool, str]]:
    """Return name -> (active, autostart, XML) of every network on the host."""
    return {r.name: (r.active, r.autostart, r.xml) for r in connection.list_networks()}


# --- networks ------------------------------------------------------------------------------------


def test_network_manifests_are_defined_started_autostarted_and_marked_and_then_plan_nothing(host, manifest_dir, capsys):
    """Applying Network manifests creates each network running, autostarted and carrying kvmops' mark; a second plan is empty."""
    backend = {"apiVersion": "kvmops/v1", "kind": "Network", "metadata": {"name": "backend"},
               "spec": {"mode": "isolated", "ipv4": {"address": "10.150.0.1", "prefix": 24}, "autostart": False}}
    factories.write(manifest_dir, "networks.yaml", lab(DB_HOST), backend)
    status, out, _ = kvmops(capsys, "apply", str(manifest_dir), "--connect", host.uri)
    assert status == 0 and "Converged: a fresh plan shows no changes." in out
    found = networks(host)
    assert (found["lab"][:2], found["backend"][:2]) == ((True, True), (True, False))
    lab_definition = netxml.parse(found["lab"][2])
    assert lab_definition.owner.manifest == "networks.yaml" and lab_definition.owner.scope == "default"
    assert (lab_definition.mode, lab_definition.bridge, lab_definition.hosts) == (
        "nat", "kvlab0", (model.DhcpHost(**DB_HOST),))
    assert netxml.parse(found["backend"][2]).mode == "isolated"
    assert netxml.parse(found["default"][2]).owner is None  # the host's own network is left alone

    status, out, _ = kvmops(capsys, "plan", str(manifest_dir), "--connect", host.uri, "--detailed-exitcode")
    assert (status, out.splitlines()[-1]) == (0, "No changes. 2 resources up to date.")


def test_a_static_dhcp_host_change_is_applied_to_the_running_network(host, manifest_dir, capsys):
    """A static lease added to a running network's manifest reaches the network live, without restarting it."""
    factories.write(manifest_dir, "lab.yaml", lab(DB_HOST))
    assert kvmops(capsys, "apply", str(manifest_dir), "--connect", host.uri)[0] == 0
    factories.write(manifest_dir, "lab.yaml", lab(DB_HOST, WEB_HOST))
    _, out, _ = kvmops(capsys, "apply", str(manifest_dir), "--connect", host.uri)
    assert "hosts  52:54:00:6b:3c:01=192.168.150.10 (db) -> 52:54:00:6b:3c:01=192.168.150.10 (db), " \
           "52:54:00:6b:3c:02=192.168.150.11 (web)  (live)" in out
    assert 'done: add DHCP host <host mac="52:54:00:6b:3c:02" ip="192.168.150.11" name="web" /> on lab' in out
    active, _, xml = networks(host)["lab"]
    assert active and netxml.parse(xml).hosts == (model.DhcpHost(**DB_HOST), model.DhcpHost(**WEB_HOST))


def test_a_dhcp_host_change_converges_and_leaves_the_next_plan_empty(host, manifest_dir, capsys):
    """After a live DHCP host change, apply reports convergence and the next plan has nothing to do."""
    factories.write(manifest_dir, "lab.yaml", lab(DB_HOST))
    assert kvmops(capsys, "apply", str(manifest_dir), "--connect", host.uri)[0] == 0
    factories.write(manifest_dir, "lab.yaml", lab(DB_HOST, WEB_HOST))
    assert kvmops(capsys, "apply", str(manifest_dir), "--connect", host.uri)[0] == 0
    assert kvmops(capsys, "plan", str(manifest_dir), "--connect", host.uri, "--detailed-exitcode")[0] == 0


def vm_on(network: str) -> dict:
    return factories.vm("web", networks=[{"network": network}])


def test_a_removed_network_manifest_prunes_the_network_no_vm_uses(host, manifest_dir, capsys):
    """When its manifest goes and no VM is attached to it, the owned network is stopped and undefined."""
    factories.write(manifest_dir, "lab.yaml", lab())
    factories.write(manifest_dir, "web.yaml", vm_on("default"))
    assert kvmops(capsys, "apply", str(manifest_dir), "--connect", host.uri)[0] == 0
    (manifest_dir / "lab.yaml").unlink()
    status, out, _ = kvmops(capsys, "apply", str(manifest_dir), "--connect", host.uri)
    assert status == 0 and "done: stop and undefine network lab" in out
    assert set(networks(host)) == {"default"}


def test_a_removed_network_manifest_keeps_the_network_a_vm_still_uses(host, manifest_dir, capsys):
    """When its manifest goes but a VM is attached to it, the network stays and the plan says why."""
    factories.write(manifest_dir, "lab.yaml", lab())
    factories.write(manifest_dir, "web.yaml", vm_on("lab"))
    assert kvmops(capsys, "apply", str(manifest_dir), "--connect", host.uri)[0] == 0
    (manifest_dir / "lab.yaml").unlink()
    status, out, _ = kvmops(capsys, "plan", str(manifest_dir), "--connect", host.uri, "--detailed-exitcode")
    assert status == 0
    assert "Network lab: no manifest declares this network any more, but web still use it: kept" in out
    assert kvmops(capsys, "apply", str(manifest_dir), "--connect", host.uri)[0] == 0
    assert networks(host)["lab"][0] is True


# --- install media, images and seeds ---------------------------------------------------------------


def test_a_first_boot_only_install_boots_the_kernel_once_and_then_plans_only_a_pending_restart(host, manifest_dir, capsys):
    """The VM runs its install kernel while its configuration already boots from disk; the next plan notes the pending restart."""
    factories.write(manifest_dir, "web.yaml", factories.vm(
        "web", disks=[factories.disk("root", "default")], networks=[{"network": "default"}],
        install={"kernel": {"pool": "default", "volume": "vmlinuz"}, "cmdline": "console=ttyS0", "firstBootOnly": True},
    ))
    status, out, _ = kvmops(capsys, "apply", str(manifest_dir), "--connect", host.uri)
    assert status == 0 and out.index("done: define domain web") < out.index("done: start web") < out.rindex("done: redefine domain web")
    running, configured = domxml.parse(host.live_xml("web")), domxml.parse(host.domain_xml("web"))
    assert (running.kernel, running.cmdline) == (f"{IMAGES}/vmlinuz", "console=ttyS0")
    assert (configured.kernel, configured.cmdline, configured.owner.install_pending) == (None, None, False)
    assert (configured.uuid, configured.nics) == (running.uuid, running.nics)
    status, out, _ = kvmops(capsys, "plan", str(manifest_dir), "--connect", host.uri, "--detailed-exitcode")
    assert status == 0
    assert f"restart pending (changed earlier, takes effect at next boot): install kernel {IMAGES}/vmlinuz, " \
           "cmdline 'console=ttyS0' -> none" in out
    _, out, _ = kvmops(capsys, "status", "web", "--connect", host.uri, "--output", "json")
    (row,) = json.loads(out)
    assert [c["type"] for c in row["conditions"]] == ["Ready", "RestartRequired"]
    assert row["conditions"][1]["message"] == f"install: kernel {IMAGES}/vmlinuz, cmdline 'console=ttyS0' -> none"


def test_image_import_overlay_and_seed_are_planned_without_showing_user_data(host, manifest_dir, capsys):
    """An Image and a cloud-init VM plan an import, an overlay on the image's path and a seed; the user data never shows."""
    image = {"apiVersion": "kvmops/v1", "kind": "Image", "metadata": {"name": "debian"},
             "spec": {"pool": "default", "source": {"url": "https://images.example.org/d.qcow2"}, "sha256": IMAGE_SHA}}
    vm = factories.vm("web", disks=[factories.disk("root", "default", "2GiB", image="debian")],
                      cloudInit={"userData": f"#cloud-config\npassword: {SECRET}\n"})
    factories.write(manifest_dir, "images.yaml", image)
    factories.write(manifest_dir, "web.yaml", vm)
    status, out, err = kvmops(capsys, "plan", str(manifest_dir), "--connect", host.uri, "--output", "json")
    assert status == 0 and SECRET not in out + err
    resources = {r["kind"] + "/" + r["name"]: r for r in json.loads(out)["resources"]}
    (imported,) = resources["Image/debian"]["steps"]
    assert (imported["kind"], imported["name"], imported["sha256"]) == ("import_image", f"debian-{IMAGE_SHA[:12]}.qcow2", IMAGE_SHA)
    steps = resources["VirtualMachine/web"]["steps"]
    assert [s["kind"] for s in steps] == ["define_domain", "create_volume", "write_seed", "define_domain", "start_domain"]
    assert f"<path>{IMAGES}/debian-{IMAGE_SHA[:12]}.qcow2</path>" in steps[1]["xml"]
    assert steps[2]["files"] == "(secret: see digest)" and steps[2]["name"] == "web-cidata.iso"
    assert resources["VirtualMachine/web"]["requires"] == ["Image/debian"]
    text_status, text, _ = kvmops(capsys, "plan", str(manifest_dir), "--connect", host.uri)
    assert text_status == 0 and SECRET not in text and "cloudInit" in text


# --- import and adopt -----------------------------------------------------------------------------


def test_import_writes_a_valid_manifest_and_adopt_with_it_leaves_nothing_to_plan(host, manifest_dir, capsys):
    """kvmops import describes a foreign domain in YAML that validates; adopt --manifests then makes the next plan empty."""
    path = manifest_dir / "legacy.yaml"
    status, _, err = kvmops(capsys, "import", "legacy", "--connect", host.uri, "-o", str(path))
    assert status == 0 and f"manifest for legacy written to {path}" in err
    text = path.read_text()
    assert text.startswith(f"# Imported from {host.uri} by kvmops import legacy.\n")
    spec = yaml.safe_load(text)["spec"]
    assert (spec["uuid"], spec["machine"], spec["runStrategy"], spec["guestAgent"]) == (LEGACY_UUID, "pc-q35-7.2", "Manual", True)
    assert spec["disks"] == [{"name": "vda", "pool": "default", "volume": "legacy.qcow2", "size": "128MiB", "bus": "virtio"}]
    assert [n["mac"] for n in spec["networks"]] == ["52:54:00:12:34:56", "52:54:00:a1:b2:c4"]
    assert kvmops(capsys, "validate", str(manifest_dir))[0] == 0

    status, out, _ = kvmops(capsys, "plan", str(manifest_dir), "--connect", host.uri, "--detailed-exitcode")
    assert status == 1 and "is not managed by kvmops" in out  # not before it is adopted
    status, out, _ = kvmops(capsys, "adopt", "legacy", "--connect", host.uri, "--manifests", str(manifest_dir))
    assert status == 0 and "domain legacy is now managed by kvmops" in out
    status, out, _ = kvmops(capsys, "plan", str(manifest_dir), "--connect", host.uri, "--detailed-exitcode")
    assert (status, out.splitlines()[-1]) == (0, "No changes. 1 resource up to date.")
    owner = domxml.parse(host.domain_xml("legacy")).owner
    assert owner.manifest == "legacy.yaml" and [(v.name, v.created) for v in owner.volumes] == [("legacy.qcow2", False)]


def test_import_of_an_unknown_domain_is_one_clear_error(host, capsys):
    """Importing a domain that does not exist says so and exits 1."""
    status, out, err = kvmops(capsys, "import", "nosuch", "--connect", host.uri)
    assert (status, out) == (1, "")
    assert err.strip().endswith(f"kvmops: error: no domain named nosuch on {host.uri}")


# --- status ----------------------------------------------------------------------------------------


def test_status_json_lists_each_managed_vm_with_conditions_macs_and_disks(world, capsys):
    """status --output json has one row per managed domain: power, Ready, its MACs and its disks with their sizes."""
    status, out, _ = kvmops(capsys, "status", "--connect", world.uri, "--output", "json")
    assert status == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert set(rows) == {"web", "orphan"}  # legacy is foreign
    web = rows["web"]
    assert (web["state"], web["desired"], web["run_strategy"]) == ("running", "running", "Always")
    assert [c["type"] for c in web["conditions"]] == ["Ready"]
    assert web["macs"] == [WEB_MAC]
    assert web["disks"] == [{"target": "vda", "source": "default/web-root.qcow2", "capacity_bytes": 64 * 1024 * 1024}]
    assert all(a["mac"] == WEB_MAC and a["source"] in ("lease", "agent", "arp") for a in web["addresses"])
    assert (web["manifest"], web["scope"], web["memory_mib"]) == ("web.yaml", "default", 64)
    assert rows["orphan"]["macs"] == [] and len(rows["orphan"]["disks"]) == 2


def test_status_with_manifests_shows_drifted_for_a_vm_whose_manifest_changed(world, capsys):
    """With --manifests, a VM whose manifest now differs is Drifted, naming the fields a plan would change."""
    _, out, _ = kvmops(capsys, "status", "--connect", world.uri, "--manifests", str(world.manifests), "--output", "json")
    assert [c["type"] for c in {r["name"]: r for r in json.loads(out)}["web"]["conditions"]] == ["Ready"]
    factories.write(world.manifests, "web.yaml", factories.vm(
        "web", memory="128MiB", disks=[factories.disk("root", "default", "64MiB", deletionPolicy="Delete")],
        networks=[{"network": "default", "mac": WEB_MAC}]))
    status, out, _ = kvmops(capsys, "status", "--connect", world.uri, "--manifests", str(world.manifests), "--output", "json")
    assert status == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["web"]["conditions"] == [{"type": "Drifted", "message": "a plan would change: maxMemory, memory"}]
    assert [c["type"] for c in rows["orphan"]["conditions"]] == ["Drifted"]  # applying would prune it
    status, out, _ = kvmops(capsys, "status", "web", "--connect", world.uri, "--manifests", str(world.manifests))
    assert status == 0 and "web: Drifted: a plan would change: maxMemory, memory" in out and f"macs: {WEB_MAC}" in out


# --- doctor ----------------------------------------------------------------------------------------


def doctor(capsys, uri: str, manifest_dir: Path) -> tuple[int, list[str], int]:
    """Run kvmops doctor; return (exit status, its lines, how many checks failed)."""
    status, out, _ = kvmops(capsys, "doctor", str(manifest_dir), "--connect", uri)
    lines = out.splitlines()
    assert lines[-1].endswith(" warnings"), out
    failed = int(lines[-1].split(": ")[1].split(" failed")[0])
    return status, lines, failed


def test_doctor_checks_the_pools_and_networks_the_manifests_use_and_fails_for_a_missing_pool(tmp_path, manifest_dir, capsys):
    """doctor lists each pool and network the manifests use; a pool the host lacks is one more failure, and exit status 1."""
    uri = node_uri(tmp_path)  # doctor opens its own read-only connection: a fresh host from this file
    factories.write(manifest_dir, "lab.yaml", lab())
    factories.write(manifest_dir, "web.yaml", factories.vm(
        "web", disks=[factories.disk("root", "default", "1GiB")], networks=[{"network": "default"}, {"network": "lab"}]))
    _, lines, failed_before = doctor(capsys, uri, manifest_dir)
    assert f"[ok  ] libvirtd: {uri} answers: libvirt " in "\n".join(lines)
    assert f"[ok  ] pool default: active at {IMAGES}, " in "\n".join(lines)
    assert "[ok  ] network default: active" in lines
    assert "[warn] network lab: declared in the manifests, not created yet" in lines
    assert not [line for line in lines if "pool missing" in line]

    factories.write(manifest_dir, "web.yaml", factories.vm(
        "web", disks=[factories.disk("root", "default", "1GiB"), factories.disk("data", "missing", "1GiB")]))
    status, lines, failed = doctor(capsys, uri, manifest_dir)
    assert status == 1 and failed == failed_before + 1
    at = lines.index("[FAIL] pool missing: not defined on the host")
    assert lines[at + 1] == "       fix: declare it in a StoragePool manifest"


# --- wait and ssh ---------------------------------------------------------------------------------


def test_wait_for_running_returns_at_once_for_a_running_vm(world, capsys):
    """wait --for running prints that the VM runs and exits 0."""
    assert kvmops(capsys, "wait", "web", "--for", "running", "--timeout", "5", "--connect", world.uri)[:2] == (0, "web is running\n")


def test_wait_for_running_times_out_for_a_halted_vm_with_a_clear_message(world, capsys):
    """wait --for running on a stopped VM gives up after --timeout with one line saying what it last saw, and exits 1."""
    world.hypervisor.destroy_domain("web")
    status, out, err = kvmops(capsys, "wait", "web", "--for", "running", "--timeout", "1", "--connect", world.uri)
    assert (status, out) == (1, "")
    assert err.strip().splitlines()[-1] == "kvmops: error: timed out after 1s waiting for web (running); last seen: shutoff"


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


@pytest.mark.parametrize(("name", "prepare", "why"), [
    pytest.param("orphan", None, "orphan has no address yet (no DHCP lease, guest agent or ARP entry)", id="running-without-nic"),
    pytest.param("web", "destroy", "web is not running", id="stopped"),
])
def test_ssh_to_a_vm_without_an_address_says_so_and_exits_1(world, capsys, execs, name, prepare, why):
    """ssh refuses, in one line, when the VM has no address to connect to, and suggests waiting for one."""
    if prepare:
        world.hypervisor.destroy_domain(name)
    status, out, err = kvmops(capsys, "ssh", "--connect", world.uri, name, "--", "-i", "key", "uptime")
    assert (status, out, execs) == (1, "", [])
    assert err.strip().splitlines()[-1] == f"kvmops: error: {why}; try `kvmops wait {name} --for ip` first"


def web_address(world, capsys) -> str:
    _, out, _ = kvmops(capsys, "status", "web", "--connect", world.uri, "--output", "json")
    (row,) = json.loads(out)
    return row["addresses"][0]["ip"]


def test_ssh_puts_options_before_the_address_and_the_command_after_it(world, capsys, execs):
    """ssh runs `ssh OPTIONS -l USER ADDRESS COMMAND` for the VM's first address."""
    address = web_address(world, capsys)
    status, _, err = kvmops(capsys, "ssh", "--connect", world.uri, "--user", "ops", "web", "--", "-i", "key", "uptime")
    assert status == 1 and f"kvmops: ssh to web at {address} (lease)" in err
    assert execs == [["ssh", "ssh", "-i", "key", "-l", "ops", address, "uptime"]]


def test_ssh_reads_its_own_options_written_after_the_vm_name(world, capsys, execs, monkeypatch):
    """`kvmops ssh web --user ops` means the remote user ops, as `kvmops ssh --user ops web` does."""
    monkeypatch.setenv("KVMOPS_CONNECT", world.uri)
    address = web_address(world, capsys)
    kvmops(capsys, "ssh", "web", "--user", "ops")
    assert execs == [["ssh", "ssh", "-l", "ops", address]]

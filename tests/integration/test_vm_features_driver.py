"""VM features end to end on libvirt's test driver, through the ``kvmops`` command.

Networks (create, mark, DHCP hosts live, prune), first-boot-only install media, ``import``
and ``adopt --manifests``, ``status``, ``doctor``, ``wait`` and ``ssh``.  The test driver
cannot upload volumes, so Image imports and cloud-init seeds are checked as planned
steps only.  Every command talks to the real test driver through the real adapter,
pinned to the test's own connection (see ``conftest.pin_connection``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
import yaml

from reconciler import cli
from reconciler.adapters import hypervisor as hv
from reconciler.core import domxml, model, netxml
from reconciler.runtime import observe
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


def test_ssh_takes_the_readmes_order_name_then_user_then_ssh_arguments(world, capsys, execs, monkeypatch):
    """`kvmops ssh web --user ops -- -i key uptime`, as the README writes it, runs ssh with all of it."""
    monkeypatch.setenv("KVMOPS_CONNECT", world.uri)
    address = web_address(world, capsys)
    status, _, err = kvmops(capsys, "ssh", "web", "--user", "ops", "--", "-i", "key", "uptime")
    assert status == 1 and "unrecognized" not in err
    assert execs == [["ssh", "ssh", "-i", "key", "-l", "ops", address, "uptime"]]


def test_ssh_arguments_may_carry_their_own_double_dash_and_options_of_kvmops_names(world, capsys, execs, monkeypatch):
    """After kvmops' `--`, everything is ssh's: `--user` there is not kvmops', and ssh's own `--` ends its options."""
    monkeypatch.setenv("KVMOPS_CONNECT", world.uri)
    address = web_address(world, capsys)
    kvmops(capsys, "--log-level", "error", "ssh", "web", "--", "-p", "2222", "--", "ls", "--user", "-la")
    assert execs == [["ssh", "ssh", "-p", "2222", address, "ls", "--user", "-la"]]


@pytest.mark.parametrize("position", ["before", "after"])
def test_log_options_work_before_and_after_the_command(world, capsys, position):
    """`--log-format` and `--log-level` are accepted on either side of the command."""
    options = ["--log-format", "json", "--log-level", "warning"]
    argv = [*options, "status", "--connect", world.uri] if position == "before" else ["status", "--connect", world.uri, *options]
    status, out, err = kvmops(capsys, *argv)
    assert (status, err) == (0, "")
    assert "web" in out


def test_a_log_option_after_the_command_wins_over_the_one_before(world):
    """Given on both sides, the one after the command counts; given only before it, a command's default does not undo it."""
    assert cli.build_parser().parse_args(["--log-level", "debug", "status", "--log-level", "error"]).log_level == "error"
    assert cli.build_parser().parse_args(["--log-level", "debug", "status"]).log_level == "debug"
    assert cli.build_parser().parse_args(["--log-format", "json", "state", "export"]).log_format == "json"


def test_wait_for_an_unknown_vm_fails_at_once(world, capsys):
    """wait on a name no domain has says so at once, whatever the --timeout, and exits 1."""
    started = time.monotonic()
    status, out, err = kvmops(capsys, "wait", "nosuchvm", "--for", "ip", "--timeout", "30", "--connect", world.uri)
    assert (status, out) == (1, "") and time.monotonic() - started < 5
    assert err.strip().splitlines()[-1] == (f"kvmops: error: no domain named nosuchvm on {world.uri}; "
                                            "`kvmops status` lists the VMs")


@pytest.mark.parametrize("condition", ["running", "ip"])
def test_wait_for_a_halted_vm_to_run_fails_at_once(world, capsys, condition):
    """A shut-off VM whose runStrategy is Halted will not start by itself: wait says so at once instead of timing out."""
    domain = observe.observe(world.hypervisor).domains["web"]
    world.hypervisor.set_owner("web", dataclasses.replace(domain.definition.owner, run_strategy=model.RunStrategy.HALTED))
    world.hypervisor.destroy_domain("web")
    started = time.monotonic()
    status, out, err = kvmops(capsys, "wait", "web", "--for", condition, "--timeout", "30", "--connect", world.uri)
    assert (status, out) == (1, "") and time.monotonic() - started < 5
    assert "web is shut off and its runStrategy is Halted, so nothing will start it" in err
    assert kvmops(capsys, "wait", "web", "--for", "stopped", "--timeout", "5", "--connect", world.uri)[0] == 0


def set_owner(world, name: str, **changes) -> None:
    """Rewrite domain ``name``'s owner mark with ``changes``."""
    domain = observe.observe(world.hypervisor).domains[name]
    world.hypervisor.set_owner(name, dataclasses.replace(domain.definition.owner, **changes))


def status_table(world, capsys) -> list[list[str]]:
    """Return `kvmops status`' table as rows of cells."""
    status, out, _ = kvmops(capsys, "status", "--connect", world.uri)
    assert status == 0
    return [line.split() for line in out.split("\n\n")[0].splitlines()]


def test_status_memory_is_what_the_running_guest_has_after_the_balloon(world, capsys):
    """A running VM ballooned down to 32 MiB shows 32 MiB in the table and JSON; its configured 64 MiB stays in the JSON."""
    world.hypervisor.set_memory_live("web", 32 * 1024)
    _, out, _ = kvmops(capsys, "status", "web", "--connect", world.uri, "--output", "json")
    (row,) = json.loads(out)
    assert (row["memory_mib"], row["configured_memory_mib"]) == (32, 64)
    header, *lines = status_table(world, capsys)
    web = " ".join(next(line for line in lines if line[0] == "web"))
    assert " 32 MiB " in web and "64 MiB" not in web


def test_status_table_keeps_the_dirty_mark_of_a_revision_and_shortens_full_commit_ids(world, capsys):
    """A revision recorded from an edited working tree reads `<12 hex>-dirty`; a full commit id is cut to 12 digits."""
    set_owner(world, "web", revision="0123456789ab-dirty")
    set_owner(world, "orphan", revision="0123456789abcdef0123456789abcdef01234567")
    header, *lines = status_table(world, capsys)
    revisions = {line[0]: line[-1] for line in lines}
    assert revisions == {"web": "0123456789ab-dirty", "orphan": "0123456789ab"}


def test_status_shows_a_scope_column_when_it_lists_several_scopes(world, capsys):
    """With domains of two scopes in the table, a SCOPE column says which is whose; with one scope there is none."""
    assert "SCOPE" not in status_table(world, capsys)[0]
    set_owner(world, "orphan", scope="team-b")
    header, *lines = status_table(world, capsys)
    assert header[:3] == ["NAME", "SCOPE", "STATE"]
    assert {line[0]: line[1] for line in lines} == {"web": "default", "orphan": "team-b"}


def test_a_rerun_on_failure_vm_destroyed_by_hand_is_not_ready_and_says_nothing_restarts_it(world, capsys):
    """RerunOnFailure restarts only after a crash: after `virsh destroy` status says it is not running and will stay so."""
    set_owner(world, "web", run_strategy=model.RunStrategy.RERUN_ON_FAILURE)
    world.hypervisor.destroy_domain("web")
    _, out, _ = kvmops(capsys, "status", "web", "--connect", world.uri, "--output", "json")
    (row,) = json.loads(out)
    assert [c["type"] for c in row["conditions"]] == ["NotRunning"]
    assert row["conditions"][0]["message"] == ("shutoff (destroyed), and runStrategy RerunOnFailure restarts only after "
                                               "a crash, so nothing will start it: virsh start web")


def test_doctor_prints_free_space_rounded_in_the_largest_unit_not_raw_kib(tmp_path, manifest_dir, capsys):
    """A pool's free space reads like `12.3 GiB free`, never as thousands of KiB."""
    uri = node_uri(tmp_path)
    factories.write(manifest_dir, "web.yaml", factories.vm("web", disks=[factories.disk("root", "default", "1GiB")]))
    _, lines, _ = doctor(capsys, uri, manifest_dir)
    pool = next(line for line in lines if line.startswith("[ok  ] pool default: "))
    assert re.search(r", \d+\.\d (KiB|MiB|GiB|TiB) free", pool), pool
    assert not re.search(r"\d{4,} KiB", pool), pool


def test_doctor_checks_the_space_a_pool_not_yet_created_will_have(tmp_path, manifest_dir, capsys):
    """A declared pool that does not exist yet is checked against the filesystem of its directory's nearest existing parent."""
    uri = node_uri(tmp_path)
    future = tmp_path / "not" / "yet" / "there"
    factories.write(manifest_dir, "pool.yaml", factories.pool("future", str(future)))
    factories.write(manifest_dir, "web.yaml", factories.vm("web", disks=[factories.disk("root", "future", "1GiB")]))
    _, lines, _ = doctor(capsys, uri, manifest_dir)
    line = next(line for line in lines if " pool future: " in line)
    assert f"not created yet; {future} will be on the filesystem of {tmp_path}, " in line, line
    assert re.search(r"\d+\.\d (MiB|GiB|TiB) free", line), line


def test_doctor_fails_a_bridge_network_whose_host_bridge_does_not_exist(tmp_path, manifest_dir, capsys):
    """mode: bridge needs a bridge on the host, which apply never creates: doctor fails it and says what to do."""
    uri = node_uri(tmp_path)
    factories.write(manifest_dir, "net.yaml", {"apiVersion": "kvmops/v1", "kind": "Network", "metadata": {"name": "lan"},
                                               "spec": {"mode": "bridge", "bridge": "kvh6nobr0"}})
    factories.write(manifest_dir, "web.yaml", factories.vm("web", networks=[{"network": "lan"}, {"bridge": "kvh6nobr1"}]))
    status, lines, _ = doctor(capsys, uri, manifest_dir)
    assert status == 1
    assert "[FAIL] network lan: the host bridge kvh6nobr0 does not exist; kvmops does not create host bridges" in lines
    assert "[FAIL] bridge kvh6nobr1: the host bridge kvh6nobr1 does not exist; kvmops does not create host bridges" in lines
    at = lines.index("[FAIL] network lan: the host bridge kvh6nobr0 does not exist; kvmops does not create host bridges")
    assert lines[at + 1].startswith("       fix: create kvh6nobr0 on the host")
    assert not [line for line in lines if "kvmops apply creates it" in line and "lan" in line]


def test_import_of_a_domain_kvmops_already_manages_warns_that_its_manifest_exists(world, capsys):
    """Importing a managed VM still writes a manifest, but warns on stderr where it is already declared."""
    status, out, err = kvmops(capsys, "import", "web", "--connect", world.uri)
    assert status == 0 and yaml.safe_load(out)["metadata"]["name"] == "web"
    assert err.startswith("kvmops: warning: web is already managed by kvmops (declared in web.yaml, scope default): "
                          "its manifest exists"), err


def test_listing_pools_and_volumes_survives_pools_undefined_meanwhile(tmp_path):
    """On a shared host other tools define and undefine pools all the time: a pool gone between
    the listing and its reading is left out, never an error that fails status, plan or apply."""
    reader = hv.Hypervisor.open("test:///default")
    churner = hv.Hypervisor.open("test:///default")
    name = f"kvmops-race-{os.getpid()}"
    xml = f"<pool type='dir'><name>{name}</name><target><path>{tmp_path}</path></target></pool>"
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            churner.define_pool(xml, name)
            churner._connection.storagePoolLookupByName(name).undefine()

    thread = threading.Thread(target=churn)
    thread.start()
    failures = []
    try:
        for _ in range(500):
            try:
                reader.list_pools()
                reader.list_volumes(name)
            except Exception as exc:  # noqa: BLE001 - any escape is the failure under test
                failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        stop.set()
        thread.join()
        reader.close()
        churner.close()
    assert failures == []


def test_a_lease_is_dated_by_the_duration_the_network_gives_its_host_or_range():
    """When a lease was granted is its expiry less the duration of the host's <lease>, else the range's, else an hour."""
    xml = """<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp>
      <range start='10.0.0.2' end='10.0.0.9'><lease expiry='2' unit='hours'/></range>
      <host mac='52:54:00:AA:00:01' ip='10.0.0.5'><lease expiry='90' unit='seconds'/></host>
      <host mac='52:54:00:aa:00:02' ip='10.0.0.6'/>
    </dhcp></ip></network>"""
    assert hv._lease_durations(xml) == {"": 7200, "52:54:00:aa:00:01": 90}
    assert hv._lease_durations("<network><name>n</name></network>") == {}
    assert hv.DEFAULT_LEASE_SECONDS == 3600

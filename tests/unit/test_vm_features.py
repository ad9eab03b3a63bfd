"""VM features in the pure core: images, overlays, cloud-init seeds, install media, firmware,
machine and CPU, guest agent, graphics passwords, networks, identity, and ``kvmops import``.

Manifests are written as YAML (through :mod:`tests.factories`) and built by
:func:`reconciler.core.desired.build`, with a fake ``read_file`` for the files they refer
to.  Hosts are raw :class:`~reconciler.core.model.Observation` values read through
:func:`reconciler.core.actual.interpret`, exactly as ``kvmops`` reads libvirt, and
:func:`applied` carries a plan's steps out on such a host the way libvirt would (a small
executor over step values, independent of the planner), so that "the second plan is
empty" is a real check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid as uuids
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from reconciler.core import actual as actual_state
from reconciler.core import desired, domxml, model, netxml, offline, password, planner, render, seediso
from reconciler.core import plan as plans
from reconciler.core.plan import Action, Impact
from tests import factories
from tests.unit import builders as b

GOLDEN = Path(__file__).parent / "golden"
POOL, POOL_PATH = b.POOL, b.POOL_PATH
RUNNING, SHUTOFF = model.PowerState.RUNNING, model.PowerState.SHUTOFF
DELETE = model.DeletionPolicy.DELETE
SECRET = "hunter2-never-in-a-plan"  # appears only inside cloud-init user data
PASSWORD = "vnc-pa55"  # appears only inside a VNC password file
OLD_PASSWORD = "0ld-pa55"
IMAGE_SHA = "ab" * 32
IMAGE_VOLUME = f"debian-{IMAGE_SHA[:12]}.qcow2"
USER_DATA = f"#cloud-config\npassword: {SECRET}\nchpasswd: {{expire: false}}\n"


# --- manifests ---------------------------------------------------------------------------


def vm_doc(name: str = "web", **spec: object) -> dict:
    """Return a VirtualMachine document with a 10 GiB root disk in vmstore unless ``disks`` is given."""
    spec.setdefault("disks", [factories.disk("root", POOL, "10GiB")])
    return factories.vm(name, memory="1GiB", **spec)


def image_doc(name: str = "debian", *, sha256: str = IMAGE_SHA, **spec: object) -> dict:
    spec.setdefault("source", {"url": "https://images.example.org/debian-12.qcow2"})
    return {"apiVersion": "kvmops/v1", "kind": "Image", "metadata": {"name": name},
            "spec": {"pool": POOL, "sha256": sha256, **spec}}


def network_doc(name: str = "lab", **spec: object) -> dict:
    spec.setdefault("ipv4", {"address": "192.168.150.1", "prefix": 24,
                             "dhcp": {"start": "192.168.150.100", "end": "192.168.150.199"}})
    return {"apiVersion": "kvmops/v1", "kind": "Network", "metadata": {"name": name}, "spec": spec}


FOLDERS = {"VirtualMachine": "vms", "Image": "images", "Network": "networks", "StoragePool": "pools"}


def build(*documents: dict, files: dict[str, bytes] | None = None) -> model.DesiredState:
    """Return the desired state of ``documents``, each in its own file; ``files`` are what ``read_file`` finds."""
    texts = {f"{FOLDERS[d['kind']]}/{d['metadata']['name']}.yaml": yaml.safe_dump(d, sort_keys=False) for d in documents}
    readable = files or {}

    def read_file(document: model.Document, path: str) -> bytes:
        assert document.file.startswith("manifests/")
        if path not in readable:
            raise OSError(f"[Errno 2] No such file or directory: {path!r}")
        return readable[path]

    return desired.build(b.manifest_set(texts), read_file=read_file)


def valid(*documents: dict, files: dict[str, bytes] | None = None) -> model.DesiredState:
    """Return the desired state of ``documents``; it must have no problem."""
    state = build(*documents, files=files)
    assert [str(p) for p in state.problems] == []
    return state


def only_problem(state: model.DesiredState) -> model.Problem:
    (problem,) = state.problems
    return problem


# --- hosts -------------------------------------------------------------------------------


EMPTY_HOST = model.Observation(host=b.host(), domains=(), pools=(b.observed_pool(),), volumes=())


def host(observation: model.Observation = EMPTY_HOST) -> model.ActualState:
    """Return the actual state kvmops reads from ``observation``."""
    return actual_state.interpret(observation)


def volume(name: str, pool: str = POOL, capacity: int = 10 * b.GIB, path: str | None = None) -> model.ObservedVolume:
    return model.ObservedVolume(pool, name, capacity, 0, path or f"{POOL_PATH}/{name}")


def with_volumes(observation: model.Observation, *volumes: model.ObservedVolume) -> model.Observation:
    return dataclasses.replace(observation, volumes=(*observation.volumes, *volumes))


def record(xml: str, *, power: model.PowerState = RUNNING, live_xml: str | None = "same") -> model.DomainRecord:
    """Return a domain record for ``xml``; while running, its live XML is the same unless given."""
    root = ET.fromstring(xml)
    return model.DomainRecord(
        name=root.findtext("name"), uuid=root.findtext("uuid") or b.OTHER_UUID, inactive_xml=xml, power=power,
        shutoff_reason=None if power.active else model.ShutoffReason.SHUTDOWN, autostart=False, persistent=True,
        live_xml=(xml if live_xml == "same" else live_xml) if power.active else None,
    )


def plan(state: model.DesiredState, observation: model.Observation = EMPTY_HOST, **settings) -> plans.Plan:
    return planner.plan_changes(state, host(observation), settings=planner.Settings(**settings))


def resource(result: plans.Plan, name: str, kind: str = "VirtualMachine") -> plans.ResourcePlan:
    (found,) = [r for r in result.resources if (r.kind, r.name) == (kind, name)]
    return found


def kinds(steps) -> list[str]:
    return [step.kind for step in steps]


def steps_of(result: plans.ResourcePlan, kind: type) -> list:
    return [step for step in result.steps if isinstance(step, kind)]


def changes(result: plans.ResourcePlan) -> dict[str, tuple[str | None, str | None, Impact]]:
    return {c.path: (c.old, c.new, c.impact) for c in result.changes}


def applied(result: plans.Plan, before: model.Observation = EMPTY_HOST) -> model.Observation:
    """Return the host ``before`` after libvirt carried out every step of ``result`` (see :func:`offline.applied`)."""
    assert not result.problems, [str(p) for p in result.problems]
    return offline.applied(before, result)


def converged(state: model.DesiredState, before: model.Observation = EMPTY_HOST) -> model.Observation:
    """Return the host after applying ``state`` on ``before``; the next plan must be empty."""
    after = applied(plan(state, before), before)
    again = plan(state, after)
    assert not again.has_changes, [(r.key, changes(r), kinds(r.steps)) for r in again.changes]
    return after


def domain_definition(observation: model.Observation, name: str = "web") -> model.DomainDefinition:
    return host(observation).domains[name].definition


# --- building the desired state ------------------------------------------------------------


def test_firmware_machine_cpu_boot_media_agent_and_graphics_are_built_as_written():
    """Every new VM field reaches the spec: machine, uefi, keepNvram, a custom CPU, boot order, CD-ROM, install, agent, VNC."""
    state = valid(vm_doc(
        machine="q35", firmware="uefi", keepNvram=True, cpu={"mode": "custom", "model": "Skylake-Client"},
        boot=["cdrom", "hd"], cdrom={"pool": POOL, "path": "iso/netinst.iso"},
        install={"kernel": {"pool": POOL, "volume": "vmlinuz"}, "initrd": {"pool": POOL, "path": "d-i/initrd.gz"},
                 "cmdline": "console=ttyS0,115200", "firstBootOnly": True},
        guestAgent=True, graphics={"type": "vnc", "listen": "0.0.0.0", "passwordFile": "vnc.pass"},
    ), files={"vnc.pass": PASSWORD.encode() + b"\n"})
    spec = state.vms["web"]
    assert (spec.machine, spec.firmware, spec.keep_nvram) == ("q35", "efi", True)
    assert (spec.cpu_mode, spec.cpu_model) == ("custom", "Skylake-Client")
    assert spec.boot == ("cdrom", "hd")
    assert spec.cdrom == model.FileRef(POOL, path="iso/netinst.iso")
    assert spec.install == model.InstallSpec(
        kernel=model.FileRef(POOL, volume="vmlinuz"), initrd=model.FileRef(POOL, path="d-i/initrd.gz"),
        cmdline="console=ttyS0,115200", first_boot_only=True,
    )
    assert spec.guest_agent is True
    assert (spec.graphics, spec.graphics_listen, spec.graphics_password) == ("vnc", "0.0.0.0", PASSWORD)
    assert spec.graphics_password_digest == "sha256:" + hashlib.sha256(PASSWORD.encode()).hexdigest()


def test_unset_vm_fields_mean_bios_disk_boot_no_media_no_agent_and_libvirts_machine_and_cpu():
    """A manifest that says nothing new gets BIOS, hd boot, no CD-ROM, install, seed or agent, and libvirt's machine and CPU."""
    spec = valid(vm_doc()).vms["web"]
    assert (spec.machine, spec.cpu_mode, spec.cpu_model) == (None, None, None)
    assert (spec.firmware, spec.keep_nvram, spec.boot) == ("bios", False, ("hd",))
    assert (spec.cdrom, spec.install, spec.cloud_init, spec.guest_agent) == (None, None, None, False)
    assert (spec.graphics, spec.graphics_listen, spec.graphics_password, spec.graphics_password_digest) == (
        "none", "127.0.0.1", None, "")


def test_an_install_without_initrd_or_cmdline_boots_the_kernel_every_time():
    """install.initrd is optional, cmdline defaults to empty and firstBootOnly to false."""
    spec = valid(vm_doc(install={"kernel": {"pool": POOL, "path": "vmlinuz"}})).vms["web"]
    assert spec.install == model.InstallSpec(model.FileRef(POOL, path="vmlinuz"), None, "", False)


def test_a_cloud_init_seed_holds_meta_data_user_data_and_network_config_in_the_first_disks_pool():
    """The NoCloud seed has meta-data (instance id, host name, keys), the user data as written and the network config."""
    spec = valid(vm_doc(cloudInit={
        "userData": USER_DATA, "metaData": {"hostname": "web1"}, "networkConfig": {"version": 2},
        "sshAuthorizedKeys": ["ssh-ed25519 AAAAC3Nza ops@example"],
    })).vms["web"]
    seed = spec.cloud_init
    assert (seed.pool, seed.volume) == (POOL, "web-cidata.iso")
    files = dict(seed.files)
    assert list(files) == ["meta-data", "user-data", "network-config"]
    assert files["user-data"] == USER_DATA.encode()
    meta = files["meta-data"].decode()
    assert meta.startswith('instance-id: "web-') and 'local-hostname: "web1"' in meta
    assert '  - "ssh-ed25519 AAAAC3Nza ops@example"' in meta
    assert json.loads(files["network-config"]) == {"version": 2}
    assert seed.digest.startswith("sha256:") and len(seed.digest) == 71
    assert SECRET not in repr(spec)


def test_user_data_read_from_a_file_makes_the_same_seed_as_inline_user_data():
    """userDataFile is read beside the manifest; the same content gives the same seed, other content another digest and instance."""
    inline = valid(vm_doc(cloudInit={"userData": USER_DATA})).vms["web"].cloud_init
    from_file = valid(vm_doc(cloudInit={"userDataFile": "web.cfg"}), files={"web.cfg": USER_DATA.encode()}).vms["web"].cloud_init
    other = valid(vm_doc(cloudInit={"userDataFile": "web.cfg"}), files={"web.cfg": b"#cloud-config\n{}\n"}).vms["web"].cloud_init
    assert from_file == inline
    assert other.digest != inline.digest
    assert dict(other.files)["meta-data"] != dict(inline.files)["meta-data"]  # a new seed is a new instance


def test_a_seed_with_its_own_pool_needs_no_disk():
    """cloudInit.pool places the seed ISO in that pool even for a VM without disks."""
    seed = valid(vm_doc(disks=[], cloudInit={"pool": "isos", "userData": "#cloud-config\n"})).vms["web"].cloud_init
    assert (seed.pool, seed.volume) == ("isos", "web-cidata.iso")


@pytest.mark.parametrize(("spec", "files", "path", "message"), [
    pytest.param({"cpu": {"mode": "host-model", "model": "Skylake-Client"}}, {}, "spec.cpu.model",
                 "a model is only used with mode: custom", id="cpu-model-without-custom"),
    pytest.param({"disks": [], "cloudInit": {"userData": "#cloud-config\n"}}, {}, "spec.cloudInit.pool",
                 "the seed ISO needs a pool: set cloudInit.pool or add a disk", id="seed-without-pool-or-disk"),
    pytest.param({"cloudInit": {"userDataFile": "missing.cfg"}}, {}, "spec.cloudInit.userDataFile",
                 "cannot read the user-data file: [Errno 2] No such file or directory: 'missing.cfg'", id="user-data-file-unreadable"),
    pytest.param({"cloudInit": {"userDataFile": "latin1.cfg"}}, {"latin1.cfg": b"caf\xe9"}, "spec.cloudInit.userDataFile",
                 "cannot read the user-data file: 'utf-8' codec can't decode", id="user-data-file-not-utf8"),
    pytest.param({"graphics": {"type": "vnc", "passwordFile": "missing.pass"}}, {}, "spec.graphics.passwordFile",
                 "cannot read the password file: [Errno 2] No such file or directory: 'missing.pass'", id="password-file-unreadable"),
    pytest.param({"graphics": {"type": "vnc", "passwordFile": "vnc.pass"}}, {"vnc.pass": b"nine-char\n"}, "spec.graphics.passwordFile",
                 "a VNC password has at most 8 characters (this one has 9 characters)", id="vnc-password-too-long"),
    pytest.param({"cloudInit": {"userData": "#cloud-config\n", "pool": POOL},
                  "disks": [factories.disk("root", POOL, "1GiB", volume="web-cidata.iso")]}, {}, "spec.cloudInit",
                 "volume web-cidata.iso is also a disk of this VM", id="seed-volume-is-a-disk"),
])
def test_a_vm_manifest_whose_new_fields_cannot_be_built_is_left_out_with_one_located_problem(spec, files, path, message):
    """Each impossible combination gives one problem naming the file, line and field, and the VM is not planned."""
    state = build(vm_doc(**spec), files=files)
    problem = only_problem(state)
    assert (problem.file, problem.path) == ("manifests/vms/web.yaml", path)
    assert problem.message.startswith(message) and problem.line is not None
    assert "web" not in state.vms and not state.complete


def test_a_spice_password_may_be_longer_than_eight_characters():
    """Only VNC limits passwords to 8 characters (libvirt refuses more at definition); SPICE takes longer ones."""
    files = {"spice.pass": b"a-long-spice-password\n"}
    spec = valid(vm_doc(graphics={"type": "spice", "passwordFile": "spice.pass"}), files=files).vms["web"]
    assert spec.graphics_password == "a-long-spice-password"


def test_a_disk_starting_from_an_undeclared_image_is_a_problem():
    """A disk naming an Image no manifest declares is reported at its image field, and the VM is left out."""
    state = build(vm_doc(disks=[factories.disk("root", POOL, "10GiB", image="debain")]), image_doc("debian"))
    problem = only_problem(state)
    assert (problem.path, problem.message) == (
        "spec.disks[0].image", "no Image named 'debain' is declared; add an Image manifest (kind: Image) or fix the name")
    assert list(state.vms) == [] and list(state.images) == ["debian"]


def test_an_undeclared_image_is_not_blamed_while_another_manifest_is_broken():
    """While some manifest is broken it may be the one declaring the image, so only the broken one is reported."""
    broken = {**image_doc("debian"), "spec": {"pool": POOL, "sha256": "not-a-digest", "source": {"path": "x.raw"}}}
    state = build(vm_doc(disks=[factories.disk("root", POOL, "10GiB", image="debian")]), broken)
    assert [p.path for p in state.problems] == ["spec.sha256"]
    assert list(state.vms) == []


def test_an_image_volume_is_named_by_image_digest_and_format():
    """An Image becomes <name>-<sha256[:12]>.<format>, its digest lower-cased, its source kept."""
    state = valid(image_doc("appliance", sha256="CD" * 32, format="raw", source={"path": "base/appliance.raw"}),
                  image_doc("debian"))
    appliance, debian = state.images["appliance"], state.images["debian"]
    assert (appliance.volume, appliance.sha256, appliance.format) == (f"appliance-{'cd' * 6}.raw", "cd" * 32, "raw")
    assert (appliance.url, appliance.path) == (None, "images/base/appliance.raw")  # relative to the tree
    assert (debian.volume, debian.format, debian.url) == (IMAGE_VOLUME, "qcow2", "https://images.example.org/debian-12.qcow2")


def test_a_network_manifest_builds_its_definition_with_kvmops_mark():
    """A Network becomes its definition (nat by default, hosts' MACs lower-cased) carrying the manifest and its digest."""
    spec = valid(network_doc(ipv4={"address": "192.168.150.1", "prefix": 24, "dhcp": {
        "start": "192.168.150.100", "end": "192.168.150.199",
        "hosts": [{"mac": "52:54:00:AB:CD:EF", "ip": "192.168.150.10", "name": "db"}]}})).networks["lab"]
    assert spec.definition == model.NetworkDefinition(
        name="lab", mode="nat", bridge=None, address="192.168.150.1", prefix=24,
        dhcp_start="192.168.150.100", dhcp_end="192.168.150.199",
        hosts=(model.DhcpHost("52:54:00:ab:cd:ef", "192.168.150.10", "db"),),
        owner=model.NetworkOwnership("networks/lab.yaml", spec.definition.owner.digest),
    )
    assert spec.definition.owner.digest.startswith("sha256:") and spec.autostart is True


@pytest.mark.parametrize(("spec", "path", "message"), [
    pytest.param({"ipv4": {"address": "192.168.50.1", "prefix": 24, "dhcp": {"start": "192.168.51.10", "end": "192.168.50.20"}}},
                 "spec.ipv4.dhcp.start", "192.168.51.10 is not in 192.168.50.0/24", id="range-start-outside"),
    pytest.param({"ipv4": {"address": "10.1.0.1", "prefix": 16, "dhcp": {"start": "10.1.0.10", "end": "10.2.0.20"}}},
                 "spec.ipv4.dhcp.end", "10.2.0.20 is not in 10.1.0.0/16", id="range-end-outside"),
    pytest.param({"ipv4": {"address": "192.168.50.1", "prefix": 24, "dhcp": {
        "start": "192.168.50.10", "end": "192.168.50.20", "hosts": [{"mac": "52:54:00:00:00:01", "ip": "192.168.60.5"}]}}},
                 "spec.ipv4.dhcp.hosts[0].ip", "192.168.60.5 is not in 192.168.50.0/24", id="static-host-outside"),
    pytest.param({"mode": "bridge", "ipv4": None}, "spec.bridge",
                 "mode bridge needs the host bridge to attach to, e.g. bridge: br0", id="bridge-mode-without-bridge"),
    pytest.param({"mode": "bridge", "bridge": "br0"}, "spec.ipv4",
                 "mode bridge has no libvirt-managed addresses; remove ipv4", id="bridge-mode-with-addresses"),
])
def test_a_network_manifest_that_cannot_work_is_one_located_problem(spec, path, message):
    """Ranges and static hosts outside the subnet, and a bridge network without a bridge or with addresses, are refused."""
    document = network_doc(**spec)
    if document["spec"].get("ipv4") is None:
        del document["spec"]["ipv4"]
    state = build(document)
    problem = only_problem(state)
    assert (problem.file, problem.path, problem.message) == ("manifests/networks/lab.yaml", path, message)
    assert problem.line is not None and "lab" not in state.networks


# --- images and disks built on them ----------------------------------------------------------


def test_an_image_is_imported_only_while_its_volume_is_absent():
    """A missing image volume plans one verified import; once the volume and its completion record exist
    the Image plans nothing."""
    state = valid(image_doc())
    first = resource(plan(state), "debian", "Image")
    assert first.actions == (Action.CREATE,)
    assert first.steps == (plans.ImportImage(POOL, IMAGE_VOLUME, "https://images.example.org/debian-12.qcow2", None,
                                             IMAGE_SHA, "qcow2"),)
    complete = volume(model.image_complete_volume(IMAGE_VOLUME), capacity=0)
    present = resource(plan(state, with_volumes(EMPTY_HOST, volume(IMAGE_VOLUME), complete)), "debian", "Image")
    assert (present.steps, present.actions, present.problems) == ((), (), ())


def test_an_image_volume_without_its_completion_record_is_imported_again_in_words():
    """An image volume with no completion record is what an interrupted import left: the plan imports it
    again and says so, instead of reading "up to date"."""
    state = valid(image_doc())
    result = resource(plan(state, with_volumes(EMPTY_HOST, volume(IMAGE_VOLUME))), "debian", "Image")
    assert result.actions == (Action.UPDATE,)
    assert kinds(result.steps) == ["import_image"]
    (change,) = result.changes
    assert "not known to be complete" in change.old and "interrupted import" in change.note


def test_an_image_volume_without_its_completion_record_that_an_overlay_uses_is_never_replaced():
    """An image imported by an older kvmops has no completion record; while a VM's overlay is built on it,
    the plan replaces nothing and says how to check and record it."""
    state = valid(image_doc(), vm_doc(disks=[factories.disk("root", POOL, "20GiB", image="debian")]))
    host = with_volumes(EMPTY_HOST, volume(IMAGE_VOLUME), volume("web-root.qcow2"))
    result = resource(plan(state, host), "debian", "Image")
    assert (result.steps, result.problems) == ((), ())
    (note,) = result.notes
    assert "will not replace it" in note and "web-root.qcow2" in note and "vol-create-as" in note


@pytest.mark.parametrize("volume_name", [
    pytest.param(IMAGE_VOLUME, id="an-image-volume"),
    pytest.param(model.image_complete_volume(IMAGE_VOLUME), id="a-completion-record"),
    pytest.param(model.image_partial_volume(IMAGE_VOLUME), id="an-import-scratch-volume"),
])
def test_a_disk_may_not_name_a_volume_reserved_for_image_imports(volume_name):
    """An image's content-addressed volume and kvmops' import records are kvmops' alone (an interrupted import
    replaces them), so a disk naming one is a problem on its field, not an attachment."""
    state = build(image_doc(), vm_doc(disks=[factories.disk("root", POOL, "10GiB", volume=volume_name)]))
    problem = only_problem(state)
    assert problem.path == "spec.disks[0].volume" and ("reserved" in problem.message or "not valid" in problem.message)
    assert "web" not in state.vms


def test_a_leftover_temporary_import_volume_is_removed_whether_or_not_its_image_is_declared():
    """A .kvmops-partial-* volume next to a complete image, or of an image no manifest declares any more,
    is removed; one in a pool the manifests do not use is left alone."""
    partial = model.image_partial_volume(IMAGE_VOLUME)
    complete = volume(model.image_complete_volume(IMAGE_VOLUME), capacity=0)
    declared = plan(valid(image_doc()), with_volumes(EMPTY_HOST, volume(IMAGE_VOLUME), complete, volume(partial)))
    assert steps_of(resource(declared, "debian", "Image"), plans.DeleteVolume) == [plans.DeleteVolume(POOL, partial)]
    stale = model.image_partial_volume("old-0123456789ab.qcow2")
    swept = plan(valid(image_doc()), with_volumes(EMPTY_HOST, volume(IMAGE_VOLUME), complete, volume(stale)))
    leftover = resource(swept, f"{POOL}/old-0123456789ab.qcow2", "Image")
    assert leftover.steps == (plans.DeleteVolume(POOL, stale),)
    assert "interrupted image import" in leftover.changes[0].note
    unused = plan(valid(vm_doc()), with_volumes(EMPTY_HOST, volume(stale)))
    assert not [r for r in unused.resources if r.kind == "Image"]


def test_an_image_in_a_pool_the_host_lacks_is_a_problem():
    """An Image whose pool neither exists nor is declared cannot be imported, and says so."""
    result = resource(plan(valid(image_doc(pool="nowhere"))), "debian", "Image")
    assert [p.message for p in result.problems] == [
        "storage pool 'nowhere' does not exist; declare it in a StoragePool manifest or create it"]
    assert result.steps == ()


def backing_of(xml: str) -> tuple[str | None, str | None, str | None]:
    """Return (backing path, backing format, own format) of volume ``xml``."""
    root = ET.fromstring(xml)
    store = root.find("backingStore")
    return (store.findtext("path") if store is not None else None,
            store.find("format").get("type") if store is not None else None,
            root.find("target/format").get("type"))


@pytest.mark.parametrize("image_format", ["qcow2", "raw"])
def test_an_overlay_disk_is_a_qcow2_volume_backed_by_the_images_volume(image_format):
    """An overlay's volume XML names the image volume's own path and format as its backing store."""
    image = image_doc(format=image_format)
    name = f"debian-{IMAGE_SHA[:12]}.{image_format}"
    state = valid(image, vm_doc(disks=[factories.disk("root", POOL, "20GiB", image="debian")]))
    observation = with_volumes(EMPTY_HOST, volume(name, path=f"/srv/base/{name}"))
    vm = resource(plan(state, observation), "web")
    (create,) = steps_of(vm, plans.CreateVolume)
    assert (create.pool, create.name, create.capacity) == (POOL, "web-root.qcow2", 20 * b.GIB)
    assert backing_of(create.xml) == (f"/srv/base/{name}", image_format, "qcow2")
    assert vm.requires == ("Image/debian",)


def test_an_overlay_on_an_image_imported_in_the_same_plan_is_backed_by_its_path_in_the_pool():
    """When the image is imported by the same plan, the backing path is where the pool will keep it."""
    state = valid(image_doc(), vm_doc(disks=[factories.disk("root", POOL, "20GiB", image="debian")]))
    result = plan(state)
    (create,) = steps_of(resource(result, "web"), plans.CreateVolume)
    assert backing_of(create.xml) == (f"{POOL_PATH}/{IMAGE_VOLUME}", "qcow2", "qcow2")
    assert [r.key for r in result.changes] == ["Image/debian", "VirtualMachine/web"]


def test_a_copy_disk_is_cloned_from_the_image_and_grown_to_its_size():
    """clone: copy plans a full copy of the image volume, with no backing store, at the disk's size."""
    state = valid(image_doc(), vm_doc(disks=[factories.disk("root", POOL, "20GiB", image="debian", clone="copy")]))
    vm = resource(plan(state, with_volumes(EMPTY_HOST, volume(IMAGE_VOLUME))), "web")
    assert steps_of(vm, plans.CreateVolume) == []
    (clone,) = steps_of(vm, plans.CloneVolume)
    assert (clone.pool, clone.name, clone.source_pool, clone.source, clone.capacity) == (
        POOL, "web-root.qcow2", POOL, IMAGE_VOLUME, 20 * b.GIB)
    assert backing_of(clone.xml) == (None, None, "qcow2")


def test_images_overlays_and_copies_once_applied_plan_nothing_more():
    """After importing the image and creating an overlay and a copy, a second plan is empty."""
    state = valid(image_doc(), vm_doc(disks=[factories.disk("root", POOL, "20GiB", image="debian"),
                                             factories.disk("data", POOL, "4GiB", image="debian", clone="copy")]))
    after = converged(state)
    assert {v.name for v in after.volumes} == {
        IMAGE_VOLUME, model.image_complete_volume(IMAGE_VOLUME), "web-root.qcow2", "web-data.qcow2"}


# --- cloud-init seeds -------------------------------------------------------------------------


def seeded(user_data: str = USER_DATA, **spec: object) -> model.DesiredState:
    return valid(vm_doc(cloudInit={"userData": user_data}, **spec))


def test_a_new_vm_gets_its_seed_written_recorded_and_attached_as_a_cdrom():
    """The seed ISO is announced (pending) by the domain's first definition, written, then recorded complete
    with its digest; it is attached as a read-only SATA CD-ROM."""
    state = seeded()
    seed = state.vms["web"].cloud_init
    vm = resource(plan(state), "web")
    assert kinds(vm.steps) == ["define_domain", "create_volume", "write_seed", "define_domain", "start_domain"]
    (write,) = steps_of(vm, plans.WriteSeed)
    assert (write.pool, write.name, write.files, write.digest) == (POOL, "web-cidata.iso", seed.files, seed.digest)
    intent, defined = (domxml.parse(s.xml) for s in steps_of(vm, plans.DefineDomain))
    assert defined.cdroms == intent.cdroms == (model.DiskDevice("sda", "sata", POOL, "web-cidata.iso", device="cdrom"),)
    assert intent.owner.volume(POOL, "web-cidata.iso").pending
    assert defined.owner.volume(POOL, "web-cidata.iso") == model.OwnedVolume(POOL, "web-cidata.iso", DELETE, True, seed.digest)


def test_a_seed_present_with_its_recorded_digest_is_left_alone_and_a_vanished_one_is_written_again():
    """An applied seed plans nothing; if its volume disappears, the next plan writes it again."""
    state = seeded()
    after = converged(state)
    gone = dataclasses.replace(after, volumes=tuple(v for v in after.volumes if v.name != "web-cidata.iso"))
    assert kinds(resource(plan(state, gone), "web").steps) == ["define_domain", "write_seed", "define_domain"]


@pytest.mark.parametrize(("power", "impact"), [(RUNNING, Impact.RESTART), (SHUTOFF, Impact.LIVE)])
def test_changed_cloud_init_rewrites_the_seed_and_takes_effect_at_the_next_boot(power, impact):
    """New user data rewrites the seed; on a running VM the change is labelled restart, on a stopped one live."""
    after = converged(seeded(runStrategy="Manual"))
    if power is SHUTOFF:
        after = dataclasses.replace(after, domains=tuple(dataclasses.replace(
            d, power=SHUTOFF, live_xml=None, shutoff_reason=model.ShutoffReason.SHUTDOWN) for d in after.domains))
    old, new = seeded().vms["web"].cloud_init, seeded("#cloud-config\npackages: [nginx]\n").vms["web"].cloud_init
    vm = resource(plan(seeded("#cloud-config\npackages: [nginx]\n", runStrategy="Manual"), after), "web")
    uuid = next(d.uuid for d in after.domains if d.name == "web")
    assert steps_of(vm, plans.WriteSeed) == [plans.WriteSeed(POOL, "web-cidata.iso", new.files, new.digest, "web", uuid)]
    assert changes(vm)["cloudInit"] == (old.digest[:19], new.digest[:19], impact)
    assert "cdrom" not in changes(vm)  # the seed CD-ROM is the same volume; only its content changed


def test_user_data_never_appears_in_plan_json_text_markdown_steps_or_reprs():
    """Whether a seed is created or rewritten, the user data's secret is nowhere in what a plan shows or logs."""
    creation = plan(seeded())
    update = plan(seeded(USER_DATA + "runcmd: [reboot]\n"), converged(seeded()))
    assert steps_of(resource(update, "web"), plans.WriteSeed)
    for result in (creation, update):
        shown = [render.to_json(result), render.text(result), render.markdown(result), repr(result)]
        shown += [json.dumps(step.to_dict()) for r in result.resources for step in r.steps]
        shown += [step.describe() for r in result.resources for step in r.steps]
        assert not [text for text in shown if SECRET in text]
        (write,) = steps_of(resource(result, "web"), plans.WriteSeed)
        assert write.to_dict()["files"] == "(secret: see digest)" and write.to_dict()["digest"] == write.digest


def test_removing_cloud_init_from_a_stopped_vm_deletes_its_seed_without_a_data_loss_label():
    """The generated seed is not anyone's data: it is deleted with a plain change line, not DATA LOSS."""
    after = converged(seeded(runStrategy="Halted"))
    vm = resource(plan(valid(vm_doc(runStrategy="Halted")), after), "web")
    assert [(d.pool, d.name, d.domain) for d in steps_of(vm, plans.DeleteVolume)] == [(POOL, "web-cidata.iso", "web")]
    assert changes(vm)["cloudInit"][1:] == (None, Impact.LIVE)
    assert Impact.DATA_LOSS not in {c.impact for c in vm.changes}


# --- install media ------------------------------------------------------------------------------


INSTALL = {"kernel": {"pool": POOL, "volume": "vmlinuz"}, "initrd": {"pool": POOL, "path": "d-i/initrd.gz"},
           "cmdline": "console=ttyS0 priority=critical"}


def install_state(first_boot_only: bool = False, **spec: object) -> model.DesiredState:
    install = {**INSTALL, "firstBootOnly": True} if first_boot_only else INSTALL
    return valid(vm_doc(install=install, networks=[{"network": "default"}, {"bridge": "br0"}], **spec))


def install_host() -> model.Observation:
    return with_volumes(EMPTY_HOST, volume("vmlinuz", capacity=8 * b.MIB))


def test_first_boot_only_install_redefines_without_the_kernel_after_the_first_start():
    """The creation plan defines the domain with the install kernel, starts it, then redefines it without: same UUID, same MACs."""
    vm = resource(plan(install_state(first_boot_only=True), install_host()), "web")
    assert kinds(vm.steps) == ["define_domain", "create_volume", "define_domain", "start_domain", "define_domain"]
    _intent, first, second = steps_of(vm, plans.DefineDomain)
    assert (_intent.create, first.create, second.create) == (True, False, False)
    booting, after = domxml.parse(first.xml), domxml.parse(second.xml)
    assert (booting.kernel, booting.initrd, booting.cmdline) == (
        f"{POOL_PATH}/vmlinuz", f"{POOL_PATH}/d-i/initrd.gz", "console=ttyS0 priority=critical")
    assert (after.kernel, after.initrd, after.cmdline) == (None, None, None)
    assert first.uuid == second.uuid == booting.uuid == after.uuid
    assert [n.mac for n in after.nics] == [n.mac for n in booting.nics] and all(n.mac for n in after.nics)
    assert (booting.owner.install_pending, after.owner.install_pending) == (True, False)
    assert dataclasses.replace(booting, kernel=None, initrd=None, cmdline=None, owner=after.owner) == after


def test_after_the_install_boot_the_kernel_shows_only_as_a_pending_restart():
    """Once the VM booted its installer, the next plan is empty and notes that the next boot uses the disks."""
    after = converged(install_state(first_boot_only=True), install_host())
    again = resource(plan(install_state(first_boot_only=True), after), "web")
    assert not again.changed
    (note,) = again.notes
    assert note.startswith("restart pending (changed earlier, takes effect at next boot): install kernel ")
    assert note.endswith("-> none")


def test_an_install_without_first_boot_only_boots_the_kernel_every_time():
    """Without firstBootOnly the kernel stays in the one definition, and stays there."""
    vm = resource(plan(install_state(), install_host()), "web")
    assert kinds(vm.steps) == ["define_domain", "create_volume", "define_domain", "start_domain"]
    assert domxml.parse(steps_of(vm, plans.DefineDomain)[-1].xml).kernel == f"{POOL_PATH}/vmlinuz"
    after = converged(install_state(), install_host())
    assert domain_definition(after).kernel == f"{POOL_PATH}/vmlinuz"


@pytest.mark.parametrize("strategy", ["Manual", "RerunOnFailure"])
def test_an_install_without_first_boot_only_stays_after_the_start_at_creation(strategy):
    """A VM started once at creation keeps booting its install kernel when firstBootOnly is false, and plans empty."""
    after = converged(install_state(runStrategy=strategy), install_host())
    assert domain_definition(after).kernel == f"{POOL_PATH}/vmlinuz"


def test_a_halted_first_boot_only_vm_keeps_its_install_kernel_until_it_first_runs():
    """A VM created off keeps the install kernel pending; once it is seen running, the kernel is removed."""
    halted = install_state(first_boot_only=True, runStrategy="Halted")
    after = converged(halted, install_host())
    assert domain_definition(after).owner.install_pending is True
    started = dataclasses.replace(after, domains=tuple(dataclasses.replace(
        d, power=RUNNING, shutoff_reason=None, live_xml=d.inactive_xml) for d in after.domains))
    vm = resource(plan(install_state(first_boot_only=True, runStrategy="Manual"), started), "web")
    (define,) = steps_of(vm, plans.DefineDomain)
    assert domxml.parse(define.xml).kernel is None
    assert "the VM has booted its install media; its next boot uses the disks" in vm.notes


def test_starting_a_halted_first_boot_only_vm_boots_the_kernel_once_within_the_same_plan():
    """A first-boot-only VM created halted and then set to run is started and redefined without the kernel in one plan."""
    after = converged(install_state(first_boot_only=True, runStrategy="Halted"), install_host())
    wanted = install_state(first_boot_only=True)
    started = applied(plan(wanted, after), after)
    assert domain_definition(started).kernel is None
    assert not plan(wanted, started).has_changes


# --- identity -----------------------------------------------------------------------------------


def identity(result: plans.Plan, name: str = "web") -> tuple[str, list[str]]:
    define = steps_of(resource(result, name), plans.DefineDomain)[0]
    return define.uuid, [nic.mac for nic in domxml.parse(define.xml).nics]


def test_a_new_domains_uuid_and_macs_are_the_same_in_every_plan_of_the_same_manifest():
    """The plan names the identity before the domain exists: from scope, name and manifest, the same every time."""
    state = valid(vm_doc(networks=[{"network": "default"}, {"bridge": "br0"}]))
    uuid, macs = identity(plan(state))
    assert identity(plan(state)) == (uuid, macs)
    assert uuid == planner.new_uuid("default", state.vms["web"]) and uuids.UUID(uuid).version == 5
    assert len(set(macs)) == 2 and all(mac.startswith("52:54:00:") for mac in macs)
    assert identity(plan(state, scope="team-b"))[0] != uuid
    assert identity(plan(valid(vm_doc(vcpus=3, networks=[{"network": "default"}]))))[0] != uuid


def test_a_pinned_uuid_and_pinned_macs_are_used_as_written():
    """A manifest's uuid and MACs are the domain's, lower-cased."""
    state = valid(vm_doc(uuid=b.UUID.upper(), networks=[{"network": "default", "mac": "52:54:00:AB:00:01"},
                                                        {"network": "default"}]))
    uuid, macs = identity(plan(state))
    assert uuid == b.UUID and macs[0] == "52:54:00:ab:00:01" and macs[1] != macs[0]


def domain_using_mac(name: str, mac: str, *, owned: bool) -> model.DomainRecord:
    owner = f"<metadata><k:owner xmlns:k='{domxml.NAMESPACE}' manifest='vms/{name}.yaml' digest='d'/></metadata>" if owned else ""
    return record(
        f"<domain type='kvm'><name>{name}</name><uuid>{b.OTHER_UUID}</uuid>{owner}<memory unit='KiB'>65536</memory>"
        f"<os><type arch='x86_64'>hvm</type></os><devices><interface type='network'><mac address='{mac}'/>"
        "<source network='default'/><model type='virtio'/></interface></devices></domain>"
    )


def test_new_macs_avoid_the_macs_of_domains_kvmops_manages():
    """A MAC another managed domain already uses is never chosen again."""
    state = valid(vm_doc(networks=[{"network": "default"}]), vm_doc("db", networks=[]))
    (mac,) = identity(plan(state))[1]
    busy = dataclasses.replace(EMPTY_HOST, domains=(domain_using_mac("db", mac, owned=True),))
    (other,) = identity(plan(state, busy))[1]
    assert other != mac and other.startswith("52:54:00:")


def test_new_macs_avoid_the_macs_of_foreign_domains_too():
    """A MAC a domain kvmops does not manage already uses is never chosen: two guests with one MAC break both."""
    state = valid(vm_doc(networks=[{"network": "default"}]))
    (mac,) = identity(plan(state))[1]
    busy = dataclasses.replace(EMPTY_HOST, domains=(domain_using_mac("legacy", mac, owned=False),))
    (other,) = identity(plan(state, busy))[1]
    assert other != mac


# --- machine, CPU and other unmanaged-until-set fields ---------------------------------------------


def with_domain_xml(observation: model.Observation, edit) -> model.Observation:
    """Return ``observation`` with the persistent and live XML of every domain passed through ``edit``."""
    return dataclasses.replace(observation, domains=tuple(dataclasses.replace(
        d, inactive_xml=edit(d.inactive_xml), live_xml=edit(d.live_xml) if d.live_xml else None) for d in observation.domains))


def libvirt_wrote(machine: str | None = None, cpu: str | None = None):
    """Return an edit of domain XML adding what libvirt fills in: a machine type and a CPU element."""
    def edit(xml: str) -> str:
        root = ET.fromstring(xml)
        if machine:
            root.find("os/type").set("machine", machine)
        if cpu:
            root.insert(5, ET.fromstring(cpu))
        return ET.tostring(root, encoding="unicode")
    return edit


@pytest.mark.parametrize(("wanted", "change"), [
    pytest.param("q35", None, id="q35-alias"),
    pytest.param("pc-q35-7.2", None, id="exact"),
    pytest.param("pc", ("pc-q35-7.2", "pc", Impact.RESTART), id="pc-is-i440fx"),
    pytest.param("pc-q35-8.2", ("pc-q35-7.2", "pc-q35-8.2", Impact.RESTART), id="other-version"),
])
def test_machine_q35_matches_the_canonical_type_libvirt_wrote_but_pc_does_not(wanted, change):
    """machine q35 is satisfied by libvirt's pc-q35-7.2; pc (i440fx) or another version is a change at the next boot."""
    after = with_domain_xml(converged(valid(vm_doc())), libvirt_wrote(machine="pc-q35-7.2"))
    vm = resource(plan(valid(vm_doc(machine=wanted)), after), "web")
    assert changes(vm).get("machine") == change
    if change is None:  # only the manifest's digest is recorded anew
        assert list(changes(vm)) == ["digest"]
        assert domxml.parse(steps_of(vm, plans.DefineDomain)[0].xml).machine == "pc-q35-7.2"


def test_unset_machine_and_cpu_follow_what_the_domain_has():
    """Without machine or cpu in the manifest, whatever libvirt wrote is kept and nothing is planned."""
    after = with_domain_xml(converged(valid(vm_doc())), libvirt_wrote(
        machine="pc-i440fx-8.2", cpu="<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>"))
    assert not plan(valid(vm_doc()), after).has_changes
    vm = resource(plan(valid(vm_doc(cpu={"mode": "host-passthrough"})), after), "web")
    assert changes(vm) == {"cpu": ("custom qemu64", "host-passthrough", Impact.RESTART)}
    (define,) = steps_of(vm, plans.DefineDomain)
    parsed = domxml.parse(define.xml)
    assert (parsed.machine, parsed.cpu_mode, parsed.cpu_model) == ("pc-i440fx-8.2", "host-passthrough", None)


@pytest.mark.parametrize(("spec", "path", "old", "new"), [
    pytest.param({"firmware": "uefi"}, "firmware", "bios", "efi", id="firmware"),
    pytest.param({"boot": ["network", "hd"]}, "boot", "hd", "network, hd", id="boot"),
    pytest.param({"guestAgent": True}, "guestAgent", "false", "true", id="guest-agent"),
    pytest.param({"cdrom": {"pool": POOL, "volume": "netinst.iso"}}, "cdrom", None, f"{POOL}/netinst.iso", id="cdrom"),
    pytest.param({"graphics": {"type": "spice", "listen": "0.0.0.0"}}, "graphics", "none", "spice", id="graphics"),
])
def test_a_change_to_a_boot_time_field_of_a_running_vm_waits_for_its_next_boot(spec, path, old, new):
    """Firmware, boot order, agent, CD-ROM and graphics changes are redefinitions with impact restart on a running VM."""
    after = converged(valid(vm_doc()))
    vm = resource(plan(valid(vm_doc(**spec)), after), "web")
    assert changes(vm)[path] == (old, new, Impact.RESTART)
    (define,) = steps_of(vm, plans.DefineDomain)
    assert define.uuid == host(after).domains["web"].uuid


@pytest.mark.parametrize(("before", "after", "field"), [
    pytest.param({"machine": "pc-q35-7.2"}, {"machine": "pc-q35-8.2"}, "machine", id="machine"),
    pytest.param({"cpu": {"mode": "custom", "model": "Skylake-Client"}}, {"cpu": {"mode": "custom", "model": "qemu64"}},
                 "cpu", id="cpu-model"),
    pytest.param({}, {"cdrom": {"pool": POOL, "volume": "netinst.iso"}}, "cdrom", id="cdrom"),
    pytest.param({"graphics": {"type": "vnc", "listen": "0.0.0.0"}}, {"graphics": "vnc"}, "graphics.listen", id="graphics-listen"),
])
def test_every_restart_impact_change_is_noted_as_restart_pending_until_the_next_boot(before, after, field):
    """A change labelled restart on a running VM leaves a "restart pending" note on the next plan, as the README promises."""
    running = converged(valid(vm_doc(**before)))
    wanted = valid(vm_doc(**after))
    assert changes(resource(plan(wanted, running), "web"))[field][2] is Impact.RESTART
    again = resource(plan(wanted, applied(plan(wanted, running), running)), "web")
    assert not again.changed
    assert [n for n in again.notes if n.startswith("restart pending") and f"{field} " in n]


# --- graphics passwords ---------------------------------------------------------------------------


def vnc(password: str) -> tuple[model.DesiredState, dict[str, bytes]]:
    files = {"vnc.pass": password.encode()}
    return valid(vm_doc(graphics={"type": "vnc", "passwordFile": "vnc.pass"}), files=files), files


def test_a_changed_vnc_password_is_detected_by_its_digest_and_redacted_in_step_json():
    """libvirt never shows the password back, so its digest tells the change; the step's JSON shows passwd='***'."""
    before, _ = vnc(OLD_PASSWORD)
    after = converged(before)
    assert "passwd=" in host(after).domains["web"].xml  # written into the domain...
    assert password.matches(domain_definition(after).owner.graphics_password_digest, OLD_PASSWORD)
    changed, _ = vnc(PASSWORD)
    result = plan(changed, after)
    vm = resource(result, "web")
    assert changes(vm)["graphics.password"] == ("(set)", "(set)", Impact.RESTART)
    (define,) = steps_of(vm, plans.DefineDomain)
    assert f'passwd="{PASSWORD}"' in define.xml  # ...the executor needs it
    assert "passwd='***'" in define.to_dict()["xml"]
    for shown in (json.dumps(define.to_dict()), render.to_json(result), render.text(result), render.markdown(result)):
        assert PASSWORD not in shown


def test_the_password_digest_in_the_mark_is_salted_scrypt_never_a_plain_hash():
    """The mark, readable by read-only clients, holds a salted scrypt digest: not the sha256 of the password, and not the same for two domains."""
    state, _ = vnc(PASSWORD)
    two = valid(vm_doc(graphics={"type": "vnc", "passwordFile": "vnc.pass"}),
                vm_doc(name="db", graphics={"type": "vnc", "passwordFile": "vnc.pass"}), files={"vnc.pass": PASSWORD.encode()})
    after = converged(two)
    digests = [domain_definition(after, name).owner.graphics_password_digest for name in ("web", "db")]
    assert all(d.startswith("scrypt$16384$8$1$") for d in digests), digests
    assert digests[0] != digests[1], "each domain has its own salt"
    unsalted = hashlib.sha256(PASSWORD.encode()).hexdigest()
    for name in ("web", "db"):
        assert unsalted not in host(after).domains[name].xml.split("passwd=")[0]
        assert unsalted not in json.dumps(render.to_data(plan(state)))


def test_a_random_salt_per_pass_still_leaves_the_second_plan_empty():
    """The digest is checked by recomputing it with the salt stored in the mark, so other random entropy changes nothing."""
    state, _ = vnc(PASSWORD)
    after = applied(plan(state, password_salt=b"first pass entropy"))
    assert not plan(state, after, password_salt=b"another pass, other entropy").has_changes


def test_an_unsalted_digest_from_an_older_kvmops_is_replaced_without_a_password_change():
    """A mark holding sha256:<hex> of the same password gets the salted digest, shown as a live, password-unchanged change; then the plan is empty."""
    state, _ = vnc(PASSWORD)
    after = applied(plan(state))
    legacy = "sha256:" + hashlib.sha256(PASSWORD.encode()).hexdigest()
    (web_record,) = after.domains
    xml = web_record.inactive_xml.replace(domain_definition(after).owner.graphics_password_digest, legacy)
    old = dataclasses.replace(after, domains=(dataclasses.replace(web_record, inactive_xml=xml, live_xml=xml),))
    assert domain_definition(old).owner.graphics_password_digest == legacy
    vm = resource(plan(state, old), "web")
    assert changes(vm)["graphics.password"] == ("(set, unsalted digest)", "(set)", Impact.LIVE)
    assert not plan(state, applied(plan(state, old), old)).has_changes


def test_a_new_vm_with_a_vnc_password_shows_neither_password_nor_file_content():
    """The creation step carries the password for libvirt but its JSON and the plan text never do."""
    state, _ = vnc(PASSWORD)
    result = plan(state)
    for define in steps_of(resource(result, "web"), plans.DefineDomain):
        assert "passwd='***'" in define.to_dict()["xml"]
    assert PASSWORD not in render.to_json(result)
    assert "vnc on 127.0.0.1 with a password" in render.text(result)


# --- pruning --------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [True, False])
def test_keep_nvram_reaches_the_undefine_step_when_the_vm_is_pruned(keep):
    """A pruned UEFI VM's NVRAM file is kept exactly when its manifest said keepNvram."""
    after = converged(valid(vm_doc(firmware="uefi", keepNvram=keep), vm_doc("db", disks=[])))
    result = plan(valid(vm_doc("db", disks=[])), after)
    gone = resource(result, "web")
    assert gone.actions == (Action.DELETE, Action.STOP)
    (undefine,) = steps_of(gone, plans.UndefineDomain)
    assert (undefine.name, undefine.keep_nvram) == ("web", keep)
    assert undefine.describe().endswith("(keeping its NVRAM)") is keep


# --- networks -------------------------------------------------------------------------------------


HOST = {"mac": "52:54:00:6b:3c:01", "ip": "192.168.150.10", "name": "db"}


def lab(*hosts: dict, **spec: object) -> dict:
    return network_doc(ipv4={"address": "192.168.150.1", "prefix": 24,
                             "dhcp": {"start": "192.168.150.100", "end": "192.168.150.199", "hosts": list(hosts)}}, **spec)


def test_a_new_network_is_defined_with_kvmops_mark_then_started_and_autostarted():
    """A declared network is created carrying its manifest and scope in <metadata>, started, and autostarted."""
    state = valid(lab(HOST))
    network = resource(plan(state, scope="team-a"), "lab", "Network")
    assert network.actions == (Action.CREATE, Action.START)
    assert kinds(network.steps) == ["define_network", "start_network", "set_network_autostart"]
    define = network.steps[0]
    assert define.create is True
    defined = netxml.parse(define.xml)
    spec = state.networks["lab"]
    assert defined == dataclasses.replace(spec.definition, owner=dataclasses.replace(spec.definition.owner, scope="team-a"))
    assert 'value="no-ping"' in define.xml


def test_applied_networks_plan_nothing_more():
    """Once defined and started, the declared networks plan nothing."""
    converged(valid(lab(HOST), network_doc("backend", mode="isolated", ipv4={"address": "10.150.0.1", "prefix": 24})))


def running_lab(*hosts: dict) -> model.Observation:
    return converged(valid(lab(*hosts)))


def test_a_static_dhcp_host_is_added_and_removed_live():
    """A new static lease is added to the running network and an old one removed, as well as written to its configuration."""
    web_host = {"mac": "52:54:00:6B:3C:02", "ip": "192.168.150.11", "name": "web"}
    network = resource(plan(valid(lab(web_host)), running_lab(HOST)), "lab", "Network")
    assert kinds(network.steps) == ["define_network", "update_dhcp_host", "update_dhcp_host"]
    define, remove, add = network.steps
    assert define.create is False and netxml.parse(define.xml).hosts == (model.DhcpHost("52:54:00:6b:3c:02", "192.168.150.11", "web"),)
    assert (remove.add, remove.xml) == (False, '<host mac="52:54:00:6b:3c:01" ip="192.168.150.10" name="db" />')
    assert (add.add, add.xml) == (True, '<host mac="52:54:00:6b:3c:02" ip="192.168.150.11" name="web" />')
    assert [c.impact for c in network.changes] == [Impact.LIVE] and network.notes == ()


@pytest.mark.parametrize(("active", "impact", "tail"), [(True, Impact.RESTART, []), (False, Impact.LIVE, ["start_network"])])
def test_a_structural_network_change_is_written_for_the_networks_next_start(active, impact, tail):
    """A new subnet is written to the configuration; on a running network it waits for a restart kvmops leaves to people."""
    before = running_lab()
    if not active:
        before = dataclasses.replace(before, networks=tuple(dataclasses.replace(n, active=False) for n in before.networks))
    changed = network_doc(ipv4={"address": "192.168.160.1", "prefix": 24,
                                "dhcp": {"start": "192.168.160.100", "end": "192.168.160.199"}})
    network = resource(plan(valid(changed), before), "lab", "Network")
    assert kinds(network.steps) == ["define_network", *tail]
    assert changes(network) == {
        "ipv4": ("192.168.150.1/24", "192.168.160.1/24", impact),
        "dhcp": ("192.168.150.100 - 192.168.150.199", "192.168.160.100 - 192.168.160.199", impact),
    }
    notes = [n for n in network.notes if "take effect when it restarts" in n]
    assert bool(notes) is active


def test_a_network_manifest_naming_a_foreign_network_is_a_problem():
    """A network kvmops did not define is never changed, even when a manifest names it."""
    foreign = model.NetworkRecord("lab", "<network><name>lab</name><bridge name='virbr5'/></network>", True, True)
    result = plan(valid(lab()), dataclasses.replace(EMPTY_HOST, networks=(foreign,)))
    network = resource(result, "lab", "Network")
    assert network.steps == ()
    (problem,) = network.problems
    assert problem.path == "metadata.name"
    assert problem.message.startswith("network 'lab' already exists on qemu:///system and is not managed by kvmops")
    assert result.problems == (problem,)


def vm_on_lab(name: str = "web") -> dict:
    return vm_doc(name, disks=[], networks=[{"network": "lab"}])


def test_an_owned_network_a_vm_still_uses_is_kept_when_its_manifest_goes():
    """Removing a Network manifest keeps the network, with a note, while a VM is still attached to it."""
    after = converged(valid(lab(), vm_on_lab()))
    network = resource(plan(valid(vm_on_lab()), after), "lab", "Network")
    assert network.steps == ()
    assert network.notes == ("no manifest declares this network any more, but web still use it: kept",)


def test_an_owned_network_no_vm_uses_is_removed_when_its_manifest_goes():
    """An owned network that no manifest declares and no VM uses is stopped and undefined."""
    after = converged(valid(lab(), vm_doc(disks=[])))
    network = resource(plan(valid(vm_doc(disks=[])), after), "lab", "Network")
    assert network.actions == (Action.DELETE,)
    assert network.steps == (plans.RemoveNetwork("lab"),)


def test_an_owned_network_a_foreign_vm_uses_is_kept_when_its_manifest_goes():
    """A domain kvmops does not manage still depends on the network: removing it would cut that guest off."""
    after = converged(valid(lab(), vm_doc(disks=[])))
    foreign = record(domain_using_mac("legacy", "52:54:00:01:02:03", owned=False).inactive_xml.replace(
        "<source network='default'/>", "<source network='lab'/>"))
    after = dataclasses.replace(after, domains=(*after.domains, foreign))
    network = resource(plan(valid(vm_doc(disks=[])), after), "lab", "Network")
    assert network.steps == ()


@pytest.mark.parametrize("why", ["broken-manifest", "no-prune", "empty-directory"])
def test_an_owned_network_is_not_pruned_while_pruning_is_suspended(why):
    """A broken manifest (maybe the Network's own), --no-prune, or an empty manifest directory never removes a network."""
    after = converged(valid(lab()))
    if why == "broken-manifest":
        broken = build({**lab(), "spec": {"mode": "sideways"}})
        assert broken.problems and "lab" not in broken.networks
        result = plan(broken, after)
    elif why == "no-prune":
        result = plan(valid(vm_doc(disks=[])), after, prune=False)
    else:
        result = plan(valid(), after)
    assert [r.key for r in result.changes if r.kind == "Network"] == []


# --- restart pending ------------------------------------------------------------------------------


def test_restart_pending_reports_install_firmware_boot_and_guest_agent_differences():
    """Between the running and the configured definition, install media, firmware, boot order and agent are reported."""
    live = dataclasses.replace(b.definition(b.vm()), kernel="/var/lib/kvmops/vmstore/vmlinuz", initrd="/i.gz",
                               cmdline="console=ttyS0")
    config = dataclasses.replace(live, kernel=None, initrd=None, cmdline=None, firmware="efi", boot=("cdrom", "hd"),
                                 guest_agent=True)
    assert planner.restart_pending(live, config) == [
        ("firmware", "bios", "efi"),
        ("boot", "hd", "cdrom, hd"),
        ("install", "kernel /var/lib/kvmops/vmstore/vmlinuz, initrd /i.gz, cmdline 'console=ttyS0'", "none"),
        ("guestAgent", "false", "true"),
    ]
    assert planner.restart_pending(config, config) == []


# --- domain XML ----------------------------------------------------------------------------------


OWNER = model.Ownership(
    manifest="vms/full.yaml", digest="sha256:" + "ef" * 32, run_strategy=model.RunStrategy.RERUN_ON_FAILURE,
    volumes=(
        model.OwnedVolume(POOL, "full-root.qcow2", model.DeletionPolicy.RETAIN, True),
        model.OwnedVolume(POOL, "full-cidata.iso", DELETE, True, digest="sha256:" + "01" * 32),
    ),
    scope="team-a", shutdown_timeout=30.0, revision="3f2a1b9c0d12", keep_nvram=True,
    graphics_password_digest="sha256:" + "02" * 32, install_pending=True,
)
FULL = model.DomainDefinition(
    name="full", uuid=b.UUID, virt_type="kvm", vcpus=4, memory=2 * 1024 * 1024, max_memory=4 * 1024 * 1024,
    disks=(model.DiskDevice("vda", "virtio", POOL, "full-root.qcow2"),),
    nics=(model.NicDevice("network", "default", "virtio", "52:54:00:6b:3c:11"),
          model.NicDevice("bridge", "br0", "e1000e", "52:54:00:6b:3c:12")),
    console=True, graphics="vnc", owner=OWNER, firmware="efi", machine="pc-q35-7.2",
    cpu_mode="custom", cpu_model="Skylake-Client", boot=("cdrom", "hd", "network"),
    kernel=f"{POOL_PATH}/vmlinuz", initrd=f"{POOL_PATH}/initrd.gz", cmdline="console=ttyS0,115200 auto=true",
    cdroms=(model.DiskDevice("sda", "sata", pool=POOL, volume="full-cidata.iso", device="cdrom"),
            model.DiskDevice("sdb", "sata", path=f"{POOL_PATH}/iso/netinst.iso", device="cdrom")),
    guest_agent=True, graphics_listen="0.0.0.0", graphics_password=PASSWORD,
)
PLAIN = dataclasses.replace(
    FULL, firmware="bios", machine="pc-i440fx-8.2", cpu_mode="host-passthrough", cpu_model=None, boot=("hd",),
    kernel=None, initrd=None, cmdline=None, cdroms=(), guest_agent=False, graphics="spice", graphics_listen="127.0.0.1",
    graphics_password=None, owner=dataclasses.replace(OWNER, keep_nvram=False, install_pending=False, graphics_password_digest=""),
)
DEFINITIONS = [
    pytest.param(FULL, id="every-new-field"),
    pytest.param(PLAIN, id="new-fields-off"),
    pytest.param(dataclasses.replace(PLAIN, cpu_mode="host-model", machine="pc-q35-7.2", graphics="none",
                                     graphics_listen=None, kernel=f"{POOL_PATH}/vmlinuz"), id="host-model-kernel-only"),
]
BASES = {
    "libvirt-expanded": (GOLDEN / "web-libvirt-expanded.xml").read_text(),
    "foreign-uefi-windows": (GOLDEN / "foreign-virt-install.xml").read_text(),
    "virt-install-q35": (GOLDEN / "virt-install-q35.xml").read_text(),
    "rendered-full": domxml.render(FULL),
}


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_every_new_field_survives_render_then_parse(definition):
    """parse(render(d)) == d for firmware, machine, CPU, boot order, kernel/initrd/cmdline, CD-ROMs, agent and graphics."""
    assert domxml.parse(domxml.render(definition)) == definition


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("definition", DEFINITIONS)
def test_every_new_field_survives_patch_then_parse(definition, base):
    """parse(patch(xml, d)) == d whatever domain XML the definition is written into."""
    assert domxml.parse(domxml.patch(BASES[base], definition)) == definition


def test_patching_to_bios_drops_the_uefi_loader_and_nvram():
    """A domain moved from UEFI to BIOS keeps no pflash loader or NVRAM that would still boot OVMF."""
    patched = ET.fromstring(domxml.patch(BASES["foreign-uefi-windows"], PLAIN))
    assert patched.find("os/loader") is None and patched.find("os/nvram") is None
    assert patched.find("os").get("firmware") is None


def test_a_vnc_password_is_written_into_the_xml_and_a_listen_address_into_both_forms():
    """The password goes to libvirt as passwd; the listen address is set as attribute and <listen> child alike."""
    patched = domxml.patch(BASES["virt-install-q35"], dataclasses.replace(FULL, graphics="spice"))
    graphics = ET.fromstring(patched).find("devices/graphics")
    assert graphics.get("passwd") == PASSWORD and graphics.get("listen") == "0.0.0.0"
    assert graphics.find("listen").get("address") == "0.0.0.0"
    assert graphics.find("image").get("compression") == "off"  # the rest of the element is libvirt's and stays


# --- network XML ---------------------------------------------------------------------------------


NETWORKS = [
    pytest.param(model.NetworkDefinition(
        "lab", "nat", "kvlab0", "192.168.150.1", 24, "192.168.150.100", "192.168.150.199",
        (model.DhcpHost("52:54:00:6b:3c:01", "192.168.150.10", "db"), model.DhcpHost("52:54:00:6b:3c:02", "192.168.150.11")),
        owner=model.NetworkOwnership("networks/lab.yaml", "sha256:" + "aa" * 32, "team-a"),
        uuid="640c7d90-1c26-49ea-8979-5d844d53d32a"), id="nat-dhcp-hosts"),
    pytest.param(model.NetworkDefinition("backend", "isolated", None, "10.150.0.1", 16, None, None, (),
                                         owner=model.NetworkOwnership("n.yaml", "sha256:1")), id="isolated-no-dhcp"),
    pytest.param(model.NetworkDefinition("lan", "bridge", "br0", None, None, None, None, (),
                                         owner=model.NetworkOwnership("n.yaml", "sha256:2")), id="host-bridge"),
    pytest.param(model.NetworkDefinition("plain", "nat", None, None, None, None, None, ()), id="unowned"),
]


@pytest.mark.parametrize("definition", NETWORKS)
def test_network_definitions_survive_render_then_parse(definition):
    """parse(render(d)) == d for nat, isolated and bridge networks, owned or not, their UUID included."""
    parsed = netxml.parse(netxml.render(definition))
    assert parsed == definition and parsed.uuid == definition.uuid


def test_a_redefined_network_keeps_its_bridge_mac():
    """The bridge MAC libvirt chose is carried into the redefinition."""
    (nat, *_rest) = NETWORKS
    xml = netxml.render(nat.values[0], mac="52:54:00:0f:0e:0d")
    assert netxml.bridge_mac(xml) == "52:54:00:0f:0e:0d"
    assert netxml.bridge_mac(netxml.render(nat.values[0])) is None


def test_a_network_given_by_netmask_reads_as_its_prefix():
    """libvirt's netmask form of an address reads as the same prefix a manifest uses."""
    parsed = netxml.parse("<network><name>default</name><forward/><ip address='192.168.122.1' netmask='255.255.255.0'>"
                          "<dhcp><range start='192.168.122.2' end='192.168.122.254'/>"
                          "<host mac='52:54:00:AA:BB:CC' ip='192.168.122.5'/></dhcp></ip></network>")
    assert (parsed.mode, parsed.address, parsed.prefix, parsed.owner) == ("nat", "192.168.122.1", 24, None)
    assert parsed.hosts == (model.DhcpHost("52:54:00:aa:bb:cc", "192.168.122.5"),)


# --- the seed ISO ----------------------------------------------------------------------------------


def test_a_seed_iso_gives_back_its_files_and_is_labelled_cidata():
    """The NoCloud ISO holds user-data, meta-data and network-config under their long names, with label cidata."""
    seed = seeded().vms["web"].cloud_init
    image = seediso.build(seed.files)
    assert seediso.read(image) == dict(seed.files)
    assert seediso.label(image) == "cidata"
    assert len(image) % 2048 == 0


# --- kvmops import --------------------------------------------------------------------------------


def test_an_imported_virt_install_domain_plans_exactly_the_definition_it_has():
    """manifest_for of a virt-install domain (pool file disk, q35, host CPU, agent, two NICs, spice) builds back to its definition."""
    xml = BASES["virt-install-q35"]
    disk = model.ObservedVolume("default", "app.qcow2", 20 * b.GIB, 3 * b.GIB, "/var/lib/libvirt/images/app.qcow2")
    observed = actual_state.resolve_paths(domxml.parse(xml), {disk.path: ("default", "app.qcow2")})
    assert observed.disks == (model.DiskDevice("vda", "virtio", "default", "app.qcow2"),)

    document, warnings = desired.manifest_for(observed, autostart=False, capacities={("default", "app.qcow2"): disk.capacity})
    assert warnings == []
    state = valid_text(yaml.safe_dump(document, sort_keys=False))
    spec = state.vms["app"]
    assert (spec.run_strategy, spec.autostart, spec.machine, spec.cpu_mode) == (
        model.RunStrategy.MANUAL, False, "pc-q35-7.2", "host-passthrough")

    images = b.observed_pool("default", "/var/lib/libvirt/images")
    observation = model.Observation(b.host(), (record(xml),), (images,), (disk,))
    planned = planner.desired_definition(spec, None, host(observation), state, planner.Settings())
    assert dataclasses.replace(planned, owner=None) == observed

    # adopted with the mark the planner would write, the domain then plans nothing at all
    marked = xml.replace("</metadata>", ET.tostring(domxml.render_owner(planned.owner), encoding="unicode") + "</metadata>")
    adopted = dataclasses.replace(observation, domains=(record(marked),))
    assert not plan(state, adopted).has_changes


def test_an_imported_domain_with_only_a_cpu_topology_gets_a_manifest_that_validates():
    """A <cpu> that only sets sockets and cores manages no CPU model, so the imported manifest must still validate."""
    xml = BASES["virt-install-q35"].replace(
        "<cpu mode='host-passthrough' check='none' migratable='on'/>",
        "<cpu><topology sockets='1' dies='1' cores='2' threads='1'/></cpu>")
    document, _warnings = desired.manifest_for(domxml.parse(xml), autostart=False, capacities={})
    valid_text(yaml.safe_dump(document, sort_keys=False))


def valid_text(text: str) -> model.DesiredState:
    state = desired.build(b.manifest_set({"vms/app.yaml": text}))
    assert [str(p) for p in state.problems] == []
    return state


# --- adopting virt-install domains exactly (issue 9) -----------------------------------------------

CORPUS = Path(__file__).resolve().parents[1] / "e2e" / "corpus"


def corpus_domain(variant: str, name: str = "app") -> str:
    """Return a domain of the virt-install corpus with its placeholders filled in for a unit test."""
    xml = (CORPUS / f"{variant}.xml").read_text(encoding="utf-8").split("-->\n", 1)[1]
    xml = xml.replace("@NAME@", name).replace("@DIR@", "/var/lib/vms").replace("@NET@", "default")
    return xml.replace("@POOLDIR@", "/srv/pool").replace("@POOL@", "vmstore")


def adopted_plan(xml: str, volumes: tuple[model.ObservedVolume, ...] = (), pools: tuple = ()) -> tuple[plans.Plan, dict]:
    """Import ``xml``, adopt it with the mark the planner would write, and return the next plan and the manifest."""
    by_path = model.volumes_by_path(volumes)
    observed = actual_state.resolve_paths(domxml.parse(xml), by_path)
    assert desired.inexpressible(observed) == []
    document, _warnings = desired.manifest_for(
        observed, autostart=False, capacities={(v.pool, v.name): v.capacity for v in volumes},
        paths={(v.pool, v.name): v.path for v in volumes})
    state = valid_text(yaml.safe_dump(document, sort_keys=False))
    observation = model.Observation(b.host(), (record(xml, power=SHUTOFF),), pools, volumes)
    planned = planner.desired_definition(state.vms["app"], None, host(observation), state, planner.Settings())
    marked = xml.replace("</metadata>", ET.tostring(domxml.render_owner(planned.owner), encoding="unicode") + "</metadata>")
    adopted = dataclasses.replace(observation, domains=(record(marked, power=SHUTOFF),))
    return plan(state, adopted), document


def test_an_adopted_domain_whose_disk_is_a_file_outside_any_pool_keeps_it_and_plans_nothing():
    """virt-install's --disk path=... is imported as a path: disk, and adopting it plans no detach."""
    result, document = adopted_plan(corpus_domain("import-path-debian"))
    assert document["spec"]["disks"] == [{"name": "vda", "path": "/var/lib/vms/root.qcow2", "bus": "virtio"}]
    assert not result.has_changes, render.text(result)


def test_an_adopted_domain_keeps_its_empty_cd_rom_drive_and_its_install_media():
    """An ejected install CD-ROM stays an empty drive; a full one stays attached as it is; the boot order is kept."""
    installed, document = adopted_plan(corpus_domain("cdrom-installed-empty-drive"))
    assert document["spec"]["cdrom"] == {"empty": True}
    assert not installed.has_changes, render.text(installed)
    installing, document = adopted_plan(corpus_domain("cdrom-install-step"))
    assert (document["spec"]["cdrom"], document["spec"]["boot"]) == ({"path": "/var/lib/vms/install.iso"}, ["cdrom", "hd"])
    assert not installing.has_changes, render.text(installing)


def test_an_adopted_domain_with_a_per_device_boot_order_gets_no_os_boot_element():
    """virt-install's boot.order= leaves <os> without <boot>: imported as boot: [], it plans nothing."""
    result, document = adopted_plan(corpus_domain("boot-order-devices"))
    assert document["spec"]["boot"] == []
    assert not result.has_changes, render.text(result)


@pytest.mark.parametrize("variant", ["cpu-mode-maximum", "nic-pcnet-pc", "win10-installed", "win2k19-uefi-no-tpm",
                                     "machine-pc-ide", "disks-sata-scsi-raw", "direct-kernel-boot", "vnc-listen-any"])
def test_every_value_import_writes_for_virt_install_domains_validates_and_plans_nothing(variant):
    """cpu mode maximum, pcnet, Windows profiles, IDE, raw files and kernel files: all import, validate, adopt exactly."""
    result, _document = adopted_plan(corpus_domain(variant))
    assert not result.has_changes, render.text(result)


def test_a_cd_rom_in_a_pool_is_imported_as_the_file_it_is_and_stays_relabelled_as_before():
    """Adopting writes what is there: a pool file CD-ROM is kept as a path:, libvirt's relabelling unchanged."""
    volumes = (model.ObservedVolume("vmstore", "root.qcow2", b.GIB, 0, "/srv/pool/root.qcow2"),
               model.ObservedVolume("vmstore", "install.iso", 2048, 2048, "/srv/pool/install.iso"))
    result, document = adopted_plan(corpus_domain("pool-cdrom-install"), volumes, (b.observed_pool("vmstore", "/srv/pool"),))
    assert document["spec"]["cdrom"] == {"path": "/srv/pool/install.iso"}
    assert not result.has_changes, render.text(result)


def test_adopt_refuses_what_a_manifest_cannot_express_naming_the_element():
    """A user-mode NIC cannot be written in a manifest: inexpressible names it, so adopt refuses instead of dropping it."""
    found = desired.inexpressible(domxml.parse(corpus_domain("nic-user")))
    assert len(found) == 1 and "<interface>" in found[0] and "'user'" in found[0]


def test_a_new_path_cd_rom_is_attached_as_is_without_relabelling_and_the_plan_says_so():
    """A CD-ROM given by absolute path is attached with relabel off and the plan says it attaches the existing file as-is."""
    state = valid_text(VM_WITH_PATHS)
    result = plan(state)
    vm = result.resources[0]
    definition = domxml.parse(next(s.xml for s in vm.steps if isinstance(s, plans.DefineDomain)))
    assert [(d.path, d.relabel) for d in definition.cdroms] == [("/var/lib/isos/rescue.iso", False)]
    assert [(d.path, d.target) for d in definition.disks] == [("/dev/vg0/app", "vda")]
    text = render.text(result)
    assert "attaches existing file /var/lib/isos/rescue.iso" in text
    assert "attaches existing file /dev/vg0/app as-is as disk root" in text


VM_WITH_PATHS = """
apiVersion: kvmops/v1
kind: VirtualMachine
metadata: {name: app}
spec:
  memory: 512
  disks:
    - {name: root, path: /dev/vg0/app, format: raw}
  cdrom: {path: /var/lib/isos/rescue.iso}
"""


@pytest.mark.parametrize(("field", "entry", "says"), [
    ("spec.disks[0].path", "disks: [{name: root, path: /etc/shadow}]", "system directory"),
    ("spec.disks[0].path", "disks: [{name: root, path: /root/.ssh/id}]", "system directory"),
    ("spec.disks[0]", "disks: [{name: root, path: /var/lib/vms/a.qcow2, size: 10}]", "either"),
    ("spec.disks[0].path", "disks: [{name: root, path: /var/lib/../etc/x}]", "absolute"),
    ("spec.cdrom.path", "cdrom: {path: relative/file.iso}", "absolute"),
    ("spec.cdrom.path", "cdrom: {path: /proc/kcore}", "system directory"),
    ("spec.install.kernel.path", "install: {kernel: {path: /boot/vmlinuz}}", "system directory"),
])
def test_a_path_in_a_system_directory_or_not_absolute_is_refused(field, entry, says):
    """path: must be absolute, normalised and outside system directories; never with pool and size."""
    text = f"apiVersion: kvmops/v1\nkind: VirtualMachine\nmetadata: {{name: app}}\nspec:\n  memory: 512\n  {entry}\n"
    state = desired.build(b.manifest_set({"vms/app.yaml": text}))
    problems = [str(p) for p in state.problems]
    assert any(field in p and says in p for p in problems), problems


# --- files named by path, as the shell found them on the host -------------------------------


def with_host_files(state: model.DesiredState, kind: str) -> model.DesiredState:
    """Return ``state`` as the shell hands it over on a local host where every path-named file is ``kind``."""
    vms = {}
    for name, spec in state.vms.items():
        install = spec.install and dataclasses.replace(
            spec.install, kernel=dataclasses.replace(spec.install.kernel, host_file=kind))
        vms[name] = dataclasses.replace(
            spec, disks=tuple(dataclasses.replace(d, host_file=kind) if d.path else d for d in spec.disks),
            cdrom=spec.cdrom and dataclasses.replace(spec.cdrom, host_file=kind), install=install)
    return dataclasses.replace(state, vms=vms)


PATH_NAMED = vm_doc(disks=[{"name": "root", "path": "/srv/vm/root.qcow2"}], cdrom={"path": "/srv/iso/netinst.iso"},
                    install={"kernel": {"pool": POOL, "path": "vmlinuz"}})


@pytest.mark.parametrize(("kind", "says"), [
    ("missing", "does not exist on the host; create it or fix the path"),
    ("directory", "is a directory on the host, not a file or block device; fix the path"),
])
def test_a_file_named_by_path_that_the_host_lacks_is_a_located_problem_of_the_plan(kind, says):
    """A disk, CD-ROM or kernel whose file the shell found missing (or not a file) is one problem each, at its field."""
    result = plan(with_host_files(valid(PATH_NAMED), kind))

    assert sorted((p.path, p.message) for p in resource(result, "web").problems) == [
        ("spec.cdrom.path", f"/srv/iso/netinst.iso {says}"),
        ("spec.disks[0].path", f"/srv/vm/root.qcow2 {says}"),
        ("spec.install.kernel.path", f"vmlinuz in pool {POOL} {says}"),
    ]


@pytest.mark.parametrize("kind", ["file", "block device", ""])
def test_a_file_named_by_path_that_exists_or_was_not_looked_at_is_no_problem(kind):
    """Files that exist, and files nobody could look at (a remote host, `kvmops diff`), are not problems."""
    assert resource(plan(with_host_files(valid(PATH_NAMED), kind)), "web").problems == ()

"""Building the desired state: units, derived names and devices, and checks across fields and files."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.adapters import manifests
from reconciler.core import domxml, desired, model
from tests.unit import builders

GIB, MIB = builders.GIB, builders.MIB
EXAMPLES = Path(__file__).resolve().parents[2] / "manifests"


def build(files: dict[str, str]) -> model.DesiredState:
    """Return the desired state of ``files`` (relpath -> YAML) under ``manifests/``."""
    return desired.build(builders.manifest_set(files))


def one_vm(spec: str, name: str = "web") -> model.VMSpec:
    """Return the VM built from a manifest whose spec block is ``spec``; it must have no problem."""
    state = build({f"vms/{name}.yaml": builders.vm_yaml(name, spec)})
    assert [str(p) for p in state.problems] == []
    return state.vms[name]


def problems(files: dict[str, str]) -> list[str]:
    return [str(p) for p in build(files).problems]


@pytest.mark.parametrize(
    ("memory", "kib"),
    [
        pytest.param("2048", 2 * 1024 * 1024, id="integer-is-mib"),
        pytest.param("2GiB", 2 * 1024 * 1024, id="gib"),
        pytest.param("1536Mi", 1536 * 1024, id="kubernetes-mi"),
        pytest.param("1.5GiB", 1536 * 1024, id="fraction"),
        pytest.param("1GB", 954 * 1024, id="decimal-rounded-up-to-whole-mib"),
    ],
)
def test_memory_is_stored_in_kib(memory, kib):
    """Memory in any accepted notation becomes KiB, rounded up to whole MiB (as QEMU allocates it), and maxMemory defaults to it."""
    spec = one_vm(f"  memory: {memory}\n")
    assert (spec.memory, spec.max_memory) == (kib, kib)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        pytest.param("20", 20 * GIB, id="integer-is-gib"),
        pytest.param("512MiB", 512 * MIB, id="mib"),
        pytest.param("20GB", 19_074 * MIB, id="decimal-rounded-up-to-mib"),
        pytest.param("100KiB", MIB, id="below-a-mib-rounds-up"),
    ],
)
def test_disk_size_is_stored_in_bytes_rounded_up_to_whole_mib(size, expected):
    """A disk size becomes bytes, a whole number of MiB, never less than written."""
    spec = one_vm(f"  memory: 1GiB\n  disks:\n    - {{name: root, pool: vmstore, size: {size}}}\n")
    assert spec.disks[0].size == expected


def test_disk_targets_are_lettered_per_bus_prefix_in_order():
    """virtio disks are vda, vdb...; sata and scsi share the sd letters, in manifest order."""
    spec = one_vm(
        "  memory: 1GiB\n  disks:\n"
        "    - {name: root, pool: p, size: 1}\n"
        "    - {name: data, pool: p, size: 1, bus: scsi}\n"
        "    - {name: logs, pool: p, size: 1}\n"
        "    - {name: old, pool: p, size: 1, bus: sata}\n"
    )
    assert [(d.name, d.target) for d in spec.disks] == [("root", "vda"), ("data", "sda"), ("logs", "vdb"), ("old", "sdb")]


def test_twenty_disks_letter_up_to_vdt():
    """The schema's maximum of twenty virtio disks runs from vda to vdt."""
    disks = "".join(f"    - {{name: d{i}, pool: p, size: 1}}\n" for i in range(20))
    spec = one_vm(f"  memory: 1GiB\n  disks:\n{disks}")
    assert [d.target for d in spec.disks][-3:] == ["vdr", "vds", "vdt"]


@pytest.mark.parametrize(
    ("position", "suffix"),
    [
        pytest.param(0, "a", id="first"),
        pytest.param(25, "z", id="twenty-sixth"),
        pytest.param(26, "aa", id="twenty-seventh"),
        pytest.param(27, "ab", id="twenty-eighth"),
        pytest.param(26 + 26 * 26, "aaa", id="three-letters"),
    ],
)
def test_device_letters_follow_the_kernel_naming(position, suffix):
    """Device suffixes continue after z as aa, ab, ... like the kernel names them."""
    assert domxml.device_letters(position) == suffix


def test_volume_name_defaults_to_vm_and_disk_name():
    """A disk without ``volume`` uses ``<vm>-<disk>.qcow2``; an explicit volume is kept as written."""
    spec = one_vm("  memory: 1GiB\n  disks:\n    - {name: root, pool: p, size: 1}\n"
                  "    - {name: data, pool: p, size: 1, volume: shared-data.qcow2}\n", name="db")
    assert [d.volume for d in spec.disks] == ["db-root.qcow2", "shared-data.qcow2"]


def test_manifest_fields_map_onto_the_spec():
    """Every manifest field lands in the VMSpec under its own meaning, MAC and UUID lowercased."""
    spec = one_vm(
        "  vcpus: 4\n  memory: 1GiB\n  maxMemory: 2GiB\n  virtType: qemu\n"
        "  uuid: 4DEA22B3-1D52-D8F3-2516-782E98AB3FA0\n"
        "  disks:\n    - {name: root, pool: p, size: 1, deletionPolicy: Delete}\n"
        "  networks:\n    - {bridge: br0, mac: '52:54:00:AB:CD:EF', model: e1000e}\n    - {network: default}\n"
        "  console: none\n  graphics: spice\n  autostart: true\n  runStrategy: Halted\n  shutdownTimeout: 90\n"
    )
    assert spec == model.VMSpec(
        name="web", uuid="4dea22b3-1d52-d8f3-2516-782e98ab3fa0", virt_type="qemu", vcpus=4,
        memory=1024 * 1024, max_memory=2 * 1024 * 1024,
        disks=(model.DiskSpec("root", "p", "web-root.qcow2", GIB, "virtio", "vda", model.DeletionPolicy.DELETE),),
        nics=(model.NicSpec("bridge", "br0", "e1000e", "52:54:00:ab:cd:ef"), model.NicSpec("network", "default", "virtio", None)),
        console=False, graphics="spice", autostart=True, run_strategy=model.RunStrategy.HALTED,
        shutdown_timeout=90.0, manifest="vms/web.yaml", digest=spec.digest, origin=spec.origin,
    )


def test_max_memory_below_memory_is_a_problem_at_max_memory():
    """maxMemory smaller than memory is refused on maxMemory's line, with both sizes in words."""
    assert problems({"vms/web.yaml": builders.vm_yaml(spec="  memory: 2GiB\n  maxMemory: 1GiB\n")}) == [
        "manifests/vms/web.yaml:7: spec.maxMemory: maxMemory (1 GiB) is below memory (2 GiB); raise maxMemory or remove it"
    ]


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        pytest.param("  memory: 20TiB\n", "spec.memory", id="memory-over-16-tib"),
        pytest.param("  memory: 1MiB\n", "spec.memory", id="memory-under-16-mib"),
        pytest.param("  memory: 1GiB\n  disks:\n    - {name: root, pool: p, size: 0GiB}\n", "spec.disks[0].size", id="empty-disk"),
    ],
)
def test_sizes_out_of_range_are_problems(spec, path):
    """A size the schema's pattern admits but kvmops cannot use is a problem naming the range."""
    (problem,) = build({"vms/web.yaml": builders.vm_yaml(spec=spec)}).problems
    assert problem.path == path and "is out of range" in problem.message


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param(
            "  memory: 1GiB\n  disks:\n    - {name: root, pool: p, size: 1}\n    - {name: root, pool: p, size: 2, volume: x.qcow2}\n",
            "manifests/vms/web.yaml:9: spec.disks[1].name: disk name 'root' is used twice in this VM (first at spec.disks[0])",
            id="disk-name-twice",
        ),
        pytest.param(
            "  memory: 1GiB\n  disks:\n    - {name: a, pool: p, size: 1, volume: x.qcow2}\n    - {name: b, pool: p, size: 1, volume: x.qcow2}\n",
            "manifests/vms/web.yaml:9: spec.disks[1].volume: volume p/x.qcow2 is attached twice in this VM",
            id="volume-twice",
        ),
        pytest.param(
            "  memory: 1GiB\n  networks:\n    - {network: a, mac: '52:54:00:00:00:01'}\n    - {network: b, mac: '52:54:00:00:00:01'}\n",
            "manifests/vms/web.yaml:9: spec.networks[1].mac: MAC 52:54:00:00:00:01 is used twice in this VM",
            id="mac-twice",
        ),
        pytest.param(
            "  memory: 1GiB\n  networks:\n    - {network: a, mac: '01:00:5e:00:00:01'}\n",
            "manifests/vms/web.yaml:8: spec.networks[0].mac: 01:00:5e:00:00:01 is a multicast address; use a unicast one such as 52:54:00:xx:xx:xx",
            id="multicast-mac",
        ),
    ],
)
def test_checks_within_one_vm_are_located_problems(spec, message):
    """Conflicts inside one VM are problems on the offending item's line, and the VM is left out."""
    state = build({"vms/web.yaml": builders.vm_yaml(spec=spec)})
    assert [str(p) for p in state.problems] == [message]
    assert "web" not in state.vms


def test_name_declared_in_two_files_is_reported_in_both_and_neither_is_kept():
    """Two manifests naming the same VM both get a problem, and neither VM is planned."""
    state = build({"vms/a.yaml": builders.vm_yaml("web"), "vms/b.yaml": builders.vm_yaml("web"),
                   "vms/c.yaml": builders.vm_yaml("api")})
    assert sorted(p.file for p in state.problems) == ["manifests/vms/a.yaml", "manifests/vms/b.yaml"]
    assert all("'web' is declared 2 times (manifests/vms/a.yaml:" in p.message and "manifests/vms/b.yaml:" in p.message
               for p in state.problems)
    assert {p.line for p in state.problems} == {4}
    assert list(state.vms) == ["api"]
    assert not state.complete


def test_a_vm_and_a_pool_may_share_a_name():
    """Names are unique per kind, so a pool named like a VM is no conflict."""
    state = build({
        "vms/web.yaml": builders.vm_yaml("store"),
        "pools/store.yaml": "apiVersion: kvmops/v1\nkind: StoragePool\nmetadata: {name: store}\nspec: {path: /srv/store/}\n",
    })
    assert state.problems == ()
    assert (list(state.vms), list(state.pools)) == (["store"], ["store"])
    assert state.pools["store"].path == "/srv/store"


@pytest.mark.parametrize(
    ("spec_a", "spec_b", "path", "what"),
    [
        pytest.param(
            "  memory: 1GiB\n  disks:\n    - {name: root, pool: p, size: 1, volume: shared.qcow2}\n",
            "  memory: 1GiB\n  disks:\n    - {name: data, pool: p, size: 1, volume: shared.qcow2}\n",
            "spec.disks[0]", "volume p/shared.qcow2", id="volume",
        ),
        pytest.param(
            "  memory: 1GiB\n  networks:\n    - {network: default, mac: '52:54:00:00:00:01'}\n",
            "  memory: 1GiB\n  networks:\n    - {network: default, mac: '52:54:00:00:00:01'}\n",
            "spec.networks[0].mac", "MAC 52:54:00:00:00:01", id="mac",
        ),
        pytest.param(
            "  memory: 1GiB\n  networks:\n    - {network: default, mac: '52:54:00:00:00:0a'}\n",
            "  memory: 1GiB\n  networks:\n    - {network: default, mac: '52:54:00:00:00:0A'}\n",
            "spec.networks[0].mac", "MAC 52:54:00:00:00:0a", id="mac-differing-in-case",
        ),
        pytest.param(
            "  memory: 1GiB\n  uuid: 4dea22b3-1d52-d8f3-2516-782e98ab3fa0\n",
            "  memory: 1GiB\n  uuid: 4DEA22B3-1D52-D8F3-2516-782E98AB3FA0\n",
            "spec.uuid", "UUID 4dea22b3-1d52-d8f3-2516-782e98ab3fa0", id="uuid",
        ),
    ],
)
def test_identity_claimed_by_two_vms_leaves_both_out(spec_a, spec_b, path, what):
    """A volume, MAC or UUID two VMs claim is a problem for each of them, and neither is kept."""
    state = build({"vms/a.yaml": builders.vm_yaml("a", spec_a), "vms/b.yaml": builders.vm_yaml("b", spec_b),
                   "vms/c.yaml": builders.vm_yaml("c")})
    assert sorted((p.file, p.path) for p in state.problems) == [
        ("manifests/vms/a.yaml", path), ("manifests/vms/b.yaml", path),
    ]
    assert all(p.message.startswith(f"{what} is also claimed by VM ") for p in state.problems)
    assert list(state.vms) == ["c"]


def test_default_volume_names_can_collide_across_vms():
    """VM ``a`` with disk ``b-root`` and VM ``a-b`` with disk ``root`` both default to a-b-root.qcow2."""
    state = build({
        "vms/a.yaml": builders.vm_yaml("a", "  memory: 1GiB\n  disks:\n    - {name: b-root, pool: p, size: 1}\n"),
        "vms/ab.yaml": builders.vm_yaml("a-b", "  memory: 1GiB\n  disks:\n    - {name: root, pool: p, size: 1}\n"),
    })
    assert state.vms == {}
    assert {p.message.split(" is also")[0] for p in state.problems} == {"volume p/a-b-root.qcow2"}


def test_broken_document_is_left_out_but_others_are_built():
    """One invalid manifest does not hide the others; the state is marked incomplete."""
    state = build({"vms/a.yaml": builders.vm_yaml("a", "  memory: lots\n"), "vms/b.yaml": builders.vm_yaml("b")})
    assert list(state.vms) == ["b"]
    assert len(state.problems) == 1 and not state.complete


def test_load_problems_are_carried_into_the_desired_state():
    """Problems from reading the files survive into the desired state, so pruning stays off."""
    manifest_set = model.ManifestSet("m", (), (model.Problem("m/x.yaml", 3, "", "YAML syntax error: boom"),), 1)
    state = desired.build(manifest_set)
    assert [str(p) for p in state.problems] == ["m/x.yaml:3: YAML syntax error: boom"]
    assert state.files == 1 and not state.complete


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(
            "# web server\nkind: VirtualMachine\napiVersion: kvmops/v1\nspec:\n  vcpus: 2   # two\n  memory: 1GiB\n"
            "metadata:\n  name: web\n",
            id="keys-reordered-and-commented",
        ),
        pytest.param(
            "apiVersion: kvmops/v1\nkind: VirtualMachine\nmetadata: {name: web, labels: {}}\n"
            "spec: {memory: 1GiB, vcpus: 2, graphics: none, console: serial}\n",
            id="flow-style-with-defaults-written-out",
        ),
    ],
)
def test_digest_is_stable_across_key_order_comments_and_explicit_defaults(variant):
    """The digest is of the normalised document, so formatting never reads as a change."""
    reference = one_vm("  memory: 1GiB\n  vcpus: 2\n")
    state = build({"vms/web.yaml": variant})
    assert state.vms["web"].digest == reference.digest
    assert reference.digest.startswith("sha256:") and len(reference.digest) == 7 + 64


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("  memory: 1GiB\n  vcpus: 3\n", id="value-changed"),
        pytest.param("  memory: 1024\n  vcpus: 2\n", id="same-size-other-notation"),
    ],
)
def test_digest_changes_with_the_document(spec):
    """Any change to what the manifest says changes the digest."""
    assert one_vm(spec).digest != one_vm("  memory: 1GiB\n  vcpus: 2\n").digest


def test_example_manifests_build_without_problems():
    """The shipped examples build into four VMs and one pool, with their sizes converted."""
    loaded = manifests.load(EXAMPLES)
    files = manifests.TreeFiles(loaded.tree)
    state = desired.build(loaded, read_file=files.read, check_file=files.check)
    assert [str(p) for p in state.problems] == []
    assert (sorted(state.vms), sorted(state.pools)) == (["archive", "build-runner", "db", "web"], ["vmstore"])
    web = state.vms["web"]
    assert (web.memory, web.max_memory) == (2 * 1024 * 1024, 4 * 1024 * 1024)
    assert [(d.volume, d.size, d.deletion_policy) for d in web.disks] == [
        ("web-root.qcow2", 20 * GIB, model.DeletionPolicy.RETAIN),
        ("web-cache.qcow2", 512 * MIB, model.DeletionPolicy.DELETE),
    ]
    assert [d.target for d in state.vms["db"].disks] == ["vda", "sda"]
    assert web.manifest == "vms/web.yaml"


def test_integral_float_memory_is_built_or_refused_not_a_crash():
    """``memory: 2048.0`` either means 2048 MiB or is a located problem; it never raises."""
    state = build({"vms/web.yaml": builders.vm_yaml(spec="  memory: 2048.0\n")})
    assert "web" in state.vms or state.problems

"""Schema validation: one readable, located Problem per fault, and defaults from the schemas."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.adapters import manifests
from reconciler.core import model, validation
from tests.unit import builders

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests"
CLOUD_EXAMPLES = REPO / "examples" / "cloud-images"  # images and cloud-init: they need a real libvirtd
FLEET_EXAMPLES = REPO / "examples" / "fleet"  # Hosts and placement: a fleet of three hypervisors
FILE = "manifests/vms/web.yaml"


def problems_of(text: str) -> list[str]:
    """Return the one-line problems validation finds in the single document ``text``."""
    (document,) = builders.documents(text)
    body, problems = validation.validate(document)
    assert (body is None) == bool(problems)
    return [str(problem) for problem in problems]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            "  memory: 1GiB\n  vcpu: 2\n",
            [f"{FILE}:7: spec.vcpu: unknown field 'vcpu' (did you mean 'vcpus'?)"],
            id="unknown-field-did-you-mean",
        ),
        pytest.param(
            "  memory: 1GiB\n  colour: red\n",
            [f"{FILE}:7: spec.colour: unknown field 'colour'; allowed: autostart, boot, cdrom, cloudInit, console, cpu, "
             "disks, firmware, graphics, guestAgent, hugepages, install, keepNvram, machine, maxMemory, memory, networks, "
             "placement, runStrategy, shutdownTimeout, uuid, vcpus, virtType"],
            id="unknown-field-lists-allowed",
        ),
        pytest.param(
            "  vcpus: 2\n",
            [f"{FILE}:5: spec: missing required field 'memory'"],
            id="missing-required",
        ),
        pytest.param(
            "  memory: 1GiB\n  vcpus: two\n",
            [f"{FILE}:7: spec.vcpus: expected an integer, got a string ('two')"],
            id="wrong-type",
        ),
        pytest.param(
            "  memory: 1GiB\n  autostart: 'yes'\n",
            [f"{FILE}:7: spec.autostart: expected true or false, got a string ('yes')"],
            id="wrong-type-boolean",
        ),
        pytest.param(
            "  memory: 1GiB\n  graphics: vnx\n",
            [f"{FILE}:7: spec.graphics: 'vnx' is not allowed; use one of: none, vnc, spice"],
            id="enum",
        ),
        pytest.param(
            "  memory: 1GiB\n  vcpus: 0\n",
            [f"{FILE}:7: spec.vcpus: 0 is too small; the minimum is 1"],
            id="below-minimum",
        ),
        pytest.param(
            "  memory: 1GiB\n  shutdownTimeout: 5000\n",
            [f"{FILE}:7: spec.shutdownTimeout: 5000 is too large; the maximum is 3600"],
            id="above-maximum",
        ),
        pytest.param(
            "  memory: 8\n",
            [f"{FILE}:6: spec.memory: 8 is too small; the minimum is 16"],
            id="integer-memory-below-minimum",
        ),
        pytest.param(
            "  memory: 2G\n",
            [f"{FILE}:6: spec.memory: '2G' is not valid: write a number and a unit, e.g. 2GiB, 512MiB or 20GB "
             "(binary KiB/MiB/GiB/TiB, decimal KB/MB/GB/TB)"],
            id="ambiguous-unit-pattern-hint",
        ),
        pytest.param(
            "  memory: [1]\n",
            [f"{FILE}:6: spec.memory: expected an integer or a string with a unit such as 2GiB, got a list"],
            id="quantity-wrong-type",
        ),
        pytest.param(
            "  memory: 1GiB\n  uuid: not-a-uuid\n",
            [f"{FILE}:7: spec.uuid: 'not-a-uuid' is not valid: write a UUID such as 4dea22b3-1d52-d8f3-2516-782e98ab3fa0"],
            id="uuid-pattern-hint",
        ),
        pytest.param(
            "  memory: 1GiB\n  networks:\n    - network: default\n      mac: '52:54:00'\n",
            [f"{FILE}:9: spec.networks[0].mac: '52:54:00' is not valid: write a MAC such as 52:54:00:12:34:56"],
            id="mac-pattern-hint",
        ),
        pytest.param(
            "  memory: 1GiB\n  networks:\n    - network: default\n      bridge: br0\n",
            [f"{FILE}:8: spec.networks[0]: give exactly one of 'network' (a libvirt network) or 'bridge' (a host bridge)"],
            id="network-and-bridge",
        ),
        pytest.param(
            "  memory: 1GiB\n  disks:\n    - name: root\n      pool: vmstore\n      size: 10\n      bus: usb\n",
            [f"{FILE}:11: spec.disks[0].bus: 'usb' is not allowed; use one of: virtio, sata, scsi, ide"],
            id="nested-enum-line",
        ),
        pytest.param(
            "  memory: 1GiB\n  disks:\n    - name: root\n      pool: vmstore\n      size: 10\n    - pool: vmstore\n      size: 2\n",
            [f"{FILE}:11: spec.disks[1]: missing required field 'name'"],
            id="missing-field-in-second-list-item",
        ),
        pytest.param(
            "  memory: 1GiB\n  disks:\n    - name: Root_Disk\n      pool: vmstore\n      size: 10\n",
            [f"{FILE}:8: spec.disks[0].name: 'Root_Disk' is not valid: use lowercase letters, digits and '-', e.g. root or data-1"],
            id="disk-name-pattern",
        ),
    ],
)
def test_schema_fault_becomes_one_located_readable_problem(spec, expected):
    """Each fault is one ``FILE:LINE: field.path: message`` line worded for the manifest's author."""
    assert problems_of(builders.vm_yaml(spec=spec)) == expected


def test_every_fault_in_a_document_is_reported():
    """Validation does not stop at the first fault: each one gets its own problem on its own line."""
    text = builders.vm_yaml(spec="  memroy: 1GiB\n  vcpus: 0\n  graphics: vnx\n")
    assert sorted(problems_of(text)) == [
        f"{FILE}:5: spec: missing required field 'memory'",
        f"{FILE}:6: spec.memroy: unknown field 'memroy' (did you mean 'memory'?)",
        f"{FILE}:7: spec.vcpus: 0 is too small; the minimum is 1",
        f"{FILE}:8: spec.graphics: 'vnx' is not allowed; use one of: none, vnc, spice",
    ]


def test_metadata_faults_are_located_in_metadata():
    """Name and label faults point at the metadata lines, with the shared schema's hints."""
    text = (
        "apiVersion: kvmops/v1\nkind: VirtualMachine\nmetadata:\n  name: 'web 01'\n"
        "  labels:\n    app: 5\nspec:\n  memory: 1GiB\n"
    )
    assert problems_of(text) == [
        f"{FILE}:4: metadata.name: 'web 01' is not valid: use letters, digits, '-', '_' and '.', start with a letter "
        "or digit, no '..' (e.g. web-01)",
        f"{FILE}:6: metadata.labels.app: expected a string, got an integer (5); YAML read it as a number or boolean: put it in quotes",
    ]


def test_problems_are_reported_in_file_order():
    """Problems come out in the order of the lines they point at, as the author reads the file."""
    text = builders.vm_yaml(spec="  vcpus: 0\n  memory: 8\n  graphics: vnx\n  autostart: 1\n")
    lines = [int(p.split(":")[1]) for p in problems_of(text)]
    assert lines == sorted(lines) == [6, 7, 8, 9]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "kind: VirtualMachine\nmetadata: {name: web}\nspec: {memory: 1GiB}\n",
            f"{FILE}:1: apiVersion: missing 'apiVersion'; write apiVersion: kvmops/v1",
            id="missing-api-version",
        ),
        pytest.param(
            "apiVersion: kvmops/v2\nkind: VirtualMachine\nmetadata: {name: web}\nspec: {memory: 1GiB}\n",
            f"{FILE}:1: apiVersion: apiVersion 'kvmops/v2' is not supported; write apiVersion: kvmops/v1",
            id="unsupported-api-version",
        ),
        pytest.param(
            "apiVersion: kvmops/v1\nkind: VirtualMashine\n",
            f"{FILE}:2: kind: unknown kind 'VirtualMashine'; expected VirtualMachine or StoragePool or Network or Image or Host",
            id="unknown-kind",
        ),
        pytest.param(
            "apiVersion: kvmops/v1\nmetadata: {name: web}\n",
            f"{FILE}:1: kind: missing 'kind'; expected VirtualMachine or StoragePool or Network or Image or Host",
            id="missing-kind",
        ),
        pytest.param(
            "- just\n- a list\n",
            f"{FILE}:1: a manifest document must be a mapping with apiVersion, kind, metadata and spec",
            id="not-a-mapping",
        ),
    ],
)
def test_document_that_is_not_a_known_kind_gets_one_problem(text, expected):
    """A document without a known kind, or with a wrong apiVersion and nothing else wrong, gets one problem."""
    assert problems_of(text) == [expected]


def test_a_wrong_api_version_does_not_hide_the_other_problems_of_the_document():
    """A document of a known kind with a wrong apiVersion gets that problem and, in file order, every schema problem too."""
    text = "apiVersion: kvmops/v2\nkind: VirtualMachine\nmetadata: {name: web}\nspec:\n  memory: 1GiB\n  vcpus: 0\n"
    assert problems_of(text) == [
        f"{FILE}:1: apiVersion: apiVersion 'kvmops/v2' is not supported; write apiVersion: kvmops/v1",
        f"{FILE}:6: spec.vcpus: 0 is too small; the minimum is 1",
    ]


def test_kind_that_is_a_list_is_a_problem_not_a_crash():
    """``kind: [VirtualMachine]`` is reported as an unknown kind instead of raising TypeError."""
    assert problems_of("apiVersion: kvmops/v1\nkind: [VirtualMachine]\n") == [
        f"{FILE}:2: kind: unknown kind ['VirtualMachine']; expected VirtualMachine or StoragePool or Network or Image or Host"
    ]


def test_type_message_spells_booleans_as_yaml_does():
    """A boolean where a size belongs is quoted as the author wrote it (``true``), not as Python prints it."""
    (problem,) = problems_of(builders.vm_yaml(spec="  memory: true\n"))
    assert problem.endswith("got a boolean (true)")


def test_defaults_come_from_the_schemas():
    """Every absent field with a schema ``default`` is filled in, nested ones included."""
    text = builders.vm_yaml(spec=(
        "  memory: 1GiB\n  disks:\n    - name: root\n      pool: vmstore\n      size: 10\n"
        "  networks:\n    - bridge: br0\n"
    ))
    (document,) = builders.documents(text)
    body, problems = validation.validate(document)
    assert problems == []
    assert body == {
        "apiVersion": "kvmops/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "web", "labels": {}},
        "spec": {
            "memory": "1GiB",
            "vcpus": 1,
            "firmware": "bios",
            "keepNvram": False,
            "disks": [{"name": "root", "pool": "vmstore", "size": 10, "bus": "virtio", "deletionPolicy": "Retain",
                       "clone": "overlay"}],
            "networks": [{"bridge": "br0", "model": "virtio"}],
            "boot": ["hd"],
            "console": "serial",
            "graphics": "none",
            "autostart": False,
            "runStrategy": "Always",
            "guestAgent": False,
            "hugepages": False,
        },
    }


def test_storage_pool_defaults_come_from_the_schemas():
    """A StoragePool gets type dir, autostart true and shared false when it does not say."""
    (document,) = builders.documents("apiVersion: kvmops/v1\nkind: StoragePool\nmetadata: {name: p}\nspec: {path: /srv/p}\n")
    body, problems = validation.validate(document)
    assert problems == []
    assert body["spec"] == {"path": "/srv/p", "type": "dir", "autostart": True, "shared": False}


def test_defaults_do_not_overwrite_what_the_manifest_says():
    """A value written in the manifest survives default filling, and the input document is not mutated."""
    (document,) = builders.documents(builders.vm_yaml(spec="  memory: 1GiB\n  vcpus: 4\n  graphics: vnc\n"))
    body, _ = validation.validate(document)
    assert (body["spec"]["vcpus"], body["spec"]["graphics"]) == (4, "vnc")
    assert "console" not in document.body["spec"]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/srv/../etc", id="dotdot-inside"),
        pytest.param("/srv/pool/..", id="dotdot-at-end"),
        pytest.param("relative/path", id="relative"),
        pytest.param("/srv/<pool>", id="xml-special"),
    ],
)
def test_pool_path_must_be_absolute_and_plain(path):
    """A pool path that is relative, climbs with '..' or holds XML specials is refused with the hint."""
    (problem,) = problems_of(f"apiVersion: kvmops/v1\nkind: StoragePool\nmetadata: {{name: p}}\nspec: {{path: '{path}'}}\n")
    assert "spec.path" in problem and "use an absolute path without '..'" in problem


def test_pool_path_starting_with_dotdot_is_refused():
    """``/../etc`` climbs out of the root just like ``/srv/../etc`` and is refused the same way."""
    (problem,) = problems_of("apiVersion: kvmops/v1\nkind: StoragePool\nmetadata: {name: p}\nspec: {path: /../etc}\n")
    assert "spec.path" in problem


# --- the examples ----------------------------------------------------------------------


def example_documents() -> list[model.Document]:
    """Return every document of the example manifests (manifests/, examples/cloud-images/ and examples/fleet/)."""
    documents = []
    for directory in (EXAMPLES, CLOUD_EXAMPLES, FLEET_EXAMPLES):
        loaded = manifests.load(directory)
        assert loaded.problems == ()
        documents.extend(loaded.documents)
    return documents


def test_example_manifests_validate_cleanly():
    """Every document in manifests/ passes validation without a problem."""
    documents = example_documents()
    assert len(documents) >= 2
    for document in documents:
        _, problems = validation.validate(document)
        assert problems == [], [str(p) for p in problems]


def _resolve(schema: dict, root: dict) -> tuple[dict, dict]:
    """Return ``schema`` with its ``$ref`` followed, and the root document it now lives in."""
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#"):
            root = next(s for s in validation.schemas().values() if s["$id"] == ref.split("#")[0])
            ref = "#" + ref.partition("#")[2]
        schema = root
        for part in filter(None, ref[1:].split("/")):
            schema = schema[part]
    return schema, root


def _schema_paths(schema: dict, root: dict, prefix: str) -> set[str]:
    """Return every property path the schema defines: ``spec.disks[].size``."""
    schema, root = _resolve(schema, root)
    paths: set[str] = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        paths.add(path)
        paths |= _schema_paths(sub, root, path)
    items = schema.get("items")
    if isinstance(items, dict):
        paths |= _schema_paths(items, root, f"{prefix}[]")
    return paths


def _document_paths(value: object, prefix: str) -> set[str]:
    paths: set[str] = set()
    if isinstance(value, dict):
        for key, sub in value.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.add(path)
            paths |= _document_paths(sub, path)
    elif isinstance(value, list):
        for item in value:
            paths |= _document_paths(item, f"{prefix}[]")
    return paths


@pytest.mark.parametrize("kind", sorted(validation.SCHEMA_FILES))
def test_examples_cover_every_field(kind):
    """Together the example manifests use every property their kind's schema defines."""
    root = validation.schemas()[validation.SCHEMA_FILES[kind]]
    defined = _schema_paths(root, root, "")
    used: set[str] = set()
    for document in example_documents():
        if document.body.get("kind") == kind:
            used |= _document_paths(document.body, "")
    assert defined, "the schema walk found no properties"
    assert sorted(defined - used) == []


def test_schema_walk_finds_nested_properties():
    """The coverage walk reaches through $ref into list items, so the coverage test means something."""
    root = validation.schemas()[validation.SCHEMA_FILES["VirtualMachine"]]
    defined = _schema_paths(root, root, "")
    assert {"metadata.labels", "spec.disks[].deletionPolicy", "spec.networks[].mac", "spec.shutdownTimeout"} <= defined


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        pytest.param('  memory: 64\n  uuid: "6f1c3e2a-8d4b-4c9e-9a71-2b5d0e8f4c13\\n"\n', "spec.uuid", id="uuid"),
        pytest.param('  memory: 64\n  networks: [{network: default, mac: "52:54:00:00:00:01\\n"}]\n',
                     "spec.networks[0].mac", id="mac"),
        pytest.param('  memory: 64\n  disks: [{name: "root\\n", pool: default, size: 1}]\n', "spec.disks[0].name", id="disk-name"),
        pytest.param('  memory: 64\n  cloudInit: {userDataFile: "user-data\\n"}\n', "spec.cloudInit.userDataFile", id="file"),
        pytest.param('  memory: 64\n  cloudInit: {userDataFile: "a\\nb"}\n', "spec.cloudInit.userDataFile", id="file-inner-newline"),
    ],
)
def test_a_value_with_a_line_break_does_not_pass_an_anchored_pattern(spec, field):
    """Python's '$' also matches before a final newline; the schemas mean JSON Schema's (ECMA) '$', the very end."""
    (problem,) = problems_of(builders.vm_yaml(spec=spec))
    assert f": {field}: " in problem and "is not valid" in problem


def test_a_name_or_pool_path_with_a_trailing_newline_is_refused():
    """metadata.name and a pool's path are refused with a final newline too (they reach libvirt as written)."""
    assert "metadata.name" in problems_of(builders.vm_yaml(name='"web\\n"'))[0]
    pool = 'apiVersion: kvmops/v1\nkind: StoragePool\nmetadata: {name: p}\nspec: {path: "/var/lib/kvmops/p\\n"}\n'
    assert "spec.path" in problems_of(pool)[0]

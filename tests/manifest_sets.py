"""A manifest set that sets every field of every kind, for the invariant tests.

:func:`write_every_field` writes one tree in which each property of every JSON Schema in
``schemas/`` is set by at least one document (``tests/unit/test_manifest_sets.py`` checks
that with :func:`schema_paths` and :func:`set_paths`), so an invariant checked over it
(an empty diff between identical revisions, an empty plan after apply, offline ==
observed) covers every field a manifest can hold.  A field added to a schema fails that
test until a document here sets it.

``prefix`` starts every libvirt object name (VMs, networks, pools, volumes, bridges), so
the set can be applied on a shared libvirtd; ``pool_dir`` is the directory of its
storage pool.  ``with_downloads=False`` leaves out the Image fed from a URL (it needs an
image server).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from reconciler.core import fields, model
from tests import factories

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
KINDS = ("virtualmachine", "network", "storagepool", "image")
# A Host turns a set into a fleet (and placement.host needs one): the fleet tests cover them.
FLEET_ONLY = {"spec.placement.host"}
IMAGE_BYTES = b"\0" * (1 << 20)  # a 1 MiB blank raw disk


def write_every_field(directory: Path, *, prefix: str, pool_dir: Path, with_downloads: bool = True,
                      url: str = "https://images.invalid/base.qcow2", url_sha256: str = "0" * 64,
                      media_pool: str | None = None, with_uploads: bool = True,
                      boot_installs: bool = True) -> list[dict]:
    """Write the set under ``directory``; return its documents.

    The install kernel, initrd and CD-ROM given as volumes are :func:`media_volumes` of
    ``media_pool`` (default: the set's own pool), which must exist before an apply.
    ``with_uploads=False`` leaves out what needs a volume upload (Images and cloud-init
    seeds), which libvirt's test driver cannot do.  ``boot_installs=False`` keeps the VM
    whose install kernel is a blank stand-in off (a real QEMU cannot boot it).
    Names of bridges and subnets derive from ``prefix``, so sets of several prefixes can
    run side by side on one libvirtd.
    """
    for sub in ("images", "virtualmachines"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "images" / "base.raw").write_bytes(IMAGE_BYTES)
    (directory / "virtualmachines" / "user-data.cfg").write_text("#cloud-config\npackages: [nginx]\n", encoding="utf-8")
    (directory / "virtualmachines" / "vnc.pass").write_text("s3cr3tvn\n", encoding="utf-8")
    for name in ("install/vmlinuz", "install/initrd.img", "iso/tools.iso"):
        (pool_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (pool_dir / name).write_bytes(b"\0" * 4096)
    pool, net, lan = f"{prefix}-store", f"{prefix}-net", f"{prefix}-lan"
    media = media_pool or pool
    iso, kernel, initrd = media_volumes(prefix)
    if media_pool is None:  # files in the pool's directory are its volumes once the pool starts
        pool_dir.mkdir(parents=True, exist_ok=True)
        for name in (iso, kernel, initrd):
            (pool_dir / name).write_bytes(b"\0" * 4096)
    tag = hashlib.sha256(prefix.encode()).hexdigest()
    octet = 16 + int(tag[:4], 16) % 200
    bridge, lan_bridge = f"kv{tag[:6]}n0", f"kv{tag[:6]}l0"
    documents = [
        factories.pool(pool, str(pool_dir), type="dir", autostart=True),
        _network(net, {
            "mode": "nat", "bridge": bridge,
            "ipv4": {"address": f"10.231.{octet}.1", "prefix": 24, "dhcp": {
                "start": f"10.231.{octet}.100", "end": f"10.231.{octet}.199",
                "hosts": [{"mac": "52:54:00:aa:00:01", "ip": f"10.231.{octet}.10", "name": "pinned"}],
            }},
            "autostart": True,
        }),
        _network(f"{prefix}-iso", {"mode": "isolated", "ipv4": {"address": f"10.232.{octet}.1", "prefix": 24},
                                   "autostart": False}),
        _image(f"{prefix}-base", {"pool": pool, "source": {"path": "base.raw"},
                                  "sha256": hashlib.sha256(IMAGE_BYTES).hexdigest(), "format": "raw"}),
        factories.vm(f"{prefix}-full", memory="128MiB", vcpus=2, maxMemory="256MiB", virtType="qemu",
                     uuid="6f1c3a52-0d3b-4e52-9a53-1b2c3d4e5f60", machine="q35", firmware="bios",
                     cpu={"mode": "custom", "model": "qemu64"},
                     disks=[factories.disk("root", pool, "16MiB", bus="virtio", deletionPolicy="Delete",
                                           image=f"{prefix}-base", clone="copy", target="vdb"),
                            factories.disk("data", pool, "8MiB", volume=f"{prefix}-full-data.qcow2", bus="sata",
                                           deletionPolicy="Retain")],
                     networks=[{"network": net, "mac": "52:54:00:aa:00:02", "model": "e1000"}],
                     cdrom={"pool": pool, "path": "iso/tools.iso"},
                     boot=["cdrom", "hd"],
                     install={"kernel": {"pool": pool, "path": "install/vmlinuz"},
                              "initrd": {"pool": pool, "path": "install/initrd.img"},
                              "cmdline": "console=ttyS0", "firstBootOnly": True},
                     console="serial",
                     graphics={"type": "vnc", "listen": "127.0.0.1", "passwordFile": "vnc.pass"},
                     autostart=True, runStrategy="Halted", shutdownTimeout=5, guestAgent=True, hugepages=True),
        factories.vm(f"{prefix}-seeded", memory="96MiB", virtType="qemu", firmware="uefi", keepNvram=True,
                     cpu={"mode": "host-model"},
                     disks=[factories.disk("root", pool, "16MiB", image=f"{prefix}-base", clone="overlay")],
                     networks=[{"network": f"{prefix}-iso", "model": "virtio"}],
                     cloudInit={"userDataFile": "user-data.cfg",
                                "metaData": {"instanceId": f"{prefix}-seeded-1", "hostname": "seeded"},
                                "networkConfig": {"version": 2},
                                "sshAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample ops@example"],
                                "pool": pool},
                     graphics="vnc", runStrategy="Manual"),
        factories.vm(f"{prefix}-inline", memory=96, virtType="qemu", machine="pc",
                     cpu={"mode": "host-passthrough"},
                     disks=[factories.disk("root", pool, 16, bus="scsi"), factories.disk("old", pool, "8MiB", bus="ide")],
                     networks=[{"network": net, "model": "rtl8139"}, {"network": f"{prefix}-iso", "model": "e1000e"}],
                     cdrom={"pool": media, "volume": iso},
                     install={"kernel": {"pool": media, "volume": kernel}, "initrd": {"pool": media, "volume": initrd}},
                     cloudInit={"userData": "#cloud-config\n{}\n"},
                     console="none", graphics="none", runStrategy="RerunOnFailure" if boot_installs else "Halted"),
    ]
    attached = pool_dir.parent / f"{prefix}-attached.raw"  # an existing file kvmops did not create
    attached.write_bytes(b"\0" * 65536)
    documents.append(factories.vm(f"{prefix}-attached", memory="64MiB", virtType="qemu", runStrategy="Halted",
                                  disks=[{"name": "data", "path": str(attached), "format": "raw", "bus": "virtio"}],
                                  cdrom={"empty": True, "bus": "scsi", "target": "sdc"}))
    documents.append(_network(lan, {"mode": "bridge", "bridge": lan_bridge, "autostart": False}))
    documents.append(factories.vm(f"{prefix}-bridged", memory="64MiB", virtType="qemu", runStrategy="Halted",
                                  networks=[{"bridge": lan_bridge}]))
    if with_downloads:
        documents.append(_image(f"{prefix}-remote", {"pool": pool, "source": {"url": url}, "sha256": url_sha256,
                                                     "format": "qcow2"}))
    if not with_uploads:
        documents = [d for d in documents if d["kind"] != "Image"]
        for document in documents:
            document["spec"].pop("cloudInit", None)
            for disk in document["spec"].get("disks", []):
                disk.pop("image", None)
                disk.pop("clone", None)
    # Fleet fields a set without Hosts accepts and ignores (one host, chosen by --connect).
    fleet = {"StoragePool": {"shared": False, "hosts": {"zone": "a"}}, "Network": {"hosts": {}}, "Image": {"hosts": {}},
             "VirtualMachine": {"placement": {"hostSelector": {"zone": "a"}, "spreadBy": "rack", "antiAffinity": "set"}}}
    for document in documents:
        document["spec"].update(fleet.pop(document["kind"], {}))
    for index, document in enumerate(documents):
        document.setdefault("metadata", {})["labels"] = {"set": "every-field", "index": str(index)}
        factories.write(directory, f"{document['kind'].lower()}s/{document['metadata']['name']}.yaml", document)
    return documents


def media_volumes(prefix: str) -> tuple[str, str, str]:
    """Return the names of the CD-ROM, kernel and initrd volumes the set uses (it does not create them)."""
    return f"{prefix}-media.iso", f"{prefix}-kernel", f"{prefix}-initrd"


def _network(name: str, spec: dict) -> dict:
    return {"apiVersion": "kvmops/v1", "kind": "Network", "metadata": {"name": name}, "spec": spec}


def _image(name: str, spec: dict) -> dict:
    return {"apiVersion": "kvmops/v1", "kind": "Image", "metadata": {"name": name}, "spec": spec}


def schema_paths(kind: str) -> set[str]:
    """Return every property path (``spec.cpu.mode``, ``spec.disks[].pool``) the schema of ``kind`` allows."""
    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text(encoding="utf-8"))
    definitions = schema.get("$defs", {})
    metadata = json.loads((SCHEMAS / "metadata.schema.json").read_text(encoding="utf-8"))

    def resolve(node: dict) -> dict:
        while "$ref" in node:
            ref = node["$ref"]
            node = metadata if "metadata.schema" in ref else definitions[ref.split("/")[-1]]
        return node

    paths: set[str] = set()

    def walk(node: dict, prefix: str) -> None:
        node = resolve(node)
        for alternative in node.get("oneOf", []) + node.get("anyOf", []):
            walk(alternative, prefix)
        for key, child in node.get("properties", {}).items():
            path = f"{prefix}{key}"
            paths.add(path)
            walk(child, f"{path}.")
            if "items" in resolve(child):
                walk(resolve(child)["items"], f"{path}[].")
    walk(schema, "")
    return {p for p in paths if p.startswith("spec.") and p not in FLEET_ONLY}


def set_paths(documents: list[dict], kind: str) -> set[str]:
    """Return every property path some document of ``kind`` sets."""
    paths: set[str] = set()

    def walk(value: object, prefix: str) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                paths.add(f"{prefix}{key}")
                walk(child, f"{prefix}{key}.")
        elif isinstance(value, list):
            for item in value:
                walk(item, f"{prefix[:-1]}[].")
    for document in documents:
        if document["kind"].lower() == kind:
            walk(document["spec"], "spec.")
    return paths


def comparable(state, prefix: str = "") -> dict:
    """Return what an apply decides about a host, resource by resource, from an ActualState.

    Domains: the persistent definition (mark included), power and autostart; pools: type,
    path, active, autostart; networks: the definition and whether it runs; volumes: which
    exist.  Left out is what libvirt or the guest decides (addresses, capacities of
    imported images and seeds, the live definition), and every object whose name does
    not start with ``prefix``.
    """
    def unsalted(definition):
        # A graphics password digest is salted per apply: whether there is one is what compares.
        if definition is None or definition.owner is None or not definition.owner.graphics_password_digest:
            return definition
        return dataclasses.replace(definition, owner=dataclasses.replace(
            definition.owner, graphics_password_digest="(salted digest)"))
    return {
        "domains": {name: (unsalted(d.definition), d.power, d.autostart) for name, d in state.domains.items()
                    if d.owned and name.startswith(prefix)},
        "pools": {name: pool for name, pool in state.pools.items() if name.startswith(prefix)},
        "networks": {name: (n.definition, n.active, n.autostart) for name, n in state.networks.items()
                     if n.owned and name.startswith(prefix)},
        "volumes": sorted(key for key in state.volumes if key[0].startswith(prefix)),
    }


def differences(observed, expected, *, prefix: str = "") -> dict:
    """Return {resource: {field: (observed, expected)}} where two actual states disagree (see :func:`comparable`).

    Every resource of ``expected`` is looked up in ``observed``; volumes only have to exist.
    """
    seen, wanted = comparable(observed, prefix), comparable(expected, prefix)
    found: dict = {}
    for kind in ("domains", "pools", "networks"):
        for name, value in wanted[kind].items():
            other = seen[kind].get(name)
            if other is None:
                found[f"{kind}/{name}"] = "missing"
            elif other != value:
                apart = _fields_apart(_settled(other, value), value)
                if apart:
                    found[f"{kind}/{name}"] = apart
    missing = sorted(set(wanted["volumes"]) - set(seen["volumes"]))
    if missing:
        found["volumes"] = missing
    return found


def _settled(seen: tuple, wanted: tuple) -> tuple:
    """Return ``seen`` with what libvirt chose where ``wanted`` leaves the choice to it replaced by ``wanted``'s value.

    A domain's machine and CPU model when the manifest names none (or an alias such as
    ``q35``), as the field declarations say; a network's generated bridge and UUID.
    """
    definition, wanted_definition = seen[0], wanted[0]
    if isinstance(definition, model.DomainDefinition) and isinstance(wanted_definition, model.DomainDefinition):
        for declared in fields.DOMAIN_FIELDS:
            if declared.satisfied_by(definition, wanted_definition):
                definition = dataclasses.replace(
                    definition, **{name: getattr(wanted_definition, name) for name in declared.attrs})
    elif isinstance(definition, model.NetworkDefinition) and isinstance(wanted_definition, model.NetworkDefinition):
        definition = dataclasses.replace(
            definition, bridge=definition.bridge if wanted_definition.bridge else None,
            uuid=definition.uuid if wanted_definition.uuid else None)
    else:
        return seen
    return (definition, *seen[1:])


def _fields_apart(seen: object, wanted: object) -> dict:
    if isinstance(seen, tuple) and isinstance(wanted, tuple):
        return {str(i): _fields_apart(a, b) for i, (a, b) in enumerate(zip(seen, wanted)) if a != b}
    if dataclasses.is_dataclass(seen) and dataclasses.is_dataclass(wanted):
        return {f.name: _fields_apart(getattr(seen, f.name), getattr(wanted, f.name))
                for f in dataclasses.fields(wanted) if getattr(seen, f.name) != getattr(wanted, f.name)}
    return {"observed": seen, "expected": wanted}

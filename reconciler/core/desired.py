"""Turn loaded manifest documents into the :class:`~reconciler.core.model.DesiredState`.

The only module that knows the manifests' camelCase field names.  It validates every
document (:mod:`reconciler.core.validation`), converts units, derives what a manifest
leaves implicit (volume names, disk target devices) and runs the checks that span
fields or documents: a name declared twice, a volume or MAC claimed by two VMs,
``maxMemory`` below ``memory``.

A resource with any problem is left out of the desired state, and the problem is kept:
``DesiredState.complete`` is then False and the planner prunes nothing, so a broken
manifest can never read as "this VM was deleted".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from types import MappingProxyType

from reconciler.core import model, quantity, validation

MIN_MEMORY = 16 * quantity.MIB
MAX_MEMORY = 16 * quantity.TIB
MIN_DISK = quantity.MIB
MAX_DISK = 64 * quantity.TIB
BUS_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd"}


def build(manifests: model.ManifestSet) -> model.DesiredState:
    """Return the desired state described by ``manifests``, with every problem found."""
    problems = list(manifests.problems)
    candidates: dict[tuple[str, str], list[tuple[model.Document, object]]] = {}
    for document in manifests.documents:
        body, found = validation.validate(document)
        if found:
            problems.extend(found)
            continue
        try:
            resource = _build_resource(document, body)
        except _Invalid as invalid:
            problems.extend(invalid.problems)
            continue
        key = (body["kind"], body["metadata"]["name"])
        candidates.setdefault(key, []).append((document, resource))

    vms: dict[str, model.VMSpec] = {}
    pools: dict[str, model.PoolSpec] = {}
    for (kind, name), declared in candidates.items():
        if len(declared) > 1:
            places = ", ".join(f"{d.file}:{d.origin.line_of('metadata.name')}" for d, _ in declared)
            for document, _ in declared:
                problems.append(document.origin.problem(
                    "metadata.name", f"{kind} {name!r} is declared {len(declared)} times ({places}); names must be unique"
                ))
            continue
        resource = declared[0][1]
        if isinstance(resource, model.VMSpec):
            vms[name] = resource
        else:
            pools[name] = resource

    for spec in _claim_conflicts(vms.values(), problems):
        del vms[spec.name]
    return model.DesiredState(
        vms=MappingProxyType(dict(sorted(vms.items()))),
        pools=MappingProxyType(dict(sorted(pools.items()))),
        problems=tuple(problems),
        files=manifests.files,
        source=manifests.root,
    )


def digest(body: dict) -> str:
    """Return the content digest recorded in libvirt: sha256 of the normalised document."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


class _Invalid(Exception):
    def __init__(self, problems: list[model.Problem]) -> None:
        super().__init__(problems)
        self.problems = problems


def _build_resource(document: model.Document, body: dict) -> model.VMSpec | model.PoolSpec:
    if body["kind"] == "StoragePool":
        return _pool(document, body)
    return _vm(document, body)


def _pool(document: model.Document, body: dict) -> model.PoolSpec:
    spec = body["spec"]
    return model.PoolSpec(
        name=body["metadata"]["name"],
        type=spec["type"],
        path=spec["path"].rstrip("/") or "/",
        autostart=spec["autostart"],
        manifest=document.relpath,
        origin=document.origin,
    )


def _vm(document: model.Document, body: dict) -> model.VMSpec:
    origin = document.origin
    problems: list[model.Problem] = []
    name = body["metadata"]["name"]
    spec = body["spec"]

    def size(path: str, value: object, *, bare_unit: int, low: int, high: int, align: int) -> int:
        try:
            result = quantity.round_up(quantity.parse_bytes(value, bare_unit=bare_unit), align)
        except ValueError as exc:
            problems.append(origin.problem(path, str(exc)))
            return low
        if not low <= result <= high:
            problems.append(origin.problem(
                path, f"{value!r} is out of range; use between {quantity.format_bytes(low)} and {quantity.format_bytes(high)}"
            ))
        return result

    # QEMU allocates guest memory in whole MiB; asking for less would read as drift forever.
    memory = size("spec.memory", spec["memory"], bare_unit=quantity.MIB, low=MIN_MEMORY, high=MAX_MEMORY, align=quantity.MIB)
    max_memory = memory
    if "maxMemory" in spec:
        max_memory = size("spec.maxMemory", spec["maxMemory"], bare_unit=quantity.MIB, low=MIN_MEMORY, high=MAX_MEMORY, align=quantity.MIB)
        if max_memory < memory:
            problems.append(origin.problem("spec.maxMemory", (
                f"maxMemory ({quantity.format_bytes(max_memory)}) is below memory ({quantity.format_bytes(memory)}); "
                "raise maxMemory or remove it"
            )))

    disks = []
    per_prefix: dict[str, int] = {}
    seen_disks: dict[str, int] = {}
    seen_volumes: set[tuple[str, str]] = set()
    for index, disk in enumerate(spec["disks"]):
        path = f"spec.disks[{index}]"
        if disk["name"] in seen_disks:
            problems.append(origin.problem(f"{path}.name", f"disk name {disk['name']!r} is used twice in this VM (first at spec.disks[{seen_disks[disk['name']]}])"))
        seen_disks.setdefault(disk["name"], index)
        volume = disk.get("volume", f"{name}-{disk['name']}.qcow2")
        if (disk["pool"], volume) in seen_volumes:
            problems.append(origin.problem(f"{path}.volume", f"volume {disk['pool']}/{volume} is attached twice in this VM"))
        seen_volumes.add((disk["pool"], volume))
        prefix = BUS_PREFIX[disk["bus"]]
        position = per_prefix.get(prefix, 0)
        per_prefix[prefix] = position + 1
        disks.append(model.DiskSpec(
            name=disk["name"],
            pool=disk["pool"],
            volume=volume,
            size=size(f"{path}.size", disk["size"], bare_unit=quantity.GIB, low=MIN_DISK, high=MAX_DISK, align=quantity.MIB),
            bus=disk["bus"],
            target=prefix + _device_letters(position),
            deletion_policy=model.DeletionPolicy(disk["deletionPolicy"]),
        ))

    nics = []
    seen_macs: dict[str, int] = {}
    for index, nic in enumerate(spec["networks"]):
        mac = nic["mac"].lower() if "mac" in nic else None
        if mac is not None:
            if mac in seen_macs:
                problems.append(origin.problem(f"spec.networks[{index}].mac", f"MAC {mac} is used twice in this VM"))
            elif int(mac[:2], 16) & 1:
                problems.append(origin.problem(f"spec.networks[{index}].mac", f"{mac} is a multicast address; use a unicast one such as 52:54:00:xx:xx:xx"))
            seen_macs.setdefault(mac, index)
        kind = "network" if "network" in nic else "bridge"
        nics.append(model.NicSpec(kind=kind, source=nic[kind], model=nic["model"], mac=mac))

    if problems:
        raise _Invalid(problems)
    return model.VMSpec(
        name=name,
        uuid=spec["uuid"].lower() if "uuid" in spec else None,
        virt_type=spec.get("virtType"),
        vcpus=int(spec["vcpus"]),
        memory=memory // quantity.KIB,
        max_memory=max_memory // quantity.KIB,
        disks=tuple(disks),
        nics=tuple(nics),
        console=spec["console"] == "serial",
        graphics=spec["graphics"],
        autostart=spec["autostart"],
        run_strategy=model.RunStrategy(spec["runStrategy"]),
        shutdown_timeout=float(spec["shutdownTimeout"]) if "shutdownTimeout" in spec else None,
        manifest=document.relpath,
        digest=digest(body),
        origin=origin,
    )


def _device_letters(position: int) -> str:
    """Return the suffix of the ``position``-th device: a, b, ..., z, aa, ab, ..."""
    letters = ""
    position += 1
    while position:
        position, remainder = divmod(position - 1, 26)
        letters = chr(ord("a") + remainder) + letters
    return letters


def _claim_conflicts(vms: Iterable[model.VMSpec], problems: list[model.Problem]) -> set[model.VMSpec]:
    """Return the VMs that claim a volume, MAC or UUID another VM claims too; add the problems."""
    claims: dict[tuple[str, str], list[tuple[model.VMSpec, str]]] = {}
    for spec in vms:
        for index, disk in enumerate(spec.disks):
            claims.setdefault(("volume", f"{disk.pool}/{disk.volume}"), []).append((spec, f"spec.disks[{index}]"))
        for index, nic in enumerate(spec.nics):
            if nic.mac:
                claims.setdefault(("MAC", nic.mac), []).append((spec, f"spec.networks[{index}].mac"))
        if spec.uuid:
            claims.setdefault(("UUID", spec.uuid), []).append((spec, "spec.uuid"))
    conflicting: set[model.VMSpec] = set()
    for (what, value), holders in claims.items():
        owners = {spec.name for spec, _ in holders}
        if len(owners) < 2:
            continue
        for spec, path in holders:
            others = ", ".join(sorted(owners - {spec.name}))
            problems.append(spec.origin.problem(path, f"{what} {value} is also claimed by VM {others}; each VM needs its own"))
            conflicting.add(spec)
    return conflicting

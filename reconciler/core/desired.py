"""Turn loaded manifest documents into the :class:`~reconciler.core.model.DesiredState`.

The module that reads manifests (and, for ``kvmops import``, writes one).  The simple VM
fields, whose manifest value maps to the domain definition one to one, are read and
written through their declarations (:data:`reconciler.core.fields.SIMPLE_FIELDS`); what
needs more is coded here.  It validates every document (:mod:`reconciler.core.validation`),
converts units, derives what a manifest leaves implicit (volume names, disk target
devices) and runs the checks that span fields or documents: a name declared twice, a volume or MAC claimed by two VMs,
``maxMemory`` below ``memory``.

A resource with any problem is left out of the desired state, and the problem is kept:
``DesiredState.complete`` is then False and the planner prunes nothing, so a broken
manifest can never read as "this VM was deleted".
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from urllib.parse import urlsplit

from reconciler.core import domxml, fields, hostdirs, model, quantity, validation

MIN_MEMORY = 16 * quantity.MIB
MAX_MEMORY = 16 * quantity.TIB
MIN_DISK = quantity.MIB
MAX_DISK = 64 * quantity.TIB
BUS_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd", "ide": "hd"}


FileReader = Callable[[model.Document, str], bytes]
FileChecker = Callable[[model.Document, str], str]


VNC_PASSWORD_LIMIT = 8  # bytes, as libvirt counts them: the VNC protocol's DES challenge uses 8
_VNC_PASSWORD_LIMIT = VNC_PASSWORD_LIMIT

def _no_files(document: model.Document, path: str) -> bytes:
    raise OSError(f"reading {path} is not possible here")


def _unchecked(document: model.Document, path: str) -> str:
    return posixpath.normpath(posixpath.join(posixpath.dirname(document.relpath), path))


def build(
    manifests: model.ManifestSet, *, read_file: FileReader = _no_files, check_file: FileChecker = _unchecked,
) -> model.DesiredState:
    """Return the desired state described by ``manifests``, with every problem found.

    ``read_file(document, path)`` returns the bytes of a file a manifest refers to
    (cloud-init user-data, a VNC password file), and ``check_file(document, path)`` the
    path of one it does not read now (an Image source) relative to the manifest tree.
    Both take ``path`` relative to ``document``'s directory and raise ``OSError`` (with a
    message saying what to do) when it is not a readable file inside the manifest tree;
    the shell's implementation (:class:`reconciler.adapters.manifests.TreeFiles`) follows
    symlinks only as far as they stay inside it.
    """
    problems = list(manifests.problems)
    hosts_complete = not manifests.problems  # a file that did not load may have declared Hosts
    candidates: dict[tuple[str, str], list[tuple[model.Document, object]]] = {}
    declares_hosts = False
    for document in manifests.documents:
        declares_hosts = declares_hosts or (isinstance(document.body, dict) and document.body.get("kind") == "Host")
        body, found = validation.validate(document)
        if found:
            problems.extend(found)
            kind = document.body.get("kind") if isinstance(document.body, dict) else None
            hosts_complete = hosts_complete and isinstance(kind, str) and kind != "Host"
            continue
        try:
            resource = _build_resource(document, body, read_file, check_file, manifests.tree)
        except _Invalid as invalid:
            problems.extend(invalid.problems)
            hosts_complete = hosts_complete and body["kind"] != "Host"
            continue
        key = (body["kind"], body["metadata"]["name"])
        candidates.setdefault(key, []).append((document, resource))

    vms: dict[str, model.VMSpec] = {}
    pools: dict[str, model.PoolSpec] = {}
    networks: dict[str, model.NetworkSpec] = {}
    images: dict[str, model.ImageSpec] = {}
    hosts: dict[str, model.HostSpec] = {}
    collections = {model.VMSpec: vms, model.PoolSpec: pools, model.NetworkSpec: networks, model.ImageSpec: images,
                   model.HostSpec: hosts}
    for (kind, name), declared in candidates.items():
        if len(declared) > 1:
            hosts_complete = hosts_complete and kind != "Host"
            places = ", ".join(f"{d.file}:{d.origin.line_of('metadata.name')}" for d, _ in declared)
            for document, _ in declared:
                problems.append(document.origin.problem(
                    "metadata.name", f"{kind} {name!r} is declared {len(declared)} times ({places}); names must be unique"
                ))
            continue
        resource = declared[0][1]
        collections[type(resource)][name] = resource

    for spec in _claim_conflicts(vms.values(), problems):
        del vms[spec.name]
    unresolved = []
    for host in _uri_conflicts(hosts.values(), problems):
        del hosts[host.name]
        hosts_complete = False
    for spec in list(vms.values()):
        if spec.placement is not None and spec.placement.host is not None and spec.placement.host not in hosts:
            known = f"the Hosts are {', '.join(sorted(hosts))}" if hosts else "no Host is declared"
            unresolved.append(spec.origin.problem("spec.placement.host", (
                f"no Host named {spec.placement.host!r} ({known}); add a Host manifest (kind: Host) or fix the name"
            )))
            del vms[spec.name]
    reserved = {(image.pool, image.volume): image.name for image in images.values()}
    for spec in list(vms.values()):
        for index, disk in enumerate(spec.disks):
            if (disk.pool, disk.volume) in reserved:
                # An image's content-addressed volume is kvmops' alone: that is what lets an
                # interrupted import replace it.  (The schema already refuses the dot names of
                # its import records.)
                owner = reserved[(disk.pool, disk.volume)]
                problems.append(spec.origin.problem(f"spec.disks[{index}].volume", (
                    f"volume {disk.pool}/{disk.volume} is reserved for Image {owner!r}; to build on it, use `image: {owner}`"
                )))
                vms.pop(spec.name, None)
                continue
            if disk.image is not None and disk.image not in images:
                unresolved.append(spec.origin.problem(
                    f"spec.disks[{index}].image",
                    f"no Image named {disk.image!r} is declared; add an Image manifest (kind: Image) or fix the name",
                ))
                vms.pop(spec.name, None)
    if not problems:  # else a broken document may be the one declaring it: say nothing that misleads
        problems.extend(unresolved)
    return model.DesiredState(
        vms=MappingProxyType(dict(sorted(vms.items()))),
        pools=MappingProxyType(dict(sorted(pools.items()))),
        problems=tuple(problems),
        files=manifests.files,
        source=manifests.root,
        networks=MappingProxyType(dict(sorted(networks.items()))),
        images=MappingProxyType(dict(sorted(images.items()))),
        hosts=MappingProxyType(dict(sorted(hosts.items()))),
        hosts_complete=hosts_complete,
        declares_hosts=declares_hosts or bool(hosts),
    )


def digest(body: dict) -> str:
    """Return the content digest recorded in libvirt: sha256 of the normalised document."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


class _Invalid(Exception):
    def __init__(self, problems: list[model.Problem]) -> None:
        super().__init__(problems)
        self.problems = problems


def _build_resource(document: model.Document, body: dict, read_file: FileReader, check_file: FileChecker, tree: str):
    kind = body["kind"]
    if kind == "StoragePool":
        return _pool(document, body)
    if kind == "Network":
        return _network(document, body)
    if kind == "Image":
        return _image(document, body, check_file, tree)
    if kind == "Host":
        return _host(document, body)
    return _vm(document, body, read_file)


def _selector(value: Mapping[str, str] | None) -> tuple[tuple[str, str], ...] | None:
    return None if value is None else tuple(sorted(value.items()))


def _host(document: model.Document, body: dict) -> model.HostSpec:
    spec = body["spec"]
    try:
        urlsplit(spec["uri"]).port  # what kvmops reads of a URI (is it local?) must not fail later
    except ValueError as exc:
        raise _Invalid([document.origin.problem("spec.uri", (  # not quoted: it may carry a password
            f"not a URI kvmops can read ({exc}); write it as libvirt documents it, e.g. qemu+tcp://[fe80::1]/system"
        ))]) from exc
    capacity = spec.get("capacity", {})
    memory = None
    if "memory" in capacity:
        try:
            memory = quantity.parse_bytes(capacity["memory"], bare_unit=quantity.MIB) // quantity.KIB
        except ValueError as exc:
            raise _Invalid([document.origin.problem("spec.capacity.memory", str(exc))]) from exc
    return model.HostSpec(
        name=body["metadata"]["name"], uri=spec["uri"], labels=tuple(sorted(body["metadata"]["labels"].items())),
        capacity=model.HostCapacity(
            vcpus=capacity.get("vcpus"), memory=memory,
            cpu_overcommit=float(capacity.get("cpuOvercommit", 1)),
            memory_overcommit=float(capacity.get("memoryOvercommit", 1)),
        ),
        schedulable=spec["schedulable"], manifest=document.relpath, origin=document.origin,
    )


def _placement(origin: model.Origin, labels: Mapping[str, str], value: dict | None, problems: list) -> model.Placement | None:
    if value is None:
        return None
    if "host" in value and "hostSelector" in value:
        problems.append(origin.problem("spec.placement.hostSelector", (
            "give either host (one Host) or hostSelector (Hosts by label), not both"
        )))
    anti_affinity = value.get("antiAffinity")
    if anti_affinity is not None and anti_affinity not in labels:
        problems.append(origin.problem("spec.placement.antiAffinity", (
            f"this VM has no label {anti_affinity!r}; add it under metadata.labels (VMs with the same value avoid "
            "sharing a host)"
        )))
    return model.Placement(
        host=value.get("host"), host_selector=_selector(value.get("hostSelector")) or (),
        spread_by=value.get("spreadBy"), anti_affinity=anti_affinity,
    )


def _image(document: model.Document, body: dict, check_file: FileChecker, tree: str) -> model.ImageSpec:
    spec = body["spec"]
    name = body["metadata"]["name"]
    sha = spec["sha256"].lower()
    path = spec["source"].get("path")
    if path is not None:
        try:
            path = check_file(document, path)
        except OSError as exc:
            raise _Invalid([document.origin.problem("spec.source.path", f"cannot use the image file: {exc}")]) from exc
    return model.ImageSpec(
        name=name, pool=spec["pool"], volume=f"{name}-{sha[:12]}.{spec['format']}",
        url=spec["source"].get("url"), path=path, sha256=sha, format=spec["format"],
        manifest=document.relpath, origin=document.origin, tree=tree if path is not None else "",
        hosts=_selector(spec.get("hosts")),
    )


def _network(document: model.Document, body: dict) -> model.NetworkSpec:
    spec = body["spec"]
    origin = document.origin
    problems = []
    mode = spec["mode"]
    ipv4 = spec.get("ipv4")
    if mode == "bridge":
        if "bridge" not in spec:
            problems.append(origin.problem("spec.bridge", "mode bridge needs the host bridge to attach to, e.g. bridge: br0"))
        if ipv4:
            problems.append(origin.problem("spec.ipv4", "mode bridge has no libvirt-managed addresses; remove ipv4"))
    dhcp = (ipv4 or {}).get("dhcp") or {}
    hosts = []
    if ipv4:
        try:
            subnet = ipaddress.ip_network(f"{ipv4['address']}/{ipv4['prefix']}", strict=False)
            for path, value in (("spec.ipv4.address", ipv4["address"]), ("spec.ipv4.dhcp.start", dhcp.get("start")),
                                ("spec.ipv4.dhcp.end", dhcp.get("end"))):
                if value is not None and ipaddress.ip_address(value) not in subnet:
                    problems.append(origin.problem(path, f"{value} is not in {subnet}"))
            for index, host in enumerate(dhcp.get("hosts", [])):
                if ipaddress.ip_address(host["ip"]) not in subnet:
                    problems.append(origin.problem(f"spec.ipv4.dhcp.hosts[{index}].ip", f"{host['ip']} is not in {subnet}"))
                hosts.append(model.DhcpHost(host["mac"].lower(), host["ip"], host.get("name")))
        except ValueError as exc:
            problems.append(origin.problem("spec.ipv4", str(exc)))
    if problems:
        raise _Invalid(problems)
    name = body["metadata"]["name"]
    return model.NetworkSpec(
        definition=model.NetworkDefinition(
            name=name, mode=mode, bridge=spec.get("bridge"),
            address=ipv4["address"] if ipv4 else None, prefix=ipv4["prefix"] if ipv4 else None,
            dhcp_start=dhcp.get("start"), dhcp_end=dhcp.get("end"), hosts=tuple(hosts),
            owner=model.NetworkOwnership(document.relpath, digest(body)),
        ),
        autostart=spec["autostart"], manifest=document.relpath, origin=origin, hosts=_selector(spec.get("hosts")),
    )


def _pool(document: model.Document, body: dict) -> model.PoolSpec:
    spec = body["spec"]
    return model.PoolSpec(
        name=body["metadata"]["name"],
        type=spec["type"],
        path=hostdirs.normalise(spec["path"]),
        autostart=spec["autostart"],
        manifest=document.relpath,
        origin=document.origin,
        shared=spec["shared"],
        hosts=_selector(spec.get("hosts")),
    )


def _file_ref(value: dict | None) -> model.FileRef | None:
    if value is None:
        return None
    return model.FileRef(pool=value.get("pool", ""), volume=value.get("volume"), path=value.get("path"))


def _cdrom_ref(value: dict | None) -> model.FileRef | None:
    """Return the media of a ``cdrom`` entry: pool "" with an absolute path for a file outside pools."""
    if value is None or value.get("empty"):
        return None
    if "pool" not in value:
        return model.FileRef(pool="", path=value["path"])
    return model.FileRef(pool=value["pool"], volume=value.get("volume"), path=value.get("path"))


def _vm(document: model.Document, body: dict, read_file: FileReader) -> model.VMSpec:
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
    seen_targets: set[str] = set()
    for index, disk in enumerate(spec["disks"]):
        path = f"spec.disks[{index}]"
        if disk["name"] in seen_disks:
            problems.append(origin.problem(f"{path}.name", f"disk name {disk['name']!r} is used twice in this VM (first at spec.disks[{seen_disks[disk['name']]}])"))
        seen_disks.setdefault(disk["name"], index)
        if "path" in disk:
            why = hostdirs.refused_attached_file(disk["path"])
            if why is not None:
                problems.append(origin.problem(f"{path}.path", f"{why}; kvmops attaches only files outside system directories"))
            if ("", disk["path"]) in seen_volumes:
                problems.append(origin.problem(f"{path}.path", f"{disk['path']} is attached twice in this VM"))
            seen_volumes.add(("", disk["path"]))
        else:
            volume = disk.get("volume", f"{name}-{disk['name']}.qcow2")
            if (disk["pool"], volume) in seen_volumes:
                problems.append(origin.problem(f"{path}.volume", f"volume {disk['pool']}/{volume} is attached twice in this VM"))
            seen_volumes.add((disk["pool"], volume))
        prefix = BUS_PREFIX[disk["bus"]]
        position = per_prefix.get(prefix, 0)
        per_prefix[prefix] = position + 1
        target = disk.get("target", prefix + domxml.device_letters(position))
        if not target.startswith(prefix):
            problems.append(origin.problem(f"{path}.target", f"target {target} does not fit bus {disk['bus']} (use {prefix}X)"))
        if target in seen_targets:
            problems.append(origin.problem(f"{path}.target", f"target {target} is used twice in this VM"))
        seen_targets.add(target)
        if "path" in disk:
            disks.append(model.DiskSpec(
                name=disk["name"], pool="", volume="", size=0, bus=disk["bus"], target=target,
                deletion_policy=model.DeletionPolicy.RETAIN, path=disk["path"], format=disk.get("format", "qcow2"),
            ))
            continue
        disks.append(model.DiskSpec(
            name=disk["name"],
            pool=disk["pool"],
            volume=volume,
            size=size(f"{path}.size", disk["size"], bare_unit=quantity.GIB, low=MIN_DISK, high=MAX_DISK, align=quantity.MIB),
            bus=disk["bus"],
            target=target,
            deletion_policy=model.DeletionPolicy(disk.get("deletionPolicy", "Retain")),
            image=disk.get("image"),
            clone=disk.get("clone", "overlay"),
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

    graphics = spec["graphics"] if isinstance(spec["graphics"], dict) else {"type": spec["graphics"]}
    password = None
    if graphics.get("passwordFile"):
        try:
            password = read_file(document, graphics["passwordFile"]).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(origin.problem("spec.graphics.passwordFile", f"cannot read the password file: {exc}"))
    if password is not None and graphics["type"] == "vnc" and len(password.encode()) > _VNC_PASSWORD_LIMIT:
        # QEMU's VNC authentication uses an 8-byte DES key; libvirt refuses longer ones when defining.
        size = len(password.encode())
        unit = "characters" if password.isascii() else "bytes in UTF-8"
        problems.append(origin.problem(
            "spec.graphics.passwordFile",
            f"a VNC password has at most {_VNC_PASSWORD_LIMIT} characters (this one has {size} {unit}); shorten it, or use graphics type spice",
        ))
    install = None
    if "install" in spec:
        install = model.InstallSpec(
            kernel=_file_ref(spec["install"]["kernel"]), initrd=_file_ref(spec["install"].get("initrd")),
            cmdline=spec["install"]["cmdline"], first_boot_only=spec["install"]["firstBootOnly"],
        )
    cloud_init = None
    if "cloudInit" in spec:
        cloud_init = _cloud_init(document, name, spec["cloudInit"], disks, read_file, problems)
        if cloud_init is not None and cloud_init.volume in {d.volume for d in disks if d.pool == cloud_init.pool}:
            problems.append(origin.problem("spec.cloudInit", f"volume {cloud_init.volume} is also a disk of this VM"))
    for part in ("kernel", "initrd"):
        ref = spec.get("install", {}).get(part)
        field = f"spec.install.{part}.path"
        if ref is None or "path" not in ref:
            continue
        if "pool" in ref and ref["path"].startswith("/"):
            problems.append(origin.problem(field, "with pool, path is relative to the pool's directory; for a file "
                                           "outside any pool, remove pool"))
        elif "pool" not in ref and not ref["path"].startswith("/"):
            problems.append(origin.problem(field, "without pool, path must be absolute (/dir/vmlinuz)"))
        elif "pool" not in ref and (why := hostdirs.refused_attached_file(ref["path"])) is not None:
            problems.append(origin.problem(field, f"{why}; kvmops boots only files outside system directories"))
    cdrom = spec.get("cdrom")
    if cdrom is not None and "path" in cdrom:
        absolute = cdrom["path"].startswith("/")
        if "pool" in cdrom and absolute:
            problems.append(origin.problem("spec.cdrom.path", "with pool, path is relative to the pool's directory; "
                                           "for a file outside any pool, remove pool"))
        elif "pool" not in cdrom and not absolute:
            problems.append(origin.problem("spec.cdrom.path", "without pool, path must be absolute (/dir/file.iso)"))
        elif "pool" not in cdrom and (why := hostdirs.refused_attached_file(cdrom["path"])) is not None:
            problems.append(origin.problem("spec.cdrom.path", f"{why}; kvmops attaches only files outside system directories"))
    if cdrom is not None and "pool" in cdrom and "volume" not in cdrom and "path" not in cdrom:
        problems.append(origin.problem("spec.cdrom", "with pool, give volume or path"))
    if cdrom is not None and "target" in cdrom and cdrom["target"] in seen_targets:
        problems.append(origin.problem("spec.cdrom.target", f"target {cdrom['target']} is also a disk's"))
    if cdrom is not None and "target" in cdrom and not cdrom["target"].startswith(BUS_PREFIX[cdrom.get("bus", "sata")]):
        problems.append(origin.problem("spec.cdrom.target", f"target {cdrom['target']} does not fit bus {cdrom.get('bus', 'sata')}"))
    if "cpu" in spec and spec["cpu"]["mode"] != "custom" and "model" in spec["cpu"]:
        problems.append(origin.problem("spec.cpu.model", "a model is only used with mode: custom"))

    labels = body["metadata"]["labels"]
    placement = _placement(origin, labels, spec.get("placement"), problems)
    if problems:
        raise _Invalid(problems)
    return model.VMSpec(
        name=name,
        uuid=spec["uuid"].lower() if "uuid" in spec else None,
        virt_type=spec.get("virtType"),
        memory=memory // quantity.KIB,
        max_memory=max_memory // quantity.KIB,
        disks=tuple(disks),
        nics=tuple(nics),
        graphics=graphics["type"],
        autostart=spec["autostart"],
        run_strategy=model.RunStrategy(spec["runStrategy"]),
        shutdown_timeout=float(spec["shutdownTimeout"]) if "shutdownTimeout" in spec else None,
        manifest=document.relpath,
        digest=digest(body),
        origin=origin,
        keep_nvram=spec["keepNvram"],
        cdrom=_cdrom_ref(cdrom),
        cdrom_empty=bool(cdrom is not None and cdrom.get("empty")),
        cdrom_bus=cdrom.get("bus", "sata") if cdrom is not None else "sata",
        cdrom_target=cdrom.get("target") if cdrom is not None else None,
        install=install,
        cloud_init=cloud_init,
        graphics_listen=graphics.get("listen", "127.0.0.1"),
        graphics_password=password,
        graphics_password_digest=_secret_digest(password) if password else "",
        placement=placement,
        labels=tuple(sorted(labels.items())),
        **{name: value for declared in fields.SIMPLE_FIELDS for name, value in declared.from_manifest(spec).items()},
    )


def _secret_digest(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def _cloud_init(document, name, config, disks, read_file, problems) -> model.CloudInitSpec | None:
    """Return the NoCloud seed files for ``config``; user-data is kept but never shown."""
    origin = document.origin
    user_data = config.get("userData")
    if "userDataFile" in config:
        try:
            user_data = read_file(document, config["userDataFile"]).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(origin.problem("spec.cloudInit.userDataFile", f"cannot read the user-data file: {exc}"))
            return None
    pool = config.get("pool") or (disks[0].pool if disks else None)
    if pool is None:
        problems.append(origin.problem("spec.cloudInit.pool", "the seed ISO needs a pool: set cloudInit.pool or add a disk"))
        return None
    meta = config.get("metaData", {})
    network = config.get("networkConfig")
    keys = config.get("sshAuthorizedKeys", [])
    content = json.dumps([user_data, network, keys, meta.get("hostname", name)], sort_keys=True).encode()
    instance = meta.get("instanceId") or f"{name}-{hashlib.sha256(content).hexdigest()[:12]}"
    # meta-data and network-config are YAML; JSON is YAML, and the core never needs a YAML writer.
    meta_lines = [f"instance-id: {json.dumps(instance)}", f"local-hostname: {json.dumps(meta.get('hostname', name))}"]
    if keys:
        meta_lines.append("public-keys:")
        meta_lines += [f"  - {json.dumps(key)}" for key in keys]
    files = [("meta-data", ("\n".join(meta_lines) + "\n").encode())]
    files.append(("user-data", (user_data if user_data is not None else "#cloud-config\n{}\n").encode()))
    if network is not None:
        files.append(("network-config", (json.dumps(network, indent=2, sort_keys=True) + "\n").encode()))
    seed_digest = "sha256:" + hashlib.sha256(b"\0".join(n.encode() + b"\0" + c for n, c in files)).hexdigest()
    return model.CloudInitSpec(files=tuple(files), digest=seed_digest, pool=pool, volume=f"{name}-cidata.iso")


def _claim_conflicts(vms: Iterable[model.VMSpec], problems: list[model.Problem]) -> set[model.VMSpec]:
    """Return the VMs that claim a volume, MAC or UUID another VM claims too; add the problems."""
    claims: dict[tuple[str, str], list[tuple[model.VMSpec, str]]] = {}
    for spec in vms:
        for index, disk in enumerate(spec.disks):
            claim = ("file", disk.path) if disk.path is not None else ("volume", f"{disk.pool}/{disk.volume}")
            claims.setdefault(claim, []).append((spec, f"spec.disks[{index}]"))
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


def _uri_conflicts(hosts: Iterable[model.HostSpec], problems: list[model.Problem]) -> list[model.HostSpec]:
    """Return the Hosts whose URI another Host has too; add the problems (one hypervisor, one Host)."""
    by_uri: dict[str, list[model.HostSpec]] = {}
    for host in hosts:
        by_uri.setdefault(host.uri, []).append(host)
    conflicting = []
    for uri, holders in by_uri.items():
        if len(holders) < 2:
            continue
        for host in holders:
            others = ", ".join(sorted(h.name for h in holders if h is not host))
            problems.append(host.origin.problem("spec.uri", f"URI {uri} is also Host {others}'s; each Host needs its own"))
            conflicting.append(host)
    return conflicting


def manifest_for(
    definition: model.DomainDefinition,
    *,
    autostart: bool,
    capacities: Mapping[tuple[str, str], int],
    paths: Mapping[tuple[str, str], str] | None = None,
) -> tuple[dict, list[str]]:
    """Return the VirtualMachine manifest describing an existing domain, and what it could not say.

    The inverse of :func:`build` for ``kvmops import``: applied to the same domain after
    ``kvmops adopt``, the manifest plans no change.  Power is left to people
    (``runStrategy: Manual``); UUID, MACs and device names are pinned.  ``paths`` gives the
    file of each pool volume: a CD-ROM is written as that file (``path:``), attached as it
    is found, rather than as media kvmops attaches (and would stop libvirt relabelling).
    """
    warnings: list[str] = []
    spec: dict = {"memory": _mib_text(definition.memory)}
    if definition.max_memory != definition.memory:
        spec["maxMemory"] = _mib_text(definition.max_memory)
    spec["virtType"] = definition.virt_type if definition.virt_type in ("kvm", "qemu") else "auto"
    if definition.uuid:
        spec["uuid"] = definition.uuid
    warnings.extend(inexpressible(definition))
    disks = []
    per_prefix: dict[str, int] = {}
    for disk in definition.disks:
        if disk.bus not in BUS_PREFIX or (disk.pool is None and not disk.path):
            continue
        if disk.pool is None:
            entry: dict = {"name": _disk_name(disk.target, disks), "path": disk.path}
            if disk.format in ("qcow2", "raw") and disk.format != "qcow2":
                entry["format"] = disk.format
        else:
            entry = {"name": _disk_name(disk.target, disks), "pool": disk.pool, "volume": disk.volume}
            capacity = capacities.get((disk.pool, disk.volume))
            if capacity is None:
                warnings.append(f"the size of {disk.pool}/{disk.volume} is unknown; size 1GiB was written, check it")
            entry["size"] = _size_text(capacity or quantity.GIB)
        entry["bus"] = disk.bus
        prefix = BUS_PREFIX[disk.bus]
        position = per_prefix.get(prefix, 0)
        per_prefix[prefix] = position + 1
        if disk.target != prefix + domxml.device_letters(position):
            entry["target"] = disk.target
        disks.append(entry)
    if disks:
        spec["disks"] = disks
    networks = []
    for nic in definition.nics:
        if nic.kind not in ("network", "bridge") or (nic.model is not None and nic.model not in NIC_MODELS):
            continue
        entry = {nic.kind: nic.source}
        if nic.mac:
            entry["mac"] = nic.mac
        if nic.model:
            entry["model"] = nic.model
        networks.append(entry)
    if networks:
        spec["networks"] = networks
    if definition.graphics not in ("none", "vnc", "spice"):
        spec["graphics"] = "none"
    elif definition.graphics == "none":
        spec["graphics"] = "none"
    elif definition.graphics_listen and definition.graphics_listen != domxml.GRAPHICS_LISTEN:
        spec["graphics"] = {"type": definition.graphics, "listen": definition.graphics_listen}
    else:
        spec["graphics"] = definition.graphics
    if definition.kernel:
        spec["install"] = {"kernel": {"path": definition.kernel}}
        if definition.initrd:
            spec["install"]["initrd"] = {"path": definition.initrd}
        spec["install"]["cmdline"] = definition.cmdline or ""
        spec["install"]["firstBootOnly"] = False
    if len(definition.cdroms) == 1:
        cdrom = definition.cdroms[0]
        if cdrom.pool is not None and (paths or {}).get((cdrom.pool, cdrom.volume)):
            entry = {"path": paths[(cdrom.pool, cdrom.volume)]}
        elif cdrom.pool is not None:
            entry = {"pool": cdrom.pool, "volume": cdrom.volume}
        elif cdrom.path:
            entry = {"path": cdrom.path}
        else:
            entry = {"empty": True}
        if cdrom.bus != "sata":
            entry["bus"] = cdrom.bus
        used = {d.target for d in definition.disks}
        first_spare = next(f"sd{domxml.device_letters(i)}" for i in range(64) if f"sd{domxml.device_letters(i)}" not in used)
        if cdrom.target != first_spare:
            entry["target"] = cdrom.target
        spec["cdrom"] = entry
    for declared in fields.SIMPLE_FIELDS:
        value = declared.to_manifest(definition)
        if value is not None:
            spec[declared.manifest_key] = value
    spec = {key: spec[key] for key in sorted(spec, key=_import_position)}
    spec["autostart"] = autostart
    spec["runStrategy"] = "Manual"
    document = {"apiVersion": "kvmops/v1", "kind": "VirtualMachine", "metadata": {"name": definition.name}, "spec": spec}
    return document, warnings


# The order import writes a manifest's keys in, older than the field table's; the keys of
# other fields come after these, in the table's order (then autostart and runStrategy).
_IMPORT_FIRST = ("vcpus", "memory", "maxMemory", "virtType", "uuid", "machine", "firmware", "cpu", "disks", "networks",
                 "console", "graphics", "boot", "install", "cdrom")
_TABLE_KEYS = tuple(declared.manifest_key for declared in fields.FIELDS if declared.schema)


def _import_position(key: str) -> tuple[int, int]:
    if key in _IMPORT_FIRST:
        return (0, _IMPORT_FIRST.index(key))
    return (1, _TABLE_KEYS.index(key))


NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139", "pcnet", "ne2k_pci", "vmxnet3", "virtio-transitional",
              "virtio-non-transitional")
CDROM_BUSES = ("sata", "scsi", "ide")
_DEVICE_NAME = re.compile(r"(vd|sd|hd)[a-z]{1,2}")
_ABSOLUTE_PATH = re.compile(r"/(?!(.*/)?\.\.?(/|$))(?!.*//)[^\x00-\x1f\x7f<>&\"']*[^/\x00-\x1f\x7f<>&\"']")


def inexpressible(definition: model.DomainDefinition) -> list[str]:
    """Return what of ``definition`` a manifest cannot say, one clause per element.

    ``kvmops import`` leaves these out (a note each) and ``kvmops adopt`` refuses a domain
    that has any: adopting it would make the next plan remove or rewrite them, a change
    nobody wrote.  Empty for whatever a manifest can express exactly.
    """
    found = []
    if definition.cpu_mode is not None and definition.cpu_mode not in ("host-passthrough", "host-model", "maximum", "custom"):
        found.append(f"<cpu mode={definition.cpu_mode!r}>")
    elif definition.cpu_model is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", definition.cpu_model):
        found.append(f"<cpu><model>{definition.cpu_model}</model>")
    if definition.machine is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", definition.machine):
        found.append(f"<os><type machine={definition.machine!r}>")
    if (definition.initrd or definition.cmdline) and not definition.kernel:
        found.append("<os><initrd> or <cmdline> without a <kernel>")
    for part, path in (("kernel", definition.kernel), ("initrd", definition.initrd)):
        if path and (not _ABSOLUTE_PATH.fullmatch(path) or hostdirs.refused_attached_file(path) is not None):
            found.append(f"<os><{part}> {path}: {hostdirs.refused_attached_file(path) or 'not an absolute, normalised path'}")
    for disk in definition.disks:
        where = f"<disk> {disk.target or '?'} ({disk.source})"
        if disk.bus not in BUS_PREFIX:
            found.append(f"{where}: bus {disk.bus!r} (manifests know virtio, sata, scsi, ide)")
        elif not _DEVICE_NAME.fullmatch(disk.target or "") or not disk.target.startswith(BUS_PREFIX[disk.bus]):
            found.append(f"{where}: target {disk.target!r} does not fit bus {disk.bus}")
        elif disk.pool is None and not disk.path:
            found.append(f"{where}: a disk without a source")
        elif disk.pool is None and (not _ABSOLUTE_PATH.fullmatch(disk.path)
                                    or (why := hostdirs.refused_attached_file(disk.path)) is not None):
            found.append(f"{where}: {why if _ABSOLUTE_PATH.fullmatch(disk.path) else 'not an absolute, normalised path'}")
        elif disk.pool is None and disk.format not in ("qcow2", "raw"):
            found.append(f"{where}: image format {disk.format!r} (manifests know qcow2 and raw)")
        elif disk.pool is not None and disk.format not in (None, "qcow2"):
            found.append(f"{where}: a {disk.format} pool volume (manifests attach pool volumes as qcow2)")
    if len(definition.cdroms) > 1:
        found.append(f"{len(definition.cdroms)} CD-ROM drives ({', '.join(d.target for d in definition.cdroms)}): a "
                     "manifest has one")
    for cdrom in definition.cdroms[:1]:
        where = f"<disk device='cdrom'> {cdrom.target or '?'} ({cdrom.source})"
        if cdrom.bus not in CDROM_BUSES:
            found.append(f"{where}: bus {cdrom.bus!r} (manifests know sata, scsi, ide)")
        elif not re.fullmatch(r"(sd|hd)[a-z]{1,2}", cdrom.target or "") or not cdrom.target.startswith(BUS_PREFIX[cdrom.bus]):
            found.append(f"{where}: target {cdrom.target!r} does not fit bus {cdrom.bus}")
        elif cdrom.target in {d.target for d in definition.disks}:
            found.append(f"{where}: target {cdrom.target} is also a disk's")
        elif cdrom.pool is None and cdrom.path and (not _ABSOLUTE_PATH.fullmatch(cdrom.path)
                                                    or hostdirs.refused_attached_file(cdrom.path) is not None):
            found.append(f"{where}: {hostdirs.refused_attached_file(cdrom.path) or 'not an absolute, normalised path'}")
    for nic in definition.nics:
        where = f"<interface> {nic.mac or '?'}"
        if nic.kind not in ("network", "bridge"):
            found.append(f"{where}: type {nic.kind!r} (manifests know network and bridge)")
        elif nic.model is None:
            found.append(f"{where}: no model (QEMU's default; manifests name one)")
        elif nic.model not in NIC_MODELS:
            found.append(f"{where}: model {nic.model!r} (manifests know {', '.join(NIC_MODELS)})")
    if definition.graphics not in ("none", "vnc", "spice"):
        found.append(f"<graphics type={definition.graphics!r}> (manifests know vnc and spice)")
    if any(device not in ("hd", "cdrom", "network", "fd") for device in definition.boot) or len(set(definition.boot)) != len(definition.boot):
        found.append(f"<os><boot> order {', '.join(definition.boot)}")
    return found


def _disk_name(target: str, taken: list[dict]) -> str:
    name = target if re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", target or "") else "disk"
    names = {d["name"] for d in taken}
    candidate, suffix = name, 1
    while candidate in names:
        suffix += 1
        candidate = f"{name}-{suffix}"
    return candidate


def _mib_text(kib: int) -> str | int:
    return kib // 1024 if kib % 1024 == 0 else f"{kib}KiB"


def _size_text(capacity: int) -> str:
    if capacity % quantity.GIB == 0:
        return f"{capacity // quantity.GIB}GiB"
    return f"{quantity.round_up(capacity, quantity.MIB) // quantity.MIB}MiB"

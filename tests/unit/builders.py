"""Build model values for unit tests: specs, observed domains, whole desired/actual states.

Every builder returns a frozen value from :mod:`reconciler.core.model` with sensible
defaults, so a test names only what it is about.  Sizes follow the model: memory in KiB,
disk and volume sizes in bytes.  :func:`converged` builds the host an ``apply`` of a
desired state would leave behind, written independently of the planner so that "the
second plan is empty" is a real check.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from reconciler.adapters import manifests
from reconciler.core import model

KIB = 1024
MIB = 1024**2
GIB = 1024**3
MEMORY_1GIB = 1024 * 1024  # KiB
URI = "qemu:///system"
UUID = "4dea22b3-1d52-d8f3-2516-782e98ab3fa0"
OTHER_UUID = "6f1c3e2a-8d4b-4c9e-9a71-2b5d0e8f4c13"
POOL = "vmstore"
POOL_PATH = "/var/lib/kvmops/vmstore"
LIBVIRT_MAC_PREFIX = "52:54:00:aa:00:"


def documents(text: str, *, relpath: str = "vms/web.yaml") -> tuple[model.Document, ...]:
    """Return the documents of manifest ``text`` as if read from ``manifests/<relpath>``."""
    found, problems = manifests.parse_text(text, f"manifests/{relpath}", relpath)
    assert not problems, problems
    return tuple(found)


def manifest_set(files: dict[str, str]) -> model.ManifestSet:
    """Return the manifest set of ``files`` (relpath -> YAML text) under ``manifests/``."""
    found = tuple(doc for relpath, text in files.items() for doc in documents(text, relpath=relpath))
    return model.ManifestSet("manifests", found, (), len(files))


def vm_yaml(name: str = "web", spec: str = "  memory: 1GiB\n") -> str:
    """Return a VirtualMachine manifest whose ``spec:`` block is ``spec`` (indented two spaces)."""
    return f"apiVersion: kvmops/v1\nkind: VirtualMachine\nmetadata:\n  name: {name}\nspec:\n{spec}"


def origin(file: str = "manifests/vms/web.yaml", line: int = 1, **lines: int) -> model.Origin:
    """Return where a resource was declared; ``lines`` maps field paths (use ``__`` for ``.``)."""
    return model.Origin(file, line, {key.replace("__", "."): value for key, value in lines.items()})


def disk(
    name: str = "root",
    size: int = 10 * GIB,
    *,
    target: str = "vda",
    pool: str = POOL,
    volume: str | None = None,
    bus: str = "virtio",
    policy: model.DeletionPolicy = model.DeletionPolicy.RETAIN,
) -> model.DiskSpec:
    """Return a disk spec; ``volume`` None becomes ``<vm>-<name>.qcow2`` in :func:`vm`."""
    return model.DiskSpec(
        name=name, pool=pool, volume=volume, size=size, bus=bus, target=target,  # type: ignore[arg-type]
        deletion_policy=policy,
    )


def nic(source: str = "default", *, kind: str = "network", model_name: str = "virtio", mac: str | None = None) -> model.NicSpec:
    """Return a NIC spec on libvirt network ``source`` (or a bridge with ``kind="bridge"``)."""
    return model.NicSpec(kind=kind, source=source, model=model_name, mac=mac)


def vm(
    name: str = "web",
    *,
    vcpus: int = 2,
    memory: int = MEMORY_1GIB,
    max_memory: int | None = None,
    disks: tuple[model.DiskSpec, ...] = (),
    nics: tuple[model.NicSpec, ...] = (),
    uuid: str | None = None,
    virt_type: str | None = None,
    console: bool = True,
    graphics: str = "none",
    autostart: bool = False,
    run_strategy: model.RunStrategy = model.RunStrategy.ALWAYS,
    shutdown_timeout: float | None = None,
    digest: str = "sha256:" + "0" * 64,
) -> model.VMSpec:
    """Return a VM spec; memory in KiB, ``max_memory`` defaults to ``memory``."""
    disks = tuple(
        d if d.volume is not None else dataclasses.replace(d, volume=f"{name}-{d.name}.qcow2") for d in disks
    )
    return model.VMSpec(
        name=name, uuid=uuid, virt_type=virt_type, vcpus=vcpus, memory=memory,
        max_memory=memory if max_memory is None else max_memory, disks=disks, nics=nics,
        console=console, graphics=graphics, autostart=autostart, run_strategy=run_strategy,
        shutdown_timeout=shutdown_timeout, manifest=f"vms/{name}.yaml", digest=digest,
        origin=origin(f"manifests/vms/{name}.yaml", 5, spec=10),
    )


def pool(name: str = POOL, path: str = POOL_PATH, *, autostart: bool = True) -> model.PoolSpec:
    """Return a dir pool spec."""
    return model.PoolSpec(name=name, type="dir", path=path, autostart=autostart, manifest=f"pools/{name}.yaml",
                          origin=origin(f"manifests/pools/{name}.yaml"))


def desired(*vms: model.VMSpec, pools: tuple[model.PoolSpec, ...] = (), problems: tuple[model.Problem, ...] = ()) -> model.DesiredState:
    """Return a desired state holding ``vms`` and ``pools``."""
    return model.DesiredState(
        vms=MappingProxyType({spec.name: spec for spec in vms}),
        pools=MappingProxyType({spec.name: spec for spec in pools}),
        problems=problems,
        files=len(vms) + len(pools),
    )


def host(*virt_types: str, uri: str = URI, test_driver: bool = False, kvm_unusable: str | None = None) -> model.HostInfo:
    """Return a host offering ``virt_types`` (kvm and qemu when none are given)."""
    return model.HostInfo(uri=uri, virt_types=virt_types or ("kvm", "qemu"), test_driver=test_driver,
                          kvm_unusable_reason=kvm_unusable)


def observed_pool(name: str = POOL, path: str = POOL_PATH, *, active: bool = True, autostart: bool = True) -> model.ObservedPool:
    """Return a dir pool as libvirt reports it."""
    return model.ObservedPool(name=name, type="dir", path=path, active=active, autostart=autostart)


def volume(pool_name: str, name: str, capacity: int) -> model.ObservedVolume:
    """Return a volume as libvirt reports it."""
    return model.ObservedVolume(pool=pool_name, name=name, capacity=capacity, allocation=capacity // 10,
                                path=f"{POOL_PATH}/{name}")


def mac(index: int) -> str:
    """Return the MAC libvirt would have generated for the ``index``-th NIC."""
    return f"{LIBVIRT_MAC_PREFIX}{index:02x}"


def definition(
    spec: model.VMSpec,
    *,
    uuid: str = UUID,
    virt_type: str = "kvm",
    created: bool = True,
    extra_volumes: tuple[model.OwnedVolume, ...] = (),
) -> model.DomainDefinition:
    """Return the essence of the domain an apply of ``spec`` leaves, as libvirt reads it back.

    NICs without a pinned MAC get the MAC libvirt would have generated (:func:`mac`).
    """
    records = tuple(model.OwnedVolume(d.pool, d.volume, d.deletion_policy, created) for d in spec.disks)
    return model.DomainDefinition(
        name=spec.name,
        uuid=uuid,
        virt_type=virt_type,
        vcpus=spec.vcpus,
        memory=spec.memory,
        max_memory=spec.max_memory,
        disks=tuple(model.DiskDevice(target=d.target, bus=d.bus, pool=d.pool, volume=d.volume) for d in spec.disks),
        nics=tuple(model.NicDevice(kind=n.kind, source=n.source, model=n.model, mac=n.mac or mac(i))
                   for i, n in enumerate(spec.nics)),
        console=spec.console,
        graphics=spec.graphics,
        graphics_listen=spec.graphics_listen if spec.graphics != "none" else None,
        owner=model.Ownership(spec.manifest, spec.digest, spec.run_strategy, records + extra_volumes,
                              shutdown_timeout=spec.shutdown_timeout, bound_name=spec.name, bound_uuid=uuid),
    )


def domain(
    config: model.DomainDefinition,
    *,
    power: model.PowerState = model.PowerState.RUNNING,
    reason: model.ShutoffReason | None = None,
    autostart: bool = False,
    live: model.DomainDefinition | None | str = "same",
) -> model.ObservedDomain:
    """Return an owned domain with persistent definition ``config``.

    While it is active its live definition is ``config`` unless ``live`` says otherwise.
    """
    if power is model.PowerState.SHUTOFF and reason is None:
        reason = model.ShutoffReason.SHUTDOWN
    live_definition = (config if live == "same" else live) if power.active else None
    return model.ObservedDomain(
        name=config.name, uuid=config.uuid or UUID, owned=True, definition=config, live=live_definition,  # type: ignore[arg-type]
        power=power, shutoff_reason=reason if not power.active else None, autostart=autostart,
    )


def foreign(name: str, *, uuid: str = OTHER_UUID, power: model.PowerState = model.PowerState.RUNNING) -> model.ObservedDomain:
    """Return a domain without kvmops' mark."""
    return model.ObservedDomain(name=name, uuid=uuid, owned=False, definition=None, live=None, power=power,
                                shutoff_reason=None, autostart=False)


def actual(
    *domains: model.ObservedDomain,
    pools: tuple[model.ObservedPool, ...] = (observed_pool(),),
    volumes: tuple[model.ObservedVolume, ...] = (),
    host_info: model.HostInfo | None = None,
) -> model.ActualState:
    """Return an observation of a host with ``domains``, ``pools`` and ``volumes``."""
    return model.ActualState(
        host=host_info or host(),
        domains=MappingProxyType({d.name: d for d in domains}),
        pools=MappingProxyType({p.name: p for p in pools}),
        volumes=MappingProxyType({(v.pool, v.name): v for v in volumes}),
    )


def volumes_of(*specs: model.VMSpec) -> tuple[model.ObservedVolume, ...]:
    """Return the volumes of every disk of ``specs``, at their declared sizes."""
    return tuple(volume(d.pool, d.volume, d.size) for spec in specs for d in spec.disks)


def converged(state: model.DesiredState, *, host_info: model.HostInfo | None = None) -> model.ActualState:
    """Return the host an apply of ``state`` leaves: every VM defined, powered as its strategy says."""
    domains = []
    for index, spec in enumerate(state.vms.values()):
        halted = spec.run_strategy is model.RunStrategy.HALTED
        uuid = spec.uuid or f"00000000-0000-4000-8000-{index:012d}"
        domains.append(domain(
            definition(spec, uuid=uuid),
            power=model.PowerState.SHUTOFF if halted else model.PowerState.RUNNING,
            autostart=spec.autostart,
        ))
    pools = tuple(observed_pool(p.name, p.path, autostart=p.autostart) for p in state.pools.values())
    if not pools:
        pools = (observed_pool(),)
    return actual(*domains, pools=pools, volumes=volumes_of(*state.vms.values()), host_info=host_info)

"""The domain definition a VM's plan writes, and the identity (UUID, MACs) a new domain gets.

:class:`VMDefinition` is a part of :class:`~reconciler.core.planner.vms.VMPlanBuilder`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid as uuids
from collections.abc import Container

from reconciler.core import domxml, fields, model, password


class VMDefinition:
    """Writes the definition of a VM's domain: what the manifest says, with what libvirt chose kept."""

    def _first_start_pending(self) -> bool:
        """Return whether the VM still owes the one start at creation of ``Manual`` and ``RerunOnFailure``.

        Recorded in the mark from the first definition until the definition written right
        after that start: a crash in between leaves a VM that the next pass still starts,
        since its shut-off reason cannot tell "never started" from "stopped on purpose".
        """
        if self.spec.run_strategy not in (model.RunStrategy.MANUAL, model.RunStrategy.RERUN_ON_FAILURE):
            return False
        if self.domain is None:
            return True
        owner = self.domain.definition.owner if self.domain.definition is not None else None
        return owner is not None and owner.start_pending and not self.active

    def _install_always(self) -> bool:
        """Return whether the install media stays in the definition after the first boot (``firstBootOnly: false``)."""
        return self.spec.install is not None and not self.spec.install.first_boot_only

    def _install_now(self) -> bool:
        """Return whether the domain boots its install media (kernel, initrd) next time."""
        install = self.spec.install
        if install is None:
            return False
        if not install.first_boot_only or self.domain is None:
            return True
        owner = self.domain.definition.owner if self.domain.definition is not None else None
        return owner is not None and owner.install_pending and not self.active

    def _definition(self, owned_volumes: tuple[model.OwnedVolume, ...], *, install: bool) -> model.DomainDefinition:
        """Return the definition to write: the declared simple fields as the spec says them, the rest built here.

        Where what libvirt wrote satisfies what the manifest asks (a field left to libvirt,
        or an alias such as the machine ``q35`` of ``pc-q35-7.2``), the observed value is kept.
        """
        spec, domain = self.spec, self.domain
        observed = domain.definition if domain is not None else None
        kernel = initrd = cmdline = None
        if install and spec.install is not None:
            kernel = self._file_path(spec.install.kernel, "spec.install.kernel")
            initrd = self._file_path(spec.install.initrd, "spec.install.initrd") if spec.install.initrd is not None else None
            cmdline = spec.install.cmdline or None
        used = {d.target for d in spec.disks} | ({spec.cdrom_target} if spec.cdrom_target else set())
        spare = (f"sd{domxml.device_letters(i)}" for i in range(64) if f"sd{domxml.device_letters(i)}" not in used)
        cdroms = []
        if spec.cdrom is not None or spec.cdrom_empty:
            cdroms.append(self._cdrom_device(spec.cdrom_target or next(spare), observed))
        if spec.cloud_init is not None:
            seed = spec.cloud_init
            cdroms.append(model.DiskDevice(target=next(spare), bus="sata", pool=seed.pool, volume=seed.volume, device="cdrom"))
        uuid = observed.uuid if observed is not None else (spec.uuid or new_uuid(self.scope, spec))
        definition = model.DomainDefinition(
            name=spec.name,
            uuid=uuid,
            virt_type=self.virt_type,
            memory=spec.memory,
            max_memory=spec.max_memory,
            disks=tuple(model.DiskDevice(target=d.target, bus=d.bus, pool=d.pool, volume=d.volume) if d.path is None
                        else self._path_device(d) for d in spec.disks),
            nics=self._nics(observed, uuid),
            graphics=spec.graphics,
            owner=model.Ownership(
                spec.manifest, spec.digest, spec.run_strategy, owned_volumes, scope=self.scope,
                shutdown_timeout=spec.shutdown_timeout,
                revision=self.revision or (observed.owner.revision if observed is not None and observed.owner else ""),
                keep_nvram=spec.keep_nvram,
                graphics_password_digest=self._password_digest(observed, uuid),
                install_pending=install and spec.install is not None and spec.install.first_boot_only,
                bound_name=spec.name, bound_uuid=uuid or "",
                start_pending=self._first_start_pending(),
                fleet=self.fleet, host=self.host, roster=self.roster,
                # owed deletions on the host the VM came from: only the fleet's cleanup drops them
                left_behind=observed.owner.left_behind if observed is not None and observed.owner is not None else (),
                sending=observed.owner.sending if observed is not None and observed.owner is not None else (),
                # where the last move came from stays (the proof of that move while its source may still hold a
                # stale half); an intent to move does not: a domain redefined here is not being moved
                moved_from=observed.owner.moved_from if observed is not None and observed.owner is not None else "",
            ),
            kernel=kernel,
            initrd=initrd,
            cmdline=cmdline,
            cdroms=tuple(cdroms),
            graphics_listen=spec.graphics_listen if spec.graphics != "none" else None,
            graphics_password=spec.graphics_password,
            **{name: getattr(spec, name) for declared in fields.SIMPLE_FIELDS for name in declared.attrs},
        )
        if observed is None:
            return definition
        return dataclasses.replace(definition, **{
            name: getattr(observed, name)
            for declared in fields.SIMPLE_FIELDS if declared.satisfied_by(observed, definition) for name in declared.attrs
        })

    def _cdrom_device(self, target: str, observed: model.DomainDefinition | None) -> model.DiskDevice:
        """Return the CD-ROM drive of the manifest: media of a pool, any existing file, or none.

        kvmops did not create the media, so libvirt must not chown it (it never gives
        read-only media back): ``relabel`` is off for media kvmops attaches.  A drive found
        as it is (an adopted domain's ``path:`` CD-ROM, same file, same target) keeps the
        relabelling it had: adopting writes what is there and changes nothing.
        """
        spec, ref = self.spec, self.spec.cdrom
        bus = spec.cdrom_bus
        if ref is None:
            return model.DiskDevice(target=target, bus=bus, device="cdrom")
        if ref.pool and ref.volume is not None:
            return model.DiskDevice(target=target, bus=bus, pool=ref.pool, volume=ref.volume, device="cdrom", relabel=False)
        if ref.pool:
            path = self._file_path(ref, "spec.cdrom")
            if (found := self.actual.volumes_by_path().get(path)) is not None:
                # A file at the top of a dir pool is one of its volumes, and is read back as one.
                return model.DiskDevice(target=target, bus=bus, pool=found[0], volume=found[1], device="cdrom", relabel=False)
            return model.DiskDevice(target=target, bus=bus, path=path, device="cdrom", relabel=False)
        self._check_host_file(ref.host_file, ref.path or "", "spec.cdrom.path")
        resolved = self.by_path.get(ref.path)
        device = (model.DiskDevice(target=target, bus=bus, pool=resolved[0], volume=resolved[1], device="cdrom", relabel=False)
                  if resolved is not None else
                  model.DiskDevice(target=target, bus=bus, path=ref.path, device="cdrom", relabel=False))
        found = next((d for d in (observed.cdroms if observed is not None else ())
                      if dataclasses.replace(d, relabel=False) == device), None)
        return found if found is not None else device

    def _password_digest(self, observed: model.DomainDefinition | None, uuid: str | None) -> str:
        """Return the graphics password digest for the mark: the observed one while it still matches.

        A new digest is salted per domain (its UUID) and per pass (``password_salt``).
        """
        secret = self.spec.graphics_password
        if secret is None:
            return ""
        old = observed.owner.graphics_password_digest if observed is not None and observed.owner is not None else ""
        if old and not password.is_legacy(old) and password.matches(old, secret):
            return old
        return password.digest(secret, password_salt(self.password_salt, uuid or self.spec.name))

    def _nics(self, observed: model.DomainDefinition | None, uuid: str) -> tuple[model.NicDevice, ...]:
        """Return the NICs to define: observed MACs kept; a new domain's unpinned NICs get MACs now.

        A plan is complete data: a MAC left to libvirt would differ between two
        definitions in one plan, and between the plan and what is applied.
        """
        nics = _resolve_macs(self.spec.nics, observed.nics if observed is not None else ())
        if all(nic.mac for nic in nics):
            return nics
        in_use = self.actual.macs_in_use()  # indexed once per state, not copied per VM
        own = {n.mac for n in nics if n.mac}
        resolved = []
        for index, nic in enumerate(nics):
            if nic.mac is None:
                nic = dataclasses.replace(nic, mac=new_mac(f"{uuid}/{index}", in_use, own))
                own.add(nic.mac)
            resolved.append(nic)
        return tuple(resolved)


def password_salt(entropy: bytes, uuid: str) -> bytes:
    """Return the 16-byte salt of a domain's new password digest: unique per domain, random per pass."""
    return hashlib.sha256(b"kvmops/graphics-password/" + entropy + b"/" + uuid.encode()).digest()[:16]


_UUID_NAMESPACE = uuids.UUID("2b1c0f4e-6e6b-4c1e-9a57-6b766d6f7073")


def new_uuid(scope: str, spec: model.VMSpec) -> str:
    """Return the UUID a new domain gets: derived from its scope, name and manifest content.

    The plan names the domain's identity before it exists (a plan is complete data), and
    the same manifest always plans the same identity.
    """
    return str(uuids.uuid5(_UUID_NAMESPACE, f"{scope}/{spec.name}/{spec.digest}"))


def new_mac(seed: str, *taken: Container[str]) -> str:
    """Return a MAC in QEMU's 52:54:00 range derived from ``seed``, in none of ``taken``."""
    for attempt in range(1000):
        digest = hashlib.sha256(f"{seed}/{attempt}".encode()).digest()
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])
        if not any(mac in macs for macs in taken):
            return mac
    raise ValueError("no free MAC address found")  # 1000 collisions in 2**24: not this universe


def _resolve_macs(wanted: tuple[model.NicSpec, ...], observed: tuple[model.NicDevice, ...]) -> tuple[model.NicDevice, ...]:
    """Return the NICs to define, keeping observed MACs for NICs whose manifest pins none.

    A NIC with a pinned MAC is that MAC.  The others take the MACs no pinned NIC claims,
    matched first on the same network and model, then the same network, then by
    position, so that adding, removing or re-pointing a NIC never moves another
    NIC's address.
    """
    pinned = {nic.mac for nic in wanted if nic.mac}
    spare = [nic for nic in observed if nic.mac and nic.mac not in pinned]
    macs: list[str | None] = [nic.mac for nic in wanted]
    matchers = (
        lambda want, have: (want.kind, want.source, want.model) == (have.kind, have.source, have.model),
        lambda want, have: (want.kind, want.source) == (have.kind, have.source),
        lambda want, have: True,
    )
    for matches in matchers:
        for index, nic in enumerate(wanted):
            if macs[index] is not None:
                continue
            found = next((have for have in spare if matches(nic, have)), None)
            if found is not None:
                macs[index] = found.mac
                spare.remove(found)
    return tuple(
        model.NicDevice(kind=nic.kind, source=nic.source, model=nic.model, mac=mac) for nic, mac in zip(wanted, macs)
    )


def started(definition: model.DomainDefinition) -> model.DomainDefinition:
    """Return ``definition`` as written once the domain has started: its first start is no longer pending."""
    return dataclasses.replace(definition, owner=dataclasses.replace(definition.owner, start_pending=False))

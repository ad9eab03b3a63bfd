"""The change lines of a VM's plan: the diff between the observed and the planned definition, and what a creation sets.

:class:`VMDiff` is a part of :class:`~reconciler.core.planner.vms.VMPlanBuilder`; the
scalar fields come from :data:`reconciler.core.fields.DOMAIN_FIELDS` (a new VM's summary
from :data:`reconciler.core.fields.CREATION_ORDER`), the devices and the mark are diffed here.
"""

from __future__ import annotations

from reconciler.core import fields, model, password
from reconciler.core.plan import FieldChange, Impact
from reconciler.core.planner.words import nic_text, seconds, short_digest, yes_no
from reconciler.core.quantity import format_bytes


class VMDiff:
    """Describes, change by change, what a VM's plan does to its domain."""

    def _restart_or_live(self) -> Impact:
        return Impact.RESTART if self.active else Impact.LIVE

    def _diff_definition(self, old: model.DomainDefinition, new: model.DomainDefinition) -> None:
        restart = self._restart_or_live()
        add = self.changes.append
        for declared in fields.DOMAIN_FIELDS:
            if not declared.differs(old, new):
                continue
            before, after = declared.text(old), declared.text(new)
            if declared.label == "maxMemory":
                add(FieldChange("maxMemory", before, after, restart,
                                note="" if self.spec.max_memory != self.spec.memory or not self.active
                                else "follows memory (maxMemory is not set)"))
            elif declared.label == "memory":
                live = self.active and self.domain.live is not None and new.memory <= self.domain.live.max_memory
                add(FieldChange("memory", before, after, Impact.LIVE if (live or not self.active) else Impact.RESTART,
                                note="balloon" if live else ""))
            else:
                add(FieldChange(declared.label, before, after, restart))
        if not self._cdrom_change_is_the_seed(old, new):
            before = ", ".join(d.source for d in old.cdroms) or None
            after = ", ".join(d.source for d in new.cdroms) or None
            if before != after:
                add(FieldChange("cdrom", before, after, restart))
        if [d.source for d in old.cdroms] == [d.source for d in new.cdroms]:
            placed_before = ", ".join(f"{d.target} ({d.bus})" for d in old.cdroms)
            placed_after = ", ".join(f"{d.target} ({d.bus})" for d in new.cdroms)
            if placed_before != placed_after:
                add(FieldChange("cdrom.target", placed_before, placed_after, restart))
        relabelled = {d.source for d in old.cdroms if d.relabel}
        for cdrom in new.cdroms:
            if not cdrom.relabel and cdrom.source in relabelled:
                add(FieldChange(
                    "cdrom.ownership", "chowned by libvirt at start", "left as it is", restart,
                    note=f"{cdrom.source} is not kvmops': libvirt no longer relabels it (QEMU's user must be able to read it)",
                ))
        self._diff_disks(old.disks, new.disks, restart)
        self._diff_nics(old.nics, new.nics, restart)
        self._diff_owner(old.owner, new.owner)

    def _cdrom_change_is_the_seed(self, old: model.DomainDefinition, new: model.DomainDefinition) -> bool:
        """Return whether the CD-ROMs differ only by the cloud-init seed, which has its own change line."""
        seed = self.spec.cloud_init
        if seed is None:
            return False
        def without_seed(devices):
            return [d for d in devices if (d.pool, d.volume) != (seed.pool, seed.volume)]
        return without_seed(old.cdroms) == without_seed(new.cdroms)

    def _diff_disks(self, old: tuple[model.DiskDevice, ...], new: tuple[model.DiskDevice, ...], restart: Impact) -> None:
        names = {(d.pool, d.volume) if d.path is None else _device_key(self._path_device(d)): d.name for d in self.spec.disks}
        old_by_source = {_device_key(d): d for d in old}
        new_by_source = {_device_key(d): d for d in new}
        old_by_target = {d.target: d for d in old}
        for key, disk in new_by_source.items():
            path = f"disks[{names[key]}]"
            previous = old_by_source.get(key)
            if previous is None:
                displaced = old_by_target.get(disk.target)
                if displaced is not None and _device_key(displaced) not in new_by_source:
                    self.changes.append(FieldChange(
                        f"{path}.volume", displaced.source, disk.source, Impact.REPLACE,
                        note=f"{disk.target} now points at another volume; the old one is detached, not deleted",
                    ))
                else:
                    self.changes.append(FieldChange(path, None, f"{disk.source} as {disk.target} ({disk.bus})", restart))
                continue
            if previous.bus != disk.bus:
                self.changes.append(FieldChange(f"{path}.bus", previous.bus, disk.bus, restart))
            if previous.target != disk.target:
                self.changes.append(FieldChange(f"{path}.target", previous.target, disk.target, restart))
        for key, disk in old_by_source.items():
            if key in new_by_source:
                continue
            replaced = any(d.target == disk.target for d in new) and any(
                c.impact is Impact.REPLACE and c.old == disk.source for c in self.changes
            )
            if not replaced:
                self.changes.append(FieldChange(f"disks[{disk.target}]", disk.source, None, restart, note="detached"))

    def _diff_nics(self, old: tuple[model.NicDevice, ...], new: tuple[model.NicDevice, ...], restart: Impact) -> None:
        old_by_mac = {n.mac: n for n in old}
        matched = set()
        for index, nic in enumerate(new):
            previous = old_by_mac.get(nic.mac) if nic.mac else None
            path = f"networks[{index}]"
            if previous is None:
                self.changes.append(FieldChange(path, None, nic_text(nic), restart))
                continue
            matched.add(nic.mac)
            if (previous.kind, previous.source) != (nic.kind, nic.source):
                self.changes.append(FieldChange(f"{path}.{nic.kind}", f"{previous.kind} {previous.source}", f"{nic.kind} {nic.source}", restart))
            if previous.model != nic.model:
                self.changes.append(FieldChange(f"{path}.model", previous.model, nic.model, restart))
        for nic in old:
            if nic.mac not in matched:
                self.changes.append(FieldChange(f"networks[{nic.mac}]", nic_text(nic), None, restart, note="removed"))

    def _diff_owner(self, old: model.Ownership | None, new: model.Ownership) -> None:
        if old is None:
            self.changes.append(FieldChange("metadata", None, "kvmops ownership", Impact.LIVE))
            return
        if old.bound_uuid != new.bound_uuid:
            self.changes.append(FieldChange(
                "metadata.boundTo", "(none: written by an older kvmops)", new.written_for(), Impact.LIVE,
                note="the mark now names its domain, so a copy of it on a clone proves nothing",
            ))
        if old.manifest != new.manifest:
            self.changes.append(FieldChange("manifest", old.manifest, new.manifest, Impact.LIVE))
        if (old.fleet, old.host) != (new.fleet, new.host):
            self.changes.append(FieldChange(
                "metadata.host", f"{old.host} (fleet {old.fleet})" if old.fleet else "(no fleet)",
                f"{new.host} (fleet {new.fleet})" if new.fleet else "(no fleet)", Impact.LIVE,
                note="the mark records the fleet and Host that placed it: a copy found on another host is split brain",
            ))
        if old.run_strategy != new.run_strategy:
            self.changes.append(FieldChange("runStrategy", old.run_strategy, new.run_strategy, Impact.LIVE))
        if old.graphics_password_digest != new.graphics_password_digest:
            secret = self.spec.graphics_password
            if password.is_legacy(old.graphics_password_digest) and secret is not None and password.matches(
                old.graphics_password_digest, secret
            ):
                self.changes.append(FieldChange(
                    "graphics.password", "(set, unsalted digest)", "(set)", Impact.LIVE,
                    note="same password; its digest in the mark becomes a salted scrypt digest",
                ))
            else:
                self.changes.append(FieldChange(
                    "graphics.password", "(set)" if old.graphics_password_digest else "(none)",
                    "(set)" if new.graphics_password_digest else "(none)", self._restart_or_live(),
                    note="the password itself is never shown",
                ))
        if old.start_pending and not new.start_pending:
            self.changes.append(FieldChange("firstStart", "pending", "done", Impact.LIVE,
                                            note="the VM has started since an interrupted apply recorded it"))
        if old.keep_nvram != new.keep_nvram:
            self.changes.append(FieldChange("keepNvram", yes_no(old.keep_nvram), yes_no(new.keep_nvram), Impact.LIVE))
        if old.shutdown_timeout != new.shutdown_timeout:
            self.changes.append(FieldChange(
                "shutdownTimeout", seconds(old.shutdown_timeout), seconds(new.shutdown_timeout), Impact.LIVE
            ))
        names = {(d.pool, d.volume): d.name for d in self.spec.disks}
        for volume in new.volumes:
            before = old.volume(volume.pool, volume.name)
            if before is not None and before.deletion_policy != volume.deletion_policy and (volume.pool, volume.name) in names:
                note = "the volume will be deleted when this disk or VM is removed" if volume.deletion_policy is model.DeletionPolicy.DELETE else ""
                self.changes.append(FieldChange(
                    f"disks[{names[(volume.pool, volume.name)]}].deletionPolicy", before.deletion_policy, volume.deletion_policy,
                    Impact.LIVE, note=note,
                ))

    def _describe_creation(self, definition: model.DomainDefinition) -> None:
        """Say what a new VM's domain has: each declared field's creation text, the devices one line each."""
        devices = {"disks": self._created_disks, "nics": self._created_nics, "cdroms": self._created_media}
        for declared in fields.CREATION_ORDER:
            if declared.label in devices:
                devices[declared.label](definition)
            elif text := declared.creation_text(definition):
                self.changes.append(FieldChange(declared.label, None, text, Impact.LIVE))
        self.changes.append(FieldChange("autostart", None, yes_no(self.spec.autostart), Impact.LIVE))
        self.changes.append(FieldChange("runStrategy", None, self.spec.run_strategy, Impact.LIVE))

    def _created_disks(self, definition: model.DomainDefinition) -> None:
        for disk in self.spec.disks:
            self.changes.append(FieldChange(
                f"disks[{disk.name}]", None,
                f"{disk.pool}/{disk.volume} {format_bytes(disk.size)} as {disk.target} ({disk.bus}), {disk.deletion_policy}"
                if disk.path is None else f"existing file {disk.path} as {disk.target} ({disk.bus}), attached as-is",
                Impact.LIVE,
            ))

    def _created_nics(self, definition: model.DomainDefinition) -> None:
        for index, nic in enumerate(definition.nics):
            self.changes.append(FieldChange(f"networks[{index}]", None, nic_text(nic), Impact.LIVE))

    def _created_media(self, definition: model.DomainDefinition) -> None:
        spec = self.spec
        media = str(spec.cdrom) if spec.cdrom else ("empty drive" if spec.cdrom_empty else None)
        if media:
            self.changes.append(FieldChange("cdrom", None, media, Impact.LIVE))
        if spec.cloud_init:
            seed = spec.cloud_init
            self.changes.append(FieldChange(
                "cloudInit", None, f"seed {seed.pool}/{seed.volume} ({short_digest(seed.digest)})", Impact.LIVE,
            ))

    def _note_attached_media(self, old: model.DomainDefinition | None, new: model.DomainDefinition) -> None:
        """Say in words that install media and a CD-ROM kvmops did not create are attached as they are."""
        before = {d.source for d in old.cdroms} if old is not None else set()
        for cdrom in new.cdroms:
            if not cdrom.relabel and cdrom.source not in before:
                self.notes.append(
                    f"attaches existing file {cdrom.source} as a CD-ROM, which kvmops did not create: read-only, never "
                    "written, deleted or relabelled (QEMU's user must be able to read it)"
                )
        for path in (new.kernel, new.initrd):
            if path and (old is None or path not in (old.kernel, old.initrd)):
                self.notes.append(f"boots existing file {path}, which kvmops did not create: read as it is, never written")

    def _note_pending_restart(self) -> None:
        domain = self.domain
        if not (self.active and domain.live is not None):
            return
        pending = [f"{name} {old} -> {new}" for name, old, new in restart_pending(domain.live, domain.definition)]
        if pending:
            self.notes.append("restart pending (changed earlier, takes effect at next boot): " + "; ".join(pending))


def _device_key(device: model.DiskDevice) -> tuple[str, str]:
    """Return what identifies a disk: its pool volume, or its file."""
    return (device.pool, device.volume or "") if device.pool is not None else ("", device.path or "")


def restart_pending(live: model.DomainDefinition, config: model.DomainDefinition) -> list[tuple[str, str, str]]:
    """Return (field, running value, configured value) for fields that differ until a reboot.

    The declared fields (:data:`reconciler.core.fields.DOMAIN_FIELDS`) and the device
    collections; memory is left out: the balloon moves it live, and the guest may lag behind.
    """
    def disks(d: model.DomainDefinition) -> list[str]:
        return [f"{x.target}={x.source}" for x in d.disks]

    def nics(d: model.DomainDefinition) -> list[str]:
        return [nic_text(x) for x in d.nics]

    pending = fields.restart_pending(live, config)
    for label, before, after in (
        ("disks", ", ".join(disks(live)) or "none", ", ".join(disks(config)) or "none"),
        ("networks", ", ".join(nics(live)) or "none", ", ".join(nics(config)) or "none"),
        ("cdrom", ", ".join(d.source for d in live.cdroms) or "none", ", ".join(d.source for d in config.cdroms) or "none"),
    ):
        if before != after:
            pending.append((label, before, after))
    return pending

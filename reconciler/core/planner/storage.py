"""The storage half of a VM's plan: its volumes created, grown, rewritten (the seed) or deleted, and their records.

:class:`VMStorage` is a part of :class:`~reconciler.core.planner.vms.VMPlanBuilder`; it
reads and writes the builder's state (``spec``, ``domain``, ``actual``, ``changes``,
``notes``, ``problems``, ``creating``, ``deleting``).
"""

from __future__ import annotations

import dataclasses

from reconciler.core import disposal, model, storagexml
from reconciler.core import plan as plans
from reconciler.core.plan import FieldChange, Impact
from reconciler.core.planner.domain_definition import new_uuid
from reconciler.core.planner.host import host_is_local
from reconciler.core.planner.sharing import kept_for_users, volume_users
from reconciler.core.planner.words import short_digest
from reconciler.core.quantity import MIB, format_bytes, round_up


class VMStorage:
    """Plans a VM's volumes and resolves the files its definition names."""

    def _plan_volumes(self, stopping: bool) -> tuple[list[plans.Step], tuple[model.OwnedVolume, ...], list[plans.Step]]:
        """Return (volume steps before the define, the ownership records, deletions after it)."""
        spec, domain, actual = self.spec, self.domain, self.actual
        owner = domain.definition.owner if domain is not None else None
        live_targets = {d.target for d in domain.live.disks} if (self.active and domain.live) else set()
        live_volumes = {(d.pool, d.volume) for d in domain.live.disks} if (self.active and domain.live) else set()
        steps: list[plans.Step] = []
        records: list[model.OwnedVolume] = []
        attached_volumes: set[tuple[str, str]] = set()
        for disk in spec.disks:
            if disk.path is not None:
                # Attached as-is: nothing to create or grow.  A file that is a pool's volume keeps
                # its record (an adopted domain's says "not created": never deleted).
                resolved = self.by_path.get(disk.path)
                if resolved is not None:
                    attached_volumes.add(resolved)
                    recorded = owner.volume(*resolved) if owner is not None else None
                    records.append(recorded if recorded is not None else
                                   model.OwnedVolume(*resolved, model.DeletionPolicy.RETAIN, created=False))
                if domain is None or not any(self._attaches(disk, d) for d in domain.definition.disks):
                    self.notes.append(f"attaches existing file {disk.path} as-is as disk {disk.name}: kvmops did not "
                                      "create it and never resizes, writes or deletes it")
                continue
            volume = actual.volumes.get((disk.pool, disk.volume))
            recorded = owner.volume(disk.pool, disk.volume) if owner is not None else None
            path = f"disks[{disk.name}]"
            if volume is not None and recorded is not None and recorded.pending:
                if (disk.pool, disk.volume) in live_volumes:
                    # The guest was started on it since (by hand): it holds the guest's data now,
                    # so it is kept as it is, and its record completed.
                    self.notes.append(f"volume {disk.pool}/{disk.volume} was created by an interrupted apply and is "
                                      "in use by the running guest: kept as it is")
                else:
                    steps.append(self._redo_interrupted_creation(path, volume))
                    volume = None
            if volume is None:
                steps.append(self._new_volume(disk))
                self.creating.add((disk.pool, disk.volume))
                attached = domain is not None and any(
                    (d.pool, d.volume) == (disk.pool, disk.volume) for d in domain.definition.disks
                )
                if attached and not (recorded is not None and recorded.pending):  # pending: it never existed
                    self.changes.append(FieldChange(
                        f"{path}.volume", "(missing)", f"{disk.pool}/{disk.volume} {format_bytes(disk.size)}", Impact.REPLACE,
                        note="the volume has vanished from its pool; a new, empty one is created",
                    ))
                created = True
            else:
                created = recorded.created if recorded is not None else False
                claim = disposal.claim_for(actual, disk.pool, disk.volume, scope=self.scope, vm=spec.name)
                if claim is not None and (recorded is None or recorded.created):
                    created = True  # restored from the trash: still the volume kvmops created for this VM
                    self.restored.append(claim)
                elif recorded is None:
                    self.notes.append(
                        f"attaches existing volume {disk.pool}/{disk.volume}, which kvmops did not create: used as-is, "
                        "never resized or deleted"
                    )
                if volume.capacity < disk.size and self._may_grow(disk, volume, created):
                    if self.active and (disk.pool, disk.volume) in live_volumes and disk.target in live_targets:
                        steps.append(plans.ResizeDisk(spec.name, domain.uuid, disk.target, disk.size, disk.pool, disk.volume))
                    else:
                        steps.append(plans.ResizeVolume(disk.pool, disk.volume, disk.size))
                    self.changes.append(FieldChange(
                        f"{path}.size", format_bytes(volume.capacity), format_bytes(disk.size), Impact.LIVE,
                        note="grown in place; grow the guest's partition and filesystem to use it",
                    ))
                elif volume.capacity > disk.size:
                    self.problems.append(spec.origin.problem(f"spec.disks[{spec.disks.index(disk)}].size", (
                        f"disk {disk.name!r} would shrink from {format_bytes(volume.capacity)} to {format_bytes(disk.size)}; "
                        "kvmops never shrinks a volume (it destroys data). Set size to "
                        f"{format_bytes(round_up(volume.capacity, MIB))} or more"
                    )))
            records.append(model.OwnedVolume(disk.pool, disk.volume, disk.deletion_policy, created))

        seed = spec.cloud_init
        if seed is not None:
            recorded = owner.volume(seed.pool, seed.volume) if owner is not None else None
            present = (seed.pool, seed.volume) in actual.volumes
            if present and (recorded is None or recorded.digest != seed.digest or recorded.pending):
                self._may_rewrite_seed(seed, recorded)
            if not present or recorded is None or recorded.digest != seed.digest or recorded.pending:
                uuid = domain.uuid if domain is not None else (spec.uuid or new_uuid(self.scope, spec))
                steps.append(plans.WriteSeed(seed.pool, seed.volume, seed.files, seed.digest, spec.name, uuid))
                self.creating.add((seed.pool, seed.volume))
                if domain is not None and present and recorded is not None:
                    self.changes.append(FieldChange(
                        "cloudInit", short_digest(recorded.digest), short_digest(seed.digest), self._restart_or_live(),
                        note="seed ISO regenerated; cloud-init reads it at the next boot",
                    ))
            records.append(model.OwnedVolume(seed.pool, seed.volume, model.DeletionPolicy.DELETE, True, seed.digest))

        deletions: list[plans.Step] = []
        wanted = {(d.pool, d.volume) for d in spec.disks if d.path is None} | attached_volumes
        if seed is not None:
            wanted.add((seed.pool, seed.volume))
        for record in owner.volumes if owner is not None else ():
            if (record.pool, record.name) in wanted:
                continue
            volume = actual.volumes.get((record.pool, record.name))
            if volume is None:
                self.changes.append(FieldChange(
                    f"volume {record.pool}/{record.name}", "(record)", None, Impact.LIVE,
                    note="the volume no longer exists; its record is dropped from the domain's metadata",
                ))
                continue
            if (record.pool, record.name) in self.claimed:
                self.notes.append(f"volume {record.pool}/{record.name} is detached and kept: another VM in the manifests uses it")
                continue
            if record.created and (shared := kept_for_users(actual, record, spec.name, detached=True)) is not None:
                records.append(record)  # deleted by a later pass once no other domain uses it
                self.notes.append(shared)
                continue
            if record.created and owner is not None and not owner.bound_uuid:
                records.append(record)  # the definition below binds the mark; the next pass may delete
                self.notes.append(f"volume {record.pool}/{record.name} is detached and kept until this VM's kvmops mark "
                                  "names it (written by an older kvmops; bound by this apply)")
                continue
            if not (record.created and record.deletion_policy is model.DeletionPolicy.DELETE):
                self.notes.append(f"volume {record.pool}/{record.name} is detached and kept (deletionPolicy Retain)")
                continue
            if record.digest and not (self.active and not stopping):  # a generated seed: no data of anyone's
                deletions.append(plans.DeleteVolume(record.pool, record.name, spec.name, domain.uuid))
                records.append(record)  # kept until the volume is gone: a crash in between must not orphan it
                self.deleting.add((record.pool, record.name))
                self.changes.append(FieldChange("cloudInit", short_digest(record.digest), None, self._restart_or_live(),
                                                note="generated seed ISO removed"))
                continue
            if record.digest:
                records.append(record)
                continue
            if self.active and not stopping:
                records.append(record)  # still ours to delete, once QEMU no longer has it open
                self.notes.append(
                    f"DATA LOSS pending: volume {record.pool}/{record.name} ({format_bytes(volume.capacity)}) will be "
                    "deleted once the VM is stopped (deletionPolicy Delete)"
                )
                continue
            removal, loss = disposal.removal(
                volume, actual, retention=self.settings.trash_retention, now=self.settings.now, scope=self.scope,
                domain=spec.name, uuid=domain.uuid, reason=f"disk removed from VM {spec.name}",
            )
            deletions.append(removal)
            records.append(record)  # kept until the volume is gone: a crash in between must not orphan it
            self.deleting.add((record.pool, record.name))
            self.changes.append(FieldChange(
                f"volume {record.pool}/{record.name}", format_bytes(volume.capacity), None, Impact.DATA_LOSS,
                note="DATA LOSS: the volume is removed (deletionPolicy Delete)", loss=loss,
            ))
        return steps, tuple(records), deletions

    def _attaches(self, disk: model.DiskSpec, device: model.DiskDevice) -> bool:
        """Return whether observed ``device`` is the file a ``path:`` disk names (as itself or as a pool volume)."""
        if device.pool is None:
            return device.path == disk.path
        return self.by_path.get(disk.path) == (device.pool, device.volume)

    def _path_device(self, disk: model.DiskSpec) -> model.DiskDevice:
        """Return the device of a ``path:`` disk, named as a pool volume when the file is one (as observed disks are)."""
        self._check_host_file(disk.host_file, disk.path or "", f"spec.disks[{self.spec.disks.index(disk)}].path")
        resolved = self.by_path.get(disk.path)
        if resolved is not None:
            return model.DiskDevice(target=disk.target, bus=disk.bus, pool=resolved[0], volume=resolved[1], format=disk.format)
        return model.DiskDevice(target=disk.target, bus=disk.bus, path=disk.path, format=disk.format)

    def _may_rewrite_seed(self, seed: model.CloudInitSpec, recorded: model.OwnedVolume | None) -> None:
        """Add a problem unless the existing seed volume is this VM's own and no other domain uses it."""
        if recorded is None:
            self.problems.append(self.spec.origin.problem("spec.cloudInit", (
                f"volume {seed.pool}/{seed.volume} already exists and kvmops did not create it for this VM; the "
                "cloud-init seed would overwrite it, and kvmops never writes a volume it did not create. Remove it "
                "(virsh vol-delete) if it is a leftover, or give the seed another pool"
            )))
            return
        users = volume_users(self.actual, seed.pool, seed.volume, besides=self.spec.name)
        if users:
            self.problems.append(self.spec.origin.problem("spec.cloudInit", (
                f"the cloud-init seed {seed.pool}/{seed.volume} is also used by domain {', '.join(users)}; kvmops "
                "will not rewrite a volume another domain uses. Detach it there first"
            )))

    def _may_grow(self, disk: model.DiskSpec, volume: model.ObservedVolume, created: bool) -> bool:
        """Return whether ``disk``'s smaller volume may be grown; if not, add the problem saying why."""
        field = f"spec.disks[{self.spec.disks.index(disk)}].size"
        keep = f"set size to {format_bytes(round_up(volume.capacity, MIB))}"
        if not created:
            self.problems.append(self.spec.origin.problem(field, (
                f"volume {disk.pool}/{disk.volume} ({format_bytes(volume.capacity)}) was not created by kvmops, which "
                f"never resizes or writes a volume it did not create; {keep} to use it as it is, grow it yourself "
                f"(virsh vol-resize), or name a new volume"
            )))
            return False
        users = volume_users(self.actual, disk.pool, disk.volume, besides=self.spec.name)
        if users:
            self.problems.append(self.spec.origin.problem(field, (
                f"volume {disk.pool}/{disk.volume} is also used by domain {', '.join(users)}; kvmops never resizes a "
                f"volume another domain uses. Detach it there, or {keep}"
            )))
            return False
        return True

    def _redo_interrupted_creation(self, path: str, volume: model.ObservedVolume) -> plans.Step:
        """Return the step removing a volume an interrupted apply was creating, so it is created again.

        The domain's record of it is still pending: kvmops wrote that record, having checked
        that the name was free, before it created the volume, and clears it only once the
        volume is complete and before the domain may start from it.  So the volume is
        kvmops' own and holds nothing a guest wrote, but whether its creation (a copy of an
        image, a seed upload) finished is unknown: "it exists" is not "it is complete".
        """
        self.changes.append(FieldChange(
            f"{path}.volume", f"{volume.pool}/{volume.name} (incomplete)", f"{volume.pool}/{volume.name}", Impact.LIVE,
            note="an interrupted apply was creating this volume (no guest has used it); it is created again",
        ))
        return plans.DeleteVolume(volume.pool, volume.name)

    def _with_intent(self, definition: model.DomainDefinition) -> model.DomainDefinition:
        """Return ``definition`` with the records of the volumes this plan creates marked pending."""
        owner = definition.owner
        volumes = tuple(
            dataclasses.replace(v, created=True, pending=True) if (v.pool, v.name) in self.creating else v
            for v in owner.volumes
        )
        return dataclasses.replace(definition, owner=dataclasses.replace(owner, volumes=volumes))

    def _absent(self, volumes: set[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        """Return the ``volumes`` that do not exist now: the executor checks they still do not."""
        return tuple(sorted(v for v in volumes if v not in self.actual.volumes))

    @staticmethod
    def _without_records(definition: model.DomainDefinition, gone: set[tuple[str, str]]) -> model.DomainDefinition:
        """Return ``definition`` without the records of the volumes in ``gone``."""
        owner = definition.owner
        volumes = tuple(v for v in owner.volumes if (v.pool, v.name) not in gone)
        return dataclasses.replace(definition, owner=dataclasses.replace(owner, volumes=volumes))

    def _new_volume(self, disk: model.DiskSpec) -> plans.Step:
        """Return the step creating ``disk``'s volume: empty, an overlay on its image, or a copy of it."""
        if disk.image is None:
            return plans.CreateVolume(disk.pool, disk.volume, disk.size, storagexml.render_volume(disk.volume, disk.size))
        image = self.desired.images[disk.image]
        if disk.clone == "copy":
            return plans.CloneVolume(disk.pool, disk.volume, image.pool, image.volume, disk.size,
                                     storagexml.render_volume(disk.volume, disk.size))
        backing = self._volume_path(image.pool, image.volume)
        return plans.CreateVolume(disk.pool, disk.volume, disk.size,
                                  storagexml.render_volume(disk.volume, disk.size, backing=(backing, image.format)))

    def _pool_directory(self, pool: str) -> str | None:
        observed = self.actual.pools.get(pool)
        if observed is not None and observed.path:
            return observed.path
        declared = self.desired.pools.get(pool)
        return declared.path if declared is not None else None

    def _volume_path(self, pool: str, name: str) -> str:
        volume = self.actual.volumes.get((pool, name))
        if volume is not None and volume.path:
            return volume.path
        directory = self._pool_directory(pool)
        if directory is None:
            self.problems.append(self.spec.origin.problem("spec", f"cannot tell where pool {pool!r} keeps {name}"))
            return name
        return f"{directory}/{name}"

    def _check_host_file(self, kind: str, path: str, field: str) -> None:
        """Add a problem at ``field`` when the shell found ``path`` missing, or not something libvirt attaches.

        ``kind`` is what the shell saw on a local host (``model.HOST_FILE_KINDS``); "" when
        it could not look (a remote host, ``kvmops diff``, the test driver): nothing is said.
        """
        if kind in ("", "file", "block device"):
            return
        why = ("does not exist on the host; create it or fix the path" if kind == "missing"
               else f"is a {kind} on the host, not a file or block device; fix the path")
        problem = self.spec.origin.problem(field, f"{path} {why}")
        if problem not in self.problems:  # a definition is built more than once per plan
            self.problems.append(problem)

    def _file_path(self, ref: model.FileRef, field: str = "spec") -> str:
        if not ref.pool:
            self._check_host_file(ref.host_file, ref.path or "", f"{field}.path")
            return ref.path or ""  # any existing file, by its absolute path
        if ref.volume is not None:
            return self._volume_path(ref.pool, ref.volume)
        self._check_host_file(ref.host_file, f"{ref.path} in pool {ref.pool}", f"{field}.path")
        directory = self._pool_directory(ref.pool)
        if directory is None:
            self.problems.append(self.spec.origin.problem("spec", f"cannot tell the directory of pool {ref.pool!r}"))
            return ref.path or ""
        if (ref.host_path and host_is_local(self.actual.host.uri)
                and not ref.host_path.startswith(ref.host_directory.rstrip("/") + "/")):
            self.problems.append(self.spec.origin.problem(f"{field}.path", (
                f"{ref.path} in pool {ref.pool} leads to {ref.host_path}, outside the pool's directory "
                f"({ref.host_directory}); libvirt would hand that host file to the guest. Put the file itself in the "
                "pool directory, not a symlink to elsewhere"
            )))
        return f"{directory}/{ref.path}"

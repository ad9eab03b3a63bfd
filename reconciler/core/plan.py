"""A plan: what kvmops will do, why, and at what cost, as plain data.

The planner (:mod:`reconciler.core.planner`) makes a :class:`Plan`; the renderers print it;
the executor (:mod:`reconciler.runtime.execute`) carries out its :class:`Step` values one by
one and decides nothing: every choice (which volume, which flag, live or offline, stop or
not) is already written in the steps.  As Terraform puts it for its own plans, reasons
and impacts are for people and "must not be used to influence apply-time behavior".

Each resource gets a :class:`ResourcePlan`: its actions (``+`` create, ``~`` update,
``-`` delete, ``>`` start, ``■`` stop), its field changes with their :class:`Impact`, and
the steps that make them so.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from reconciler.core import model, quantity, redaction


class Action(model.StrEnum):
    """What happens to a resource as a whole."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    START = "start"
    STOP = "stop"
    MIGRATE = "migrate"

    @property
    def glyph(self) -> str:
        """Return the one-character mark used in text plans."""
        return {"create": "+", "update": "~", "delete": "-", "start": ">", "stop": "■", "migrate": "→"}[self.value]


class Impact(model.StrEnum):
    """What a field change costs the running guest."""

    LIVE = "live"  # applies now, the guest keeps running
    RESTART = "restart"  # written to the config now, takes effect at the next boot
    REPLACE = "replace"  # the thing is swapped for a new one (a new, empty disk)
    DATA_LOSS = "data-loss"  # data is destroyed: a volume is deleted


@dataclass(frozen=True)
class FieldChange:
    """One field going from ``old`` to ``new`` (None: absent), printed as ``old -> new``."""

    path: str
    old: str | None
    new: str | None
    impact: Impact
    note: str = ""
    loss: str = ""  # for a data-loss change, how the data goes: "moved to the trash, final after ...", "deleted at once: ..."


# --- steps: one libvirt operation each --------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One operation for the executor; subclasses carry everything it needs.

    Fields named in ``secret_fields`` (cloud-init user-data) never leave the process:
    :meth:`to_dict` replaces them with their digest.
    """

    kind: ClassVar[str] = "step"
    secret_fields: ClassVar[tuple[str, ...]] = ()

    def describe(self) -> str:
        """Return the step in a few words, for progress output."""
        return self.kind.replace("_", " ")

    def to_dict(self) -> dict:
        """Return the step as JSON-ready data, ``kind`` first, secrets redacted."""
        data = {"kind": self.kind, **dataclasses.asdict(self)}
        for name in self.secret_fields:
            data[name] = "(secret: see digest)"
        if isinstance(data.get("url"), str):
            data["url"] = redaction.redact_url(data["url"])
        if "xml" in data and isinstance(data["xml"], str) and "passwd=" in data["xml"]:
            data["xml"] = re.sub(r"passwd=(['\"]).*?\1", "passwd='***'", data["xml"])
        return data


@dataclass(frozen=True)
class DefinePool(Step):
    kind: ClassVar[str] = "define_pool"
    name: str
    xml: str

    def describe(self) -> str:
        return f"define pool {self.name}"


@dataclass(frozen=True)
class BuildPool(Step):
    kind: ClassVar[str] = "build_pool"
    name: str

    def describe(self) -> str:
        return f"build pool {self.name} (create its directory)"


@dataclass(frozen=True)
class StartPool(Step):
    kind: ClassVar[str] = "start_pool"
    name: str

    def describe(self) -> str:
        return f"start pool {self.name}"


@dataclass(frozen=True)
class SetPoolAutostart(Step):
    kind: ClassVar[str] = "set_pool_autostart"
    name: str
    autostart: bool

    def describe(self) -> str:
        return f"{'enable' if self.autostart else 'disable'} autostart of pool {self.name}"


@dataclass(frozen=True)
class CreateVolume(Step):
    kind: ClassVar[str] = "create_volume"
    pool: str
    name: str
    capacity: int  # bytes
    xml: str

    def describe(self) -> str:
        return f"create volume {self.pool}/{self.name} ({quantity.format_bytes(self.capacity)})"


@dataclass(frozen=True)
class ResizeVolume(Step):
    """Grow a volume no running domain has open (``virStorageVolResize``)."""

    kind: ClassVar[str] = "resize_volume"
    pool: str
    name: str
    capacity: int

    def describe(self) -> str:
        return f"grow volume {self.pool}/{self.name} to {quantity.format_bytes(self.capacity)}"


@dataclass(frozen=True)
class ResizeDisk(Step):
    """Grow a disk of a running domain through QEMU (``virDomainBlockResize``)."""

    kind: ClassVar[str] = "resize_disk"
    domain: str
    uuid: str
    target: str
    capacity: int
    pool: str = ""  # the volume behind the disk, checked for other users at the last moment
    volume: str = ""

    def describe(self) -> str:
        return f"grow disk {self.target} of {self.domain} to {quantity.format_bytes(self.capacity)} (live)"


@dataclass(frozen=True)
class DeleteVolume(Step):
    """Delete a volume; with ``domain``, only while that domain (of ``uuid``) is still kvmops' and off.

    The guard matters since a pruned domain is undefined after its volumes are deleted:
    its mark is their proof of ownership, so the domain's own checks come too late.
    ``after`` names the other domains sharing the volume (pruned by the same plan) that must
    be gone first.
    """

    kind: ClassVar[str] = "delete_volume"
    pool: str
    name: str
    domain: str = ""
    uuid: str = ""
    after: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"delete volume {self.pool}/{self.name} (DATA LOSS)"


@dataclass(frozen=True)
class MoveVolumeToTrash(Step):
    """Move a volume's file into its pool's trash (``<pool_path>/.kvmops-trash/<entry>/``) instead of deleting it.

    The same guards as :class:`DeleteVolume` (``domain`` still kvmops' and off, ``after``
    gone, no other user); the record written next to the file is made of the other
    fields, all chosen by the planner.  libvirt then forgets the volume (pool refresh).
    """

    kind: ClassVar[str] = "move_volume_to_trash"
    pool: str
    name: str
    path: str  # the volume's file, at the top of the pool's directory
    pool_path: str
    entry: str  # the entry's directory name in the trash
    deleted_at: int  # epoch seconds: the plan's time; the entry is final trashRetention after it
    scope: str
    capacity: int
    reason: str
    domain: str = ""
    uuid: str = ""
    after: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"move volume {self.pool}/{self.name} to the trash ({self.entry})"


@dataclass(frozen=True)
class PurgeTrashEntry(Step):
    """Remove an entry of a pool's trash: with ``holds_volume``, the deleted volume in it, for good.

    ``holds_volume`` is what the plan saw; the executor does nothing if it no longer
    holds (a volume restored since, or one moved in since).
    """

    kind: ClassVar[str] = "purge_trash_entry"
    pool: str
    pool_path: str
    directory: str  # the entry's directory name (``.purging`` once its purge began)
    holds_volume: bool

    def describe(self) -> str:
        if self.holds_volume:
            return f"purge trash entry {self.pool}/{self.directory} (DATA LOSS, final)"
        return f"remove trash record {self.pool}/{self.directory}"


@dataclass(frozen=True)
class DefineDomain(Step):
    """Write a domain's persistent config: a new one (``create``: it must not exist yet) or ours with ``uuid``.

    ``creates`` names the volumes (pool, name) whose creation this definition announces
    (their records are pending): none of them may exist yet when it is written.
    """

    kind: ClassVar[str] = "define_domain"
    name: str
    uuid: str
    xml: str
    create: bool = False
    creates: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        announced = f", recording {', '.join(f'{p}/{v}' for p, v in self.creates)} as about to be created" if self.creates else ""
        return f"{'define' if self.create else 'redefine'} domain {self.name}{announced}"


@dataclass(frozen=True)
class SetAutostart(Step):
    kind: ClassVar[str] = "set_autostart"
    name: str
    autostart: bool

    def describe(self) -> str:
        return f"{'enable' if self.autostart else 'disable'} autostart of {self.name}"


@dataclass(frozen=True)
class SetMemoryLive(Step):
    """Move a running guest's memory balloon to ``memory`` KiB."""

    kind: ClassVar[str] = "set_memory_live"
    name: str
    memory: int

    def describe(self) -> str:
        return f"set live memory of {self.name} to {quantity.format_bytes(self.memory * 1024)}"


@dataclass(frozen=True)
class StartDomain(Step):
    kind: ClassVar[str] = "start_domain"
    name: str

    def describe(self) -> str:
        return f"start {self.name}"


@dataclass(frozen=True)
class StopDomain(Step):
    """ACPI shutdown, wait up to ``timeout`` seconds, then destroy."""

    kind: ClassVar[str] = "stop_domain"
    name: str
    timeout: float

    def describe(self) -> str:
        return f"stop {self.name} (ACPI shutdown, destroy after {self.timeout:g}s)"


@dataclass(frozen=True)
class UndefineDomain(Step):
    kind: ClassVar[str] = "undefine_domain"
    name: str
    uuid: str
    keep_nvram: bool = False

    def describe(self) -> str:
        return f"undefine domain {self.name}" + (" (keeping its NVRAM)" if self.keep_nvram else "")


class MigrationMode(model.StrEnum):
    """How a VM moves between hosts, from cheapest to most disruptive."""

    LIVE = "live"  # peer-to-peer live migration, disks on shared storage: nothing copied
    LIVE_COPY_STORAGE = "live-copy-storage"  # live, disks copied to the destination (VIR_MIGRATE_NON_SHARED_DISK)
    OFFLINE = "offline"  # the VM is stopped, moved and started again: impact ``restart``


@dataclass(frozen=True)
class MigrateDomain(Step):
    """Move domain ``name`` (``uuid``) from host ``source`` to host ``destination``.

    ``destination_uri`` is the URI the *source* libvirtd dials (peer-to-peer), which may
    differ from the URI kvmops itself uses for the destination. ``xml`` is the definition
    to persist on the destination (the source's, with the mark naming the new host).

    Every storage the domain uses is named by exactly one of:

    * ``copies``: targets of the writable disks libvirt copies during a live move
      (``VIR_MIGRATE_NON_SHARED_DISK`` restricted to them); empty with
      ``live-copy-storage`` means every writable disk;
    * ``sends``: volumes kvmops streams to the destination's pool of the same name before
      the move: read-only media it created (the cloud-init seed), which libvirt never
      copies, and, offline, every local volume;
    * ``shared_files``: files outside any pool the guest writes; the destination must see
      the very same file (proven with a probe), since kvmops never writes a file it did
      not create;
    * ``media``: read-only media kvmops did not create, as ``(pool, volume)`` or
      ``("", path)``: the destination must already have them;
    * anything else is in a pool both hosts share (proven before the move).

    ``nvram``: the domain boots UEFI; kvmops copies its NVRAM file (EFI variables: boot
    entries), which libvirt 9 carries neither offline nor as a file, to the same path on
    the destination before the move.

    ``replaces``: copies (``(pool, volume)``, or :data:`~reconciler.core.model.NVRAM`) a
    move cut short left on the destination, as the source's mark records
    (:class:`~reconciler.core.model.Sending`): the executor deletes them there and copies
    again, once it has checked that record and that no domain there uses them.

    Before any copy, the executor records each one in the source's mark (``sending``),
    so a kill in the middle leaves a partial copy the next pass can prove is kvmops'; in
    the same write, before libvirt is asked to migrate (every mode), the move itself
    (``moving_to``, the destination). ``xml`` records the source (``moved_from``): the two
    prove a move libvirt finished on the destination whose end the source's libvirtd lost
    (:func:`reconciler.core.fleet.is_finished_move`), even one that copied nothing.

    ``held_paused`` (a running guest moved live): libvirt leaves the guest paused on the
    destination (``VIR_MIGRATE_PAUSED``) and the executor resumes it once libvirt's job has
    returned, the source's copy gone, then drops the record ``xml`` keeps of it
    (:attr:`~reconciler.core.model.Ownership.resume_after_move`). So libvirt can never run
    the guest on both hosts (see :func:`reconciler.core.fleet.held_at_hand_over`). Where
    libvirt refuses because it does not know the storage of a disk it does not copy to be
    shared, the executor moves the guest unpaused, without that record: on such storage the
    source gives the disk files back to root before a paused guest could open them.

    ``stop_first``: the guest runs but cannot move live, so it is shut down first
    (gracefully, forcibly after ``shutdown_timeout`` seconds) and moved offline;
    ``start_after``: it is started on the destination once there.
    """

    kind: ClassVar[str] = "migrate_domain"
    name: str
    uuid: str
    source: str
    destination: str
    destination_uri: str
    mode: MigrationMode
    xml: str = field(default="", repr=False)
    copies: tuple[str, ...] = ()
    sends: tuple[tuple[str, str], ...] = ()
    shared_files: tuple[str, ...] = ()
    media: tuple[tuple[str, str], ...] = ()
    stop_first: bool = False
    start_after: bool = False
    shutdown_timeout: float = 0.0
    nvram: bool = False
    replaces: tuple[tuple[str, str], ...] = ()
    held_paused: bool = False

    def describe(self) -> str:
        how = "stopped, moved offline, started again" if self.stop_first else self.mode.value
        return f"migrate {self.name} from {self.source} to {self.destination} ({how})"


@dataclass(frozen=True)
class DeleteMovedVolume(Step):
    """Delete, on the host a domain left, volume ``pool/name`` it used there; runs after its :class:`MigrateDomain`.

    ``(pool, name)`` :data:`~reconciler.core.model.NVRAM` is the domain's UEFI NVRAM file.
    Deleted at once, never moved to a trash: the VM's data lives on at the destination
    (this is no DATA LOSS; see docs/design.md).

    Only once the domain (``uuid``) is gone from this host and defined, with kvmops' mark,
    on ``destination`` (running there, when ``running``); only if ``destination`` has its own copy of the volume and does
    not see this very file (a shared pool: the guest's disk now, never deleted).

    ``abandoned``: the volume is instead a partial copy a move cut short began here (the
    mark on ``destination``, where the domain stayed or went since, records it as
    :class:`~reconciler.core.model.Sending`), and no move comes here to replace it.
    """

    kind: ClassVar[str] = "delete_moved_volume"
    pool: str
    name: str
    domain: str
    uuid: str
    destination: str
    running: bool = False  # and only while the domain runs there (it moved live, or was restarted there)
    source: str = ""  # the host this runs on, the one the destination's mark names as holding the copy
    abandoned: bool = False

    def describe(self) -> str:
        if self.abandoned:
            what = "the UEFI NVRAM" if (self.pool, self.name) == model.NVRAM else f"volume {self.pool}/{self.name}"
            return (f"delete the partial copy of {what} an interrupted move of {self.domain} began here "
                    f"({self.domain} is on {self.destination})")
        if (self.pool, self.name) == model.NVRAM:
            return f"delete the UEFI NVRAM left behind by {self.domain} (now on {self.destination})"
        return f"delete volume {self.pool}/{self.name} left behind by {self.domain} (now on {self.destination})"


@dataclass(frozen=True)
class ForgetMovedVolume(Step):
    """Drop, from the mark of domain ``domain`` (``uuid``) on host ``destination``, the record that volume
    ``pool/name`` was left on ``source``: it is gone there, or it is kept (``deletionPolicy: Retain``, a shared pool).

    ``abandoned``: the record is instead that a move began copying it to ``source``
    (:class:`~reconciler.core.model.Sending`); that partial copy is gone.
    """

    kind: ClassVar[str] = "forget_moved_volume"
    pool: str
    name: str
    domain: str
    uuid: str
    source: str
    destination: str
    abandoned: bool = False

    def describe(self) -> str:
        if self.abandoned:
            return (f"forget the partial copy of {self.pool}/{self.name} on {self.source} "
                    f"(its mark on {self.destination})")
        return f"forget {self.domain}'s copy of {self.pool}/{self.name} on {self.source} (its mark on {self.destination})"


@dataclass(frozen=True)
class DiscardMovedSource(Step):
    """Remove from this host, ``source``, the half of domain ``name`` (``uuid``) that a move to ``destination`` left
    here when libvirt finished the move there but this host's libvirtd lost the end of the job (see
    :func:`reconciler.core.fleet.finished_move`): destroyed if it is still active (paused), then undefined. Its
    volumes and UEFI NVRAM stay for the :class:`DeleteMovedVolume` steps that follow.
    """

    kind: ClassVar[str] = "discard_moved_source"
    name: str
    uuid: str
    source: str
    destination: str

    def describe(self) -> str:
        return f"discard the half of {self.name} its move to {self.destination} left on {self.source}"


@dataclass(frozen=True)
class DiscardCancelledArrival(Step):
    """Remove from this host, ``destination``, the copy of domain ``name`` (``uuid``) that a live move from ``source``
    left here when this host's libvirtd died at the end of the job, holding the guest paused for kvmops to resume:
    the source kept the guest (see :func:`reconciler.core.fleet.is_cancelled_move`, checked again at the last
    moment). Destroyed if it is still active (paused), then undefined; its volumes and UEFI NVRAM stay, as copies the
    source's mark records (the next move replaces them, or the fleet's cleanup of abandoned copies deletes them).
    """

    kind: ClassVar[str] = "discard_cancelled_arrival"
    name: str
    uuid: str
    source: str
    destination: str

    def describe(self) -> str:
        return f"discard the copy of {self.name} its unfinished move from {self.source} left on {self.destination}"


@dataclass(frozen=True)
class ResumeMovedDomain(Step):
    """End the hand-over of a live move of domain ``name`` (``uuid``) from host ``source`` to host ``host``: resume the
    guest libvirt left paused there (``VIR_MIGRATE_PAUSED``), then drop the record of the hand-over from its mark.

    Only while its mark still records the hand-over, and only once ``source`` holds no domain
    of that UUID, or only the stale half of that very move, stopped for good by libvirt at
    the switch-over (:func:`reconciler.core.fleet.is_finished_move`; the
    :class:`DiscardMovedSource` that follows removes it): both checked at the last moment,
    since any other copy there may run. A guest that no longer is paused only loses the
    record. It runs in the plan of ``host``, or, before a :class:`DiscardMovedSource`, in
    the plan of ``source`` (``host`` is then its peer).
    """

    kind: ClassVar[str] = "resume_moved_domain"
    name: str
    uuid: str
    host: str
    source: str

    def describe(self) -> str:
        return f"resume {self.name} on {self.host}, held paused at the hand-over of its move from {self.source}"


@dataclass(frozen=True)
class RecordRoster(Step):
    """Write ``hosts``, the fleet's Host names, beside the mark of domain ``domain`` (``uuid``), changing nothing else.

    The roster is a metadata element of its own, written by libvirt's metadata call on the
    persistent definition (no redefinition, no restart): the mark itself is never rewritten,
    so a step writing it at the same moment (another VM's work, on another worker) loses
    nothing.
    """

    kind: ClassVar[str] = "record_roster"
    domain: str
    uuid: str
    hosts: tuple[str, ...]

    def describe(self) -> str:
        return f"record the fleet's Hosts ({', '.join(self.hosts)}) in {self.domain}'s mark"


@dataclass(frozen=True)
class CloneVolume(Step):
    """Create volume ``name`` as a full copy of ``source`` (a base image), then grow it to ``capacity``."""

    kind: ClassVar[str] = "clone_volume"
    pool: str
    name: str
    source_pool: str
    source: str
    capacity: int
    xml: str

    def describe(self) -> str:
        return f"copy image {self.source_pool}/{self.source} to volume {self.pool}/{self.name}"


@dataclass(frozen=True)
class ImportImage(Step):
    """Stream an image into a pool, verify its sha256, and only then make it volume ``name``."""

    kind: ClassVar[str] = "import_image"
    pool: str
    name: str
    url: str | None
    path: str | None  # relative to the manifest tree ``tree``, which the file must not leave
    sha256: str
    format: str
    tree: str = ""

    def describe(self) -> str:
        source = redaction.redact_url(self.url) if self.url else self.path
        return f"import image {source} into {self.pool}/{self.name} (sha256 {self.sha256[:12]}…)"


@dataclass(frozen=True)
class WriteSeed(Step):
    """(Re)write the cloud-init NoCloud seed ISO ``pool/name`` from ``files``, for domain ``domain``.

    A volume already at that name is replaced only while ``domain`` (with ``uuid``) records
    it as a volume kvmops created for it, and no other domain uses it.
    """

    kind: ClassVar[str] = "write_seed"
    secret_fields: ClassVar[tuple[str, ...]] = ("files",)
    pool: str
    name: str
    files: tuple[tuple[str, bytes], ...] = dataclasses.field(repr=False)
    digest: str = ""
    domain: str = ""
    uuid: str = ""

    def describe(self) -> str:
        return f"write cloud-init seed {self.pool}/{self.name} ({self.digest[:19]})"


@dataclass(frozen=True)
class DefineNetwork(Step):
    """Define (or redefine) a network; ``create``: it must not exist yet."""

    kind: ClassVar[str] = "define_network"
    name: str
    xml: str
    create: bool = False

    def describe(self) -> str:
        return f"{'define' if self.create else 'redefine'} network {self.name}"


@dataclass(frozen=True)
class StartNetwork(Step):
    kind: ClassVar[str] = "start_network"
    name: str

    def describe(self) -> str:
        return f"start network {self.name}"


@dataclass(frozen=True)
class SetNetworkAutostart(Step):
    kind: ClassVar[str] = "set_network_autostart"
    name: str
    autostart: bool

    def describe(self) -> str:
        return f"{'enable' if self.autostart else 'disable'} autostart of network {self.name}"


@dataclass(frozen=True)
class UpdateDhcpHost(Step):
    """Add or remove a static DHCP lease, live and in the persistent config."""

    kind: ClassVar[str] = "update_dhcp_host"
    network: str
    add: bool
    xml: str

    def describe(self) -> str:
        return f"{'add' if self.add else 'remove'} DHCP host {self.xml} on {self.network}"


@dataclass(frozen=True)
class RemoveNetwork(Step):
    """Stop and undefine a network kvmops owns."""

    kind: ClassVar[str] = "remove_network"
    name: str

    def describe(self) -> str:
        return f"stop and undefine network {self.name}"


# --- plans ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourcePlan:
    """What happens to one VM or pool; no actions means it is converged."""

    kind: str  # "VirtualMachine" | "StoragePool" | "Network" | "Image"
    name: str
    actions: tuple[Action, ...] = ()
    changes: tuple[FieldChange, ...] = ()
    steps: tuple[Step, ...] = ()
    manifest: str | None = None
    notes: tuple[str, ...] = ()
    problems: tuple[model.Problem, ...] = ()
    requires: tuple[str, ...] = ()  # keys of resources (pools, networks, images, VMs) whose steps must succeed first

    @property
    def key(self) -> str:
        """Return the resource's unique key, e.g. ``VirtualMachine/web``."""
        return f"{self.kind}/{self.name}"

    @property
    def changed(self) -> bool:
        """Return whether anything will be done to this resource."""
        return bool(self.steps)


@dataclass(frozen=True)
class Plan:
    """Everything one pass would do, and everything that stops it doing more.

    ``problems`` holds every error: manifests that did not load or validate, and
    resources that cannot be planned (a foreign domain named by a manifest, an unknown
    pool, a disk shrink).  Resources without a problem are planned regardless.
    """

    uri: str
    resources: tuple[ResourcePlan, ...]
    foreign: tuple[str, ...] = ()
    problems: tuple[model.Problem, ...] = ()
    prune_suspended: str | None = None  # why owned domains without a manifest are kept
    kept: tuple[str, ...] = ()  # owned domains kept because pruning is suspended
    snapshot: str | None = None  # set when planned against a saved snapshot, not the live host
    elsewhere: tuple[str, ...] = ()  # domains owned by other kvmops scopes: never touched here
    warnings: tuple[str, ...] = ()  # about the host, not a resource: copied or unbound kvmops marks
    declared: tuple[tuple[str, int], ...] = ()  # (kind, how many the manifests declare), for the header

    @property
    def changes(self) -> tuple[ResourcePlan, ...]:
        """Return the resources with something to do."""
        return tuple(r for r in self.resources if r.changed)

    @property
    def has_changes(self) -> bool:
        """Return whether applying this plan would change anything."""
        return any(r.changed for r in self.resources)

    def action_counts(self) -> Counter:
        """Return how many resources each action touches."""
        return Counter(action for r in self.resources for action in r.actions)

    def impact_counts(self) -> Counter:
        """Return how many field changes carry each impact."""
        return Counter(change.impact for r in self.resources for change in r.changes)

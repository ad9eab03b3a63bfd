"""The values kvmops reasons about: what the manifests want, and what libvirt has.

Two families of frozen values meet in the planner:

* desired: :class:`VMSpec` and :class:`PoolSpec`, built from validated manifests by
  :mod:`reconciler.core.desired`, collected in a :class:`DesiredState`;
* actual: :class:`ObservedDomain`, :class:`ObservedPool` and :class:`ObservedVolume`, built
  by :mod:`reconciler.runtime.observe` from libvirt, collected in an :class:`ActualState`.

Both sides meet in :class:`DomainDefinition`, the essence of a domain's XML that kvmops
manages: the planner derives one from a spec, the parser derives one from libvirt's XML,
and equal essences mean "no drift" whatever defaults libvirt filled in around them.

Nothing here performs I/O; every class is a frozen dataclass, safe to share between threads.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from reconciler.core.trash import TrashEntry


class StrEnum(str, enum.Enum):
    """An enum whose members are strings, printed and formatted as their value.

    Python 3.11's ``enum.StrEnum``, written out so that kvmops runs on the 3.10 of
    Ubuntu 22.04 and the 3.11.2 of Debian 12 alike; ``str()``, ``format()`` and f-strings
    give the value, never ``Class.MEMBER``.
    """

    __str__ = str.__str__
    __format__ = str.__format__

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list) -> str:
        return name.lower()


class RunStrategy(StrEnum):
    """When a VM should be running, in KubeVirt's vocabulary."""

    ALWAYS = "Always"  # keep running; start it whenever it is not
    RERUN_ON_FAILURE = "RerunOnFailure"  # start on creation; restart only after a crash
    MANUAL = "Manual"  # start on creation; then power is the operator's business
    HALTED = "Halted"  # keep it off

    @property
    def desired_power(self) -> str:
        """Return the power state this strategy wants, in words for status pages."""
        return {
            "Always": "running",
            "RerunOnFailure": "running unless shut down from inside",
            "Manual": "as left by its operators",
            "Halted": "stopped",
        }[self.value]


class DeletionPolicy(StrEnum):
    """What becomes of a volume when its disk or VM leaves the manifests."""

    RETAIN = "Retain"
    DELETE = "Delete"


class PowerState(StrEnum):
    """A domain's power state, reduced to what the planner acts on."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    TRANSITIONAL = "transitional"  # shutting down, being saved, ... : wait for it

    @property
    def active(self) -> bool:
        """Return whether a QEMU process exists for the domain."""
        return self in (PowerState.RUNNING, PowerState.PAUSED, PowerState.TRANSITIONAL)


class ShutoffReason(StrEnum):
    """Why a shut-off domain is off (libvirt's ``VIR_DOMAIN_SHUTOFF_*``)."""

    UNKNOWN = "unknown"
    SHUTDOWN = "shutdown"  # the guest powered off
    DESTROYED = "destroyed"  # someone pulled the plug (virsh destroy, kvmops stop timeout)
    CRASHED = "crashed"
    FAILED = "failed"  # it never came up: the last start failed
    OTHER = "other"  # saved, migrated, restored from a snapshot, daemon restart


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located as precisely as kvmops can.

    ``str(problem)`` is the one line the user sees: ``FILE:LINE: field.path: message``.
    """

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        file, path, message = (one_line(part) for part in (self.file, self.path, self.message))
        where = file if self.line is None else f"{file}:{self.line}"
        return f"{where}: {path}: {message}" if path else f"{where}: {message}"


# Control characters and line separators, shown escaped: a file name, key or path from a
# manifest may hold any of them, and a problem must stay one line (and must not drive the
# terminal with escape sequences).
_UNPRINTABLE = {
    code: repr(chr(code))[1:-1]
    for code in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)
}


def one_line(text: str) -> str:
    """Return ``text`` with control characters and line breaks escaped (``\\n``), so it prints as one line."""
    return text.translate(_UNPRINTABLE)


@dataclass(frozen=True)
class Origin:
    """Where a resource was declared: file, line, and the line of each field in it."""

    file: str
    line: int
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def line_of(self, path: str) -> int:
        """Return the line of ``path`` (``spec.disks[0].pool``) or of its nearest ancestor."""
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.line

    def problem(self, path: str, message: str) -> Problem:
        """Return a :class:`Problem` located at ``path`` within this resource."""
        return Problem(self.file, self.line_of(path), path, message)


# --- manifests as read -----------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One YAML document of a manifest file, as plain data, with the line of every field.

    ``lines`` maps a field path (``spec.disks[0].size``) to its 1-based line.
    """

    file: str  # as the user would open it: the manifest root joined with relpath
    relpath: str  # relative to the manifest root, '/'-separated; recorded in libvirt
    index: int  # position of the document in its file, from 0
    line: int
    body: object
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False, repr=False)
    fingerprint: str = field(default="", compare=False, repr=False)  # digest of the document's source text

    @property
    def origin(self) -> Origin:
        """Return this document's location, for problems raised about it."""
        return Origin(self.file, self.line, self.lines)


@dataclass(frozen=True)
class ManifestSet:
    """The documents found under a manifest root, and the problems reading them."""

    root: str
    documents: tuple[Document, ...]
    problems: tuple[Problem, ...]
    files: int
    tree: str = ""  # the directory files are confined to: the root, or a single file's directory


# --- desired ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRef:
    """A file the hypervisor reads: a volume of a pool, or a path inside a dir pool."""

    pool: str
    volume: str | None = None
    path: str | None = None  # relative to the pool's directory
    # ``path`` and the pool's directory after symlinks on this machine, when the shell resolved them
    host_path: str = field(default="", compare=False)
    host_directory: str = field(default="", compare=False)
    # what the file is on the host (HOST_FILE_KINDS), when the shell looked; "" when it could not
    host_file: str = field(default="", compare=False)

    def __str__(self) -> str:
        if not self.pool:
            return self.path or "(empty)"
        return f"{self.pool}/{self.volume}" if self.volume is not None else f"{self.pool}:{self.path}"


@dataclass(frozen=True)
class DiskSpec:
    """A qcow2 volume attached as a disk; identified by its ``name`` within the VM."""

    name: str
    pool: str
    volume: str
    size: int  # bytes, a whole number of MiB
    bus: str
    target: str  # vda, sdb, ...: derived from bus and position unless the manifest pins it
    deletion_policy: DeletionPolicy
    image: str | None = None  # name of an Image resource the disk starts from
    clone: str = "overlay"  # "overlay" (qcow2 backing file) or "copy"
    # An existing file or block device attached as-is (pool, volume and size are then
    # empty): kvmops never creates, resizes, writes or deletes it.
    path: str | None = None
    format: str = "qcow2"
    host_file: str = field(default="", compare=False)  # what ``path`` is on the host, as FileRef.host_file


# What a file a VM names by path (a disk, CD-ROM, kernel or initrd) turned out to be on
# the host, for the shell's ``host_file``: libvirt can attach only the first two.
HOST_FILE_KINDS = ("file", "block device", "missing", "directory", "character device", "fifo", "socket")


@dataclass(frozen=True)
class InstallSpec:
    """Direct kernel boot (install media), possibly for the first boot only."""

    kernel: FileRef
    initrd: FileRef | None
    cmdline: str
    first_boot_only: bool


@dataclass(frozen=True)
class CloudInitSpec:
    """A NoCloud seed: its files (user-data may hold secrets) and their digest."""

    files: tuple[tuple[str, bytes], ...] = field(repr=False)  # (name, content): user-data, meta-data, ...
    digest: str
    pool: str
    volume: str


@dataclass(frozen=True)
class NicSpec:
    """A network interface on a libvirt network or a host bridge."""

    kind: str  # "network" | "bridge"
    source: str
    model: str
    mac: str | None  # None: libvirt picks one at creation, kvmops keeps it from then on


@dataclass(frozen=True)
class VMSpec:
    """A VirtualMachine manifest after defaults, units and cross-checks."""

    name: str
    uuid: str | None
    virt_type: str | None  # "auto" | "kvm" | "qemu"; None: the global default
    vcpus: int
    memory: int  # KiB, the current allocation
    max_memory: int  # KiB, the ceiling the memory balloon can reach without a restart
    disks: tuple[DiskSpec, ...]
    nics: tuple[NicSpec, ...]
    console: bool
    graphics: str  # "none" | "vnc" | "spice"
    autostart: bool
    run_strategy: RunStrategy
    shutdown_timeout: float | None  # seconds; None: the global default
    manifest: str  # path of the file, relative to the manifest root
    digest: str  # sha256 of the normalised document
    origin: Origin = field(compare=False, hash=False, repr=False)
    machine: str | None = None  # None: libvirt's default, not managed
    firmware: str = "bios"  # "bios" | "efi"
    keep_nvram: bool = False
    cpu_mode: str | None = None  # None: libvirt's default, not managed
    cpu_model: str | None = None
    boot: tuple[str, ...] = ("hd",)
    cdrom: FileRef | None = None  # pool "" with an absolute path: any existing file, attached as-is
    cdrom_empty: bool = False  # a CD-ROM drive without media
    cdrom_bus: str = "sata"
    cdrom_target: str | None = None  # None: the first sdX no disk uses
    install: InstallSpec | None = None
    cloud_init: CloudInitSpec | None = None
    guest_agent: bool = False
    hugepages: bool = False
    graphics_listen: str = "127.0.0.1"
    graphics_password: str | None = field(default=None, compare=False, repr=False)
    graphics_password_digest: str = ""
    placement: Placement | None = None  # None: no Host manifests, or the VM may run anywhere
    labels: tuple[tuple[str, str], ...] = ()  # metadata.labels, sorted: what anti-affinity and selectors match

    def pools_by_field(self) -> list[tuple[str, str]]:
        """Return (field path, pool name) for every pool the VM uses: disks, CD-ROM, install media, seed."""
        used = [(f"spec.disks[{i}].pool", disk.pool) for i, disk in enumerate(self.disks) if disk.path is None]
        if self.cdrom is not None and self.cdrom.pool:
            used.append(("spec.cdrom.pool", self.cdrom.pool))
        if self.install is not None and self.install.kernel.pool:
            used.append(("spec.install.kernel.pool", self.install.kernel.pool))
        if self.install is not None and self.install.initrd is not None and self.install.initrd.pool:
            used.append(("spec.install.initrd.pool", self.install.initrd.pool))
        if self.cloud_init is not None:
            used.append(("spec.cloudInit.pool", self.cloud_init.pool))
        return used


@dataclass(frozen=True)
class Placement:
    """Where a VM may run in a fleet: ``spec.placement``.

    ``host`` pins the VM to one Host; ``host_selector`` admits every Host whose labels
    include all its pairs. ``spread_by`` names a Host label whose values the VMs sharing
    this VM's ``anti_affinity`` label value are spread over; ``anti_affinity`` names a VM
    label: VMs with the same value of it avoid sharing a host.
    """

    host: str | None = None
    host_selector: tuple[tuple[str, str], ...] = ()
    spread_by: str | None = None
    anti_affinity: str | None = None


@dataclass(frozen=True)
class HostCapacity:
    """What a Host offers to VMs; ``*_overcommit`` multiply it (1.0: none)."""

    vcpus: int | None = None
    memory: int | None = None  # KiB
    cpu_overcommit: float = 1.0
    memory_overcommit: float = 1.0


@dataclass(frozen=True)
class HostSpec:
    """A Host manifest: one hypervisor of the fleet, reached at ``uri``."""

    name: str
    uri: str
    labels: tuple[tuple[str, str], ...]
    capacity: HostCapacity
    schedulable: bool
    manifest: str
    origin: Origin = field(compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class ImageSpec:
    """An Image manifest: a base image imported once into a pool, pinned by sha256."""

    name: str
    pool: str
    volume: str  # carries the digest: a new image is a new volume
    url: str | None
    path: str | None  # relative to the manifest tree ``tree``
    sha256: str
    format: str
    manifest: str
    origin: Origin = field(compare=False, hash=False, repr=False)
    tree: str = field(default="", compare=False)  # where ``path`` is, and must stay, when read
    hosts: tuple[tuple[str, str], ...] | None = None  # Host label selector; None: the hosts whose VMs use it
    host_path: str = field(default="", compare=False)  # the file ``path`` names, as this machine resolves it


IMAGE_PARTIAL_PREFIX = ".kvmops-partial-"
IMAGE_COMPLETE_PREFIX = ".kvmops-complete-"


def image_partial_volume(volume: str) -> str:
    """Return the temporary volume an import of image volume ``volume`` uploads into."""
    return IMAGE_PARTIAL_PREFIX + volume


def image_complete_volume(volume: str) -> str:
    """Return the empty marker volume whose presence records that image ``volume`` was copied completely.

    An import creates it after the copy to the final name finished and deletes it before
    (re)writing that name, so "marker and image exist" means "complete and verified",
    while "the image exists" alone never does.
    """
    return IMAGE_COMPLETE_PREFIX + volume


@dataclass(frozen=True)
class DhcpHost:
    """A static DHCP lease."""

    mac: str
    ip: str
    name: str | None = None


@dataclass(frozen=True)
class NetworkDefinition:
    """The part of a network's XML that kvmops manages (shared by manifests and libvirt)."""

    name: str
    mode: str  # "nat" | "isolated" | "bridge"
    bridge: str | None
    address: str | None
    prefix: int | None
    dhcp_start: str | None
    dhcp_end: str | None
    hosts: tuple[DhcpHost, ...]
    owner: NetworkOwnership | None = None
    uuid: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class NetworkOwnership:
    """kvmops' mark in a network's ``<metadata>``."""

    manifest: str
    digest: str
    scope: str = "default"


@dataclass(frozen=True)
class NetworkSpec:
    """A Network manifest."""

    definition: NetworkDefinition
    autostart: bool
    manifest: str
    origin: Origin = field(compare=False, hash=False, repr=False)
    hosts: tuple[tuple[str, str], ...] | None = None  # Host label selector; None: the hosts whose VMs use it

    @property
    def name(self) -> str:
        return self.definition.name


@dataclass(frozen=True)
class PoolSpec:
    """A StoragePool manifest: a ``dir`` pool kvmops creates, builds, starts and autostarts."""

    name: str
    type: str
    path: str
    autostart: bool
    manifest: str
    origin: Origin = field(compare=False, hash=False, repr=False)
    host_path: str = field(default="", compare=False)  # ``path`` after symlinks on the local host, when known
    shared: bool = False  # the same storage is seen by every host (NFS): live migration needs no copy
    hosts: tuple[tuple[str, str], ...] | None = None  # Host label selector; None: the hosts whose VMs use it


@dataclass(frozen=True)
class DesiredState:
    """Everything the manifests ask for, plus every problem found reading them.

    ``complete`` is False when any manifest failed to load or validate: the resources of
    the broken documents are missing from ``vms``/``pools``, so nothing may be pruned.
    """

    vms: Mapping[str, VMSpec]
    pools: Mapping[str, PoolSpec]
    problems: tuple[Problem, ...] = ()
    networks: Mapping[str, NetworkSpec] = field(default_factory=dict)
    images: Mapping[str, ImageSpec] = field(default_factory=dict)
    files: int = 0
    source: str = ""  # the manifest root, for problems about the set as a whole
    revision: str = ""  # git revision of the manifests, recorded in domains changed from it
    hosts: Mapping[str, HostSpec] = field(default_factory=dict)  # empty: a single host, chosen by --connect
    # False when a Host manifest (or a file that may hold one) did not load: a VM found on no
    # Host kvmops sees may run on that one, so a fleet must not place it anew
    hosts_complete: bool = True
    declares_hosts: bool = False  # some document is of kind Host, valid or not

    @property
    def is_fleet(self) -> bool:
        """Return whether these manifests drive a fleet: they declare a Host, even one that did not validate.

        A set whose every Host is broken is still a fleet with problems: falling back to
        ``--connect`` would create the fleet's VMs on whatever host that names.
        """
        return bool(self.hosts) or self.declares_hosts

    @property
    def complete(self) -> bool:
        """Return whether every manifest loaded and validated."""
        return not self.problems


# --- the essence shared by both sides --------------------------------------------------


@dataclass(frozen=True)
class OwnedVolume:
    """A volume as recorded in a domain's kvmops metadata."""

    pool: str
    name: str
    deletion_policy: DeletionPolicy
    created: bool  # kvmops created it; only such volumes may ever be deleted
    digest: str = ""  # content digest of generated volumes (the cloud-init seed)
    # Intent, written before the volume is created: kvmops is about to create it (so a
    # volume found under this name was made by an interrupted kvmops and is not known to be
    # complete). Cleared by the definition written once the volume is complete.
    pending: bool = False


@dataclass(frozen=True)
class LeftBehind:
    """A copy of volume ``pool/name`` that a move left on host ``host``: kvmops deletes it there, then this record.

    Written into the destination's definition by the migration itself (libvirt persists
    it in the same job that moves the domain), so a VM found on its new host with such a
    record proves that the volume on ``host`` is the copy it left, created by kvmops
    under ``deletionPolicy: Delete``.
    """

    host: str
    pool: str
    name: str

    @property
    def is_nvram(self) -> bool:
        """Return whether this is the domain's UEFI NVRAM file (:data:`NVRAM`), not a volume."""
        return (self.pool, self.name) == NVRAM


NVRAM = ("", "nvram")  # (pool, name) standing for a domain's UEFI NVRAM file, which is in no pool


@dataclass(frozen=True)
class Sending:
    """kvmops is copying volume ``pool/name`` (or the :data:`NVRAM`) to host ``host`` for a move of this domain.

    Written into the source's mark before the copy begins, gone with the source's
    definition once the move is done: while it is there, a volume of that name on
    ``host`` that no domain there uses is kvmops' copy, perhaps cut short by a kill, which
    the next move may replace and a move no longer wanted removes.
    """

    host: str
    pool: str
    name: str


@dataclass(frozen=True)
class Ownership:
    """kvmops' mark in a domain's ``<metadata>``: proof of ownership and what was applied."""

    manifest: str
    digest: str
    run_strategy: RunStrategy
    volumes: tuple[OwnedVolume, ...] = ()
    scope: str = "default"  # which manifest set owns it: only that set's passes prune it
    shutdown_timeout: float | None = None  # from the manifest; used when the VM is pruned
    revision: str = field(default="", compare=False)  # git revision that last changed it
    keep_nvram: bool = False  # keep the UEFI NVRAM file when the VM is pruned
    graphics_password_digest: str = ""  # salted scrypt digest: libvirt never shows the password, this tells a change
    install_pending: bool = False  # direct kernel boot waits for the VM's first start
    bound_name: str = ""  # the domain the mark was written for: a copy on another domain (a clone) does not count
    bound_uuid: str = ""  # "" in marks written by kvmops before marks were bound (see MarkBinding.UNBOUND)
    start_pending: bool = False  # Manual/RerunOnFailure: the start at creation has not happened yet
    fleet: str = ""  # the fleet (manifest set) that placed it, "" outside a fleet: a VM marked on two hosts is split brain
    host: str = ""  # the Host the fleet placed it on, "" outside a fleet
    left_behind: tuple[LeftBehind, ...] = ()  # copies a move left on the host it came from, not yet deleted there
    sending: tuple[Sending, ...] = ()  # copies a move of this domain is making (or was, when cut short) on other hosts
    # Intent, written into the source's mark before any move begins (every mode): the Host this
    # domain is being moved to. Gone with the source's definition when the move is done, put
    # back to "" when it fails; "" in marks written before it existed. With ``moved_from`` on
    # the destination, it proves a move that copied nothing (core.fleet.is_finished_move).
    # Neither counts in comparisons: records of a move are no change of the VM to apply.
    moving_to: str = field(default="", compare=False)
    # The Host the move that brought this domain here left (the definition kvmops gives a
    # move records it; a later move replaces it): "" when it never moved, or before it existed.
    moved_from: str = field(default="", compare=False)
    # The hand-over of a live move: libvirt leaves the guest paused on the destination
    # (VIR_MIGRATE_PAUSED) and kvmops resumes it only once the source has let go of it, so
    # libvirt can never run it on both hosts. Written into the definition the move gives the
    # destination, dropped once the guest runs there: a paused domain with this record was
    # paused by the move, not by a person, and the next pass resumes it (core.fleet).
    resume_after_move: bool = field(default=False, compare=False)
    # The fleet's roster: every Host name the fleet had when kvmops last wrote this mark, sorted
    # ("" outside a fleet). A name here that no Host manifest declares is a missing host
    # (core.fleet): its VMs may run there unseen. Kept current by the fleet's own step, not by
    # redefining the domain, so it does not count in comparisons.
    roster: tuple[str, ...] = field(default=(), compare=False)

    def volume(self, pool: str, name: str) -> OwnedVolume | None:
        """Return the record of volume ``pool/name``, if this domain owns one."""
        return next((v for v in self.volumes if (v.pool, v.name) == (pool, name)), None)

    def binding(self, name: str, uuid: str) -> MarkBinding:
        """Return whether this mark was written for the domain called ``name`` with ``uuid``."""
        if not self.bound_uuid:
            return MarkBinding.UNBOUND
        if self.bound_uuid.lower() == (uuid or "").lower() and self.bound_name == name:
            return MarkBinding.BOUND
        return MarkBinding.COPIED

    def written_for(self) -> str:
        """Return the domain this mark was written for, in words."""
        return f"domain {self.bound_name or '?'}, UUID {self.bound_uuid or '?'}"


class MarkBinding(enum.StrEnum):
    """How a domain's kvmops mark relates to the domain carrying it.

    Only a ``bound`` mark proves ownership.  A ``copied`` mark names another domain (what
    ``virt-clone`` leaves on a clone): that domain is foreign.  An ``unbound`` mark was
    written by a kvmops that did not bind marks yet: it is trusted to manage the domain
    its own manifest declares (and bound on that domain's next definition), never to
    prune or undefine it.
    """

    BOUND = "bound"
    UNBOUND = "unbound"
    COPIED = "copied"


@dataclass(frozen=True)
class DiskDevice:
    """A disk as libvirt sees it; ``pool``/``volume`` for volume disks, else ``path``."""

    target: str
    bus: str
    pool: str | None = None
    volume: str | None = None
    path: str | None = None
    device: str = "disk"
    format: str | None = field(default=None, compare=False)  # image format to render; None: qcow2 disk, raw CD-ROM
    relabel: bool = True  # False: libvirt must not chown it (media kvmops did not create; libvirt never restores read-only ones)

    @property
    def source(self) -> str:
        """Return a human name for the backing storage."""
        if self.pool is not None:
            return f"{self.pool}/{self.volume}"
        return self.path or "(no source)"


@dataclass(frozen=True)
class NicDevice:
    """A network interface as libvirt sees it."""

    kind: str
    source: str
    model: str | None
    mac: str | None


@dataclass(frozen=True)
class DomainDefinition:
    """The part of a domain's XML that kvmops manages and compares.

    Rendered to XML by :func:`reconciler.core.domxml.render`, parsed back from libvirt's
    XML by :func:`reconciler.core.domxml.parse`; the round trip is the identity.
    """

    name: str
    uuid: str | None
    virt_type: str
    vcpus: int
    memory: int  # KiB
    max_memory: int  # KiB
    disks: tuple[DiskDevice, ...]
    nics: tuple[NicDevice, ...]
    console: bool
    graphics: str
    owner: Ownership | None
    firmware: str = "bios"
    machine: str | None = None
    cpu_mode: str | None = None
    cpu_model: str | None = None
    boot: tuple[str, ...] = ("hd",)
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    cdroms: tuple[DiskDevice, ...] = ()
    guest_agent: bool = False
    hugepages: bool = False
    graphics_listen: str | None = None
    graphics_password: str | None = field(default=None, compare=False, repr=False)


# --- actual ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ObservedDomain:
    """A libvirt domain: its persistent definition, its live one, and its power state."""

    name: str
    uuid: str
    owned: bool
    definition: DomainDefinition | None  # parsed inactive XML; None for foreign domains
    live: DomainDefinition | None  # parsed live XML while active and owned
    power: PowerState
    shutoff_reason: ShutoffReason | None
    autostart: bool
    persistent: bool = True
    error: str | None = None  # why ``definition`` is None for an owned domain
    xml: str = field(default="", compare=False, repr=False)  # the persistent XML, patched on updates
    nics: tuple[NicDevice, ...] = ()  # of any domain, foreign ones too: MACs in use, networks in use
    storage: tuple[tuple[str, str], ...] = ()  # of any domain: (pool, volume) or ("", file path) its disks use
    copied_mark: Ownership | None = None  # a kvmops mark written for another domain: this one is foreign
    paused_by_migration: bool = False  # paused by libvirt at a live migration's switch-over, not by a person


@dataclass(frozen=True)
class ObservedPool:
    """A libvirt storage pool."""

    name: str
    type: str
    path: str | None
    active: bool
    autostart: bool


@dataclass(frozen=True)
class ObservedVolume:
    """A storage volume: where it lives and how big it is."""

    pool: str
    name: str
    capacity: int  # bytes
    allocation: int  # bytes
    path: str


@dataclass(frozen=True)
class NetworkRecord:
    """What libvirt says about one network."""

    name: str
    xml: str
    active: bool
    autostart: bool


@dataclass(frozen=True)
class ObservedNetwork:
    """A libvirt network: its essence (None when foreign), and whether it runs."""

    name: str
    owned: bool
    definition: NetworkDefinition | None
    active: bool
    autostart: bool
    xml: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class HostInfo:
    """What the hypervisor offers, as far as planning needs it."""

    uri: str
    virt_types: tuple[str, ...]  # domain types libvirt's capabilities list, e.g. ("kvm", "qemu")
    test_driver: bool = False
    kvm_unusable_reason: str | None = None  # set when "kvm" is listed but cannot run guests
    offline: bool = False  # no real host behind it (`kvmops diff`): what only a host decides stays undecided
    trash_unavailable: str = ""  # why deleted volumes cannot be kept in a trash on this host ("": they can)


@dataclass(frozen=True)
class DomainRecord:
    """What libvirt says about one domain, before any interpretation.

    ``live_xml`` is collected for running persistent domains; foreign domains may carry
    a stub as ``inactive_xml`` (snapshots keep only the storage they use).
    """

    name: str
    uuid: str
    inactive_xml: str
    power: PowerState
    shutoff_reason: ShutoffReason | None
    autostart: bool
    persistent: bool
    live_xml: str | None = None
    # paused by libvirt at a live migration's switch-over (and left so: its job ended without it)
    paused_by_migration: bool = False


@dataclass(frozen=True)
class Observation:
    """Everything one look at a host collected, as raw as it came: the input of
    :func:`reconciler.core.actual.interpret`, and what ``kvmops state export`` saves."""

    host: HostInfo
    domains: tuple[DomainRecord, ...]
    pools: tuple[ObservedPool, ...]
    volumes: tuple[ObservedVolume, ...]
    networks: tuple[NetworkRecord, ...] = ()
    trash: tuple[TrashEntry, ...] = ()  # the entries of the pools' trash directories (core/trash.py)
    trash_unreadable: tuple[str, ...] = ()  # what in a trash could not be read, one sentence each


@dataclass(frozen=True)
class ActualState:
    """Everything libvirt told us in one observation."""

    host: HostInfo
    domains: Mapping[str, ObservedDomain]
    pools: Mapping[str, ObservedPool]
    volumes: Mapping[tuple[str, str], ObservedVolume]  # (pool, name) -> volume
    networks: Mapping[str, ObservedNetwork] = field(default_factory=dict)
    trash: tuple[TrashEntry, ...] = ()
    trash_unreadable: tuple[str, ...] = ()

    def volumes_by_path(self) -> Mapping[str, tuple[str, str]]:
        """Return (pool, volume) by the volume's file path (built once per state)."""
        return self._index("volumes_by_path", lambda: MappingProxyType(volumes_by_path(self.volumes.values())))

    def storage_users(self) -> Mapping[tuple[str, str], tuple[ObservedDomain, ...]]:
        """Return, for each (pool, volume) or ("", file path) any domain uses, those domains by name.

        Built once per state: the planner asks it per volume, and scanning every domain
        each time made a plan grow with the square of the domain count.
        """
        def build() -> Mapping[tuple[str, str], tuple[ObservedDomain, ...]]:
            users: dict[tuple[str, str], list[ObservedDomain]] = {}
            for domain in sorted(self.domains.values(), key=lambda d: d.name):
                for key in domain.storage:
                    users.setdefault(key, []).append(domain)
            return MappingProxyType({key: tuple(domains) for key, domains in users.items()})
        return self._index("storage_users", build)

    def macs_in_use(self) -> frozenset[str]:
        """Return the MAC of every NIC of every domain, foreign ones too (built once per state)."""
        return self._index("macs_in_use", lambda: frozenset(n.mac for d in self.domains.values() for n in d.nics if n.mac))

    def _index(self, name: str, build):
        # A state never changes, so an index of it is built on first use and kept with it.
        # Two threads may both build it: the results are equal, either may stay.
        key = "_index_" + name
        found = self.__dict__.get(key)
        if found is None:
            found = build()
            object.__setattr__(self, key, found)
        return found


def volumes_by_path(volumes: Iterable[ObservedVolume]) -> dict[str, tuple[str, str]]:
    """Return (pool, volume) of ``volumes`` by their file paths."""
    return {volume.path: (volume.pool, volume.name) for volume in volumes if volume.path}

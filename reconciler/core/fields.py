"""The managed fields of a domain, each declared once.

A :class:`DomainField` names a field of :class:`~reconciler.core.model.DomainDefinition`
(or a few attributes shown as one, such as ``cpu`` for ``cpu_mode`` and ``cpu_model``)
together with the manifest path it comes from, where and how the domain XML keeps it
(an :mod:`~reconciler.core.xmlproperty` codec, the way virtinst declares an XML property
per line), the label and text a plan shows for it, and whether libvirt only applies it
at the next boot.  :data:`FIELDS` is the one list of them:

- render, patch and parse in :mod:`reconciler.core.domxml` loop over it and hold no
  per-field code;
- the planner's diff (:class:`reconciler.core.planner.domain_diff.VMDiff` ``_diff_definition``) and the
  "restart pending" comparison of the running and the persistent definitions read its
  compared part, :data:`DOMAIN_FIELDS`;
- for the simple fields, whose manifest value maps to definition attributes one to one
  (a :class:`ManifestValue`), the desired side loops over it too: the manifest's reader
  (:func:`reconciler.core.desired.build`), ``kvmops import``
  (:func:`reconciler.core.desired.manifest_for`) and the definition a plan writes
  (:class:`reconciler.core.planner.domain_definition.VMDefinition`); the summary of a new
  VM's plan shows every declared field (:data:`CREATION_ORDER`);
- the coverage tests in ``tests/unit/test_fields.py`` check that it covers every
  attribute of the definition exactly once, and that a simple field goes from a
  manifest to the plan and back through ``import`` with no other code.

The offline host of ``kvmops diff`` is made by the planner itself
(:mod:`reconciler.core.offline`), so it needs no list of its own.
``docs/adding-a-field.md`` shows how to add a field.

Device collections (disks, CD-ROMs, NICs) are declared here with their XML codecs too,
but matched by identity (target, source, MAC) rather than compared as values; they and
the identity and bookkeeping fields say in ``planned_by`` what handles them instead.
Likewise a manifest field that is not simple (units and cross-checks, files, several
fields in one manifest value) says in ``desired_by`` which code reads it.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.core import domainparts, model, quantity
from reconciler.core.xmlproperty import WriteContext, XMLCodec, XMLFlag, XMLGroup, XMLList, XMLProperty


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class ManifestValue:
    """How a simple field's manifest value becomes its definition attributes, and back.

    ``read`` turns the value at the field's manifest path into the field's attribute (a
    tuple of its attributes, for a field of several); ``write`` turns the attributes back
    into the value ``kvmops import`` writes, None for none.  A manifest without the value
    (no schema default fills it in) means the definition's defaults, and a definition at
    its defaults is written as nothing: the manifest need not say it.
    """

    read: Callable[[Any], Any] = _same
    write: Callable[..., Any] = _same


# What DomainDefinition's attributes are when a manifest does not say otherwise.
DEFAULTS: Mapping[str, object] = {
    f.name: f.default for f in dataclasses.fields(model.DomainDefinition) if f.default is not dataclasses.MISSING
}


@dataclass(frozen=True)
class DomainField:
    """One managed field: where it comes from, where it goes, how a plan shows it.

    ``label`` is the plan's name for it (the manifest's camelCase), ``schema`` its path in
    the VirtualMachine manifest (None: kvmops' own bookkeeping), ``xml`` how the domain
    XML keeps it (render, patch and parse in :mod:`reconciler.core.domxml` call its
    ``write`` and ``read`` with the field's values), ``attrs`` the
    :class:`~reconciler.core.model.DomainDefinition` attributes it covers, in the order
    its codec takes them, and ``show`` the text a plan prints for a definition's value
    (a text of None: not set).  A field without ``show`` is not compared as a value:
    ``planned_by`` says what handles it instead (the disks' own diff, the mark's).
    ``pending`` says whether a running domain whose persistent value differs from its
    live one waits for a reboot (RestartRequired).  A change's impact is ``restart`` on a
    running domain (``live`` on one that is off), except for memory, which the balloon
    moves live (``VMDiff._diff_definition`` knows that one rule).
    ``libvirt_default`` marks a field a manifest may leave unset, and then libvirt
    chooses (and kvmops keeps what it chose); ``agrees(observed, wanted)`` accepts what
    libvirt writes for a wanted value (the machine ``q35`` becomes ``pc-q35-7.2``).
    """

    label: str
    schema: str | None
    xml: XMLCodec
    attrs: tuple[str, ...]
    show: Callable[[model.DomainDefinition], str | None] | None = None
    planned_by: str = ""
    pending: bool = True
    libvirt_default: bool = False
    agrees: Callable[[model.DomainDefinition, model.DomainDefinition], bool] | None = None
    hidden_when: Callable[[model.DomainDefinition, model.DomainDefinition], bool] | None = None
    manifest: ManifestValue | None = None
    desired_by: str = ""
    created: Callable[[model.DomainDefinition], str | None] | None = None

    @property
    def compared(self) -> bool:
        """Return whether a plan compares this field as a value (device lists and identity are not)."""
        return self.show is not None

    def write_xml(self, root: ET.Element, definition: model.DomainDefinition, context: WriteContext) -> None:
        """Write this field of ``definition`` into the domain XML ``root``, changing nothing else."""
        self.xml.write(root, tuple(getattr(definition, name) for name in self.attrs), context)

    def read_xml(self, root: ET.Element) -> dict[str, object]:
        """Return this field's attributes as the domain XML ``root`` keeps them."""
        return dict(zip(self.attrs, self.xml.read(root), strict=True))

    def text(self, definition: model.DomainDefinition) -> str | None:
        """Return what a plan prints for this field of ``definition``."""
        return self.show(definition) if self.show is not None else None

    @property
    def manifest_key(self) -> str:
        """Return the key of a simple field's value under the manifest's ``spec``."""
        return (self.schema or "").removeprefix("spec.")

    def at_default(self, definition: model.DomainDefinition) -> bool:
        """Return whether ``definition`` leaves this field as a manifest that does not mention it would."""
        return all(name in DEFAULTS and getattr(definition, name) == DEFAULTS[name] for name in self.attrs)

    def from_manifest(self, spec: Mapping[str, Any]) -> dict[str, object]:
        """Return a simple field's attributes as the manifest's ``spec`` (defaults filled in) says them."""
        assert self.manifest is not None, self.label
        if self.manifest_key not in spec:
            return {name: DEFAULTS[name] for name in self.attrs}
        values = self.manifest.read(spec[self.manifest_key])
        return dict(zip(self.attrs, values if len(self.attrs) > 1 else (values,), strict=True))

    def to_manifest(self, definition: model.DomainDefinition) -> object | None:
        """Return the manifest value saying this simple field of ``definition``; None: nothing to say."""
        assert self.manifest is not None, self.label
        if self.at_default(definition):
            return None
        return self.manifest.write(*(getattr(definition, name) for name in self.attrs))

    def creation_text(self, definition: model.DomainDefinition) -> str | None:
        """Return what the summary of a new VM's plan shows for this field of ``definition`` (None or "": nothing)."""
        if self.created is not None:
            return self.created(definition)
        return None if self.at_default(definition) else self.text(definition)

    def satisfied_by(self, observed: model.DomainDefinition, wanted: model.DomainDefinition) -> bool:
        """Return whether libvirt's ``observed`` value is what ``wanted`` asks for (a default when it asks none)."""
        if self.libvirt_default and all(getattr(wanted, name) is None for name in self.attrs):
            return True
        if self.agrees is not None and self.agrees(observed, wanted):
            return True
        for name in self.attrs:
            if not getattr(observed, name) == getattr(wanted, name):
                return False
        return True

    def differs(self, old: model.DomainDefinition, new: model.DomainDefinition) -> bool:
        """Return whether ``old`` and ``new`` differ in this field (unless a change of another field says it all)."""
        if self.hidden_when is not None and self.hidden_when(old, new):
            return False
        for name in self.attrs:  # any() over a generator, without the generator: asked ~30 times per VM per pass
            if getattr(old, name) != getattr(new, name):
                return True
        return False


def kib_text(value: int) -> str:
    """Return a KiB quantity as a plan shows it (``2 GiB``)."""
    return quantity.format_bytes(value * 1024)


def yes_no(value: bool) -> str:
    return "true" if value else "false"


def cpu_text(definition: model.DomainDefinition) -> str | None:
    if definition.cpu_mode is None:
        return None
    return f"{definition.cpu_mode} {definition.cpu_model}" if definition.cpu_model else definition.cpu_mode


def install_text(definition: model.DomainDefinition) -> str | None:
    if definition.kernel is None:
        return None
    parts = [f"kernel {definition.kernel}"]
    if definition.initrd:
        parts.append(f"initrd {definition.initrd}")
    if definition.cmdline:
        parts.append(f"cmdline {definition.cmdline!r}")
    return ", ".join(parts)


def cpu_manifest(mode: str | None, cpu_model: str | None) -> dict | None:
    """Return ``spec.cpu`` for a CPU mode and model (None: libvirt's default)."""
    if not mode:
        return None
    return {"mode": mode, **({"model": cpu_model} if cpu_model else {})}


def graphics_text(definition: model.DomainDefinition) -> str:
    """Return the graphics of a new VM in one line: type, listen address, whether a password guards it."""
    text = definition.graphics
    if definition.graphics != "none":
        text += f" on {definition.graphics_listen}"
    return text + (" with a password" if definition.graphics_password is not None else "")


_MACHINE_FAMILIES = {"q35": "pc-q35-", "pc": "pc-i440fx-"}


def machine_matches(wanted: str, actual: str | None) -> bool:
    """Return whether machine type ``actual`` (as libvirt writes it) satisfies ``wanted``."""
    if actual is None:
        return False
    if wanted == actual:
        return True
    family = _MACHINE_FAMILIES.get(wanted)
    return family is not None and actual.startswith(family)


# The order libvirt writes into a domain that names none, neither in <os> nor on a device.
LIBVIRT_BOOT = ("hd",)


def _graphics_off(old: model.DomainDefinition, new: model.DomainDefinition) -> bool:
    return "none" in (old.graphics, new.graphics)  # switching graphics on or off says it all


# Every managed field, in the order a plan lists changes.  domxml writes them in this
# order too: an element a write creates lands where libvirt puts it whatever the order,
# but graphics.listen and the password need the device graphics made, and CD-ROMs follow
# the disks.
FIELDS: tuple[DomainField, ...] = (
    DomainField("name", None, XMLProperty("name", missing=""), ("name",), planned_by="the domain's identity"),
    DomainField("uuid", "spec.uuid", XMLProperty("uuid", from_text=lambda text: text or None, keep_unset=True),
                ("uuid",), planned_by="the domain's identity: a UUID never changes without a replacement",
                desired_by="desired._vm, and the planner derives a new domain's"),
    DomainField("owner", None, domainparts.OwnerMark(), ("owner",),
                planned_by="kvmops' mark, diffed by VMDiff._diff_owner"),
    DomainField("virtType", "spec.virtType", XMLProperty("", "type", missing=""), ("virt_type",), lambda d: d.virt_type,
                desired_by="the planner's resolve_virt_type (unset: the host's default)"),
    DomainField("vcpus", "spec.vcpus", XMLProperty("vcpu", read_element=domainparts.current_vcpus, missing=1,
                                                    dropped=("current",)),
                ("vcpus",), lambda d: str(d.vcpus), manifest=ManifestValue(int)),
    DomainField("maxMemory", "spec.maxMemory", XMLProperty("memory", read_element=domainparts.kib, missing=0,
                                                            attributes=(("unit", "KiB"),)),
                ("max_memory",), lambda d: kib_text(d.max_memory),
                desired_by="desired._vm: units and range, memory when unset, never below memory",
                created=lambda d: kib_text(d.max_memory) if d.max_memory != d.memory else None),
    DomainField("memory", "spec.memory", XMLProperty("currentMemory", read_element=domainparts.kib, missing=0,
                                                      missing_from="memory", attributes=(("unit", "KiB"),)),
                ("memory",), lambda d: kib_text(d.memory),
                pending=False,  # the balloon moves it live, and the guest may lag behind
                desired_by="desired._vm: units and range"),
    DomainField("console", "spec.console", domainparts.CONSOLE, ("console",),
                lambda d: "serial" if d.console else "none",
                manifest=ManifestValue(lambda value: value == "serial", lambda console: "serial" if console else "none")),
    DomainField("firmware", "spec.firmware", domainparts.Firmware(), ("firmware",), lambda d: d.firmware,
                manifest=ManifestValue(lambda value: "efi" if value == "uefi" else "bios",
                                       lambda firmware: "uefi" if firmware == "efi" else None)),
    DomainField("machine", "spec.machine", XMLProperty("os/type", "machine", keep_unset=True), ("machine",),
                lambda d: d.machine,
                libvirt_default=True, agrees=lambda seen, wanted: machine_matches(wanted.machine or "", seen.machine),
                manifest=ManifestValue(write=lambda machine: machine or None)),  # "" is inexpressible: import's note says so
    DomainField("cpu", "spec.cpu", domainparts.CPU(), ("cpu_mode", "cpu_model"), cpu_text, libvirt_default=True,
                manifest=ManifestValue(lambda cpu: (cpu["mode"], cpu.get("model")), cpu_manifest)),
    DomainField("boot", "spec.boot", XMLList("os/boot", "dev"), ("boot",), lambda d: ", ".join(d.boot) or None,
                agrees=lambda seen, wanted: not wanted.boot and seen.boot == LIBVIRT_BOOT,
                manifest=ManifestValue(tuple, list)),
    DomainField("install", "spec.install",
                XMLGroup((XMLProperty("os/kernel"), XMLProperty("os/initrd"), XMLProperty("os/cmdline"))),
                ("kernel", "initrd", "cmdline"), install_text,
                desired_by="desired._vm and VMDefinition._definition: files of pools, firstBootOnly"),
    DomainField("guestAgent", "spec.guestAgent", domainparts.GUEST_AGENT, ("guest_agent",),
                lambda d: yes_no(d.guest_agent), manifest=ManifestValue()),
    DomainField("hugepages", "spec.hugepages", XMLFlag("memoryBacking/hugepages"), ("hugepages",),
                lambda d: yes_no(d.hugepages), manifest=ManifestValue()),
    DomainField("graphics", "spec.graphics", domainparts.Graphics(), ("graphics",), lambda d: d.graphics,
                desired_by="desired._vm: a type, or an object with listen and passwordFile", created=graphics_text),
    DomainField("graphics.listen", "spec.graphics.listen", domainparts.GraphicsListen(), ("graphics_listen",),
                lambda d: d.graphics_listen, hidden_when=_graphics_off,
                desired_by="desired._vm, with graphics", created=lambda d: None),  # in the graphics line
    DomainField("graphics.password", "spec.graphics.passwordFile", domainparts.GraphicsPassword(), ("graphics_password",),
                planned_by="a secret: compared through the mark's digest, never shown",
                desired_by="desired._vm: the file's content"),
    DomainField("disks", "spec.disks", domainparts.Disks("disk"), ("disks",),
                planned_by="VMDiff._diff_disks (by target and source)",
                desired_by="desired._vm: volumes, files and targets"),
    DomainField("cdroms", "spec.cdrom", domainparts.Disks("cdrom"), ("cdroms",),
                planned_by="VMDiff._diff_definition 'cdrom' line, the cloud-init seed excepted",
                desired_by="desired._vm and VMDefinition._definition: the drive, and the cloud-init seed"),
    DomainField("nics", "spec.networks", domainparts.Nics(), ("nics",), planned_by="VMDiff._diff_nics (by MAC)",
                desired_by="desired._vm: sources and MACs"),
)

# A new VM's plan lists what it sets in this order, older than the table's; a field not
# named here comes after these, in the table's order (the devices' lines are VMDiff's).
_CREATION_FIRST = ("virtType", "vcpus", "memory", "maxMemory", "disks", "nics", "console", "graphics", "firmware",
                   "machine", "cpu", "boot", "install", "cdroms")
CREATION_ORDER: tuple[DomainField, ...] = (
    tuple(f for label in _CREATION_FIRST for f in FIELDS if f.label == label)
    + tuple(f for f in FIELDS if f.label not in _CREATION_FIRST)
)

# The fields whose manifest value maps to the definition one to one: no code of their own on the desired side.
SIMPLE_FIELDS: tuple[DomainField, ...] = tuple(f for f in FIELDS if f.manifest is not None)

# The fields a plan compares as values, and the restart-pending check too.
DOMAIN_FIELDS: tuple[DomainField, ...] = tuple(f for f in FIELDS if f.compared)


def by_label(label: str) -> DomainField:
    """Return the declaration whose plan label is ``label``."""
    return next(f for f in FIELDS if f.label == label)


def restart_pending(live: model.DomainDefinition, config: model.DomainDefinition) -> list[tuple[str, str, str]]:
    """Return (label, running value, configured value) for the declared fields that differ until a reboot."""
    pending = []
    for declared in DOMAIN_FIELDS:
        if not declared.pending:
            continue
        if declared.label == "cpu" and config.cpu_mode == "host-model":
            continue  # libvirt expands host-model into a custom CPU in the live XML
        if declared.differs(live, config):
            pending.append((declared.label, declared.text(live) or "none", declared.text(config) or "none"))
    return pending

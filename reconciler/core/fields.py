"""The managed fields of a domain, each declared once.

A :class:`DomainField` names a field of :class:`~reconciler.core.model.DomainDefinition`
(or a few attributes shown as one, such as ``cpu`` for ``cpu_mode`` and ``cpu_model``)
together with the manifest path it comes from, its place in the domain XML, the label
and text a plan shows for it, and whether libvirt only applies it at the next boot.
The planner's diff (:func:`reconciler.core.planner` ``_diff_definition``), the "restart
pending" comparison of the running and the persistent definitions, and the coverage test
in ``tests/unit/test_fields.py`` all read :data:`DOMAIN_FIELDS`; the offline host of
``kvmops diff`` is made by the planner itself (:mod:`reconciler.core.offline`), so it
needs no list of its own.  ``docs/adding-a-field.md`` shows how to add one.

Device collections (disks, CD-ROMs, NICs) are matched by identity (target, source, MAC)
rather than compared as values; they are listed in :data:`DEVICE_COLLECTIONS` with the
code that handles them, and the identity and bookkeeping fields in :data:`NOT_COMPARED`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reconciler.core import model, quantity


@dataclass(frozen=True)
class DomainField:
    """One managed field: where it comes from, where it goes, how a plan shows it.

    ``label`` is the plan's name for it (the manifest's camelCase), ``schema`` its path in
    the VirtualMachine manifest, ``xml`` where libvirt keeps it (an XPath-like note for
    readers; render, patch and parse in :mod:`reconciler.core.domxml` write and read it),
    ``attrs`` the :class:`~reconciler.core.model.DomainDefinition` attributes it covers,
    and ``show`` the text a plan prints for a definition's value (None: not set).
    ``pending`` says whether a running domain whose persistent value differs from its
    live one waits for a reboot (RestartRequired).  A change's impact is ``restart`` on a
    running domain (``live`` on one that is off), except for memory, which the balloon
    moves live (the planner's ``_diff_definition`` knows that one rule).
    ``libvirt_default`` marks a field a manifest may leave unset, and then libvirt
    chooses (and kvmops keeps what it chose); ``agrees(observed, wanted)`` accepts what
    libvirt writes for a wanted value (the machine ``q35`` becomes ``pc-q35-7.2``).
    """

    label: str
    schema: str
    xml: str
    attrs: tuple[str, ...]
    show: Callable[[model.DomainDefinition], str | None]
    pending: bool = True
    libvirt_default: bool = False
    agrees: Callable[[model.DomainDefinition, model.DomainDefinition], bool] | None = None
    hidden_when: Callable[[model.DomainDefinition, model.DomainDefinition], bool] | None = None

    def text(self, definition: model.DomainDefinition) -> str | None:
        """Return what a plan prints for this field of ``definition``."""
        return self.show(definition)

    def satisfied_by(self, observed: model.DomainDefinition, wanted: model.DomainDefinition) -> bool:
        """Return whether libvirt's ``observed`` value is what ``wanted`` asks for (a default when it asks none)."""
        if self.libvirt_default and all(getattr(wanted, name) is None for name in self.attrs):
            return True
        if self.agrees is not None and self.agrees(observed, wanted):
            return True
        return all(getattr(observed, name) == getattr(wanted, name) for name in self.attrs)

    def differs(self, old: model.DomainDefinition, new: model.DomainDefinition) -> bool:
        """Return whether ``old`` and ``new`` differ in this field (unless a change of another field says it all)."""
        if self.hidden_when is not None and self.hidden_when(old, new):
            return False
        return any(getattr(old, name) != getattr(new, name) for name in self.attrs)


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


DOMAIN_FIELDS: tuple[DomainField, ...] = (
    DomainField("virtType", "spec.virtType", "/domain/@type", ("virt_type",), lambda d: d.virt_type),
    DomainField("vcpus", "spec.vcpus", "/domain/vcpu", ("vcpus",), lambda d: str(d.vcpus)),
    DomainField("maxMemory", "spec.maxMemory", "/domain/memory", ("max_memory",), lambda d: kib_text(d.max_memory)),
    DomainField("memory", "spec.memory", "/domain/currentMemory", ("memory",), lambda d: kib_text(d.memory),
                pending=False),  # the balloon moves it live, and the guest may lag behind
    DomainField("console", "spec.console", "/domain/devices/serial[@type='pty'] + console", ("console",),
                lambda d: "serial" if d.console else "none"),
    DomainField("firmware", "spec.firmware", "/domain/os/@firmware", ("firmware",), lambda d: d.firmware),
    DomainField("machine", "spec.machine", "/domain/os/type/@machine", ("machine",), lambda d: d.machine,
                libvirt_default=True, agrees=lambda seen, wanted: machine_matches(wanted.machine or "", seen.machine)),
    DomainField("cpu", "spec.cpu", "/domain/cpu/@mode, /domain/cpu/model", ("cpu_mode", "cpu_model"), cpu_text,
                libvirt_default=True),
    DomainField("boot", "spec.boot", "/domain/os/boot/@dev", ("boot",), lambda d: ", ".join(d.boot) or None,
                agrees=lambda seen, wanted: not wanted.boot and seen.boot == LIBVIRT_BOOT),
    DomainField("install", "spec.install", "/domain/os/kernel, initrd, cmdline", ("kernel", "initrd", "cmdline"),
                install_text),
    DomainField("guestAgent", "spec.guestAgent", "/domain/devices/channel[target/@name='org.qemu.guest_agent.0']",
                ("guest_agent",), lambda d: yes_no(d.guest_agent)),
    DomainField("graphics.listen", "spec.graphics.listen", "/domain/devices/graphics/@listen", ("graphics_listen",),
                lambda d: d.graphics_listen, hidden_when=_graphics_off),
    DomainField("graphics", "spec.graphics", "/domain/devices/graphics/@type", ("graphics",), lambda d: d.graphics),
)

# Collections of devices, matched by identity, each with the code that plans it.
DEVICE_COLLECTIONS: dict[str, str] = {
    "disks": "planner._diff_disks (by target and source)",
    "cdroms": "planner._diff_definition 'cdrom' line, the seed excepted",
    "nics": "planner._diff_nics (by MAC)",
}

# Identity and bookkeeping: never a change to show (the mark has its own diff, _diff_owner).
NOT_COMPARED: dict[str, str] = {
    "name": "the domain's identity",
    "uuid": "the domain's identity: a UUID never changes without a replacement",
    "owner": "kvmops' mark, diffed by planner._diff_owner",
    "graphics_password": "a secret: compared through the mark's digest, never shown",
}


def by_label(label: str) -> DomainField:
    """Return the declaration whose plan label is ``label``."""
    return next(f for f in DOMAIN_FIELDS if f.label == label)


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

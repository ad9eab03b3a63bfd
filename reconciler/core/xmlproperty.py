"""Values at places of a libvirt domain's XML, each declared once, the way virtinst's XMLProperty is.

An :class:`XMLProperty` is one value kept at one place: an element's text or one of its
attributes (``os/type`` ``machine``).  An :class:`XMLFlag` is an element whose presence
is the value (``memoryBacking/hugepages``), an :class:`XMLList` one attribute of a
repeated element (``os/boot`` ``dev``), an :class:`XMLGroup` a few of them read and
written as one field (the kernel, initrd and command line of ``install``).  Each is an
:class:`XMLCodec`: ``write`` puts a field's values into a domain's XML, ``read`` takes
them out again, and ``read`` after ``write`` gives the values back.

The field declarations in :mod:`reconciler.core.fields` carry these codecs (and the
dedicated ones of :mod:`reconciler.core.domainparts` for what one place cannot hold);
render, patch and parse in :mod:`reconciler.core.domxml` only loop over the declarations.

An element a write creates goes where libvirt itself writes it (:data:`ELEMENT_ORDER`),
whatever order the writes come in: a rendered domain reads like libvirt's XML, and a
patched one keeps its layout.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

# The order libvirt writes the children of each element kvmops writes into (libvirt's
# domain_conf.c); a tag not listed here goes after the others.
ELEMENT_ORDER: dict[str, tuple[str, ...]] = {
    "": (
        "name", "uuid", "genid", "title", "description", "metadata", "maxMemory", "memory", "currentMemory",
        "blkiotune", "memtune", "memoryBacking", "vcpu", "vcpus", "iothreads", "iothreadids", "cputune", "numatune",
        "resource", "sysinfo", "bootloader", "bootloader_args", "os", "idmap", "features", "cpu", "clock",
        "on_poweroff", "on_reboot", "on_crash", "on_lockfailure", "pm", "perf", "devices", "seclabel",
    ),
    "os": ("type", "firmware", "loader", "nvram", "init", "kernel", "initrd", "cmdline", "dtb", "root", "boot",
           "bootmenu", "smbios", "bios"),
    "devices": (
        "emulator", "disk", "controller", "lease", "filesystem", "interface", "smartcard", "serial", "parallel",
        "console", "channel", "input", "tpm", "graphics", "sound", "audio", "video", "hostdev", "redirdev",
        "redirfilter", "hub", "watchdog", "memballoon", "rng", "panic", "shmem", "memory", "iommu", "vsock",
    ),
    "memoryBacking": ("hugepages", "nosharepages", "locked", "source", "access", "allocation", "discard"),
}  # fmt: skip


@dataclass(frozen=True)
class WriteContext:
    """What a write may need beyond the values: the pool volume each file path is (for file disks)."""

    volumes_by_path: Mapping[str, tuple[str, str]] = field(default_factory=dict)


class XMLCodec(Protocol):
    """How one declared field is written into a domain's XML and read back out of it.

    ``values`` are the field's :class:`~reconciler.core.model.DomainDefinition`
    attributes, in the order its declaration names them.  ``write`` changes only what
    the field owns and leaves every other element and attribute as it is; ``read``
    returns the values ``write`` wrote, and what libvirt wrote for them.
    """

    def write(self, root: ET.Element, values: tuple, context: WriteContext) -> None: ...

    def read(self, root: ET.Element) -> tuple: ...


def place(parent: ET.Element, element: ET.Element, parent_path: str) -> None:
    """Insert ``element`` into ``parent`` (at ``parent_path`` below the domain) where libvirt puts it."""
    order = ELEMENT_ORDER.get(parent_path, ())
    if element.tag not in order:
        parent.append(element)
        return
    rank = order.index(element.tag)
    children = list(parent)
    before = [i for i, child in enumerate(children) if child.tag in order and order.index(child.tag) <= rank]
    after = [i for i, child in enumerate(children) if child.tag in order and order.index(child.tag) > rank]
    parent.insert(before[-1] + 1 if before else after[0] if after else len(children), element)


def find(root: ET.Element, path: str) -> ET.Element | None:
    """Return the element at ``path`` below the domain ``root`` ("" is the domain), or None.

    ``path`` is tags joined by ``/``, each naming an element a domain has once (``os``,
    ``devices``, ``memoryBacking``), so the first of each is the one.
    """
    element: ET.Element | None = root
    for tag in _steps(path):
        element = element.find(tag)
        if element is None:
            return None
    return element


def find_all(root: ET.Element, path: str) -> list[ET.Element]:
    """Return every element at ``path`` (tags joined by ``/``) below the domain ``root``."""
    parent_path, _, tag = path.rpartition("/")
    parent = find(root, parent_path)
    return [] if parent is None else parent.findall(tag)


_STEPS: dict[str, tuple[str, ...]] = {}


def _steps(path: str) -> tuple[str, ...]:
    # ElementTree hands any path with a "/" to its Python path engine, several times slower
    # than the C lookup of one tag; a pass reads a dozen paths from every domain's XML.
    steps = _STEPS.get(path)
    if steps is None:
        steps = _STEPS[path] = tuple(path.split("/")) if path else ()
    return steps


def make(root: ET.Element, path: str) -> ET.Element:
    """Return the element at ``path`` below the domain ``root``, creating what is missing where libvirt puts it."""
    element, parent_path = root, ""
    for tag in path.split("/") if path else ():
        child = element.find(tag)
        if child is None:
            child = ET.Element(tag)
            place(element, child, parent_path)
        element, parent_path = child, f"{parent_path}/{tag}".lstrip("/")
    return element


def remove(root: ET.Element, path: str) -> None:
    """Remove every element at ``path``, and the containers that leaves empty (``<memoryBacking/>`` says nothing)."""
    parent_path, _, tag = path.rpartition("/")
    parent = find(root, parent_path)
    if parent is None:
        return
    for element in parent.findall(tag):
        parent.remove(element)
    if parent_path and not len(parent) and not parent.attrib and not (parent.text or "").strip():
        remove(root, parent_path)


@dataclass(frozen=True)
class XMLProperty:
    """One value at one place: the text of the element at ``path``, or its ``attribute``.

    ``to_text`` and ``from_text`` convert the value; ``read_element`` reads one the text
    alone does not give (a unit, a current count).  ``missing`` is what an absent element
    or attribute reads as; ``missing_from`` names a place read instead when the element
    is absent (libvirt's ``currentMemory`` defaults to ``memory``).  Writing None removes
    the value, unless ``keep_unset``: then what is there stays (a value libvirt chose, an
    identity kvmops does not make up).  ``attributes`` are written with every value
    (``unit='KiB'``), ``dropped`` removed by every write (``current``, which would
    override the value written).
    """

    path: str
    attribute: str | None = None
    to_text: Callable[[Any], str] = str
    from_text: Callable[[str], Any] = str
    read_element: Callable[[ET.Element], Any] | None = None
    missing: Any = None
    missing_from: str | None = None
    keep_unset: bool = False
    attributes: tuple[tuple[str, str], ...] = ()
    dropped: tuple[str, ...] = ()

    def write(self, root: ET.Element, values: tuple, context: WriteContext) -> None:
        (value,) = values
        if value is None or (self.keep_unset and value == ""):
            if self.keep_unset:
                return
            if self.attribute is None:
                remove(root, self.path)
            elif (element := find(root, self.path)) is not None:
                element.attrib.pop(self.attribute, None)
            return
        element = make(root, self.path)
        for name in self.dropped:
            element.attrib.pop(name, None)
        for name, constant in self.attributes:
            element.set(name, constant)
        if self.attribute is None:
            element.text = self.to_text(value)
        else:
            element.set(self.attribute, self.to_text(value))

    def read(self, root: ET.Element) -> tuple:
        element = find(root, self.path)
        if element is None and self.missing_from is not None:
            element = find(root, self.missing_from)
        if element is None:
            return (self.missing,)
        if self.read_element is not None:
            return (self.read_element(element),)
        text = element.text or "" if self.attribute is None else element.get(self.attribute)
        return (self.missing if text is None else self.from_text(text),)


@dataclass(frozen=True)
class XMLFlag:
    """A boolean that is the presence of the element at ``path`` (``<memoryBacking><hugepages/>``)."""

    path: str

    def write(self, root: ET.Element, values: tuple, context: WriteContext) -> None:
        (present,) = values
        if not present:
            remove(root, self.path)
        elif find(root, self.path) is None:
            make(root, self.path)

    def read(self, root: ET.Element) -> tuple:
        return (find(root, self.path) is not None,)


@dataclass(frozen=True)
class XMLList:
    """A tuple of strings, one ``attribute`` of each element at ``path`` (``<boot dev='cdrom'/><boot dev='hd'/>``)."""

    path: str
    attribute: str

    def write(self, root: ET.Element, values: tuple, context: WriteContext) -> None:
        (items,) = values
        parent_path, _, tag = self.path.rpartition("/")
        remove(root, self.path)
        parent = make(root, parent_path)
        for item in items:
            place(parent, ET.Element(tag, {self.attribute: item}), parent_path)

    def read(self, root: ET.Element) -> tuple:
        return (tuple(e.get(self.attribute, "") for e in find_all(root, self.path)),)


@dataclass(frozen=True)
class XMLGroup:
    """Several codecs, one per value, written and read as one field."""

    parts: tuple[XMLCodec, ...]

    def write(self, root: ET.Element, values: tuple, context: WriteContext) -> None:
        for part, value in zip(self.parts, values, strict=True):
            part.write(root, (value,), context)

    def read(self, root: ET.Element) -> tuple:
        return tuple(value for part in self.parts for value in part.read(root))

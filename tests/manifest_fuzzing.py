"""Mutated manifest trees, and the one verdict every one of them must get.

Shared by the fuzz tests (``tests/integration/test_fuzz_manifests.py``) and the long run
in ``bench/fuzz_manifests.py``.  A case starts from a valid manifest tree
(:mod:`tests.manifest_seeds`: the examples in ``manifests/`` and ``examples/cloud-images/``,
a tree that names every kind of file a manifest may name, the fleet of ``examples/fleet``
on test-driver Hosts with a configuration file, and ``manifests/`` under a configuration
file whose policy names every rule) and mutates the text of one of its files (a
configuration file too) a few times:
YAML tags, values of other types, huge or non-finite numbers, deleted, duplicated or
re-indented lines, truncation, anchors and aliases, unicode, deep nesting, paths with
``..``, absolute paths and symlinks out of the tree, raw bytes.

:func:`judge` runs ``kvmops validate`` and ``kvmops plan`` (with ``--config`` when the tree
has one) on libvirt's test driver, in-process through ``cli.main``, and says whether the
outcome is acceptable: exit 0 with a valid result, or exit 1 with problem lines that each
name a file of the tree (``FILE:LINE: ...`` or ``FILE: ...``; a configuration file's
problems come as ``kvmops: error: FILE:LINE: ...`` lines, one each).  Anything else (an exception, "internal error", a
traceback, another exit status, a run longer than the time bound) is a failure.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from reconciler import cli
from tests import manifest_seeds

EXAMPLE_SECONDS = 10  # far above the slowest example seen (~0.3 s): only a hang reaches it
# The host plans are made against: libvirt's test driver with the pools and networks the
# seeds use and do not declare, so that unmutated seeds plan without a problem.
HOST_XML = """\
<node>
  <pool type='dir'><name>default</name><target><path>/var/lib/libvirt/images</path></target></pool>
  <network><name>default</name><bridge name='virbr0'/><forward/><ip address='192.168.122.1' netmask='255.255.255.0'/></network>
</node>
"""

HOSTILE_LINKS = manifest_seeds.HOSTILE_LINKS
SEEDS = manifest_seeds.SEEDS

TAGS = [
    "!!timestamp", "!!bool", "!!int", "!!float", "!!binary", "!!null", "!!str", "!!merge", "!!set", "!!omap",
    "!!pairs", "!!seq", "!!map", "!!python/object:os.system", "!!python/name:os.system", "!!python/none",
    "!!python/tuple", "!Ref", "!", "!<tag:yaml.org,2002:int>", "!<tag:example.com,2000:x>", "!!value", "!!yaml",
]
VALUES = [
    '"web\\n"', '"52:54:00:00:00:01\\n"', '"6f1c3e2a-8d4b-4c9e-9a71-2b5d0e8f4c13\\n"', '"/var/lib/kvmops/p\\n"',
    '"\\e]0;title\\a"', '"x\\u2029y"', '"1GiB\\n"',
    "1GiB", "zz", "~", "null", "''", '""', "[]", "{}", "yes", "no", "on", "Off", "true", "0", "-1", "-0", "0x1F",
    "0o17", "0b101", "1_000", "12:30:00", "190:20:30", "2001-12-14", "2001-12-14t21:59:43.10-05:00",
    ".nan", ".NaN", ".inf", "-.inf", "1e309", "1.0e+309", "-1.0e+309", "3.14", "1e3", "0.0000001",
    str(2**63), str(-(2**63) - 1), str(10**30), "9" * 400, "9" * 4300, "9" * 5000, "1" + "0" * 20 + "GiB",
    "99999999999999999999TiB", "-64MiB", "64 MiB", "64MiB ", "G", "2G", "x" * 70_000, "'\\u0000'", '"\\x00"',
    '"\\ud800"', "é", "日本語", "\u202eevil", "\u200b", "\ufeff", "|\n  block", ">\n  folded", "- a", "a: b",
    "&a 1", "*a", "*nosuch", "<<", "'unclosed", '"unclosed', "[unclosed", "{a: 1", "%TAG", "@", "`", "?", "#",
    "..", "/", "//", "/etc", "/etc/.", "/etc//", "/root", "/var/lib/libvirt/qemu", "/var/lib/libvirt", "/proc/self",
]
PATHS = [
    '"user-data\\n"', '"a\\nb"', '"x\\ry"', '"\\e[31mred"', '"\\u2028"', '"\\x85"', "'a\tb'",
    "user-data", "vnc.pass", "disk.raw", "escape", "up/user-data", "up/../etc/passwd", "../user-data",
    "../../etc/shadow", "/etc/shadow", "/etc/hostname", "./user-data", "sub/../user-data", "nosuch", "",
    ".", "vms", "/", "//", "user-data/", "\x00", "a\nb", "~/x", "${HOME}/x", "%2e%2e/x", "up", "escape/x",
]
SCALAR_LINE = re.compile(r"^(?P<lead>\s*(?:- )?[A-Za-z_][\w-]*:[ \t]+)(?P<value>[^#\n]*?)(?P<tail>\s*(?:#.*)?\n?)$")
PATH_KEYS = re.compile(r"^(?P<lead>\s*(?:userDataFile|passwordFile|path):[ \t]+)(?P<value>[^#\n]*?)(?P<tail>\s*(?:#.*)?\n?)$")


def _pick_line(draw, lines: list[str], pattern: re.Pattern[str]) -> tuple[int, re.Match[str]] | None:
    candidates = [(i, m) for i, line in enumerate(lines) if (m := pattern.match(line))]
    return draw(st.sampled_from(candidates)) if candidates else None


def _replace_value(draw, text: str, values: list[str], pattern: re.Pattern[str] = SCALAR_LINE, *, tag: bool = False) -> str:
    lines = text.splitlines(keepends=True)
    picked = _pick_line(draw, lines, pattern)
    if picked is None:
        return text
    index, match = picked
    value = draw(st.sampled_from(values))
    if tag:
        value = f"{value} {match['value']}" if match["value"] else value
    lines[index] = f"{match['lead']}{value}{match['tail']}" if "\n" not in value else (
        f"{match['lead']}{value}\n")
    return "".join(lines)


def _insert_tag(draw, text: str) -> str:
    return _replace_value(draw, text, TAGS, tag=True)


def _swap_scalar(draw, text: str) -> str:
    return _replace_value(draw, text, VALUES)


def _hostile_path(draw, text: str) -> str:
    return _replace_value(draw, text, PATHS, PATH_KEYS)


def _hostile_key(draw, text: str) -> str:
    lines = text.splitlines(keepends=True)
    picked = _pick_line(draw, lines, SCALAR_LINE)
    if picked is None:
        return text
    index, match = picked
    lead = match["lead"]
    key = lead.strip(" -:\t")
    weird = draw(st.sampled_from(['"{k}\\n"', '"{k}\\nx"', '"\\e[2J{k}"', '"{k}\\u2028"', '"{k}\\r"', "'{k} '", '"{k}\\t"']))
    lines[index] = lead.replace(key, weird.format(k=key), 1) + match["value"] + match["tail"]
    return "".join(lines)


def _delete_line(draw, text: str) -> str:
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    del lines[draw(st.integers(0, len(lines) - 1))]
    return "".join(lines)


def _duplicate_line(draw, text: str) -> str:
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    index = draw(st.integers(0, len(lines) - 1))
    lines.insert(draw(st.integers(0, len(lines))), lines[index])
    return "".join(lines)


def _reindent(draw, text: str) -> str:
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    index = draw(st.integers(0, len(lines) - 1))
    shift = draw(st.sampled_from(["", " ", "  ", "    ", "\t", "-", "- "]))
    lines[index] = shift + lines[index].lstrip(" ") if draw(st.booleans()) else shift + lines[index]
    return "".join(lines)


def _truncate(draw, text: str) -> str:
    return text[: draw(st.integers(0, len(text)))]


def _anchor_and_alias(draw, text: str) -> str:
    lines = text.splitlines(keepends=True)
    mapping_keys = [i for i, line in enumerate(lines) if re.match(r"^\s*[A-Za-z_][\w-]*:\s*$", line)]
    scalar = _pick_line(draw, lines, SCALAR_LINE)
    if scalar is None and not mapping_keys:
        return text
    if mapping_keys and (scalar is None or draw(st.booleans())):
        index = draw(st.sampled_from(mapping_keys))
        lines[index] = lines[index].rstrip("\n") + " &anchor\n"
    else:
        index, match = scalar
        lines[index] = f"{match['lead']}&anchor {match['value']}{match['tail']}"
    target = draw(st.integers(0, len(lines)))
    use = draw(st.sampled_from(["  <<: *anchor\n", "  again: *anchor\n", "- *anchor\n", "*anchor\n", "  x: [*anchor, *anchor]\n"]))
    lines.insert(target, use)
    return "".join(lines)


def _unicode(draw, text: str) -> str:
    position = draw(st.integers(0, len(text)))
    inserted = draw(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8))
    return text[:position] + inserted + text[position:]


def _yaml_punctuation(draw, text: str) -> str:
    if not text:
        return text
    position = draw(st.integers(0, len(text) - 1))
    char = draw(st.sampled_from(list(":-[]{},&*!|>'\"%@`#?\t\n \\")))
    return text[:position] + char + text[position + 1:]


def _deep_nesting(draw, text: str) -> str:
    depth = draw(st.sampled_from([5, 31, 33, 64, 200, 1000]))
    nested = draw(st.sampled_from(["[" * depth + "]" * depth, "{a: " * depth + "1" + "}" * depth]))
    return _replace_value(draw, text, [nested])


def _huge_document(draw, text: str) -> str:
    kind = draw(st.sampled_from(["keys", "list", "alias-bomb"]))
    if kind == "keys":
        return text + "".join(f"k{i}: {i}\n" for i in range(draw(st.sampled_from([100, 5000]))))
    if kind == "list":
        return text.replace("disks:\n", "disks:\n" + "    - {name: d, pool: p, size: 1}\n" * 300, 1)
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 8))
    return bomb + text


# Values the schema may well accept, so that the mutation reaches the checks and the
# planner behind it: extremes, contradictions, and combinations.
EDGE_VALUES = {
    "vcpus": ["1", "1024", "1025", "0", "2.0", "2.5"],
    "memory": ["16", "15", "16MiB", "16TiB", "16385GiB", "1KiB", "1B", "0", "0.5GiB", "1.5GiB"],
    "maxMemory": ["16MiB", "64TiB", "1", "0"],
    "size": ["1MiB", "1KiB", "1", "0", "64TiB", "65TiB", "1.5", "513KiB"],
    "bus": ["virtio", "sata", "scsi", "ide", "usb"],
    "target": ["vda", "vdb", "sda", "hda", "vdzz", "vd", "xvda"],
    "deletionPolicy": ["Delete", "Retain", "delete"],
    "clone": ["copy", "overlay", "link"],
    "image": ["debian-12", "appliance", "blank", "nosuch"],
    "pool": ["default", "store", "vmstore", "nosuch", "a" * 63],
    "volume": ["x.qcow2", "db-data.qcow2", "web-root.qcow2", "../x", "a/b", ".hidden", "x" * 255],
    "name": ["web", "db", "root", "data", "a" * 63, "a" * 64, "test", "x.y", "-x"],
    "mac": ['"52:54:00:6b:3c:01"', '"ff:ff:ff:ff:ff:ff"', '"00:00:00:00:00:00"', '"52:54:00:00:00:0A"'],
    "uuid": ["00000000-0000-0000-0000-000000000000", "6f1c3e2a-8d4b-4c9e-9a71-2b5d0e8f4c13"],
    "model": ["virtio", "e1000", "qemu64", "Skylake-Client", "nosuch"],
    "mode": ["custom", "host-model", "host-passthrough", "nat", "isolated", "bridge"],
    "machine": ["q35", "pc", "pc-q35-7.2", "pc-i440fx-99", "virt"],
    "firmware": ["uefi", "bios"],
    "virtType": ["kvm", "qemu", "auto", "test", "xen"],
    "runStrategy": ["Always", "Halted", "Manual", "RerunOnFailure"],
    "shutdownTimeout": ["0", "3600", "3601", "0.001"],
    "graphics": ["vnc", "spice", "none", "{type: vnc, passwordFile: vnc.pass}", "{type: spice, listen: '::'}"],
    "listen": ["0.0.0.0", "::", "127.0.0.1", "999.1.1.1", "::ffff:1.2.3.4"],
    "console": ["none", "serial"],
    "boot": ["[cdrom, cdrom]", "[]", "[network]", "[hd, cdrom, network, hd]"],
    "address": ["192.168.150.1", "10.0.0.0", "255.255.255.255", "::1", "0.0.0.0"],
    "prefix": ["0", "8", "24", "31", "32", "33"],
    "start": ["192.168.150.199", "192.168.150.1", "10.0.0.1"],
    "end": ["192.168.150.100", "192.168.150.255", "10.0.0.1"],
    "ip": ["192.168.150.1", "10.0.0.1", "192.168.150.100"],
    "bridge": ["br0", "virbr0", "a" * 16],
    "sha256": ['"' + "0" * 64 + '"', '"' + "A" * 64 + '"', "0" * 64],
    "format": ["raw", "qcow2", "vmdk"],
    "firstBootOnly": ["true", "false"],
    "keepNvram": ["true", "false"],
    "autostart": ["true", "false"],
    "hostname": ["a" * 63, "x", "host-1"],
    "instanceId": ["i", "a" * 255],
    "url": ["https://example.org/x.qcow2", "http://[::1]:80/x", "https://x/" + "a" * 2000],
    # the fleet: Hosts (only test driver URIs: a fuzz never reaches a real libvirtd), placement, shared pools
    "uri": ["test:///default", "test:///nosuch/node.xml", f"test://{manifest_seeds.HOST_XML}",
            f"test://{manifest_seeds.HOST_XML}?host=kvm1", "test:///default?a=%zz", "'test:///default#x'"],
    "cpuOvercommit": ["1", "64", "65", "0.5", "1.5"],
    "memoryOvercommit": ["1", "16", "17", "0.99"],
    "schedulable": ["true", "false"],
    "host": ["kvm1", "kvm2", "kvm3", "nosuch", "kvm1.", "a" * 63],
    "hostSelector": ["{zone: a}", "{zone: b}", "{}", "{nosuch: x}", "{rack: r1, zone: b}", "{zone: [a]}"],
    "spreadBy": ["rack", "zone", "nosuch", "app"],
    "antiAffinity": ["app", "nosuch", "zone"],
    "shared": ["true", "false"],
    "hosts": ["{}", "{zone: a}", "{zone: z}", "{rack: r2, zone: b}", "[]"],
    "zone": ["a", "b", "''", "c"],
    "rack": ["r1", "r2", "r3"],
    "app": ["web", "db", "''"],
    # the configuration file: hostTimeout and the policy
    "hostTimeout": ["0.001", "3600", "3601", "0", "-1"],
    "scope": ["default", "other", "-x", "a" * 64],
    "maxVcpus": ["1", "1024", "1025", "0"],
    "maxDiskSize": ["0", "1", "1048576", "1048577", "1GiB", "1KiB"],
    "vms": ["0", "1", "20"],
    "disk": ["0", "1", "2TiB", "1048577"],
    "maxPrunePerPass": ["0", "1", "'0%'", "'100%'", "'101%'", "'5.5%'"],
    "allowDataLoss": ["true", "false"],
    "allowHostPassthrough": ["true", "false"],
    "trashRetention": ["0", "24h", "7d", "1w", "99999999999999999999d", "1y", "'24h'"],
    "allowedPoolPaths": ["[]", "[/]", "[/var/lib/kvmops/../..]", "[/var/lib/kvmops]", "[/proc]", "[relative]"],
    "allowedNetworks": ["[]", "['*']", "['**']", "[lab, lab]"],
    "allowedBridges": ["[]", "['*']", "[br0]"],
    "imageSources": ["[]", "[/]", "['https://cloud.debian.org/']", "['http://x/']", "['https://']", "[/etc]"],
    "allowedGraphicsListen": ["[]", "['0.0.0.0']", "['::']"],
}
FIELD_LINES = [
    "  maxMemory: 16MiB\n", "  maxMemory: 64TiB\n", "  firmware: uefi\n", "  keepNvram: true\n",
    "  cpu: {mode: custom}\n", "  cpu: {mode: host-model, model: qemu64}\n", "  uuid: 6f1c3e2a-8d4b-4c9e-9a71-2b5d0e8f4c13\n",
    "  cdrom: {pool: default, volume: x.iso}\n", "  cdrom: {pool: default, path: ../../etc/shadow}\n",
    "  install: {kernel: {pool: default, volume: k}, firstBootOnly: true}\n", "  guestAgent: true\n",
    "  cloudInit: {userDataFile: escape}\n", "  cloudInit: {userData: x, userDataFile: user-data}\n",
    "  cloudInit: {networkConfig: {version: 2}, metaData: {hostname: h}}\n", "  boot: [network]\n",
    "  networks: [{network: default, mac: '52:54:00:6b:3c:01'}, {network: default, mac: '52:54:00:6b:3c:01'}]\n",
    "  disks: [{name: a, pool: default, size: 1}, {name: a, pool: default, size: 1}]\n",
    "  disks: [{name: a, pool: default, size: 1, image: blank}]\n", "  path: /etc\n", "  ipv4: {address: 10.0.0.1, prefix: 8}\n",
]


def _edge_value(draw, text: str) -> str:
    lines = text.splitlines(keepends=True)
    candidates = [(i, m) for i, line in enumerate(lines)
                  if (m := SCALAR_LINE.match(line)) and m["lead"].strip(" -:\t") in EDGE_VALUES]
    if not candidates:
        return text
    index, match = draw(st.sampled_from(candidates))
    value = draw(st.sampled_from(EDGE_VALUES[match["lead"].strip(" -:\t")]))
    lines[index] = f"{match['lead']}{value}{match['tail']}"
    return "".join(lines)


FLEET_LINES = [
    "  placement: {host: kvm3}\n", "  placement: {host: nosuch}\n", "  placement: {hostSelector: {zone: b}}\n",
    "  placement: {hostSelector: {zone: a}, spreadBy: rack, antiAffinity: app}\n", "  placement: {spreadBy: zone}\n",
    "  placement: {antiAffinity: app}\n", "  placement: {}\n", "  shared: true\n", "  hosts: {zone: a}\n",
    "  hosts: {}\n", "  schedulable: false\n", "  capacity: {vcpus: 1, memory: 16}\n",
    "  capacity: {vcpus: 65536, memory: 1073741824, cpuOvercommit: 64, memoryOvercommit: 16}\n",
]
POLICY_LINES = [
    "  limits: {maxVcpus: 1}\n", "  limits: {maxMemory: 16, maxDiskSize: 0}\n", "  quota: {vms: 0}\n",
    "  quota: {vcpus: 1, memory: 1, disk: 0}\n", "  allowDataLoss: false\n", "  maxPrunePerPass: 0\n",
    "  scopes: {default: {limits: {maxMemory: 16}}}\n", "  scopes: {default: {allowedPoolPaths: []}}\n",
    "  allowedPoolPaths: []\n", "  allowedNetworks: []\n", "  imageSources: []\n", "  allowedBridges: []\n",
    "  trashRetention: 0\n", "  limits: {allowHostPassthrough: false, allowedGraphicsListen: []}\n",
]


def _insert_field(draw, text: str) -> str:
    lines = text.splitlines(keepends=True)
    blocks = [(i, FIELD_LINES + FLEET_LINES) for i, line in enumerate(lines) if line.rstrip() == "spec:"]
    blocks += [(i, POLICY_LINES) for i, line in enumerate(lines) if line.rstrip() == "policy:"]
    if not blocks:
        return text
    index, choices = draw(st.sampled_from(blocks))
    lines.insert(index + 1, draw(st.sampled_from(choices)))
    return "".join(lines)


MUTATIONS: list[Callable] = [
    _edge_value, _edge_value, _edge_value, _insert_field, _insert_field, _hostile_key,
    _insert_tag, _insert_tag, _swap_scalar, _swap_scalar, _swap_scalar, _hostile_path, _hostile_path,
    _delete_line, _duplicate_line, _reindent, _truncate, _anchor_and_alias, _unicode, _yaml_punctuation,
    _deep_nesting, _huge_document,
]


@dataclass(frozen=True)
class Case:
    """A manifest tree: a seed with one file replaced by its mutated text (or bytes)."""

    seed: str
    relpath: str
    content: str | bytes

    def write(self, directory: Path, host_xml: Path | None = None) -> None:
        """Write the tree into the empty ``directory``; a Host URI's test driver host file is ``host_xml``."""
        def filled(text: str) -> str:
            return text.replace(manifest_seeds.HOST_XML, str(host_xml)) if host_xml is not None else text

        for relpath, text in SEEDS[self.seed].items():
            path = directory / relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(filled(text), encoding="utf-8")
        for relpath, target in HOSTILE_LINKS.items():
            path = directory / self.manifests / relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(target)
        target = directory / self.relpath
        if isinstance(self.content, bytes):
            target.write_bytes(self.content.replace(manifest_seeds.HOST_XML.encode(), str(host_xml).encode())
                               if host_xml is not None else self.content)
        else:
            target.write_text(filled(self.content), encoding="utf-8", errors="surrogatepass")

    @property
    def manifests(self) -> str:
        """Return where the manifests are in the tree ("" for the tree itself)."""
        return manifest_seeds.manifest_root(SEEDS[self.seed])

    @property
    def config(self) -> str | None:
        """Return the tree's configuration file (relative to it), if it has one."""
        return manifest_seeds.CONFIG if manifest_seeds.CONFIG in SEEDS[self.seed] else None


@st.composite
def cases(draw) -> Case:
    """Return a mutated manifest tree."""
    seed = draw(st.sampled_from(sorted(SEEDS)))
    relpath = draw(st.sampled_from(sorted(p for p in SEEDS[seed] if p.endswith(".yaml"))))
    text = SEEDS[seed][relpath]
    for _ in range(draw(st.integers(1, 3))):
        text = draw(st.sampled_from(MUTATIONS))(draw, text)
    if draw(st.integers(0, 19)) == 0:  # now and then, bytes that are not UTF-8 text
        raw = text.encode("utf-8", errors="surrogatepass")
        position = draw(st.integers(0, len(raw)))
        junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\xfe\xff", b"\xef\xbb\xbf", b"\x80\x80"]))
        return Case(seed, relpath, raw[:position] + junk + raw[position:])
    return Case(seed, relpath, text)


@dataclass(frozen=True)
class Verdict:
    """What kvmops answered for one case, and whether that answer is acceptable."""

    outcome: str  # "valid", "problems" or "failure"
    seconds: float
    why: str = ""  # for a failure: what was wrong, with the output
    statuses: tuple[int, ...] = ()  # of validate and plan


class Hang(BaseException):
    """The time bound of one example ran out (a BaseException: ``except Exception`` must not swallow it)."""


def _run(argv: list[str]) -> tuple[int | str, str, str]:
    """Return (exit status or the exception's traceback, stdout, stderr) of ``kvmops argv``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status: int | str = cli.main(argv)
        except (Exception, SystemExit) as exc:  # KVMOPS_DEBUG=1 lets an internal error out, with its traceback
            status = "".join(traceback.format_exception(exc))
    return status, out.getvalue(), err.getvalue()


def judge(case: Case, scratch: Path) -> Verdict:
    """Run validate and plan on ``case`` in a fresh directory under ``scratch``; return the verdict."""
    directory = scratch / f"case-{time.monotonic_ns()}"
    directory.mkdir()
    host = scratch / "host.xml"
    if not host.exists():
        host.write_text(HOST_XML, encoding="utf-8")
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(EXAMPLE_SECONDS)
    started = time.monotonic()
    connect = os.environ.get("KVMOPS_CONNECT")
    try:
        case.write(directory, host)
        outcomes = []
        os.environ["KVMOPS_DEBUG"] = "1"
        # No --connect: a fleet refuses it (each Host has its URI: test drivers here), and a tree that is
        # no fleet (any more) plans on the default URI, which is the test driver too (never a real libvirtd)
        os.environ["KVMOPS_CONNECT"] = f"test://{host}"
        manifests = str(directory / case.manifests)
        config = ["--config", str(directory / case.config)] if case.config else []
        for argv in (["validate", manifests], ["plan", manifests, "--no-color", *config]):
            status, stdout, stderr = _run(argv)
            output = stdout + stderr
            why = _unacceptable(status, output, directory) or (_stray_lines(stdout, directory) if argv[0] == "validate" else "")
            if why:
                return Verdict("failure", time.monotonic() - started, f"kvmops {argv[0]}: {why}\n{output[-4000:]}")
            outcomes.append(status)
        return Verdict("valid" if outcomes == [0, 0] else "problems", time.monotonic() - started, statuses=tuple(outcomes))
    except Hang:
        return Verdict("failure", time.monotonic() - started, f"no answer within {EXAMPLE_SECONDS} s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        os.environ.pop("KVMOPS_DEBUG", None)
        if connect is None:
            os.environ.pop("KVMOPS_CONNECT", None)
        else:
            os.environ["KVMOPS_CONNECT"] = connect
        shutil.rmtree(directory, ignore_errors=True)


def _stray_lines(stdout: str, directory: Path) -> str:
    """Return what in validate's output is neither a problem line nor the summary (a problem spilling over lines)."""
    located = re.compile(re.escape(str(directory)) + r"(/[^\n]+?)?(:\d+)?: \S")
    stray = [line for line in stdout.splitlines()
             if line and not located.match(line) and not re.match(r"\d+ problem\(s\) found in ", line)]
    return f"validate printed lines that are not problems: {stray[:3]}" if stray else ""


def _alarm(_signum, _frame) -> None:
    raise Hang()


def _unacceptable(status: int | str, output: str, directory: Path) -> str:
    """Return what is wrong with an answer, or "" when it is a valid result or clean problem lines."""
    if isinstance(status, str):
        return "an exception escaped:\n" + status
    for marker in ("internal error", "Traceback"):
        if marker in output:
            return f"the output holds {marker!r}"
    if status not in (0, 1):
        return f"exit status {status}"
    prefix = f"{directory}{os.sep}"
    located = re.compile(re.escape(str(directory)) + r"(/[^:\n]+)?(:\d+)?: \S")
    problem_lines = [line.strip().removeprefix("kvmops: error: ") for line in output.splitlines()
                     if line.strip().removeprefix("kvmops: error: ").startswith(str(directory))]  # (a config's errors)
    malformed = [line for line in problem_lines if not located.match(line)]
    if malformed:
        return f"problem lines not FILE:LINE: ... : {malformed[:3]}"
    # A fleet's Host that does not answer in time (a hostTimeout mutated to 0.001 s) is exit 1 too, in its own section
    unreachable = re.search(r"^Host \S+ \(.*\): UNREACHABLE: \S", output, re.MULTILINE)
    if status == 1 and not unreachable and not any(line.startswith(prefix) or located.match(line) for line in problem_lines):
        return "exit 1 without a problem line naming a file"
    # The configuration file's problems are errors (the manifests are not even read): one located line each.
    config = re.compile(re.escape(str(directory / manifest_seeds.CONFIG)) + r"(:\d+)?: \S")
    errors = [line for line in output.splitlines() if "kvmops: error:" in line]
    stray = [line for line in errors if not (line.startswith("kvmops: error: ")
                                             and config.match(line[len("kvmops: error: "):]))]
    if stray:
        return f"an error that is not a problem line: {stray[:3]}"
    return ""

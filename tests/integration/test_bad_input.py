"""Malformed and hostile manifests: each one gets a clear error and changes nothing.

Every case runs ``kvmops apply`` on the standard host of ``conftest.world``: a running
domain ``web`` that kvmops owns and ``web.yaml`` declares, a running domain ``orphan``
that kvmops owns and no manifest declares (with a Delete volume, so a normal apply
would prune it and destroy data), and a running foreign domain ``legacy``.  The bad
file sits next to the valid ``web.yaml``.  Each case must

* exit with status 1 (not 0, not 2) and print no traceback;
* print exactly one problem line per fault, ``FILE:LINE: field.path: message`` (or
  ``FILE: message`` where no line applies), naming the bad file and the field, with a
  message that says what is wrong and, where it can, what to write instead;
* leave the host exactly as it was: same domains with the same XML and power state,
  same pools, same volumes; in particular the orphan survives, because a broken
  manifest suspends pruning.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler import cli

ANY = object()  # a line or field path the case does not pin down
HUGE = object()  # content: the 50 MB file of the session


@dataclass(frozen=True)
class Expect:
    """One problem line the output must contain for ``file``."""

    line: object  # int, None for "FILE: message", or ANY
    path: object  # "" for none, or ANY
    says: tuple[str, ...]  # fragments the message must contain
    file: str = "bad.yaml"


def vm_yaml(*spec: str, name: str = "bad") -> str:
    """Return a VirtualMachine manifest: lines 1-5 are the header, ``spec`` starts at line 6."""
    return "\n".join(
        ["apiVersion: kvmops/v1", "kind: VirtualMachine", "metadata:", f"  name: {name}", "spec:", *spec]
    ) + "\n"


def disk_yaml(*fields: str) -> str:
    """Return a VM whose one disk's extra ``fields`` start at line 10 (memory 6, disks 7, name 8, pool 9)."""
    return vm_yaml("  memory: 64", "  disks:", "    - name: root", "      pool: default", *fields)


@dataclass(frozen=True)
class Link:
    """A symlink in the manifest tree; ``target`` is relative to the tree's parent (outside it) unless absolute."""

    target: str


SECRET = "root-only-secret"  # a file beside the manifest tree, readable only by root, as /etc/shadow is


def pool_yaml(path: str, name: str = "store") -> str:
    """Return a StoragePool manifest whose ``path`` is on line 6."""
    return f"apiVersion: kvmops/v1\nkind: StoragePool\nmetadata:\n  name: {name}\nspec:\n  path: {path}\n"


def image_yaml(path: str) -> str:
    """Return an Image manifest whose ``source.path`` is on line 8."""
    return ("apiVersion: kvmops/v1\nkind: Image\nmetadata:\n  name: base\nspec:\n  pool: default\n"
            f"  source:\n    path: {path}\n  sha256: '{'0' * 64}'\n")


def case(id: str, content: object, *expect: Expect, bug: str | None = None):
    """Return one parametrised case; ``bug`` marks it as exposing a known bug."""
    marks = [pytest.mark.xfail(strict=True, reason=f"bug: {bug}")] if bug else []
    return pytest.param(content, expect, id=id, marks=marks)


BILLION_LAUGHS = "\n".join(
    ["apiVersion: kvmops/v1", "kind: VirtualMachine", "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
) + "\n"

CASES = [
    # --- broken YAML ---------------------------------------------------------------------
    case("yaml-bad-indentation",
         "apiVersion: kvmops/v1\nkind: VirtualMachine\nmetadata:\n  name: bad\n spec:\n  memory: 64\n",
         Expect(5, "", ("YAML syntax error",))),
    case("yaml-over-indented-key",
         vm_yaml("  memory: 64", "    vcpus: 2"),
         Expect(7, "", ("YAML syntax error",))),
    case("yaml-unclosed-quote",
         'apiVersion: kvmops/v1\nkind: VirtualMachine\nmetadata:\n  name: "bad\nspec:\n  memory: 64\n',
         Expect(4, "", ("YAML syntax error", "quote"))),
    case("yaml-tab-indentation",
         "apiVersion: kvmops/v1\nkind: VirtualMachine\nmetadata:\n\tname: bad\nspec:\n  memory: 64\n",
         Expect(4, "", ("YAML syntax error", "tab"))),
    # --- wrong types ---------------------------------------------------------------------
    case("vcpus-is-a-string", vm_yaml("  memory: 64", "  vcpus: two"),
         Expect(7, "spec.vcpus", ("expected an integer", "'two'"))),
    case("memory-is-a-list", vm_yaml("  memory: [64]"),
         Expect(6, "spec.memory", ("expected an integer or a string", "2GiB", "got a list"))),
    case("memory-is-a-boolean", vm_yaml("  memory: yes"),
         Expect(6, "spec.memory", ("got a boolean",))),
    case("name-is-a-mapping", vm_yaml("  memory: 64", name="{first: web}"),
         Expect(4, "metadata.name", ("expected a string", "got a mapping"))),
    case("spec-is-a-list", vm_yaml("  - memory", "  - 64"),
         Expect(5, "spec", ("expected a mapping", "got a list"))),
    case("mapping-key-is-a-list", vm_yaml("  memory: 64", "  [a]: b"),
         Expect(7, "spec", ("mapping key must be a plain value",))),
    # --- unknown fields ------------------------------------------------------------------
    case("unknown-top-level-field", vm_yaml("  memory: 64") + "status: running\n",
         Expect(7, "status", ("unknown field 'status'", "allowed: apiVersion, kind, metadata, spec"))),
    case("unknown-spec-field", vm_yaml("  memroy: 64", "  memory: 64"),
         Expect(6, "spec.memroy", ("unknown field 'memroy'", "did you mean 'memory'?"))),
    case("unknown-disk-field", disk_yaml("      size: 1", "      sise: 2"),
         Expect(11, "spec.disks[0].sise", ("unknown field 'sise'", "did you mean 'size'?"))),
    # --- out of range --------------------------------------------------------------------
    case("memory-negative", vm_yaml("  memory: -64"),
         Expect(6, "spec.memory", ("-64 is too small", "minimum is 16"))),
    case("memory-negative-with-unit", vm_yaml("  memory: '-64MiB'"),
         Expect(6, "spec.memory", ("'-64MiB' is not valid", "e.g. 2GiB"))),
    case("disk-size-negative", disk_yaml("      size: -1"),
         Expect(10, "spec.disks[0].size", ("-1 is too small", "minimum is 1"))),
    case("vcpus-zero", vm_yaml("  memory: 64", "  vcpus: 0"),
         Expect(7, "spec.vcpus", ("0 is too small", "minimum is 1"))),
    case("memory-10e30", vm_yaml(f"  memory: {10**30}"),
         Expect(6, "spec.memory", ("too large", "maximum is 16777216"))),
    case("memory-huge-with-unit", vm_yaml("  memory: 999999999999999TiB"),
         Expect(6, "spec.memory", ("out of range", "between 16 MiB and 16 TiB"))),
    case("vcpus-10e6", vm_yaml("  memory: 64", f"  vcpus: {10**6}"),
         Expect(7, "spec.vcpus", ("1000000 is too large", "maximum is 1024"))),
    case("disk-size-10e12-gib", disk_yaml(f"      size: {10**12}"),
         Expect(10, "spec.disks[0].size", ("too large", "maximum is 65536"))),
    case("disk-size-10e12-gib-with-unit", disk_yaml(f"      size: {10**12}GiB"),
         Expect(10, "spec.disks[0].size", ("out of range", "between 1 MiB and 64 TiB"))),
    # --- bad units -----------------------------------------------------------------------
    case("memory-unit-2G", vm_yaml("  memory: 2G"),
         Expect(6, "spec.memory", ("'2G' is not valid", "2GiB"))),
    case("memory-lots", vm_yaml("  memory: lots"),
         Expect(6, "spec.memory", ("'lots' is not valid", "2GiB"))),
    # --- duplicates ----------------------------------------------------------------------
    case("duplicate-names-across-files",
         {"a.yaml": vm_yaml("  memory: 64", name="dup"), "sub/b.yaml": vm_yaml("  memory: 128", name="dup")},
         Expect(4, "metadata.name", ("'dup' is declared 2 times", "must be unique"), file="a.yaml"),
         Expect(4, "metadata.name", ("'dup' is declared 2 times", "must be unique"), file="sub/b.yaml")),
    case("duplicate-name-of-a-running-vm", vm_yaml("  memory: 128", name="web"),
         Expect(4, "metadata.name", ("'web' is declared 2 times",), file="web.yaml"),
         Expect(4, "metadata.name", ("'web' is declared 2 times",))),
    case("duplicate-key", vm_yaml("  memory: 64", "  vcpus: 1", "  memory: 128"),
         Expect(8, "spec.memory", ("duplicate key 'memory'", "first at line 6", "keep one"))),
    # --- hostile names -------------------------------------------------------------------
    *[
        case(id, vm_yaml("  memory: 64", name=name),
             Expect(4, "metadata.name", ("is not valid", "use letters, digits, '-', '_' and '.'")))
        for id, name in [
            ("name-with-slash", "web/../etc"), ("name-dotdot", "'..'"), ("name-xml-markup", "'<x>'"),
            ("name-ampersand", "'a&b'"), ("name-double-quote", "'a\"b'"), ("name-single-quote", "\"a'b\""),
        ]
    ],
    case("name-empty", vm_yaml("  memory: 64", name="''"),
         Expect(4, "metadata.name", ("must not be empty",))),
    case("name-too-long", vm_yaml("  memory: 64", name="a" * 64),
         Expect(4, "metadata.name", ("64 characters long", "at most 63"))),
    # --- aliases and tags ----------------------------------------------------------------
    case("alias-bomb-billion-laughs", BILLION_LAUGHS,
         Expect(ANY, ANY, ("more than 50000 YAML nodes", "alias bomb"))),
    case("alias-recursive-mapping",
         "apiVersion: kvmops/v1\nkind: VirtualMachine\nmetadata: &m\n  name: bad\n  labels: *m\nspec:\n  memory: 64\n",
         Expect(5, "metadata.labels", ("recursive YAML alias",))),
    # PyYAML's composer keeps no position for an alias inside a list, so the loop is
    # reported where the anchored list starts.
    case("alias-recursive-sequence", vm_yaml("  memory: 64", "  disks: &loop", "    - *loop"),
         Expect(7, "spec.disks[0]", ("recursive YAML alias",))),
    case("python-name-tag", vm_yaml("  memory: 64", name="!!python/name:os.system"),
         Expect(4, "metadata.name", ("unsupported YAML value", "python/name:os.system"))),
    case("python-object-tag-on-mapping",
         "apiVersion: kvmops/v1\nkind: VirtualMachine\nmetadata:\n  name: bad\nspec: !!python/object:builtins.dict\n"
         "  memory: 64\n",
         Expect(5, "spec", ("python/object",))),
    case("python-apply-tag-on-sequence", vm_yaml("  memory: !!python/object/apply:os.system ['true']"),
         Expect(6, "spec.memory", ("python/object/apply",))),
    case("custom-tag-on-scalar", vm_yaml("  memory: !Ref mem"),
         Expect(6, "spec.memory", ("unsupported YAML value", "!Ref"))),
    case("custom-tag-on-mapping",
         "apiVersion: kvmops/v1\nkind: VirtualMachine\nmetadata: !Secret\n  name: bad\nspec:\n  memory: 64\n",
         Expect(3, "metadata", ("!Secret",))),
    # PyYAML's constructors crashed on these, and the crash aborted every file's pass (issue 8, item 7)
    case("timestamp-tag-on-a-size", vm_yaml("  memory: !!timestamp 1GiB"),
         Expect(6, "spec.memory", ("'1GiB' is not a valid '!!timestamp' value", "remove the tag"))),
    case("bool-tag-on-junk", vm_yaml("  memory: 64", "  autostart: !!bool zz"),
         Expect(7, "spec.autostart", ("'zz' is not a valid '!!bool' value", "remove the tag"))),
    case("int-tag-on-junk", vm_yaml("  memory: !!int lots"),
         Expect(6, "spec.memory", ("'lots' is not a valid '!!int' value",))),
    case("merge-tag-on-a-value", vm_yaml("  memory: !!merge 64"),
         Expect(6, "spec.memory", ("unsupported YAML value", "!!merge"))),
    case("memory-nan", vm_yaml("  memory: .nan"),
         Expect(6, "spec.memory", ("not a number",))),
    case("shutdown-timeout-infinite", vm_yaml("  memory: 64", "  shutdownTimeout: .inf"),
         Expect(7, "spec.shutdownTimeout", ("infinite", "finite number"))),
    case("memory-5000-digits", vm_yaml("  memory: " + "9" * 5000),
         Expect(6, "spec.memory", ("5000 digits",))),
    case("nested-too-deep", "a: " + "[" * 100 + "]" * 100 + "\n",
         Expect(1, ANY, ("nested more than 32 levels deep",))),
    # --- not text ------------------------------------------------------------------------
    case("file-50-mb", HUGE,
         Expect(None, "", ("MB; manifests are limited to 1 MiB", "split it into several files"))),
    case("random-bytes", random.Random(1).randbytes(4096),
         Expect(None, "", ("binary data",))),
    case("nul-bytes", b"apiVersion: kvmops/v1\nkind: VirtualMachine\x00\x00\n",
         Expect(None, "", ("binary data (NUL bytes)",))),
    case("invalid-utf8", vm_yaml("  memory: 64", name="caf\xe9").encode("latin-1"),
         Expect(4, "", ("not valid UTF-8 (byte 0xe9)", "save the file as UTF-8"))),
    case("utf16-text", vm_yaml("  memory: 64").encode("utf-16"),
         Expect(None, "", ("UTF-16", "save the file as UTF-8"))),
    # --- not a manifest ------------------------------------------------------------------
    case("document-is-a-list", "- apiVersion: kvmops/v1\n- kind: VirtualMachine\n",
         Expect(1, "", ("must be a mapping with apiVersion, kind, metadata and spec",))),
    case("document-is-a-scalar", "just some text\n",
         Expect(1, "", ("must be a mapping with apiVersion, kind, metadata and spec",))),
    case("missing-kind", "apiVersion: kvmops/v1\nmetadata:\n  name: bad\nspec:\n  memory: 64\n",
         Expect(1, "kind", ("missing 'kind'", "expected VirtualMachine or StoragePool"))),
    case("missing-apiVersion", "kind: VirtualMachine\nmetadata:\n  name: bad\nspec:\n  memory: 64\n",
         Expect(1, "apiVersion", ("missing 'apiVersion'", "write apiVersion: kvmops/v1"))),
    case("unknown-kind", "apiVersion: kvmops/v1\nkind: VirtualMachin\nmetadata:\n  name: bad\nspec:\n  memory: 64\n",
         Expect(2, "kind", ("unknown kind 'VirtualMachin'", "expected VirtualMachine or StoragePool"))),
    case("wrong-apiVersion", "apiVersion: kvmops/v2\nkind: VirtualMachine\nmetadata:\n  name: bad\nspec:\n  memory: 64\n",
         Expect(1, "apiVersion", ("'kvmops/v2' is not supported", "write apiVersion: kvmops/v1"))),
    # --- bad values ----------------------------------------------------------------------
    case("mac-not-hex", vm_yaml("  memory: 64", "  networks:", "    - network: default", "      mac: '52:54:00:zz:00:01'"),
         Expect(9, "spec.networks[0].mac", ("is not valid", "52:54:00:12:34:56"))),
    case("mac-multicast", vm_yaml("  memory: 64", "  networks:", "    - network: default", "      mac: '01:54:00:00:00:01'"),
         Expect(9, "spec.networks[0].mac", ("multicast", "use a unicast one"))),
    case("uuid-malformed", vm_yaml("  memory: 64", "  uuid: not-a-uuid"),
         Expect(7, "spec.uuid", ("'not-a-uuid' is not valid", "write a UUID such as"))),
    case("network-and-bridge", vm_yaml("  memory: 64", "  networks:", "    - network: default", "      bridge: br0"),
         Expect(8, "spec.networks[0]", ("exactly one of 'network'", "or 'bridge'"))),
    case("pool-path-dotdot",
         "apiVersion: kvmops/v1\nkind: StoragePool\nmetadata:\n  name: store\nspec:\n  path: /var/lib/../../etc\n",
         Expect(6, "spec.path", ("is not valid", "without '..'"))),
    case("deletion-policy-typo", disk_yaml("      size: 1", "      deletionPolicy: Retian"),
         Expect(11, "spec.disks[0].deletionPolicy", ("'Retian' is not allowed", "use one of: Retain, Delete"))),
    # --- files and directories of the host (issue 8, item 3) -----------------------------
    case("user-data-symlink-out-of-the-tree",
         {"bad.yaml": vm_yaml("  memory: 64", "  cloudInit:", "    userDataFile: user-data"),
          "user-data": Link(SECRET)},
         Expect(8, "spec.cloudInit.userDataFile", ("outside the manifest tree", "keep the file inside"))),
    case("user-data-symlink-through-a-directory-out-of-the-tree",
         {"bad.yaml": vm_yaml("  memory: 64", "  cloudInit:", "    userDataFile: cloud/user-data"),
          "cloud": Link(".")},
         Expect(8, "spec.cloudInit.userDataFile", ("outside the manifest tree",))),
    case("password-file-absolute",
         vm_yaml("  memory: 64", "  graphics:", "    type: vnc", "    passwordFile: /etc/hostname"),
         Expect(9, "spec.graphics.passwordFile", ("is not valid", "relative to the manifest", "inside the manifest tree"))),
    case("password-file-symlink-out-of-the-tree",
         {"bad.yaml": vm_yaml("  memory: 64", "  graphics:", "    type: vnc", "    passwordFile: vnc.pass"),
          "vnc.pass": Link(SECRET)},
         Expect(9, "spec.graphics.passwordFile", ("outside the manifest tree",))),
    case("password-file-is-a-fifo",
         {"bad.yaml": vm_yaml("  memory: 64", "  graphics:", "    type: vnc", "    passwordFile: vnc.pass"),
          "vnc.pass": "fifo"},
         Expect(9, "spec.graphics.passwordFile", ("not a regular file",))),
    case("image-path-absolute", image_yaml("/etc/shadow"),
         Expect(8, "spec.source.path", ("is not valid", "relative to the manifest", "inside the manifest tree"))),
    case("image-path-symlink-out-of-the-tree", {"bad.yaml": image_yaml("base.qcow2"), "base.qcow2": Link(SECRET)},
         Expect(8, "spec.source.path", ("outside the manifest tree",))),
    case("manifest-symlink-out-of-the-tree", {"bad.yaml": Link(SECRET)},
         Expect(None, "", ("outside the manifest tree",))),
    *[
        case(f"pool-at-{id}", pool_yaml(path),
             Expect(6, "spec.path", ("is a system directory", "never makes one a storage pool", "/var/lib/kvmops/store")))
        for id, path in [
            ("etc", "/etc"), ("root", "/root"), ("libvirt-qemu", "/var/lib/libvirt/qemu"), ("double-slash", "//"),
            ("etc-dot", "/etc/."), ("etc-trailing-slashes", "/etc//"), ("double-slash-etc", "//etc"),
            ("under-etc", "/etc/cron.d"), ("root-ssh", "/root/.ssh"), ("usr-local", "/usr/local/pool"),
            ("lib64", "/lib64"), ("var-lib-libvirt", "/var/lib/libvirt"), ("home", "/home"), ("var-log", "/var/log"),
            ("a-hidden-home-directory", "/home/alice/.ssh"),
        ]
    ],
    case("pool-through-a-symlink-to-etc", {"bad.yaml": "POOL-THROUGH-LINK", "etc-link": Link("/etc")},
         Expect(6, "spec.path", ("leads to /etc on this host, a system directory",))),
    case("pool-dotdot-to-etc", pool_yaml("/var/lib/../../etc"),
         Expect(6, "spec.path", ("is not valid", "without '..'"))),
    case("vm-on-a-pool-at-etc",
         {"bad.yaml": pool_yaml("/etc", name="sys") + "---\n"
                      + vm_yaml("  memory: 64", "  disks:", "    - name: root", "      pool: sys", "      size: 1")},
         Expect(6, "spec.path", ("is a system directory",)),
         Expect(16, "spec.disks[0].pool", ("storage pool 'sys' cannot be created", "fix that manifest"))),
    # --- only wrong on this host (plan-time) ---------------------------------------------
    case("unknown-pool", vm_yaml("  memory: 64", "  disks:", "    - name: root", "      pool: nosuch", "      size: 1"),
         Expect(9, "spec.disks[0].pool", ("unknown storage pool 'nosuch'", "declare it in a StoragePool manifest"))),
    case("names-a-foreign-domain", vm_yaml("  memory: 64", name="legacy"),
         Expect(4, "metadata.name", ("not managed by kvmops", "kvmops adopt legacy"))),
]


@pytest.fixture(scope="session")
def huge_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a 50 MiB file of YAML comments, written once per session."""
    path = tmp_path_factory.mktemp("huge") / "huge.yaml"
    line = b"# " + b"x" * 1021 + b"\n"
    path.write_bytes(line * (50 * 1024))
    return path


def write_bad_files(directory: Path, content: object, request: pytest.FixtureRequest) -> None:
    """Put the case's file(s) into the manifest directory, next to web.yaml."""
    files = content if isinstance(content, dict) else {"bad.yaml": content}
    secret = directory.parent / SECRET
    secret.write_text("root:$y$j9T$not-for-guests:19000:0:99999:7:::\n", encoding="utf-8")
    secret.chmod(0o600)
    for relpath, data in files.items():
        path = directory / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, Link):
            path.symlink_to(data.target if data.target.startswith("/") else directory.parent / data.target)
        elif data == "fifo":
            os.mkfifo(path)
        elif data == "POOL-THROUGH-LINK":
            path.write_text(pool_yaml(str(directory / "etc-link")), encoding="utf-8")
        elif data is HUGE:
            huge = request.getfixturevalue("huge_manifest")
            try:
                os.link(huge, path)  # a real directory entry of 50 MB, without writing it again
            except OSError:
                path.symlink_to(huge)
        elif isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")


def problem_lines(output: str, directory: Path) -> list[str]:
    """Return the lines of ``output`` that report a problem in a file under ``directory``."""
    prefix = f"{directory}{os.sep}"
    return [line.strip() for line in output.splitlines() if line.strip().startswith(prefix)]


def matches(line: str, expect: Expect, directory: Path) -> bool:
    """Return whether a problem ``line`` is the one ``expect`` describes."""
    where = re.escape(str(directory / expect.file))
    if expect.line is None:
        where += r":(?! *\d)"
    elif expect.line is ANY:
        where += r":\d+:"
    else:
        where += f":{expect.line}:"
    field = r" [^ ]+:" if expect.path is ANY else (f" {re.escape(expect.path)}:" if expect.path else "")
    if not re.match(f"^{where}{field} ", line):
        return False
    return all(fragment in line for fragment in expect.says)


@pytest.mark.parametrize(("content", "expected"), CASES)
def test_bad_manifest_is_reported_in_one_line_and_changes_nothing(world, capsys, request, content, expected):
    """A malformed or hostile manifest makes apply exit 1 with one clear line per fault, and the host stays as it was."""
    write_bad_files(world.manifests, content, request)
    before = world.state()

    status = cli.main(["apply", str(world.manifests), "--connect", world.uri])
    out, err = capsys.readouterr()

    assert status == 1, out + err
    assert "Traceback" not in out + err
    assert "internal error" not in out + err
    lines = problem_lines(out, world.manifests)
    for expect in expected:
        found = [line for line in lines if matches(line, expect, world.manifests)]
        assert len(found) == 1, f"expected one line for {expect} among:\n" + "\n".join(lines)
    assert len(lines) == len(expected), "one line per problem, nothing else:\n" + "\n".join(lines)
    assert "Applying..." not in out
    assert "Pruning suspended" in out and "orphan" in out
    assert world.state() == before
    assert world.domains() == {"web", "orphan", "legacy"}


def test_without_the_bad_file_the_same_apply_would_prune_the_orphan(world, capsys):
    """The valid manifests alone prune the orphan and its Delete volume, so the cases above can fail."""
    before = world.state()

    status = cli.main(["apply", str(world.manifests), "--connect", world.uri])

    assert status == 0, capsys.readouterr()
    assert world.state() != before
    assert world.domains() == {"web", "legacy"}
    assert "orphan-scratch.qcow2" not in world.volumes()


def test_a_yaml_tag_in_one_file_leaves_the_other_files_planned(world, capsys):
    """Tags PyYAML cannot build are problems of their own file: validate and plan still judge and plan the rest."""
    (world.manifests / "a.yaml").write_text(vm_yaml("  memory: !!timestamp 1GiB", name="a"), encoding="utf-8")
    (world.manifests / "b.yaml").write_text(vm_yaml("  memory: 64", "  autostart: !!bool zz", name="b"), encoding="utf-8")
    (world.manifests / "c.yaml").write_text(vm_yaml("  memory: 64", name="c"), encoding="utf-8")

    validated = cli.main(["validate", str(world.manifests)])
    validate_out = capsys.readouterr().out
    planned = cli.main(["plan", str(world.manifests), "--connect", world.uri])
    plan_out = capsys.readouterr().out

    assert (validated, planned) == (1, 1)
    for out in (validate_out, plan_out):
        assert "internal error" not in out
        assert f"{world.manifests / 'a.yaml'}:6: spec.memory: " in out
        assert f"{world.manifests / 'b.yaml'}:7: spec.autostart: " in out
    assert "2 VirtualMachine(s)" in validate_out  # web and c
    assert "+ VirtualMachine c" in plan_out


def test_validate_with_a_host_refuses_a_new_pool_in_a_system_directory_but_not_an_existing_one(world, capsys):
    """validate --connect knows which pools exist: a new one at /etc is a problem, the existing 'default' is not judged."""
    (world.manifests / "pools.yaml").write_text(
        pool_yaml("/etc", name="store") + "---\n" + pool_yaml("/var/lib/libvirt/images", name="default"), encoding="utf-8")

    status = cli.main(["validate", str(world.manifests), "--connect", world.uri])
    lines = problem_lines(capsys.readouterr().out, world.manifests)

    assert status == 1
    assert lines == [f"{world.manifests / 'pools.yaml'}:6: spec.path: /etc is a system directory (host configuration); "
                     "kvmops never makes one a storage pool"]


def test_suite_covers_at_least_25_hostile_inputs():
    """The issue asks for at least 25 malformed or hostile manifests."""
    assert len(CASES) >= 25


def test_huge_manifest_is_really_50_mb(huge_manifest):
    """The 'file-50-mb' case uses a file of 50 MiB, far beyond the 1 MiB limit."""
    assert huge_manifest.stat().st_size == 50 * 1024 * 1024


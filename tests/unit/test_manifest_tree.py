"""Files a manifest refers to stay inside the manifest tree: symlinks, '..', FIFOs and races."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from reconciler.adapters import manifest_tree, manifests
from reconciler.core import model


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Return a manifest tree with a file inside, beside a secret outside it."""
    root = tmp_path / "repo"
    (root / "vms").mkdir(parents=True)
    (root / "vms" / "user-data").write_text("#cloud-config\n", encoding="utf-8")
    (tmp_path / "secret").write_text("root:hash:::\n", encoding="utf-8")
    return root


def document(relpath: str) -> model.Document:
    return model.Document(file=f"repo/{relpath}", relpath=relpath, index=0, line=1, body={})


def test_a_file_inside_the_tree_is_read_relative_to_its_manifest(tree):
    """A path in vms/web.yaml is read from vms/."""
    files = manifests.TreeFiles(str(tree))
    assert files.read(document("vms/web.yaml"), "user-data") == b"#cloud-config\n"


def test_a_symlink_that_stays_inside_the_tree_is_followed(tree):
    """A link to another file of the tree is fine."""
    (tree / "shared").mkdir()
    (tree / "shared" / "common").write_text("shared\n", encoding="utf-8")
    (tree / "vms" / "link").symlink_to("../shared/common")
    assert manifests.TreeFiles(str(tree)).read(document("vms/web.yaml"), "link") == b"shared\n"


@pytest.mark.parametrize(
    ("make", "path"),
    [
        pytest.param(lambda t: (t / "vms" / "ud").symlink_to(t.parent / "secret"), "ud", id="file-symlink"),
        pytest.param(lambda t: (t / "vms" / "ud").symlink_to("../../secret"), "ud", id="relative-file-symlink"),
        pytest.param(lambda t: (t / "vms" / "dir").symlink_to(t.parent), "dir/secret", id="directory-symlink"),
        pytest.param(lambda t: None, "../../secret", id="dotdot"),
    ],
)
def test_a_path_leading_out_of_the_tree_is_refused(tree, make, path):
    """Whatever the route (a link to a file, to a directory, '..'), a file outside the tree is not read."""
    make(tree)
    with pytest.raises(OSError, match="outside the manifest tree"):
        manifests.TreeFiles(str(tree)).read(document("vms/web.yaml"), path)


def test_an_absolute_path_is_refused(tree):
    """An absolute path is never read, even one inside the tree."""
    with pytest.raises(OSError, match="absolute path"):
        manifests.TreeFiles(str(tree)).read(document("vms/web.yaml"), str(tree / "vms" / "user-data"))


def test_a_fifo_is_refused_without_blocking(tree):
    """A FIFO would block a reader forever; it is refused at once."""
    os.mkfifo(tree / "vms" / "pipe")
    result: list[BaseException] = []
    reader = threading.Thread(target=lambda: _capture(result, tree), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "reading the FIFO blocked"
    assert "not a regular file" in str(result[0])


def _capture(result: list[BaseException], tree: Path) -> None:
    try:
        manifests.TreeFiles(str(tree)).read(document("vms/web.yaml"), "pipe")
    except OSError as exc:
        result.append(exc)


def swap_after_check(monkeypatch: pytest.MonkeyPatch, swap) -> None:
    """Run ``swap`` right after the tree resolves a path: an attacker winning the race."""
    real = manifest_tree.ManifestTree._resolve

    def resolve_then_swap(self, path):
        resolved = real(self, path)
        if path.endswith("user-data"):
            swap()
        return resolved

    monkeypatch.setattr(manifest_tree.ManifestTree, "_resolve", resolve_then_swap)


def test_a_file_swapped_for_a_symlink_after_the_check_is_not_followed(tree, monkeypatch):
    """O_NOFOLLOW: the last component turned into a link to the secret between check and open."""
    target = tree / "vms" / "user-data"
    files = manifests.TreeFiles(str(tree))

    def swap():
        target.unlink()
        target.symlink_to(tree.parent / "secret")

    swap_after_check(monkeypatch, swap)
    with pytest.raises(OSError, match="replaced by a symlink"):
        files.read(document("vms/web.yaml"), "user-data")


def test_a_directory_swapped_for_a_symlink_after_the_check_is_caught_on_the_opened_file(tree, monkeypatch):
    """/proc/self/fd: a directory of the path turned into a link out of the tree between check and open."""
    outside = tree.parent / "elsewhere"
    outside.mkdir()
    (outside / "user-data").write_text("stolen\n", encoding="utf-8")
    files = manifests.TreeFiles(str(tree))

    def swap():
        (tree / "vms").rename(tree / "vms.old")
        (tree / "vms").symlink_to(outside)

    swap_after_check(monkeypatch, swap)
    with pytest.raises(OSError, match="outside the manifest tree"):
        files.read(document("vms/web.yaml"), "user-data")


def test_a_file_over_the_limit_is_refused(tree):
    """Files a manifest refers to are small; a large one is refused before it is read."""
    (tree / "vms" / "big").write_bytes(b"x" * (manifests.MAX_FILE_BYTES + 1))
    with pytest.raises(manifest_tree.FileTooLarge):
        manifests.TreeFiles(str(tree)).read(document("vms/web.yaml"), "big")


def grow_after_opening(monkeypatch: pytest.MonkeyPatch, path, extra: bytes) -> None:
    """Append ``extra`` to ``path`` right after the tree opened it and took its size: a writer racing the reader."""
    real = manifest_tree.ManifestTree._descriptor

    def open_then_grow(self, relpath):
        opened = real(self, relpath)
        with open(path, "ab") as handle:
            handle.write(extra)
        return opened

    monkeypatch.setattr(manifest_tree.ManifestTree, "_descriptor", open_then_grow)


def test_a_file_that_grows_while_read_is_read_to_its_end(tree, monkeypatch):
    """The size taken at opening is a hint, not a cut: what was appended meanwhile is read too."""
    (tree / "vms" / "user-data").write_bytes(b"#cloud-config\n")
    grow_after_opening(monkeypatch, tree / "vms" / "user-data", b"x" * 100_000)
    data = manifests.TreeFiles(str(tree)).read(document("vms/web.yaml"), "user-data")
    assert data == b"#cloud-config\n" + b"x" * 100_000


def test_a_file_that_grows_over_the_limit_while_read_is_refused(tree, monkeypatch):
    (tree / "vms" / "user-data").write_bytes(b"#cloud-config\n")
    grow_after_opening(monkeypatch, tree / "vms" / "user-data", b"x" * manifests.MAX_FILE_BYTES)
    with pytest.raises(manifest_tree.FileTooLarge):
        manifests.TreeFiles(str(tree)).read(document("vms/web.yaml"), "user-data")


def test_a_file_of_exactly_the_limit_is_read(tree):
    (tree / "vms" / "big").write_bytes(b"x" * manifests.MAX_FILE_BYTES)
    assert len(manifests.TreeFiles(str(tree)).read(document("vms/web.yaml"), "big")) == manifests.MAX_FILE_BYTES


def test_check_returns_the_path_relative_to_the_tree(tree):
    """An Image source is checked now and read at apply time, by its path in the tree."""
    (tree / "vms" / "disk.raw").write_bytes(b"\0" * 512)
    assert manifests.TreeFiles(str(tree)).check(document("vms/image.yaml"), "disk.raw") == "vms/disk.raw"


def test_a_manifest_symlinked_from_outside_the_tree_is_a_problem_and_not_read(tree):
    """A *.yaml link to a file outside the tree is reported, and its content never becomes a document."""
    (tree.parent / "outside.yaml").write_text("apiVersion: kvmops/v1\n", encoding="utf-8")
    (tree / "vms" / "evil.yaml").symlink_to(tree.parent / "outside.yaml")
    (tree / "vms" / "ok.yaml").write_text("a: 1\n", encoding="utf-8")
    loaded = manifests.load(tree)
    assert [d.body for d in loaded.documents] == [{"a": 1}]
    assert [(Path(p.file).name, "outside the manifest tree" in p.message) for p in loaded.problems] == [("evil.yaml", True)]

"""Host paths are checked again when they are used, not only when the plan is made.

Between ``plan`` and ``apply`` (or the controller's plan and its execution) a symlink can
be put where a checked path was.  The pool directory is judged again right before the
pool is defined, and an Image file is opened through the manifest tree when it is read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from reconciler import errors
from reconciler.adapters import fetch
from reconciler.adapters import hypervisor as hv
from reconciler.core import planner
from reconciler.runtime import execute, reconcile
from tests import factories
from tests.integration.conftest import node_uri


def test_a_pool_directory_swapped_for_a_symlink_to_etc_after_the_plan_is_not_defined(tmp_path, manifest_dir):
    """The plan saw an ordinary directory; by apply time it leads to /etc, so the pool is refused and not defined."""
    directory = tmp_path / "pool-dir"
    directory.mkdir()
    factories.write(manifest_dir, "pool.yaml", factories.pool("swapped", str(directory)))
    with hv.Hypervisor.open(node_uri(tmp_path)) as hypervisor:
        planned = reconcile.make_plan(str(manifest_dir), hypervisor, settings=planner.Settings(prune=False))
        assert planned.plan.problems == ()
        directory.rmdir()
        directory.symlink_to("/etc")

        report = execute.execute(planned.plan, hypervisor)

        assert not report.ok
        assert "now leads to /etc, a system directory" in report.failures[0].error
        assert "swapped" not in {pool.name for pool in hypervisor.list_pools()}


@pytest.fixture
def image_tree(tmp_path: Path) -> tuple[Path, str]:
    """Return a manifest tree holding images/disk.raw, and that file's sha256."""
    tree = tmp_path / "repo"
    (tree / "images").mkdir(parents=True)
    content = b"\0" * 4096
    (tree / "images" / "disk.raw").write_bytes(content)
    (tmp_path / "secret").write_bytes(b"secret")
    return tree, hashlib.sha256(content).hexdigest()


def test_an_image_file_inside_the_tree_is_downloaded_and_verified(image_tree, tmp_path):
    """The Image source is read from the tree at apply time, and checked against its sha256."""
    tree, digest = image_tree
    with fetch.download(None, "images/disk.raw", digest, tree=str(tree), directory=str(tmp_path)) as verified:
        assert verified.read() == b"\0" * 4096


def test_an_image_file_swapped_for_a_symlink_out_of_the_tree_after_the_plan_is_not_read(image_tree, tmp_path):
    """A link to a host file put in place of the image after the plan is refused when the import reads it."""
    tree, _digest = image_tree
    (tree / "images" / "disk.raw").unlink()
    (tree / "images" / "disk.raw").symlink_to(tmp_path / "secret")
    with pytest.raises(errors.OperationRefused, match="outside the manifest tree"):
        fetch.download(None, "images/disk.raw", hashlib.sha256(b"secret").hexdigest(), tree=str(tree),
                       directory=str(tmp_path))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("kvmops-image-")] == []


def _cdrom_world(tmp_path: Path, manifest_dir: Path, iso: str) -> Path:
    """A pool directory holding ``iso`` (made by the caller) and a VM booting it as a CD-ROM."""
    directory = tmp_path / "isos"
    directory.mkdir()
    factories.write(manifest_dir, "pool.yaml", factories.pool("isos", str(directory)))
    factories.write(manifest_dir, "vm.yaml", factories.vm("installer", cdrom={"pool": "isos", "path": iso}))
    return directory


def test_a_cdrom_symlink_in_a_pool_leading_out_of_it_is_a_located_problem(tmp_path, manifest_dir, capsys):
    """A CD-ROM path inside a pool that is a symlink to a host file elsewhere is refused at plan time, at its field."""
    from reconciler import cli

    directory = _cdrom_world(tmp_path, manifest_dir, "install.iso")
    (directory / "install.iso").symlink_to("/etc/hostname")
    status = cli.main(["plan", str(manifest_dir), "--connect", node_uri(tmp_path)])
    out, err = capsys.readouterr()
    assert status == 1, out + err
    assert "vm.yaml:" in out + err and "spec.cdrom.path" in out + err and "/etc/hostname" in out + err


def test_a_cdrom_swapped_for_a_symlink_out_of_its_pool_after_the_plan_is_not_defined(tmp_path, manifest_dir):
    """The plan saw an ordinary ISO; by apply time it is a symlink to /etc/hostname, so the domain is not defined."""
    directory = _cdrom_world(tmp_path, manifest_dir, "install.iso")
    (directory / "install.iso").write_bytes(b"iso")
    with hv.Hypervisor.open(node_uri(tmp_path)) as hypervisor:
        planned = reconcile.make_plan(str(manifest_dir), hypervisor, settings=planner.Settings(prune=False))
        assert planned.plan.problems == ()
        (directory / "install.iso").unlink()
        (directory / "install.iso").symlink_to("/etc/hostname")

        report = execute.execute(planned.plan, hypervisor)

        assert not report.ok
        assert "leads to /etc/hostname, outside that pool" in report.failures[0].error
        assert "installer" not in {record.name for record in hypervisor.list_domains()}

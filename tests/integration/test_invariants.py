"""Invariants over whole manifest sets: plans tell the truth.

For the examples in ``manifests/`` and ``examples/``, and for a generated set that sets
every field of every kind (:mod:`tests.manifest_sets`):

* ``kvmops diff --base HEAD`` on an unchanged tree is empty (a real git repository in
  ``tmp_path``, no hypervisor at all);
* the offline converged host is what an apply on libvirt's test driver leaves, resource
  by resource, and a plan after that apply is empty (see also ``tests/e2e/test_invariants.py``
  for the real libvirtd).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.adapters import hypervisor as hv
from reconciler.core import offline, planner
from reconciler.runtime import observe, reconcile
from tests import manifest_sets
from tests.integration.conftest import node_uri, volume_xml
from tests.integration.test_diff import UNREACHABLE, Repo

REPO = Path(__file__).resolve().parents[2]


def example_trees() -> list:
    return [pytest.param(REPO / "manifests", id="manifests"),
            pytest.param(REPO / "examples" / "cloud-images", id="examples-cloud-images")]


def unchanged_diff(tree_writer, tmp_path: Path, capsys: pytest.CaptureFixture) -> dict:
    """Commit the tree ``tree_writer(directory)`` writes; return ``kvmops diff --base HEAD``'s JSON plan of it."""
    repo = Repo(tmp_path / "repo")
    tree_writer(repo.manifests)
    repo.commit("the manifests")
    capsys.readouterr()
    status = cli.main(["diff", str(repo.manifests), "--base", "HEAD", "--output", "json", "--detailed-exitcode"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    plan = json.loads(out)
    assert plan["problems"] == []
    return {"status": status, "changed": [r for r in plan["resources"] if r["actions"] or r["changes"] or r["steps"]]}


@pytest.mark.parametrize("tree", example_trees())
def test_diff_of_an_unchanged_example_tree_is_empty(tree, tmp_path, capsys, monkeypatch):
    """``kvmops diff --base HEAD`` on an unchanged copy of an example tree plans nothing, for every kind."""
    monkeypatch.setenv("KVMOPS_CONNECT", UNREACHABLE)
    result = unchanged_diff(lambda directory: shutil.copytree(tree, directory), tmp_path, capsys)
    assert result == {"status": 0, "changed": []}



def test_diff_of_an_unchanged_tree_setting_every_field_is_empty(tmp_path, capsys, monkeypatch):
    """``kvmops diff --base HEAD`` on an unchanged tree that sets every schema field plans nothing."""
    monkeypatch.setenv("KVMOPS_CONNECT", UNREACHABLE)
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    result = unchanged_diff(
        lambda directory: manifest_sets.write_every_field(directory, prefix="kvmops-inv", pool_dir=pool_dir),
        tmp_path, capsys,
    )

    assert result == {"status": 0, "changed": []}


# --- apply, then look: libvirt's test driver ---------------------------------------------------


def every_field_host(tmp_path: Path):
    """Return (URI, manifest directory) of a test-driver host prepared for the every-field set."""
    iso, kernel, initrd = manifest_sets.media_volumes("kvmops-inv")
    uri = node_uri(tmp_path, volumes="".join(volume_xml(name, 1) for name in (iso, kernel, initrd)))
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    directory = tmp_path / "manifests"
    manifest_sets.write_every_field(directory, prefix="kvmops-inv", pool_dir=pool_dir, with_downloads=False, with_uploads=False,
                                    media_pool="default")
    return uri, directory


def test_apply_of_every_field_then_plan_is_empty_and_equals_the_offline_host(tmp_path):
    """After an apply of the every-field set on the test driver the next plan is empty, and the host is,
    resource by resource, what the offline converged host of ``kvmops diff`` says it would be."""
    uri, directory = every_field_host(tmp_path)
    settings = planner.Settings()
    with hv.Hypervisor.open(uri) as hypervisor:
        before = observe.collect(hypervisor)
        result = reconcile.apply(str(directory), hypervisor, settings=settings)
        assert result.converged, result.report
        again = reconcile.make_plan(str(directory), hypervisor, settings=settings)
        assert again.plan.problems == ()
        assert [r.name for r in again.plan.resources if r.actions or r.changes or r.steps] == []
        offline_host = offline.converged_host(again.desired, uri=uri, settings=settings, start=before)
    assert manifest_sets.differences(again.actual, offline_host) == {}


def test_apply_of_the_example_manifests_then_plan_is_empty_and_equals_the_offline_host(tmp_path):
    """The examples in manifests/ apply on the test driver, plan empty afterwards, and match the offline host."""
    directory = tmp_path / "manifests"
    shutil.copytree(REPO / "manifests", directory)
    settings = planner.Settings()
    with hv.Hypervisor.open(node_uri(tmp_path)) as hypervisor:
        before = observe.collect(hypervisor)
        result = reconcile.apply(str(directory), hypervisor, settings=settings)
        assert result.converged, result.report
        again = reconcile.make_plan(str(directory), hypervisor, settings=settings)
        assert again.plan.problems == ()
        assert [r.name for r in again.plan.resources if r.actions or r.changes or r.steps] == []
        offline_host = offline.converged_host(again.desired, uri=hypervisor.uri, settings=settings, start=before)
    assert manifest_sets.differences(again.actual, offline_host) == {}

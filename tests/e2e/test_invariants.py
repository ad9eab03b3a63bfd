"""Invariants on a real libvirtd (qemu:///system, TCG): plans tell the truth for every field of every kind.

The every-field set of :mod:`tests.manifest_sets` (Images from files, cloud-init seeds,
UEFI, every CPU mode, NAT, isolated and bridge networks) is applied; then the next plan
is empty, and the host as ``kvmops state export`` sees it is, resource by resource, what
the offline converged host of ``kvmops diff`` (planned from the host exported before the
apply) says it would be.
"""

from __future__ import annotations

import json

import pytest

from reconciler.core import actual, offline, planner, snapshot
from reconciler.runtime import reconcile
from tests import manifest_sets
from tests.e2e.commands import apply_ok, kvmops, output, plan_is_empty

pytestmark = pytest.mark.e2e


def exported(host, name: str) -> snapshot.Snapshot:
    """Return ``kvmops state export`` of the host now."""
    path = host.workdir / f"{name}.json"
    result = host.kvmops("state", "export", "--connect", host.uri, "-o", str(path))
    assert result.returncode == 0, output(result)
    return snapshot.from_data(json.loads(path.read_text(encoding="utf-8")))


def test_apply_of_every_field_then_plan_is_empty_and_equals_the_offline_host(host):
    """After an apply of every field of every kind the plan is empty, and state export shows the offline host."""
    manifest_sets.write_every_field(host.manifests, prefix=host.prefix, pool_dir=host.pool_path,
                                    with_downloads=False, boot_installs=False)
    before = exported(host, "before")
    apply_ok(host)
    plan_is_empty(host)
    after = exported(host, "after")
    desired = reconcile.load_desired(str(host.manifests))
    settings = planner.Settings(scope=host.prefix, prune=False)
    expected = offline.converged_host(desired, uri=host.uri, scope=host.prefix, settings=settings,
                                      start=before.observation)
    assert manifest_sets.differences(actual.interpret(after.observation), expected, prefix=host.prefix) == {}
    second = kvmops(host, "apply", host.manifests)
    assert second.returncode == 0 and "No changes." in second.stdout, output(second)

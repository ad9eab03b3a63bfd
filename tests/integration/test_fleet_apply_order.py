"""The fleet apply's order across hosts: a migration waits for its destination's prerequisites, on two test-driver hosts.

The test driver cannot migrate, so what is shown is the decision before libvirt is asked:
a migration whose destination pool did not converge in the hosts' first phase is skipped,
and the VM stays where it is, untouched.
"""

from __future__ import annotations

import threading
from pathlib import Path

from reconciler.adapters import hypervisor as hv
from reconciler.core import fleet
from reconciler.core import plan as plans
from reconciler.runtime import execute, fleet_reconcile
from tests.integration.conftest import node_uri, owned_domain_xml

UUID = "7b1c2d3e-0000-4000-8000-0000000000b1"


def migration(destination_uri: str) -> plans.ResourcePlan:
    return plans.ResourcePlan(
        "VirtualMachine", "app", (plans.Action.MIGRATE,),
        steps=(plans.MigrateDomain("app", UUID, "h1", "h2", destination_uri, plans.MigrationMode.OFFLINE),),
        requires=("h2:StoragePool/fast",),
    )


def test_a_migration_whose_destination_pool_failed_is_skipped_and_the_vm_stays(tmp_path: Path):
    (tmp_path / "h1").mkdir()
    (tmp_path / "h2").mkdir()
    with hv.Hypervisor.open(node_uri(tmp_path / "h1")) as h1, hv.Hypervisor.open(node_uri(tmp_path / "h2")) as h2:
        h1.define_domain(owned_domain_xml("app", UUID), "app")
        resource = migration(h2.uri)
        plan = fleet.FleetPlan("default", (
            fleet.HostPlan("h1", h1.uri, plans.Plan(h1.uri, (resource,)), vms=()),
            fleet.HostPlan("h2", h2.uri, plans.Plan(h2.uri, ()), vms=("app",)),
        ))
        first = {"h2": execute.ApplyReport((execute.ResourceOutcome("StoragePool", "fast", "failed", error="refused"),))}

        report = fleet_reconcile.run_migrations(plan, {"h1": h1, "h2": h2}, first, workers=2,
                                                 cancel=threading.Event(), only_from=None)

        assert [(o.name, o.status) for o in report.outcomes] == [("app", "skipped")]
        assert "h2:StoragePool/fast is not ready" in report.outcomes[0].error
        assert h1.domain_exists("app") and not h2.domain_exists("app")

        ready = fleet_reconcile.run_migrations(plan, {"h1": h1, "h2": h2}, {}, workers=2,
                                                cancel=threading.Event(), only_from="h2")
        assert ready.outcomes == ()  # an agent of h2 never starts a move off h1

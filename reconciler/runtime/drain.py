"""Moving VMs off one Host of a fleet: ``kvmops drain`` (the host answers) and ``evacuate`` (it is dead).

Both are a fleet plan with one Host changed: ``drain`` plans it cordoned
(``schedulable: false``), so placement moves its VMs to the other Hosts by live migration;
``evacuate`` defines a dead Host's VMs anew elsewhere, which only a confirmation that the
host is down for good makes safe. The plan and apply are :mod:`reconciler.runtime.fleet_reconcile`'s.
"""

from __future__ import annotations

import dataclasses

from reconciler import errors
from reconciler.core import model
from reconciler.runtime import fleet_reconcile, reconcile


def load_fleet(path: str, host: str, verb: str, *, revision: str = "") -> model.DesiredState:
    """Load the manifests at ``path``, refusing any without Hosts or without Host ``host``."""
    with reconcile.gc_paused():
        desired = reconcile.load_desired(path, revision=revision)
    if not desired.hosts:
        raise errors.KvmopsError(f"{verb} {host}: {path} declares no Host; {verb} moves VMs between "
                                 "the Hosts of a fleet")
    if verb == "evacuate" and host not in desired.hosts:
        raise errors.KvmopsError(
            f"evacuate {host}: no Host manifest declares it; evacuate is for a declared Host that is dead. For a host "
            f"whose manifest is gone, `kvmops forget-host {host}` removes it from the fleet's marks")
    fleet_reconcile.require_host(host, desired)
    return desired


def cordoned(desired: model.DesiredState, host: str) -> model.DesiredState:
    """Return ``desired`` with Host ``host`` unschedulable: no VM may stay or be placed there."""
    return dataclasses.replace(desired, hosts={
        **desired.hosts, host: dataclasses.replace(desired.hosts[host], schedulable=False)})


def drain_title(host: str) -> str:
    """Return the heading of a drain's plan."""
    return f"kvmops drain {host}: cordoned, its VMs move to the other Hosts"


def cordon_note(host: str) -> str:
    """Return the reminder that a drain's cordon lasts for the command only."""
    return (f"the cordon holds for this command only: set spec.schedulable: false in Host "
            f"{host}'s manifest to keep new VMs off it (VMs that moved stay where they are)")


def refuse_unconfirmed_evacuation(host: str, *, confirmed: bool) -> None:
    """Refuse an evacuation unless the host was declared dead (``--host-is-dead``): its VMs would run twice."""
    if not confirmed:
        raise errors.KvmopsError(
            f"evacuate {host} defines its VMs anew on other Hosts without asking it: if it still runs "
            "them, they run twice and write the same disks. Make sure it is down for good (powered off, fenced), "
            f"then say --host-is-dead; for a host that answers, use `kvmops drain {host}`"
        )


def evacuate_title(host: str) -> str:
    """Return the heading of an evacuation's plan."""
    return f"kvmops evacuate {host} (declared dead): its VMs are defined anew on the other Hosts"

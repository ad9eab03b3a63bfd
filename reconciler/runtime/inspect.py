"""See and reach managed VMs: ``kvmops status``, ``wait`` and ``ssh``.

A VM's status combines what libvirt says (power, devices, the owner mark), where its
addresses come from (the network's DHCP leases, the guest agent, the host's ARP table,
tried in that order), and, when the manifests are given, what a plan says about it
(``Drifted`` when it would change, ``Error`` when it cannot be planned).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from reconciler import defaults, errors
from reconciler.adapters import hypervisor as hv
from reconciler.core import model, planner
from reconciler.core import plan as plans
from reconciler.runtime import observe

ADDRESS_SOURCES = ("lease", "agent", "arp")
@dataclass(frozen=True)
class Address:
    """An IP address of a VM, and who told us."""

    ip: str
    prefix: int
    mac: str
    source: str

    @property
    def family(self) -> str:
        """Return ``ipv6`` or ``ipv4``."""
        return "ipv6" if ":" in self.ip else "ipv4"


def addresses(hypervisor: hv.Hypervisor, domain: model.ObservedDomain) -> list[Address]:
    """Return the addresses of a running domain learnt since its current boot, from the first source that knows any.

    A libvirt network's DHCP server keeps a guest's lease for an hour, so right after a
    restart it still reports the previous boot's address.  Where kvmops can tell when the
    domain started (a local QEMU), a lease counts only if granted or renewed since then,
    and the ARP table, which remembers old neighbours too, is not asked about a NIC that
    has a lease.  Elsewhere every lease counts.
    """
    if not domain.power.active:
        return []
    started = hypervisor.domain_started_at(domain.name, domain.uuid)
    sources = [s for s in ADDRESS_SOURCES
               if s != "agent" or (domain.definition is not None and domain.definition.guest_agent)]
    leased: set[str] = set()  # MACs the DHCP server knows, stale or not
    for source in sources:
        if source == "lease" and started is not None:
            found = []
            macs = {nic.mac.lower() for nic in domain.nics if nic.mac}
            for network in sorted({nic.source for nic in domain.nics if nic.kind == "network"}):
                for mac, ip, prefix, granted in hypervisor.dhcp_leases(network):
                    if mac not in macs:
                        continue
                    leased.add(mac)
                    if granted is None or granted > started:
                        found.append(Address(ip, prefix, mac, source))
        else:
            found = [
                Address(ip, prefix, mac, source)
                for mac, ip, prefix in hypervisor.interface_addresses(domain.name, source)
                if not (source == "arp" and mac in leased)
            ]
        found = [a for a in found if not a.ip.startswith(("127.", "fe80:", "::1"))]
        if found:
            return found
    return []


def status_rows(
    hypervisor: hv.Hypervisor,
    *,
    name: str | None = None,
    scope: str | None = None,
    plan: plans.Plan | None = None,
) -> list[dict]:
    """Return one row of facts per managed domain (in ``scope``, or all), for tables and JSON."""
    actual = observe.observe(hypervisor)
    by_name = {r.name: r for r in plan.resources if r.kind == "VirtualMachine"} if plan is not None else {}
    rows = []
    for domain_name, domain in sorted(actual.domains.items()):
        if not domain.owned or (name and domain_name != name):
            continue
        if scope and planner.scope_of(domain) != scope:
            continue
        try:
            rows.append(_row(hypervisor, domain, actual, by_name.get(domain_name), plan is not None))
        except errors.ObjectNotFound:
            continue  # undefined between the observation and its addresses: it is simply gone
    return rows


def _row(hypervisor, domain: model.ObservedDomain, actual: model.ActualState, planned, planned_at_all: bool) -> dict:
    definition = domain.definition
    owner = definition.owner if definition is not None else None
    pending = planner.restart_pending(domain.live, definition) if domain.live and definition else []
    conditions = []
    strategy = owner.run_strategy if owner is not None else model.RunStrategy.MANUAL
    not_powered_right = _power_mismatch(domain, strategy)
    if not_powered_right:
        conditions.append({"type": "NotRunning", "message": not_powered_right})
    if pending:
        conditions.append({"type": "RestartRequired",
                           "message": "; ".join(f"{f}: {old} -> {new}" for f, old, new in pending)})
    if planned_at_all:
        if planned is None and planner.mark_is_unbound(domain):
            conditions.append({"type": "Drifted", "message": f"no manifest declares it, but it is kept: {planner.UNBOUND_MARK_KEPT}"})
        elif planned is None:
            conditions.append({"type": "Drifted", "message": "no manifest declares it: it would be pruned"})
        elif planned.problems:
            conditions.append({"type": "Error", "message": "; ".join(p.message for p in planned.problems)})
        elif planned.changed:
            what = ", ".join(c.path for c in planned.changes) or ", ".join(a.value for a in planned.actions)
            conditions.append({"type": "Drifted", "message": f"a plan would change: {what}"})
    if domain.error:
        conditions.append({"type": "Error", "message": domain.error})
    if not any(c["type"] in ("Drifted", "Error") for c in conditions) and not not_powered_right \
            and (strategy is not model.RunStrategy.HALTED or not domain.power.active):
        conditions.insert(0, {"type": "Ready", "message": f"{domain.power.value}, as its runStrategy wants"})
    found = addresses(hypervisor, domain)
    configured_memory = definition.memory // 1024 if definition else None
    current = hypervisor.current_memory(domain.name) if domain.power.active else None
    current_memory = current // 1024 if current else None
    disks = []
    for disk in definition.disks if definition is not None else ():
        volume = actual.volumes.get((disk.pool, disk.volume)) if disk.pool else None
        disks.append({"target": disk.target, "source": disk.source,
                      "capacity_bytes": volume.capacity if volume else None})
    return {
        "name": domain.name,
        "state": domain.power.value,
        "desired": owner.run_strategy.desired_power if owner else None,
        "run_strategy": owner.run_strategy.value if owner else None,
        "conditions": conditions,
        "addresses": [{"ip": a.ip, "prefix": a.prefix, "mac": a.mac, "source": a.source, "family": a.family}
                      for a in found],
        "macs": [nic.mac for nic in definition.nics] if definition else [],
        "vcpus": definition.vcpus if definition else None,
        "memory_mib": (current_memory if current_memory is not None else configured_memory),
        "configured_memory_mib": configured_memory,
        "disks": disks,
        "manifest": owner.manifest if owner else None,
        "revision": owner.revision if owner else "",
        "scope": owner.scope if owner else "default",
        "uuid": domain.uuid,
    }


def _power_mismatch(domain: model.ObservedDomain, strategy: model.RunStrategy) -> str:
    """Return why a VM that its runStrategy wants running is not, and whether anything will start it; '' if none."""
    if domain.power is model.PowerState.RUNNING or domain.power is model.PowerState.TRANSITIONAL:
        return ""
    if strategy in (model.RunStrategy.ALWAYS, model.RunStrategy.RERUN_ON_FAILURE) and domain.power is model.PowerState.PAUSED:
        return f"paused; kvmops leaves paused domains alone: virsh resume {domain.name}"
    reason = domain.shutoff_reason.value if domain.shutoff_reason else domain.power.value
    if strategy is model.RunStrategy.ALWAYS:
        return f"{domain.power.value} ({reason}); runStrategy Always: the next apply or controller pass starts it"
    if strategy is model.RunStrategy.RERUN_ON_FAILURE:
        if domain.power is model.PowerState.CRASHED or domain.shutoff_reason in (
                model.ShutoffReason.CRASHED, model.ShutoffReason.FAILED):
            return f"{domain.power.value} ({reason}); runStrategy RerunOnFailure: the next apply or controller pass restarts it"
        if domain.shutoff_reason is not model.ShutoffReason.SHUTDOWN:
            return (f"{domain.power.value} ({reason}), and runStrategy RerunOnFailure restarts only after a crash, so "
                    f"nothing will start it: virsh start {domain.name}")
    return ""


CONDITIONS = defaults.WAIT_CONDITIONS


def wait(hypervisor: hv.Hypervisor, name: str, condition: str, *, timeout: float, interval: float = 0.5) -> str:
    """Wait until domain ``name`` has an IP, runs, or is stopped; return what was seen.

    An address counts only if learnt since the domain's current boot (see :func:`addresses`).
    Raises ``ObjectNotFound`` at once for a domain that does not exist, ``KvmopsError`` at
    once when waiting for ``running`` or ``ip`` on a VM whose runStrategy is Halted, and
    ``RetryableHypervisorError`` (a timeout) naming the last state seen.
    """
    deadline = time.monotonic() + timeout
    last = "not found"
    first = True
    while True:
        actual = observe.observe(hypervisor)
        domain = actual.domains.get(name)
        if first:
            _refuse_hopeless_wait(hypervisor, name, domain, condition)
            first = False
        if domain is not None:
            last = domain.power.value
            if condition == "running" and domain.power is model.PowerState.RUNNING:
                return f"{name} is running"
            if condition == "stopped" and not domain.power.active:
                return f"{name} is stopped ({domain.shutoff_reason or 'shut off'})"
            if condition == "ip":
                found = [a for a in addresses(hypervisor, domain) if a.family == "ipv4"] or addresses(hypervisor, domain)
                if found:
                    return found[0].ip
                last = f"{domain.power.value}, no address yet"
        if time.monotonic() >= deadline:
            raise errors.RetryableHypervisorError(f"timed out after {timeout:g}s waiting for {name} ({condition}); last seen: {last}")
        time.sleep(interval)


def _refuse_hopeless_wait(hypervisor: hv.Hypervisor, name: str, domain: model.ObservedDomain | None,
                          condition: str) -> None:
    """Raise at once for a wait that only its timeout could end."""
    if domain is None:
        raise errors.ObjectNotFound(f"no domain named {name} on {hypervisor.uri}; `kvmops status` lists the VMs")
    owner = domain.definition.owner if domain.definition is not None else None
    halted = owner is not None and owner.run_strategy is model.RunStrategy.HALTED
    if condition in ("running", "ip") and halted and not domain.power.active:
        raise errors.KvmopsError(
            f"{name} is shut off and its runStrategy is Halted, so nothing will start it; "
            f"set runStrategy: Always (and apply) or start it yourself (virsh start {name}) first"
        )


def wait_in_fleet(desired: model.DesiredState, name: str, condition: str, *, timeout: float, only_host: str | None,
                  host_workers: int, host_timeout: float = defaults.DEFAULT_HOST_TIMEOUT) -> str:
    """Wait as :func:`wait` does, on whichever Host has domain ``name`` (``only_host``: on that one); say which.

    Refuses a VM no reachable Host has, and one several Hosts define (give the Host).
    """
    from reconciler.runtime import fleet_reconcile  # here: `kvmops status` and `wait` on one host load no fleet

    with fleet_reconcile.connected_to_domain(desired, name, only_host=only_host, host_workers=host_workers,
                                             host_timeout=host_timeout) as (host, hypervisor):
        return f"{host}: " + wait(hypervisor, name, condition, timeout=timeout)


def status_rows_on(hypervisor: hv.Hypervisor, *, manifests: str | None, name: str | None, scope: str | None,
                   default_scope: str) -> list[dict]:
    """Return :func:`status_rows`, compared with ``manifests`` when given (so conditions say Drifted or Error)."""
    plan = None
    if manifests:
        from reconciler.runtime import reconcile  # here: without manifests, no manifest is read

        plan = reconcile.make_plan(manifests, hypervisor, settings=planner.Settings(scope=scope or default_scope)).plan
    return status_rows(hypervisor, name=name, scope=scope, plan=plan)


_SSH_OPTIONS_WITH_VALUES = set("BbcDEeFIiJLlmOopQRSWw")


def ssh_address(hypervisor: hv.Hypervisor, name: str) -> Address:
    """Return the address ``kvmops ssh`` connects to: the VM's first IPv4 address, else its first one."""
    _actual, domain = observe.observe_domain(hypervisor, name)
    found = addresses(hypervisor, domain)
    if not found:
        state = "is not running" if not domain.power.active else "has no address yet (no DHCP lease, guest agent or ARP entry)"
        raise errors.KvmopsError(f"{name} {state}; try `kvmops wait {name} --for ip` first")
    return next((a for a in found if a.family == "ipv4"), found[0])


def ssh_argv(ip: str, user: str | None, extra: list[str]) -> list[str]:
    """Return ssh's command line: ``extra``'s options (up to ``--`` or the first word), the user, ``ip``, the command."""
    options = []
    index = 0
    while index < len(extra) and extra[index].startswith("-"):
        if extra[index] == "--":  # ssh's own end of options: the command follows
            index += 1
            break
        options.append(extra[index])
        if len(extra[index]) == 2 and extra[index][1] in _SSH_OPTIONS_WITH_VALUES and index + 1 < len(extra):
            index += 1
            options.append(extra[index])
        index += 1
    return ["ssh", *options, *(["-l", user] if user else []), ip, *extra[index:]]

"""Check a host before trusting it with VMs: ``kvmops doctor``.

Each check says what it found and, when something is wrong, what to do about it.  Host
checks (CPU flags, KVM modules, ``/dev/kvm``, ``qemu-img``) look at the machine kvmops
runs on, so they are skipped for remote URIs; libvirt checks go through the connection;
manifest checks compare the pools and networks the manifests use, and the disk space
their volumes may need, with what the host has.
"""

from __future__ import annotations

import grp
import os
import shutil
import stat
from dataclasses import dataclass, field
from urllib.parse import urlparse

from reconciler import errors
from reconciler.adapters import hypervisor as hv
from reconciler.core import fleet, model, planner
from reconciler.core import policy as policies
from reconciler.core.quantity import format_bytes_approx
from reconciler.runtime import connection, deadlines, observe, reconcile


@dataclass(frozen=True)
class Check:
    """One finding: ``ok`` (True), a warning (None) or a failure (False)."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""


def host_checks() -> list[Check]:
    """Return the checks of the machine kvmops runs on."""
    checks = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        flags = []
    virt = [flag for flag in ("vmx", "svm") if flag in flags]
    checks.append(Check(
        "CPU virtualisation", True if virt else False,
        f"the CPU offers {virt[0]}" if virt else "no vmx (Intel VT-x) or svm (AMD-V) flag in /proc/cpuinfo",
        "" if virt else "enable virtualisation in the firmware (BIOS/UEFI) or the parent hypervisor; until then only "
                        "virtType: qemu (TCG, slow) works",
    ))
    modules = sorted(name for name in os.listdir("/sys/module") if name.startswith("kvm")) if os.path.isdir("/sys/module") else []
    if "kvm_pvm" in modules:
        checks.append(Check("KVM modules", None, "kvm_pvm (paravirtual KVM) is loaded: it starts domains but cannot run "
                            "standard guest kernels", "use virtType: qemu for guests (auto already does)"))
    elif any(m in modules for m in ("kvm_intel", "kvm_amd")):
        checks.append(Check("KVM modules", True, "loaded: " + ", ".join(modules)))
    else:
        checks.append(Check("KVM modules", False, "neither kvm_intel nor kvm_amd is loaded",
                            "modprobe kvm_intel (or kvm_amd); check dmesg if it fails"))
    try:
        info = os.stat("/dev/kvm")
    except OSError:
        checks.append(Check("/dev/kvm", False, "/dev/kvm does not exist", "load the KVM modules (see above)"))
    else:
        group = _group_name(info.st_gid)
        usable = info.st_mode & (stat.S_IRGRP | stat.S_IWGRP) == (stat.S_IRGRP | stat.S_IWGRP) and group == "kvm"
        usable = usable or info.st_mode & (stat.S_IROTH | stat.S_IWOTH) == (stat.S_IROTH | stat.S_IWOTH)
        checks.append(Check(
            "/dev/kvm access for QEMU", True if usable else False,
            f"mode {stat.filemode(info.st_mode)} group {group}",
            "" if usable else "QEMU runs as libvirt-qemu (group kvm): chgrp kvm /dev/kvm && chmod 660 /dev/kvm "
                              "(udev normally does this; without it libvirtd also re-probes QEMU on every call)",
        ))
    qemu_img = shutil.which("qemu-img")
    checks.append(Check("qemu-img", True if qemu_img else False, qemu_img or "not found",
                        "" if qemu_img else "apt-get install qemu-utils (libvirt needs it for qcow2 volumes)"))
    return checks


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def libvirt_checks(uri: str, *, timeout: float = deadlines.DEFAULT_HOST_TIMEOUT) -> tuple[list[Check], hv.Hypervisor | None]:
    """Return the connection checks, and the open connection when there is one (opened within ``timeout`` seconds)."""
    try:
        hypervisor = connection.open_within(uri, read_only=True, timeout=timeout)
    except errors.HypervisorError as exc:
        return [Check("libvirtd", False, str(exc), "start it: systemctl start libvirtd (or libvirtd -d)")], None
    library, hypervisor_version = hypervisor.version()
    checks = [Check("libvirtd", True, f"{uri} answers: libvirt {library}, hypervisor {hypervisor_version}")]
    host = hypervisor.host_info()
    types = ", ".join(host.virt_types) or "none"
    if host.kvm_unusable_reason:
        checks.append(Check("domain types", None, f"libvirt offers {types}, but {host.kvm_unusable_reason}",
                            "virtType auto falls back to qemu (TCG)"))
    else:
        checks.append(Check("domain types", True if host.virt_types else False, f"libvirt offers {types}"))
    return checks, hypervisor


def manifest_checks(desired: model.DesiredState, hypervisor: hv.Hypervisor, actual: model.ActualState) -> list[Check]:
    """Return checks of what the manifests use against what the host has."""
    checks = []
    needed: dict[str, int] = {}
    for spec in desired.vms.values():
        for disk in spec.disks:
            if disk.path is None and (disk.pool, disk.volume) not in actual.volumes:
                needed[disk.pool] = needed.get(disk.pool, 0) + disk.size
    pools = sorted({d.pool for s in desired.vms.values() for d in s.disks if d.path is None} | set(desired.pools))
    for name in pools:
        pool = actual.pools.get(name)
        if pool is None and name in desired.pools:
            checks.append(_future_pool_check(desired.pools[name], needed.get(name, 0), local=is_local(hypervisor.uri)))
            continue
        if pool is None:
            checks.append(Check(f"pool {name}", False, "not defined on the host", "declare it in a StoragePool manifest"))
            continue
        if not pool.active:
            checks.append(Check(f"pool {name}", False, "defined but not active", f"virsh pool-start {name}"))
            continue
        free = hypervisor.pool_free_bytes(name)
        want = needed.get(name, 0)
        if free is not None and want > free:
            checks.append(Check(f"pool {name}", None,
                                f"{format_bytes_approx(free)} free, new volumes may grow to {format_bytes_approx(want)}",
                                "qcow2 volumes are sparse, but full disks will not fit: free space or move disks"))
        else:
            checks.append(Check(f"pool {name}", True, f"active at {pool.path}, {format_bytes_approx(free or 0)} free"
                                + (f", new volumes up to {format_bytes_approx(want)}" if want else "")))
    networks = sorted({n.source for s in desired.vms.values() for n in s.nics if n.kind == "network"} | set(desired.networks))
    for name in networks:
        network = actual.networks.get(name)
        spec = desired.networks.get(name)
        if spec is not None and spec.definition.mode == "bridge" and is_local(hypervisor.uri) \
                and spec.definition.bridge and not host_bridge_exists(spec.definition.bridge):
            checks.append(_missing_bridge(f"network {name}", spec.definition.bridge, "or use mode: nat"))
            continue
        if network is None:
            declared = name in desired.networks
            checks.append(Check(f"network {name}", None if declared else False,
                                "declared in the manifests, not created yet" if declared else "not defined on the host",
                                "kvmops apply creates it" if declared else "declare it in a Network manifest"))
        elif not network.active:
            owned = network.owned
            checks.append(Check(f"network {name}", False if not owned else None, "defined but not active",
                                "kvmops apply starts it" if owned else f"virsh net-start {name}"))
        else:
            checks.append(Check(f"network {name}", True, "active"))
    reported = {n.definition.bridge for n in desired.networks.values() if n.definition.mode == "bridge"}
    bridges = sorted({n.source for s in desired.vms.values() for n in s.nics if n.kind == "bridge"} - reported)
    for bridge in bridges if is_local(hypervisor.uri) else ():
        if not host_bridge_exists(bridge):
            checks.append(_missing_bridge(f"bridge {bridge}", bridge))
    return checks


def policy_check(policy: policies.Policy | None, scope: str) -> Check:
    """Return what the host policy lets scope ``scope`` do: nothing is bounded without one."""
    if policy is None:
        return Check(
            "policy", None,
            "no policy is set: the manifests may use any pool directory, network, bridge and image source, ask for any "
            "size, and remove any number of VMs in one pass (only the fixed confinement rules hold)",
            "if several teams or repositories share this host, add a policy: block to the configuration file "
            "(--config or $KVMOPS_CONFIG); see the README, Host policy",
        )
    rules = policy.for_scope(scope)
    own = " (its own rules under policy.scopes)" if scope in dict(policy.scopes) else ""
    where = f" of {policy.source}" if policy.source else ""
    said = "; ".join(rules.describe()) or "no rule set (everything is allowed)"
    return Check("policy", True, f"scope {scope} obeys the policy{where}{own}: {said}")


def _future_pool_check(spec: model.PoolSpec, want: int, *, local: bool) -> Check:
    """Check a pool the manifests declare and apply will create: the filesystem its directory will be on."""
    name = f"pool {spec.name}"
    if not local:
        return Check(name, None, "declared in the manifests, not created yet", "kvmops apply creates it")
    parent = spec.path
    while not os.path.isdir(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    try:
        free = shutil.disk_usage(parent).free
    except OSError as exc:
        return Check(name, None, f"declared in the manifests, not created yet; cannot check {parent}: {exc.strerror}",
                     "kvmops apply creates it")
    where = f"not created yet; {spec.path} will be on the filesystem of {parent}, {format_bytes_approx(free)} free"
    if want > free:
        return Check(name, None, f"{where}, new volumes may grow to {format_bytes_approx(want)}",
                     "qcow2 volumes are sparse, but full disks will not fit: free space or choose another path")
    return Check(name, True, where + (f", new volumes up to {format_bytes_approx(want)}" if want else "")
                 + "; kvmops apply creates it")


def _missing_bridge(name: str, bridge: str, alternative: str = "") -> Check:
    return Check(name, False, f"the host bridge {bridge} does not exist; kvmops does not create host bridges",
                 f"create {bridge} on the host and enslave its uplink (e.g. with NetworkManager, systemd-networkd or "
                 f"/etc/network/interfaces)" + (f", {alternative}" if alternative else ""))


def host_bridge_exists(name: str) -> bool:
    """Return whether this machine has a network bridge called ``name``."""
    return os.path.isdir(os.path.join("/sys/class/net", name, "bridge"))


def is_local(uri: str) -> bool:
    """Return whether ``uri`` points at this machine."""
    return not urlparse(uri).hostname


def checks_on(uri: str, *, manifests: str | None, scope: str, policy: policies.Policy | None,
              host_timeout: float = deadlines.DEFAULT_HOST_TIMEOUT) -> list[Check]:
    """Return every check of ``kvmops doctor`` on one host: the machine (when local), libvirt, the policy, the manifests.

    The host gets ``host_timeout`` seconds to be connected to, and to stay silent in the middle of a call.
    """
    checks = host_checks() if is_local(uri) else []
    found, hypervisor = libvirt_checks(uri, timeout=host_timeout)
    checks += found
    checks.append(policy_check(policy, scope))
    if hypervisor is not None:
        with hypervisor:
            if manifests:
                desired = reconcile.load_desired(manifests)
                for problem in desired.problems:
                    checks.append(Check("manifests", False, str(problem)))
                checks += manifest_checks(desired, hypervisor, observe.observe(hypervisor))
    return checks


@dataclass(frozen=True)
class FleetChecks:
    """``kvmops doctor`` on a fleet: the manifests' problems, and each Host's checks (in name order)."""

    problems: tuple[model.Problem, ...]
    by_host: dict[str, list[Check]] = field(default_factory=dict)
    uris: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Return how many findings failed, the manifests' problems included."""
        return len(self.problems) + sum(1 for checks in self.by_host.values() for c in checks if c.ok is False)


def fleet_checks(desired: model.DesiredState, *, only_host: str | None, settings: planner.Settings,
                 host_timeout: float = deadlines.DEFAULT_HOST_TIMEOUT) -> FleetChecks:
    """Check every Host (``only_host``: that one) against the share of the manifests the fleet plan gives it.

    Each Host is checked side by side and gets ``host_timeout`` seconds, twice: to be
    connected to and observed, then to have the manifests' share checked against it. A
    Host that does not answer in time fails its ``libvirtd`` check, and the others are
    checked on time.
    """
    observed: dict[str, object] = {}
    by_host: dict[str, list[Check]] = {}
    opened: dict[str, hv.Hypervisor] = {}
    hosts = {name: spec for name, spec in sorted(desired.hosts.items()) if only_host is None or name == only_host}

    def look(spec: model.HostSpec) -> tuple[list[Check], hv.Hypervisor | None, object | None]:
        checks = host_checks() if is_local(spec.uri) and not spec.uri.startswith("test:") else []
        found, hypervisor = libvirt_checks(spec.uri, timeout=host_timeout)
        if hypervisor is None:
            return checks + found, None, None
        try:
            return checks + found, hypervisor, observe.observe(hypervisor)
        except errors.KvmopsError as exc:
            return [*checks, *found, Check("libvirtd", False, str(exc))], hypervisor, None

    def close_late(answer: tuple[list[Check], hv.Hypervisor | None, object | None]) -> None:
        if answer[1] is not None:
            answer[1].close()

    answers = deadlines.call_each({name: (lambda spec=spec: look(spec)) for name, spec in hosts.items()},
                                  timeout=host_timeout, what="being checked", late=close_late)
    try:
        for name, answer in answers.items():
            if isinstance(answer, errors.KvmopsError):
                by_host[name] = [Check("libvirtd", False, str(answer))]
                continue
            by_host[name], hypervisor, observation = answer
            if hypervisor is not None:
                opened[name] = hypervisor
            if observation is not None:
                observed[name] = observation
        if observed:
            plan = fleet.plan_fleet(desired, observed, settings)
            shares = {host.host: fleet.host_share(desired, desired.hosts[host.host], host.vms)
                      for host in plan.hosts if host.host in opened and host.host in observed}
            checked = deadlines.call_each(
                {name: (lambda name=name, share=share: manifest_checks(share, opened[name], observed[name]))
                 for name, share in shares.items()},
                timeout=host_timeout, what="having the manifests checked against it")
            for name, answer in checked.items():
                if isinstance(answer, errors.KvmopsError):
                    by_host[name].append(Check("libvirtd", False, str(answer)))
                    opened.pop(name)  # still busy: closing it would wait for the Host as well
                else:
                    by_host[name] += answer
    finally:
        for name, hypervisor in opened.items():
            deadlines.close_within(hypervisor.close, host_timeout)
    return FleetChecks(tuple(desired.problems), by_host, {name: desired.hosts[name].uri for name in by_host})

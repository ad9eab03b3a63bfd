"""Fleet manifests: kind Host, spec.placement, labels, shared pools and hosts selectors become the desired state."""

from __future__ import annotations

from pathlib import Path

from reconciler.adapters import manifests
from reconciler.core import desired, model
from tests.unit import builders

HOSTS = """\
apiVersion: kvmops/v1
kind: Host
metadata:
  name: kvm1
  labels: {rack: r1, zone: a}
spec:
  uri: qemu+ssh://root@kvm1/system
  capacity: {vcpus: 8, memory: 16GiB, cpuOvercommit: 2}
---
apiVersion: kvmops/v1
kind: Host
metadata:
  name: kvm2
spec:
  uri: qemu+ssh://root@kvm2/system
  schedulable: false
"""


def build(files: dict[str, str]) -> model.DesiredState:
    return desired.build(builders.manifest_set(files))


def messages(state: model.DesiredState) -> list[str]:
    return [str(p) for p in state.problems]


def test_host_manifests_become_hosts_with_capacity_labels_and_cordon():
    state = build({"hosts.yaml": HOSTS})
    assert state.problems == ()
    kvm1, kvm2 = state.hosts["kvm1"], state.hosts["kvm2"]
    assert (kvm1.uri, kvm1.labels, kvm1.schedulable) == ("qemu+ssh://root@kvm1/system", (("rack", "r1"), ("zone", "a")), True)
    assert kvm1.capacity == model.HostCapacity(vcpus=8, memory=16 * 1024 * 1024, cpu_overcommit=2.0, memory_overcommit=1.0)
    assert kvm2.capacity == model.HostCapacity() and not kvm2.schedulable


def test_a_set_without_hosts_has_no_hosts_and_vms_without_placement():
    state = build({"vms/web.yaml": builders.vm_yaml()})
    assert state.hosts == {} and state.vms["web"].placement is None and state.vms["web"].labels == ()


def test_placement_and_labels_are_read_from_the_vm():
    spec = ("  memory: 1GiB\n  placement:\n    hostSelector: {zone: a}\n    spreadBy: rack\n    antiAffinity: app\n")
    text = builders.vm_yaml(spec=spec).replace("  name: web\n", "  name: web\n  labels: {app: shop}\n")
    state = build({"hosts.yaml": HOSTS, "vms/web.yaml": text})
    assert state.problems == ()
    assert state.vms["web"].placement == model.Placement(host_selector=(("zone", "a"),), spread_by="rack", anti_affinity="app")
    assert state.vms["web"].labels == (("app", "shop"),)


def test_placement_naming_an_unknown_host_is_a_located_problem():
    state = build({"hosts.yaml": HOSTS, "vms/web.yaml": builders.vm_yaml(spec="  memory: 1GiB\n  placement: {host: kvm9}\n")})
    assert messages(state) == [
        "manifests/vms/web.yaml:7: spec.placement.host: no Host named 'kvm9' (the Hosts are kvm1, kvm2); add a Host "
        "manifest (kind: Host) or fix the name"
    ]
    assert "web" not in state.vms


def test_placement_naming_a_host_in_a_set_without_hosts_is_a_problem():
    state = build({"vms/web.yaml": builders.vm_yaml(spec="  memory: 1GiB\n  placement: {host: kvm1}\n")})
    assert [p.path for p in state.problems] == ["spec.placement.host"]
    assert "no Host is declared" in state.problems[0].message


def test_host_and_host_selector_together_are_a_problem():
    spec = "  memory: 1GiB\n  placement:\n    host: kvm1\n    hostSelector: {zone: a}\n"
    state = build({"hosts.yaml": HOSTS, "vms/web.yaml": builders.vm_yaml(spec=spec)})
    assert messages(state) == [
        "manifests/vms/web.yaml:9: spec.placement.hostSelector: give either host (one Host) or hostSelector (Hosts by "
        "label), not both"
    ]


def test_anti_affinity_on_a_label_the_vm_lacks_is_a_problem():
    state = build({"hosts.yaml": HOSTS,
                   "vms/web.yaml": builders.vm_yaml(spec="  memory: 1GiB\n  placement: {antiAffinity: app}\n")})
    assert [p.path for p in state.problems] == ["spec.placement.antiAffinity"]


def test_two_hosts_with_one_name_or_one_uri_are_located_problems():
    twice = HOSTS + "---\n" + HOSTS.split("---\n")[0]
    state = build({"hosts.yaml": twice})
    assert any("Host 'kvm1' is declared 2 times" in m for m in messages(state))
    same_uri = HOSTS.replace("qemu+ssh://root@kvm2/system", "qemu+ssh://root@kvm1/system")
    state = build({"hosts.yaml": same_uri})
    assert messages(state) == [
        "manifests/hosts.yaml:7: spec.uri: URI qemu+ssh://root@kvm1/system is also Host kvm2's; each Host needs its own",
        "manifests/hosts.yaml:15: spec.uri: URI qemu+ssh://root@kvm1/system is also Host kvm1's; each Host needs its own",
    ]
    assert state.hosts == {}


def test_host_capacity_memory_takes_units_and_rejects_nonsense():
    state = build({"hosts.yaml": HOSTS.replace("memory: 16GiB", "memory: lots")})
    assert [p.path for p in state.problems] == ["spec.capacity.memory"]


def test_pools_networks_and_images_carry_shared_and_hosts_selectors():
    pool = "apiVersion: kvmops/v1\nkind: StoragePool\nmetadata: {name: nfs}\nspec: {path: /srv/nfs, shared: true, hosts: {zone: a}}\n"
    net = "apiVersion: kvmops/v1\nkind: Network\nmetadata: {name: lan}\nspec: {mode: isolated, hosts: {}}\n"
    state = build({"pools/nfs.yaml": pool, "networks/lan.yaml": net})
    assert state.problems == ()
    assert (state.pools["nfs"].shared, state.pools["nfs"].hosts) == (True, (("zone", "a"),))
    assert state.networks["lan"].hosts == ()
    plain = build({"pools/p.yaml": pool.replace(", shared: true, hosts: {zone: a}", "")})
    assert (plain.pools["nfs"].shared, plain.pools["nfs"].hosts) == (False, None)


def test_the_fleet_example_builds_without_problems():
    root = Path(__file__).resolve().parents[2] / "examples" / "fleet"
    state = desired.build(manifests.load(root))
    assert state.problems == (), [str(p) for p in state.problems]
    assert sorted(state.hosts) == ["kvm1", "kvm2", "kvm3"]
    assert state.pools["shared"].shared and state.vms["db"].placement == model.Placement(host="kvm1")


def test_a_host_manifest_that_does_not_load_makes_the_hosts_incomplete():
    """Only then may a VM found nowhere be on a Host kvmops cannot see; a broken VM manifest says nothing of Hosts."""
    assert build({"hosts.yaml": HOSTS}).hosts_complete
    assert build({"hosts.yaml": HOSTS, "vm.yaml": "apiVersion: kvmops/v1\nkind: VirtualMachine\nmetadata: {name: x}\n"
                  "spec: {vcpus: lots}\n"}).hosts_complete
    assert not build({"hosts.yaml": HOSTS.replace("qemu+ssh://root@kvm2/system", "qemu+ssh://root@kvm2/ sys")}).hosts_complete
    assert not build({"hosts.yaml": HOSTS.replace("kvm2/system", "kvm1/system")}).hosts_complete
    assert not build({"hosts.yaml": HOSTS.replace("memory: 16GiB", "memory: lots")}).hosts_complete
    assert not build({"hosts.yaml": HOSTS + "---\n" + HOSTS.split("---\n")[0]}).hosts_complete


def test_a_host_uri_python_cannot_parse_is_a_located_problem_without_its_password():
    """A broken IPv6 address would otherwise pass and make `doctor` fail with an internal error."""
    state = build({"hosts.yaml": HOSTS.replace("qemu+ssh://root@kvm2/system", "qemu+tcp://root:pw@[::1/system")})
    assert messages(state) == [
        "manifests/hosts.yaml:15: spec.uri: not a URI kvmops can read (Invalid IPv6 URL); write it as libvirt "
        "documents it, e.g. qemu+tcp://[fe80::1]/system"
    ]
    assert sorted(state.hosts) == ["kvm1"]

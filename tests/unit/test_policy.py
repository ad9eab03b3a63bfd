"""The host policy in the pure core: every rule, the quota arithmetic, the held prune, and the planner obeying them.

Policies are written as the ``policy:`` block of a configuration file (a dict, read by
:func:`reconciler.core.policy.from_config`), manifests as YAML documents (through
:mod:`tests.factories`), hosts as observations read by ``actual.interpret``; see
:mod:`tests.unit.test_vm_features` for those helpers.
"""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.core import model, planner, render, validation
from reconciler.core import plan as plans
from reconciler.core import policy as policies
from tests import factories
from tests.unit import builders as b
from tests.unit.test_vm_features import (
    EMPTY_HOST, applied, build, host, image_doc, lab, resource, valid, vm_doc, volume, with_volumes,
)

POOL, POOL_PATH = b.POOL, b.POOL_PATH  # vmstore at /var/lib/kvmops/vmstore
DELETE = "Delete"


def rules(**body: object) -> policies.Policy:
    """Return the policy of a configuration whose ``policy:`` block is ``body``."""
    found = policies.from_config(body, source="/etc/kvmops/config.yaml")
    assert found is not None
    return found


def plan(state: model.DesiredState, observation: model.Observation = EMPTY_HOST, *, policy=None, scope="default",
         **settings) -> plans.Plan:
    return planner.plan_changes(state, host(observation),
                                settings=planner.Settings(policy=policy, scope=scope, **settings))


def converged(state: model.DesiredState, before: model.Observation = EMPTY_HOST, scope="default") -> model.Observation:
    """Return the host after applying ``state`` without a policy (what was there before the policy came)."""
    after = applied(plan(state, before, scope=scope), before)
    assert not plan(state, after, scope=scope).has_changes
    return after


def problems(result: plans.Plan) -> list[str]:
    return [str(p) for p in result.problems]


def blocked(result: plans.Plan, name: str, kind: str = "VirtualMachine") -> list[str]:
    """Return the problems of resource ``name``, which must be planned to do nothing."""
    found = resource(result, name, kind)
    assert found.steps == () and found.problems, (found.steps, found.problems)
    return [str(p) for p in found.problems]


def sized(name: str = "web", *, memory: str, **spec: object) -> dict:
    """Return a VirtualMachine document with ``memory`` and no disks unless given."""
    spec.setdefault("disks", [])
    return factories.vm(name, memory=memory, **spec)


def bridged(name: str, bridge: str) -> dict:
    """Return a bridge-mode Network document on host bridge ``bridge``."""
    return {"apiVersion": "kvmops/v1", "kind": "Network", "metadata": {"name": name},
            "spec": {"mode": "bridge", "bridge": bridge}}


def pool_doc(name: str, path: str) -> dict:
    return factories.pool(name, path)


def pooled(path: str, name: str = POOL) -> model.Observation:
    """Return an empty host whose only pool ``name`` is at ``path``."""
    return dataclasses.replace(EMPTY_HOST, pools=(b.observed_pool(name, path),))


# --- reading the policy ------------------------------------------------------------------------------


def test_no_policy_block_means_no_policy():
    """A configuration without ``policy:`` has no policy at all: the planner's behaviour is today's."""
    assert policies.from_config(None) is None


def test_a_scope_overrides_the_rules_for_every_scope_key_by_key():
    """Lists are replaced; limits and quota are overridden per key; scopes not named get the common rules."""
    policy = rules(allowedPoolPaths=["/srv/vms"], allowedNetworks=["default"],
                   limits={"maxVcpus": 8, "maxMemory": "16GiB"}, quota={"vcpus": 32, "vms": 10},
                   scopes={"team-a": {"allowedPoolPaths": ["/srv/team-a"], "limits": {"maxVcpus": 4},
                                      "quota": {"vcpus": 16}}})
    team_a, team_b = policy.for_scope("team-a"), policy.for_scope("team-b")
    assert team_a.pool_paths == ("/srv/team-a",) and team_b.pool_paths == ("/srv/vms",)
    assert team_a.networks == team_b.networks == ("default",)
    assert team_a.limits == policies.Limits(max_vcpus=4, max_memory=16 * b.MEMORY_1GIB)
    assert team_a.quota == policies.Quota(vms=10, vcpus=16)
    assert team_b.limits.max_vcpus == 8 and team_b.quota.vcpus == 32


def test_sizes_are_written_as_in_manifests():
    """Memory is integer MiB or a size; disk is integer GiB or a size; a prune limit is a count or a percentage."""
    common = rules(limits={"maxMemory": 2048, "maxDiskSize": 50}, quota={"memory": "4GiB", "disk": "1TiB"},
                   maxPrunePerPass="10%").default
    assert common.limits.max_memory == 2 * b.MEMORY_1GIB and common.limits.max_disk_size == 50 * b.GIB
    assert common.quota.memory == 4 * b.MEMORY_1GIB and common.quota.disk == 1024 * b.GIB
    assert common.max_prune_per_pass == policies.PruneLimit(percent=10)
    assert rules(maxPrunePerPass=3).default.max_prune_per_pass == policies.PruneLimit(count=3)


def test_the_configuration_schema_documents_and_checks_the_policy():
    """A policy block validates against the config schema; a misspelt rule or a bad size is a located problem."""
    good = {"policy": {"allowedPoolPaths": ["/srv/vms"], "imageSources": ["https://cloud.debian.org/images/", "/srv/img"],
                       "limits": {"maxVcpus": 8, "maxMemory": "16GiB", "allowedGraphicsListen": ["127.0.0.1"],
                                  "allowHostPassthrough": False},
                       "quota": {"vms": 10, "vcpus": 32, "memory": "64GiB", "disk": 2048},
                       "maxPrunePerPass": "10%", "allowDataLoss": False,
                       "scopes": {"team-a": {"quota": {"vcpus": 16}}}}}
    body, found = validation.validate_config(model.Document("config.yaml", "config.yaml", 0, 1, good))
    assert found == [] and body["policy"] == good["policy"]  # no defaults are filled in: unset means "no rule"
    for bad, where in (({"allowedPoolPath": ["/srv"]}, "policy.allowedPoolPath"), ({"limits": {"maxMemory": "16G"}}, "policy.limits.maxMemory"),
                       ({"maxPrunePerPass": "150%"}, "policy.maxPrunePerPass"),
                       ({"allowedPoolPaths": ["srv/vms"]}, "policy.allowedPoolPaths[0]"),
                       ({"scopes": {"team-a": {"scopes": {}}}}, "policy.scopes.team-a.scopes")):
        _, found = validation.validate_config(model.Document("config.yaml", "config.yaml", 0, 1, {"policy": bad}))
        assert found and found[0].path == where, (bad, [str(p) for p in found])


def test_the_effective_rules_are_described_in_the_configuration_files_words():
    """``kvmops doctor`` shows the rules a scope obeys with the keys an administrator writes."""
    lines = rules(allowedNetworks=[], limits={"maxMemory": "16GiB", "allowHostPassthrough": False},
                  quota={"disk": "1TiB"}, maxPrunePerPass="10%", allowDataLoss=False).default.describe()
    assert lines == ["allowedNetworks: (none)", "limits.maxMemory: 16 GiB", "limits.allowHostPassthrough: false",
                     "quota.disk: 1 TiB", "maxPrunePerPass: 10%", "allowDataLoss: false"]


# --- matching paths, names and URLs -------------------------------------------------------------------


@pytest.mark.parametrize(("path", "allowed"), [
    ("/srv/team-a", True), ("/srv/team-a/pool", True), ("/srv/team-a/../team-a/pool", True),
    ("/srv/team-a-evil/pool", False), ("/srv/team-a/../team-b/pool", False), ("srv/team-a/pool", False), ("/srv", False),
])
def test_a_path_is_inside_an_allowed_directory_only_after_normalising_and_at_a_slash(path, allowed):
    assert policies.inside(path, ("/srv/team-a",)) is allowed


def test_a_root_directory_allows_every_absolute_path():
    assert policies.inside("/anything/at/all", ("/",))


@pytest.mark.parametrize(("name", "allowed"), [
    ("default", True), ("team-a-lab", True), ("team-a-", True), ("team-b-lab", False), ("xteam-a-lab", False),
])
def test_a_star_in_a_name_pattern_matches_any_run_of_characters_and_nothing_else_is_special(name, allowed):
    assert policies.name_allowed(name, ("default", "team-a-*")) is allowed
    assert not policies.name_allowed("a.b", ("a?b",)) and not policies.name_allowed("axb", ("a.b",))


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://images.example.com/debian/12.qcow2", True),
    ("https://IMAGES.example.com/debian/12.qcow2", True),
    ("https://user:token@images.example.com/debian/12.qcow2", True),
    ("https://images.example.com/debianx/12.qcow2", False),  # not at a '/'
    ("https://images.example.com/debian/../evil/x.qcow2", False),
    ("https://images.example.com/debian/%2e%2e/evil/x.qcow2", False),
    ("https://images.example.com.evil.org/debian/12.qcow2", False),
    ("https://images.example.com@evil.org/debian/12.qcow2", False),
    ("http://images.example.com/debian/12.qcow2", False),
    ("https://images.example.com:8443/debian/12.qcow2", False),
])
def test_a_url_is_below_an_allowed_prefix_by_scheme_host_port_and_whole_path_segments(url, allowed):
    assert policies.url_allowed(url, ("https://images.example.com/debian",)) is allowed


# --- pools, files, networks, bridges, images ------------------------------------------------------------


def test_a_pool_manifest_outside_the_allowed_directories_is_refused_at_its_path():
    """Its StoragePool is not defined, and the VMs using it are refused too: each names the rule and the directories."""
    state = valid(pool_doc("other", "/srv/team-b/pool"), vm_doc(disks=[factories.disk("root", "other", "1GiB")]))
    result = plan(state, policy=rules(allowedPoolPaths=["/srv/team-a"]))
    (pool_problem,) = blocked(result, "other", "StoragePool")
    assert pool_problem == ("manifests/pools/other.yaml:6: spec.path: policy.allowedPoolPaths: pool other is at "
                            "/srv/team-b/pool, and the host policy allows pools only under /srv/team-a; ask the host's "
                            "administrator")
    (vm_problem,) = blocked(result, "web")
    assert ": spec.disks[0].pool: policy.allowedPoolPaths: pool other is at /srv/team-b/pool" in vm_problem


def test_a_pool_manifest_inside_the_allowed_directories_is_planned_as_without_a_policy():
    state = valid(pool_doc("mine", "/srv/team-a/pool"), vm_doc(disks=[factories.disk("root", "mine", "1GiB")]))
    assert plan(state, policy=rules(allowedPoolPaths=["/srv/team-a"])) == plan(state)


def test_a_pool_directory_that_leads_elsewhere_through_a_symlink_is_judged_where_it_leads_on_a_local_host():
    """For a local libvirt the directory as this machine resolves it must be allowed too; a remote host's cannot be seen."""
    state = valid(pool_doc("mine", "/srv/team-a/pool"))
    state = dataclasses.replace(state, pools={"mine": dataclasses.replace(state.pools["mine"], host_path="/srv/team-b/pool")})
    policy = rules(allowedPoolPaths=["/srv/team-a"])
    (problem,) = blocked(plan(state, policy=policy), "mine", "StoragePool")
    assert "pool mine is at /srv/team-a/pool, which leads to /srv/team-b/pool on this host" in problem
    remote = dataclasses.replace(EMPTY_HOST, host=b.host(uri="qemu+ssh://hv1/system"))
    assert not plan(state, remote, policy=policy).problems


def test_a_vm_may_not_use_an_existing_pool_outside_the_allowed_directories():
    """A pool already on the host is judged by the directory libvirt reports; one without a directory is refused."""
    state = valid(vm_doc())
    (problem,) = blocked(plan(state, pooled("/srv/team-b/vmstore"), policy=rules(allowedPoolPaths=["/srv/team-a"])), "web")
    assert "spec.disks[0].pool: policy.allowedPoolPaths: pool vmstore is at /srv/team-b/vmstore" in problem
    no_directory = dataclasses.replace(EMPTY_HOST, pools=(model.ObservedPool(POOL, "logical", None, True, True),))
    (problem,) = blocked(plan(state, no_directory, policy=rules(allowedPoolPaths=["/srv/team-a"])), "web")
    assert "pool vmstore has no directory (not a dir pool)" in problem
    assert not plan(state, pooled("/srv/team-a/vmstore"), policy=rules(allowedPoolPaths=["/srv/team-a"])).problems


def test_every_pool_a_vm_uses_is_judged_cdrom_and_seed_included():
    state = valid(vm_doc(disks=[], cdrom={"pool": POOL, "volume": "debian.iso"},
                         cloudInit={"pool": POOL, "userData": "#cloud-config\n"}))
    found = blocked(plan(state, with_volumes(pooled("/srv/other"), volume("debian.iso")),
                         policy=rules(allowedPoolPaths=["/srv/team-a"])), "web")
    assert [p.split(": ")[1] for p in found] == ["spec.cdrom.pool", "spec.cloudInit.pool"]


def test_a_file_attached_as_is_must_lie_under_the_allowed_directories_too():
    """A ``path:`` disk or CD-ROM reaches past every pool, so allowedPoolPaths bounds it as well."""
    state = valid(vm_doc(disks=[{"name": "data", "path": "/srv/team-b/data.qcow2"}], cdrom={"path": "/srv/iso/x.iso"}))
    found = blocked(plan(state, policy=rules(allowedPoolPaths=["/srv/team-a", "/srv/iso"])), "web")
    assert len(found) == 1 and ": spec.disks[0].path: policy.allowedPoolPaths: /srv/team-b/data.qcow2 is attached as-is" in found[0]


def test_an_empty_list_allows_nothing():
    state = valid(vm_doc(disks=[], networks=[{"network": "default"}]))
    (problem,) = blocked(plan(state, policy=rules(allowedNetworks=[])), "web")
    assert "policy.allowedNetworks: network default is not one the host policy allows (none)" in problem


def test_nics_attach_only_to_allowed_networks_and_bridges():
    state = valid(vm_doc(disks=[], networks=[{"network": "team-a-lab"}, {"network": "team-b-lab"}, {"bridge": "br0"},
                                             {"bridge": "br1"}]))
    observation = dataclasses.replace(EMPTY_HOST, networks=tuple(
        model.NetworkRecord(n, f"<network><name>{n}</name></network>", True, True) for n in ("team-a-lab", "team-b-lab")))
    found = blocked(plan(state, observation, policy=rules(allowedNetworks=["team-a-*"], allowedBridges=["br0"])), "web")
    assert [p.split(": ", 2)[1:] for p in found] == [
        ["spec.networks[1].network", "policy.allowedNetworks: network team-b-lab is not one the host policy allows "
         "(team-a-*); ask the host's administrator"],
        ["spec.networks[3].bridge", "policy.allowedBridges: host bridge br1 is not one the host policy allows (br0); "
         "ask the host's administrator"],
    ]


def test_a_network_manifest_must_be_an_allowed_network_and_a_bridge_network_an_allowed_bridge():
    """The network is not defined, and a VM on it is refused with it."""
    state = valid(lab(), bridged("uplink", "br9"),
                  vm_doc(disks=[], networks=[{"network": "uplink"}]))
    result = plan(state, policy=rules(allowedNetworks=["uplink"], allowedBridges=["br0"]))
    assert "metadata.name: policy.allowedNetworks: network lab is not one the host policy allows (uplink)" in blocked(
        result, "lab", "Network")[0]
    assert "spec.bridge: policy.allowedBridges: host bridge br9" in blocked(result, "uplink", "Network")[0]
    assert "spec.networks[0].network: policy.allowedBridges: network uplink is refused by the host policy" in blocked(
        result, "web")[0]


def test_images_come_only_from_allowed_url_prefixes_and_directories():
    """An Image from elsewhere is not imported, and a disk built on it is refused with it."""
    debian = image_doc(source={"url": "https://images.example.org/debian-12.qcow2"})
    state = valid(debian, vm_doc(disks=[factories.disk("root", POOL, "10GiB", image="debian")]))
    result = plan(state, policy=rules(imageSources=["https://cloud.debian.org/images/", "/srv/images"]))
    assert ("spec.source.url: policy.imageSources: https://images.example.org/debian-12.qcow2 is not below a source the "
            "host policy allows (https://cloud.debian.org/images/, /srv/images)") in blocked(result, "debian", "Image")[0]
    assert "spec.disks[0].image: policy.imageSources: image debian is refused by the host policy" in blocked(result, "web")[0]
    allowed = plan(valid(image_doc(source={"url": "https://cloud.debian.org/images/cloud/debian-12.qcow2"})),
                   policy=rules(imageSources=["https://cloud.debian.org/images/"]))
    assert not allowed.problems and allowed.has_changes


def test_an_image_file_is_judged_by_where_it_is_on_this_machine():
    """A ``source.path`` image counts where the shell found it (symlinks followed), else in its manifest tree."""
    state = build(image_doc(source={"path": "debian.qcow2"}), files={"debian.qcow2": b"x"})
    image = state.images["debian"]
    policy = rules(imageSources=["/srv/images"])
    for where, ok in (({"host_path": "/srv/images/debian.qcow2"}, True), ({"host_path": "/srv/repo/debian.qcow2"}, False),
                      ({"tree": "/srv/images"}, True), ({"tree": "manifests"}, False)):
        moved = dataclasses.replace(state, images={"debian": dataclasses.replace(image, **where)})
        assert (not plan(moved, policy=policy).problems) is ok, where


def test_a_refused_image_url_is_quoted_without_its_credentials():
    token = image_doc(source={"url": "https://kvmops:s3cret-token@images.example.org/debian-12.qcow2"})
    (problem,) = blocked(plan(valid(token), policy=rules(imageSources=["https://cloud.debian.org/images/"])), "debian", "Image")
    assert "s3cret-token" not in problem and "images.example.org/debian-12.qcow2" in problem


def test_the_pool_of_an_image_is_judged_like_any_pool_used():
    (problem,) = blocked(plan(valid(image_doc()), pooled("/srv/other"), policy=rules(allowedPoolPaths=["/srv/team-a"])),
                         "debian", "Image")
    assert "spec.pool: policy.allowedPoolPaths: pool vmstore is at /srv/other" in problem


def test_a_diff_does_not_judge_pools_whose_directory_it_cannot_see():
    """Offline, an undeclared pool is a stand-in named /POOL: saying it is outside the allowed directories would be a guess."""
    offline = dataclasses.replace(EMPTY_HOST, host=dataclasses.replace(b.host(), offline=True), pools=(
        b.observed_pool(POOL, f"/{POOL}"),))
    assert not plan(valid(vm_doc()), offline, policy=rules(allowedPoolPaths=["/srv/team-a"])).problems


# --- limits per VM ----------------------------------------------------------------------------------------


def test_a_vm_larger_than_the_limits_is_refused_at_each_field_too_large():
    state = valid(sized(vcpus=16, memory="8GiB", maxMemory="32GiB", disks=[factories.disk("root", POOL, "300GiB")]))
    found = blocked(plan(state, policy=rules(limits={"maxVcpus": 8, "maxMemory": "16GiB", "maxDiskSize": "200GiB"})), "web")
    assert [p.split(": ", 2)[1:] for p in found] == [
        ["spec.vcpus", "policy.limits.maxVcpus: 16 vCPUs, more than the 8 the host policy allows one VM"],
        ["spec.maxMemory", "policy.limits.maxMemory: 32 GiB of memory (maxMemory), more than the 16 GiB the host policy "
                           "allows one VM"],
        ["spec.disks[0].size", "policy.limits.maxDiskSize: disk root of 300 GiB, larger than the 200 GiB the host policy "
                               "allows one disk"],
    ]


def test_a_vm_at_the_limits_is_planned_as_without_a_policy():
    state = valid(sized(vcpus=8, memory="16GiB", disks=[factories.disk("root", POOL, "200GiB")]))
    assert plan(state, policy=rules(limits={"maxVcpus": 8, "maxMemory": "16GiB", "maxDiskSize": "200GiB"})) == plan(state)


def test_memory_without_max_memory_is_blamed_on_memory():
    (problem,) = blocked(plan(valid(sized(memory="32GiB")), policy=rules(limits={"maxMemory": "16GiB"})), "web")
    assert ": spec.memory: policy.limits.maxMemory: 32 GiB of memory, more than the 16 GiB" in problem


def test_a_console_listens_only_on_allowed_addresses():
    policy = rules(limits={"allowedGraphicsListen": ["127.0.0.1"]})
    (problem,) = blocked(plan(valid(vm_doc(disks=[], graphics={"type": "vnc", "listen": "0.0.0.0"})), policy=policy), "web")
    assert ": spec.graphics.listen: policy.limits.allowedGraphicsListen: a vnc console listening on 0.0.0.0" in problem
    assert not plan(valid(vm_doc(disks=[], graphics="spice")), policy=policy).problems  # 127.0.0.1 by default
    assert not plan(valid(vm_doc(disks=[], graphics="none")), policy=rules(limits={"allowedGraphicsListen": []})).problems


def test_host_passthrough_is_refused_only_when_the_policy_says_so():
    passthrough = valid(vm_doc(disks=[], cpu={"mode": "host-passthrough"}))
    (problem,) = blocked(plan(passthrough, policy=rules(limits={"allowHostPassthrough": False})), "web")
    assert ": spec.cpu.mode: policy.limits.allowHostPassthrough: cpu mode host-passthrough is not allowed" in problem
    assert not plan(valid(vm_doc(disks=[], cpu={"mode": "host-model"})),
                    policy=rules(limits={"allowHostPassthrough": False})).problems
    assert not plan(passthrough, policy=rules(limits={"allowHostPassthrough": True})).problems


def test_a_refused_vm_blocks_only_itself_and_holds_the_prune():
    """The other VMs are planned as without a policy; the owned VM without a manifest is kept this pass."""
    before = converged(valid(vm_doc("old", disks=[])))
    state = valid(vm_doc("big", disks=[], vcpus=16), vm_doc("small", disks=[]))
    result = plan(state, before, policy=rules(limits={"maxVcpus": 8}))
    blocked(result, "big")
    assert resource(result, "small") == resource(plan(state, before), "small")
    assert result.kept == ("old",) and "problem(s) in the manifests" in result.prune_suspended
    assert not [r for r in result.resources if r.name == "old"]


# --- the quota --------------------------------------------------------------------------------------------


def cpus(*pairs: tuple[str, int]) -> model.DesiredState:
    return valid(*(vm_doc(name, disks=[], vcpus=n) for name, n in pairs))


def test_the_quota_refuses_the_vms_that_would_take_the_scope_past_it_in_name_order():
    """New VMs are admitted in name order while they fit; the one that does not is refused with the arithmetic."""
    result = plan(cpus(("a", 8), ("b", 8), ("c", 8), ("d", 4)), scope="team-a", policy=rules(quota={"vcpus": 20}))
    assert [r.name for r in result.resources if r.steps] == ["a", "b", "d"]
    (problem,) = blocked(result, "c")
    assert problem == ("manifests/vms/c.yaml:8: spec.vcpus: policy.quota.vcpus: scope team-a would use 24 of 20 vCPUs "
                       "(c asks for 8); c is left as it is")


def test_the_issue_example_34_of_32_vcpus():
    result = plan(cpus(("a", 16), ("b", 8), ("c", 10)), scope="team-a", policy=rules(quota={"vcpus": 32}))
    assert "policy.quota.vcpus: scope team-a would use 34 of 32 vCPUs" in blocked(result, "c")[0]


def test_the_quota_counts_vms_memory_and_disk_as_well():
    state = valid(sized("a", vcpus=1, memory="2GiB", disks=[factories.disk("root", POOL, "20GiB")]),
                  sized("b", vcpus=1, memory="1GiB", maxMemory="4GiB", disks=[factories.disk("root", POOL, "20GiB")]))
    found = blocked(plan(state, policy=rules(quota={"vms": 1, "memory": "5GiB", "disk": "30GiB"})), "b")
    assert [p.split(": ", 3)[1:3] for p in found] == [
        ["metadata.name", "policy.quota.vms"], ["spec.maxMemory", "policy.quota.memory"], ["spec.disks", "policy.quota.disk"]]
    assert "scope default would use 6 GiB of 5 GiB memory (b asks for 4 GiB)" in found[1]
    assert "would use 40 GiB of 30 GiB disk (b asks for 20 GiB)" in found[2]


def test_vms_removed_in_the_same_plan_count_as_gone():
    """Replacing an 8-vCPU VM by another in one change fits a quota of 10: the old one is pruned by the same plan."""
    before = converged(cpus(("old", 8)))
    result = plan(cpus(("new", 8)), before, policy=rules(quota={"vcpus": 10}))
    assert not result.problems
    assert plans.Action.CREATE in resource(result, "new").actions and plans.Action.DELETE in resource(result, "old").actions


def test_vms_kept_because_pruning_is_off_still_hold_quota():
    before = converged(cpus(("old", 8)))
    result = plan(cpus(("new", 8)), before, policy=rules(quota={"vcpus": 10}), prune=False)
    assert "policy.quota.vcpus: scope default would use 16 of 10 vCPUs (new asks for 8)" in blocked(result, "new")[0]


def test_an_update_that_grows_a_vm_counts_its_growth_and_is_refused_past_the_quota():
    """The VM keeps running as it is; the growth alone is measured against what is left."""
    before = converged(cpus(("a", 4), ("b", 4)))
    result = plan(cpus(("a", 4), ("b", 8)), before, policy=rules(quota={"vcpus": 10}))
    assert "would use 12 of 10 vCPUs (b grows by 4); b is left as it is" in blocked(result, "b")[0]
    assert not plan(cpus(("a", 4), ("b", 6)), before, policy=rules(quota={"vcpus": 10})).problems


def test_an_update_that_shrinks_a_vm_frees_room_for_another_to_grow():
    before = converged(cpus(("a", 6), ("b", 4)))
    assert not plan(cpus(("a", 2), ("b", 8)), before, policy=rules(quota={"vcpus": 10})).problems


def test_vms_already_past_a_lowered_quota_are_left_alone_and_only_growth_is_refused():
    """An administrator lowering the quota does not break what runs: unchanged VMs plan nothing, new ones are refused."""
    before = converged(cpus(("a", 8), ("b", 8)))
    policy = rules(quota={"vcpus": 10})
    assert not plan(cpus(("a", 8), ("b", 8)), before, policy=policy).has_changes
    assert not plan(cpus(("a", 8), ("b", 8)), before, policy=policy).problems
    blocked(plan(cpus(("a", 8), ("b", 8), ("c", 1)), before, policy=policy), "c")


def test_a_disk_the_manifest_shrinks_still_counts_as_large_as_its_volume():
    """kvmops never shrinks a volume, so the quota counts the volume's real size."""
    before = converged(valid(vm_doc("a", disks=[factories.disk("root", POOL, "20GiB")])))
    state = valid(vm_doc("a", disks=[factories.disk("root", POOL, "20GiB")]), vm_doc("b", disks=[factories.disk("root", POOL, "5GiB")]))
    assert "would use 25 GiB of 24 GiB disk" in blocked(plan(state, before, policy=rules(quota={"disk": "24GiB"})), "b")[0]
    assert policies.wanted_usage(valid(vm_doc("a", disks=[factories.disk("root", POOL, "10GiB")])).vms["a"],
                                 host(before)).disk == 20 * b.GIB


def test_a_vm_refused_by_another_rule_holds_no_quota():
    result = plan(cpus(("a", 16), ("b", 8)), policy=rules(quota={"vcpus": 10}, limits={"maxVcpus": 12}))
    assert "policy.limits.maxVcpus" in blocked(result, "a")[0]
    assert resource(result, "b").steps


def test_other_scopes_vms_do_not_count():
    """The quota is per scope: team-b's domains on the host hold none of team-a's."""
    before = converged(cpus(("theirs", 16)), scope="team-b")
    assert not plan(cpus(("mine", 8)), before, scope="team-a", policy=rules(quota={"vcpus": 10})).problems


def test_usage_arithmetic():
    assert policies.Usage(1, 2, 3, 4) + policies.Usage(1, 1, 1, 1) - policies.Usage(2, 0, 0, 5) == policies.Usage(0, 3, 4, 0)


# --- data loss ---------------------------------------------------------------------------------------------


def test_removing_a_delete_disk_is_refused_when_the_policy_allows_no_data_loss():
    before = converged(valid(vm_doc(runStrategy="Halted", disks=[
        factories.disk("root", POOL, "1GiB"), factories.disk("scratch", POOL, "1GiB", deletionPolicy=DELETE)])))
    state = valid(vm_doc(runStrategy="Halted", disks=[factories.disk("root", POOL, "1GiB")]))
    assert plan(state, before).impact_counts()[plans.Impact.DATA_LOSS] == 1
    result = plan(state, before, policy=rules(allowDataLoss=False))
    (problem,) = blocked(result, "web")
    assert ": spec.disks: policy.allowDataLoss: this pass would delete volume vmstore/web-scratch.qcow2 (VirtualMachine web)" in problem
    assert "put the disk back with deletionPolicy: Retain and apply, then remove it (the volume is then kept)" in problem
    assert result.impact_counts()[plans.Impact.DATA_LOSS] == 0


def test_pruning_a_vm_with_delete_volumes_is_refused_and_suspends_the_whole_prune():
    before = converged(valid(vm_doc("gone", disks=[factories.disk("root", POOL, "1GiB", deletionPolicy=DELETE)]),
                             vm_doc("also", disks=[]), vm_doc("keep", disks=[])))
    result = plan(valid(vm_doc("keep", disks=[])), before, policy=rules(allowDataLoss=False))
    (problem,) = problems(result)
    assert problem.startswith("manifests/vms/gone.yaml: policy.allowDataLoss: this pass would delete volume "
                              "vmstore/gone-root.qcow2 (VirtualMachine gone)")
    assert "declare the VM again with deletionPolicy: Retain" in problem
    assert set(result.kept) == {"gone", "also"} and "allows no data loss" in result.prune_suspended
    assert not result.has_changes


def test_a_generated_seed_is_not_data_and_may_go_without_data_loss():
    before = converged(valid(vm_doc("gone", disks=[], cloudInit={"pool": POOL, "userData": "#cloud-config\n"}),
                             vm_doc("keep", disks=[])))
    result = plan(valid(vm_doc("keep", disks=[])), before, policy=rules(allowDataLoss=False))
    assert not result.problems and plans.Action.DELETE in resource(result, "gone").actions


# --- a prune larger than maxPrunePerPass --------------------------------------------------------------------


def five_then_one() -> tuple[model.Observation, model.DesiredState]:
    before = converged(cpus(*((f"vm{i}", 1) for i in range(5))))
    return before, cpus(("vm0", 1))


def test_a_prune_larger_than_the_limit_is_held_as_a_whole_saying_how_many_and_how_to_allow_it():
    before, state = five_then_one()
    result = plan(state, before, scope="default", policy=rules(maxPrunePerPass=2))
    (problem,) = problems(result)
    assert problem == (
        "manifests: policy.maxPrunePerPass: this pass would remove 4 VMs of scope default (vm1, vm2, vm3, vm4), more than "
        "the 2 the host policy allows in one pass (maxPrunePerPass 2); none is removed. If that is what you want, run "
        "plan/apply with --allow-mass-prune (kvmops run --allow-mass-prune), or raise policy.maxPrunePerPass")
    assert result.kept == ("vm1", "vm2", "vm3", "vm4") and result.prune_suspended.startswith("policy.maxPrunePerPass")
    assert not result.has_changes
    assert "policy.maxPrunePerPass" in render.text(result) and "policy.maxPrunePerPass" in render.markdown(result)


def test_allow_mass_prune_lets_the_held_prune_go():
    before, state = five_then_one()
    result = plan(state, before, policy=rules(maxPrunePerPass=2), allow_mass_prune=True)
    assert not result.problems and [r.name for r in result.changes] == ["vm1", "vm2", "vm3", "vm4"]
    assert result == plan(state, before)


def test_a_percentage_is_of_the_scopes_vms_rounded_up():
    before, state = five_then_one()
    assert plan(state, before, policy=rules(maxPrunePerPass="60%")).problems  # 3 of 5 allowed, 4 asked
    assert not plan(state, before, policy=rules(maxPrunePerPass="61%")).problems  # 3.05 -> 4
    assert policies.PruneLimit(percent=10).allowed(5) == 1 and policies.PruneLimit(percent=0).allowed(5) == 0
    assert "maxPrunePerPass 60% of 5 VMs" in problems(plan(state, before, policy=rules(maxPrunePerPass="60%")))[0]


def test_a_prune_within_the_limit_goes_ahead():
    before, state = five_then_one()
    assert not plan(state, before, policy=rules(maxPrunePerPass=4)).problems


# --- no policy, and the whole check --------------------------------------------------------------------------


def test_an_empty_policy_plans_exactly_as_no_policy():
    before = converged(valid(vm_doc("old"), vm_doc("web")))
    state = valid(vm_doc("web", vcpus=4), vm_doc("new"), lab())
    assert plan(state, before, policy=rules()) == plan(state, before)


def test_violations_asks_every_rule_of_a_plan_made_without_the_policy():
    """The check the planner makes while planning, asked of a finished plan: located problems naming each rule."""
    before = converged(valid(*(vm_doc(f"vm{i}", disks=[factories.disk("root", POOL, "1GiB", deletionPolicy=DELETE)])
                               for i in range(3))))
    state = valid(vm_doc("big", vcpus=16, disks=[]))
    unchecked = plan(state, before)
    found = policies.violations(state, host(before), unchecked,
                                rules(limits={"maxVcpus": 8}, maxPrunePerPass=1, allowDataLoss=False).default,
                                scope="default")
    assert [p.message.split(":")[0] for p in found] == [
        "policy.limits.maxVcpus", "policy.allowDataLoss", "policy.allowDataLoss", "policy.allowDataLoss",
        "policy.maxPrunePerPass"]
    assert not policies.violations(state, host(before), unchecked, rules().default, scope="default")

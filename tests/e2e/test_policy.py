"""The host policy on the real libvirtd: two scopes sharing a host, each bounded by its own configuration file.

Each scope (``<prefix>-a``, ``<prefix>-b``) has its manifests, its pool directory and its
isolated network, and a configuration file naming its scope and its policy, as two
repositories with one controller each would (README, "Host policy").  The commands run
as separate processes against ``qemu:///system``; the scope comes from the configuration
file, and each scope prunes only its own domains.  VMs are ``Halted``: the policy is about
what is defined, and guests need not run to show it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests import factories
from tests.e2e.commands import output

pytestmark = pytest.mark.e2e


class Scope:
    """One tenant of the host: a scope name, its manifests, pool, network and configuration file."""

    def __init__(self, host, letter: str, policy: dict) -> None:
        self.host = host
        self.letter = letter
        self.name = host.name(letter)
        self.manifests = host.workdir / f"manifests-{letter}"
        self.manifests.mkdir()
        self.pool = host.name(f"pool-{letter}")
        self.pool_path = os.path.realpath(host.workdir / f"pool-{letter}")
        self.network = host.name(f"net-{letter}")
        self.config = host.workdir / f"{letter}.yaml"
        self.config.write_text(yaml.safe_dump({"scope": self.name, "policy": policy}), encoding="utf-8")
        factories.write(self.manifests, "pool.yaml", factories.pool(self.pool, self.pool_path))
        factories.write(self.manifests, "network.yaml", {
            "apiVersion": "kvmops/v1", "kind": "Network", "metadata": {"name": self.network},
            "spec": {"mode": "isolated"}})

    def vm(self, suffix: str, *, vcpus: int = 1, pool: str | None = None, network: str | None = None) -> str:
        """Declare a halted VM with one small disk and one NIC; return its domain name."""
        name = self.host.name(f"{self.letter}{suffix}")
        factories.write(self.manifests, f"{name}.yaml", factories.vm(
            name, vcpus=vcpus, runStrategy="Halted",
            disks=[factories.disk("root", pool or self.pool, "16MiB", deletionPolicy="Delete")],
            networks=[{"network": network or self.network}]))
        return name

    def drop(self, name: str) -> None:
        (self.manifests / f"{name}.yaml").unlink()

    def kvmops(self, command: str, *args: str):
        return self.host.kvmops(command, str(self.manifests), "--config", str(self.config), *args)


@pytest.fixture
def tenants(host) -> tuple[Scope, Scope]:
    """Return scopes a and b, each allowed only its own pool directory and network; a has a quota of 3 vCPUs."""
    workdir = Path(os.path.realpath(host.workdir))
    a_pool, b_pool = str(workdir / "pool-a"), str(workdir / "pool-b")
    a = Scope(host, "a", {"allowedPoolPaths": [a_pool], "allowedNetworks": [host.name("net-a")],
                          "quota": {"vcpus": 3}, "maxPrunePerPass": 1})
    b = Scope(host, "b", {"allowedPoolPaths": [b_pool], "allowedNetworks": [host.name("net-b")]})
    return a, b


def test_one_scope_cannot_use_the_others_pool_or_network_nor_exceed_its_quota_while_the_other_converges(host, tenants):
    a, b = tenants
    b_vm = b.vm("1")
    result = b.kvmops("apply")
    assert result.returncode == 0, output(result)

    mine = a.vm("1")
    theirs_pool = a.vm("2", pool=b.pool)
    theirs_network = a.vm("3", network=b.network)
    too_big = a.vm("4", vcpus=3)  # 1 + 3 > 3
    result = a.kvmops("apply")

    assert result.returncode == 1, output(result)
    said = result.stdout
    assert f"spec.disks[0].pool: policy.allowedPoolPaths: pool {b.pool} is at {b.pool_path}" in said, output(result)
    assert f"spec.networks[0].network: policy.allowedNetworks: network {b.network} is not one the host policy allows" in said
    assert f"spec.vcpus: policy.quota.vcpus: scope {a.name} would use 4 of 3 vCPUs ({too_big} asks for 3)" in said
    assert host.domain(mine) is not None
    assert all(host.domain(name) is None for name in (theirs_pool, theirs_network, too_big))
    assert host.domain(b_vm) is not None

    again = b.kvmops("plan", "--detailed-exitcode")
    assert again.returncode == 0 and "No changes." in again.stdout, output(again)


def test_a_mass_prune_is_held_until_allowed(host, tenants):
    a, _b = tenants
    names = [a.vm(str(i)) for i in range(3)]
    result = a.kvmops("apply")
    assert result.returncode == 0, output(result)

    for name in names[1:]:
        a.drop(name)
    held = a.kvmops("apply")

    assert held.returncode == 1, output(held)
    assert (f"policy.maxPrunePerPass: this pass would remove 2 VMs of scope {a.name} ({names[1]}, {names[2]}), more "
            "than the 1 the host policy allows in one pass") in held.stdout, output(held)
    assert all(host.domain(name) is not None for name in names)

    allowed = a.kvmops("apply", "--allow-mass-prune")
    assert allowed.returncode == 0, output(allowed)
    assert host.domain(names[0]) is not None
    assert host.domain(names[1]) is None and host.domain(names[2]) is None

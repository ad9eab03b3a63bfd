"""The host policy through the ``kvmops`` command and the controller, on libvirt's test driver.

The policy lives in a configuration file (``--config`` or ``$KVMOPS_CONFIG``), as on a
host; the standard host of ``conftest.world`` has ``web`` (owned, declared, a Delete
volume), ``orphan`` (owned, undeclared: a Retain and a Delete volume) and ``legacy``
(foreign), all in the ``default`` pool at ``/var/lib/libvirt/images``.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pytest
import yaml

from reconciler import cli, errors
from reconciler.adapters import systemd
from reconciler.runtime import configuration
from reconciler.runtime.controller import Controller
from tests import factories
from tests.integration.conftest import SHARED_URI
from tests.integration.test_diff import Repo
from tests.integration.test_controller_inprocess import (  # noqa: F401 (fixtures)
    RunningController, converged, get, host, manifests, vm_name, wait_until, write_manifest,
)


def run(*argv: str) -> int:
    return cli.main(list(argv))


def config_file(directory: Path, **body: object) -> str:
    """Write a configuration file holding ``body``; return its path."""
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return str(path)


def big(name: str = "big") -> dict:
    return factories.vm(name, vcpus=8, disks=[factories.disk("root", "default", "64MiB")])


# --- plan and apply obey the policy ------------------------------------------------------------------


def test_plan_shows_a_violation_in_text_json_and_markdown_naming_the_line_and_the_rule(world, tmp_path, capsys):
    """The refused VM is left alone, the other changes are planned, and plan exits 1."""
    factories.write(world.manifests, "big.yaml", big())
    factories.write(world.manifests, "db.yaml", factories.vm("db", disks=[factories.disk("root", "default", "64MiB")]))
    config = config_file(tmp_path, policy={"limits": {"maxVcpus": 4}})
    line = f"{world.manifests}/big.yaml:7: spec.vcpus: policy.limits.maxVcpus: 8 vCPUs, more than the 4 the host policy allows one VM"

    assert run("plan", str(world.manifests), "--connect", world.uri, "--config", config, "--no-prune") == 1
    out, _ = capsys.readouterr()
    assert line in out
    assert "+ VirtualMachine db" in out and "+ VirtualMachine big" not in out

    assert run("plan", str(world.manifests), "--connect", world.uri, "--config", config, "--no-prune", "-o", "json") == 1
    out, err = capsys.readouterr()
    (problem,) = json.loads(out)["problems"]
    assert (problem["line"], problem["path"]) == (7, "spec.vcpus") and problem["message"].startswith("policy.limits.maxVcpus: ")
    assert line in err

    assert run("plan", str(world.manifests), "--connect", world.uri, "--config", config, "--no-prune", "-o", "markdown") == 1
    out, _ = capsys.readouterr()
    assert "policy.limits.maxVcpus: 8 vCPUs, more than the 4" in out


def test_apply_converges_what_the_policy_allows_and_leaves_the_rest(world, tmp_path, capsys):
    factories.write(world.manifests, "big.yaml", big())
    factories.write(world.manifests, "db.yaml", factories.vm("db", disks=[factories.disk("root", "default", "64MiB")]))
    config = config_file(tmp_path, policy={"limits": {"maxVcpus": 4}})

    status = run("apply", str(world.manifests), "--connect", world.uri, "--config", config, "--no-prune")
    out, _ = capsys.readouterr()

    assert status == 1
    assert "policy.limits.maxVcpus" in out
    assert world.domains() == {"web", "orphan", "legacy", "db"}
    assert "big-root.qcow2" not in world.volumes()


def test_kvmops_config_is_read_without_the_flag_and_its_scope_is_the_default(world, tmp_path, monkeypatch, capsys):
    """``$KVMOPS_CONFIG`` names the file; a scope's own rules apply to the scope the file names."""
    factories.write(world.manifests, "big.yaml", big())
    monkeypatch.setenv("KVMOPS_CONFIG", config_file(tmp_path, scope="team-a", policy={
        "scopes": {"team-a": {"limits": {"maxVcpus": 4}}}}))

    assert run("plan", str(world.manifests), "--connect", world.uri, "--no-prune") == 1
    assert "policy.limits.maxVcpus" in capsys.readouterr().out
    run("plan", str(world.manifests), "--connect", world.uri, "--no-prune", "--scope", "team-b")
    assert "policy.limits" not in capsys.readouterr().out


def test_a_pool_outside_the_allowed_directories_is_refused(world, tmp_path, capsys):
    factories.write(world.manifests, "db.yaml", factories.vm("db", disks=[factories.disk("root", "default", "64MiB")]))
    config = config_file(tmp_path, policy={"allowedPoolPaths": ["/srv/team-a"]})

    assert run("apply", str(world.manifests), "--connect", world.uri, "--config", config, "--no-prune") == 1
    out, _ = capsys.readouterr()
    assert "spec.disks[0].pool: policy.allowedPoolPaths: pool default is at /var/lib/libvirt/images" in out
    assert "db" not in world.domains()


def test_a_prune_that_would_delete_a_volume_is_held_when_the_policy_allows_no_data_loss(world, tmp_path, capsys):
    before = world.state()
    config = config_file(tmp_path, policy={"allowDataLoss": False})

    status = run("apply", str(world.manifests), "--connect", world.uri, "--config", config)
    out, _ = capsys.readouterr()

    assert status == 1
    assert "orphan.yaml: policy.allowDataLoss: this pass would delete volume default/orphan-scratch.qcow2" in out
    assert world.state() == before


def test_a_mass_prune_is_held_until_allowed_with_allow_mass_prune(world, tmp_path, capsys):
    config = config_file(tmp_path, policy={"maxPrunePerPass": 0})
    before = world.state()

    assert run("apply", str(world.manifests), "--connect", world.uri, "--config", config) == 1
    out, _ = capsys.readouterr()
    assert ("policy.maxPrunePerPass: this pass would remove 1 VMs of scope default (orphan), more than the 0 the host "
            "policy allows in one pass") in out
    assert "--allow-mass-prune" in out
    assert world.state() == before

    assert run("apply", str(world.manifests), "--connect", world.uri, "--config", config, "--allow-mass-prune") == 0
    capsys.readouterr()
    assert world.domains() == {"web", "legacy"}


def test_plan_against_a_snapshot_obeys_the_policy(world, tmp_path, capsys):
    snapshot = tmp_path / "state.json"
    assert run("state", "export", "--connect", world.uri, "-o", str(snapshot)) == 0
    factories.write(world.manifests, "big.yaml", big())
    config = config_file(tmp_path, policy={"quota": {"vcpus": 4}})

    assert run("plan", str(world.manifests), "--state", str(snapshot), "--config", config, "--no-prune") == 1
    out, _ = capsys.readouterr()
    # web (1 vCPU), orphan (1, kept by --no-prune) and big (8)
    assert "policy.quota.vcpus: scope default would use 10 of 4 vCPUs (big asks for 8)" in out


def test_diff_obeys_the_policy_so_a_pull_request_sees_a_violation_before_the_merge(tmp_path, monkeypatch, capsys):
    """A VM too large, and a prune larger than maxPrunePerPass, fail the diff naming the rules: no hypervisor involved."""
    monkeypatch.setenv("KVMOPS_CONNECT", "qemu+unix:///system?socket=/nonexistent")
    repo = Repo(tmp_path / "repo")
    for name in ("web", "db"):
        repo.vm(f"{name}.yaml", name, disks=[])
    repo.commit("two VMs")
    repo.remove("db.yaml")
    repo.remove("web.yaml")
    repo.vm("big.yaml", "big", vcpus=8, disks=[])
    config = config_file(tmp_path, policy={"limits": {"maxVcpus": 4}, "maxPrunePerPass": 1})

    status = run("diff", str(repo.manifests), "--base", "main", "--config", config, "--output", "markdown")
    out, _ = capsys.readouterr()

    assert status == 1
    assert "policy.limits.maxVcpus: 8 vCPUs, more than the 4" in out
    status = run("diff", str(repo.manifests), "--base", "main", "--config", config.replace("config.yaml", "none.yaml"))
    assert status == 1 and "configuration file not found" in capsys.readouterr().err
    repo.vm("big.yaml", "big", vcpus=2, disks=[])
    assert run("diff", str(repo.manifests), "--base", "main", "--config", config) == 1
    assert "policy.maxPrunePerPass: this pass would remove 2 VMs of scope default (db, web)" in capsys.readouterr().out
    assert run("diff", str(repo.manifests), "--base", "main", "--config", config, "--allow-mass-prune") == 0
    capsys.readouterr()


def test_an_invalid_policy_is_one_error_line_and_nothing_is_planned(world, tmp_path, capsys):
    config = config_file(tmp_path, policy={"limits": {"maxMemory": "16G"}})

    assert run("apply", str(world.manifests), "--connect", world.uri, "--config", config) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "policy.limits.maxMemory" in err and "Traceback" not in err


def test_doctor_says_no_policy_is_set_and_shows_the_effective_one_when_it_is(tmp_path, capsys):
    run("doctor", "--connect", "test:///default")
    out, _ = capsys.readouterr()
    assert "[warn] policy: no policy is set" in out

    config = config_file(tmp_path, scope="team-a", policy={"allowedNetworks": ["default"], "scopes": {
        "team-a": {"quota": {"vcpus": 16}, "maxPrunePerPass": "10%"}}})
    run("doctor", "--connect", "test:///default", "--config", config)
    out, _ = capsys.readouterr()
    assert (f"[ok  ] policy: scope team-a obeys the policy of {config} (its own rules under policy.scopes): "
            "allowedNetworks: default; quota.vcpus: 16; maxPrunePerPass: 10%") in out


def test_schema_config_documents_the_policy(capsys):
    assert run("schema", "config") == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"allowedPoolPaths", "allowedNetworks", "allowedBridges", "imageSources", "limits", "quota",
            "maxPrunePerPass", "allowDataLoss", "scopes", "trashRetention"} == set(schema["properties"]["policy"]["properties"])


# --- the controller obeys it, and SIGHUP reloads it ------------------------------------------------------------


def test_the_controller_obeys_the_policy_and_a_reload_changes_it(manifests, vm_name, host, tmp_path: Path):
    """A VM refused by the policy is reported and not defined; raising the limit and reloading lets it converge."""
    name = vm_name("big")
    write_manifest(manifests, "big.yaml", factories.vm(name, vcpus=2))
    config = tmp_path / "config.yaml"
    write = lambda limit: config.write_text(yaml.safe_dump({  # noqa: E731
        "manifests": str(manifests), "connect": SHARED_URI, "prune": False,
        "policy": {"limits": {"maxVcpus": limit}}}), encoding="utf-8")
    write(1)
    flags = {"path": None, "connect": None, "listen": "127.0.0.1:0", "state_dir": str(tmp_path / "state"),
             "config": str(config)}
    settings = configuration.controller_settings(flags, configuration.read(str(config)))
    controller = Controller(dataclasses.replace(settings, quiet_period=0.05), notifier=systemd.Notifier({}),
                            reload=lambda: configuration.controller_settings(flags, configuration.read(str(config))))
    running = RunningController(controller, manifests, host)
    running.thread = threading.Thread(target=lambda: running.exit_status.append(controller.run()), daemon=True)
    running.thread.start()
    try:
        assert wait_until(lambda: any("policy.limits.maxVcpus: 2 vCPUs, more than the 1" in p
                                      for p in controller.status_document()["problems"]), 5), controller.status_document()
        assert get(running.url("/healthz"))[0] == 503
        assert running.power(name) is None

        write(4)
        controller.request_reload()

        assert wait_until(lambda: converged(running, name), 5)
        assert wait_until(lambda: get(running.url("/healthz"))[0] == 200, 5)
    finally:
        running.stop()
    assert running.exit_status == [0]


def test_a_configuration_with_a_trash_retention_beyond_a_century_is_refused_with_its_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("policy:\n  trashRetention: 1000000w\n")
    with pytest.raises(errors.ManifestError, match=r"config.yaml:2: policy.trashRetention: .*at most 100 years"):
        configuration.read(str(path))

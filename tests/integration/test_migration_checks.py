"""The executor's checks around a move between hosts, on two test-driver hosts (no migration happens).

The test driver cannot migrate; what it can show is that every check that must pass
*before* libvirt is asked refuses, leaving both hosts as they were.  The moves themselves
are proven on a lab of real libvirtd daemons (tests/e2e/test_migration.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.adapters import hypervisor as hv
from reconciler.core import model
from reconciler.core import plan as plans
from reconciler.runtime import execute
from tests.integration.conftest import node_uri, owned_domain_xml, volume_xml

UUID = "7b1c2d3e-0000-4000-8000-0000000000a1"
OTHER_UUID = "7b1c2d3e-0000-4000-8000-0000000000a2"


@pytest.fixture
def two_hosts(tmp_path: Path):
    """Return test-driver hosts h1 (with kvmops' VM ``app``, shut off) and h2 (empty), each with its own state."""
    (tmp_path / "h1").mkdir()
    (tmp_path / "h2").mkdir()
    h1 = hv.Hypervisor.open(node_uri(tmp_path / "h1", volumes=volume_xml("app-root")))
    h2 = hv.Hypervisor.open(node_uri(tmp_path / "h2"))
    h1.define_domain(owned_domain_xml("app", UUID, volumes=(("app-root", "Delete", True),)), "app")
    try:
        yield {"h1": h1, "h2": h2}
    finally:
        h1.close()
        h2.close()


def run(hosts: dict, *steps: plans.Step, given: dict | None = None) -> execute.ResourceOutcome:
    resource = plans.ResourcePlan("VirtualMachine", "app", (plans.Action.MIGRATE,), steps=steps)
    report = execute.execute(plans.Plan(hosts["h1"].uri, (resource,)), hosts["h1"], hosts=hosts if given is None else given)
    return report.outcomes[0]


def migrate(hosts: dict, mode: plans.MigrationMode = plans.MigrationMode.OFFLINE, uuid: str = UUID) -> plans.MigrateDomain:
    return plans.MigrateDomain("app", uuid, "h1", "h2", hosts["h2"].uri, mode)


def test_a_move_without_a_connection_to_the_destination_fails_and_names_the_host(two_hosts):
    outcome = run(two_hosts, migrate(two_hosts), given={})

    assert outcome.status == "failed"
    assert "needs host h2" in outcome.error
    assert two_hosts["h1"].domain_exists("app")


def test_a_move_onto_a_host_with_a_domain_of_that_name_is_refused(two_hosts):
    two_hosts["h2"].define_domain(owned_domain_xml("app", OTHER_UUID), "app")

    outcome = run(two_hosts, migrate(two_hosts))

    assert outcome.status == "failed"
    assert "must never run twice" in outcome.error
    assert two_hosts["h1"].domain_name_by_uuid(UUID) == "app"
    assert two_hosts["h2"].domain_name_by_uuid(OTHER_UUID) == "app"


def test_a_move_of_a_domain_replaced_since_the_plan_is_refused(two_hosts):
    outcome = run(two_hosts, migrate(two_hosts, uuid=OTHER_UUID))

    assert outcome.status == "failed"
    assert "replaced since the plan was made" in outcome.error


def test_a_live_move_of_a_shut_off_domain_is_refused(two_hosts):
    outcome = run(two_hosts, migrate(two_hosts, plans.MigrationMode.LIVE))

    assert outcome.status == "failed"
    assert "needs it running" in outcome.error


def test_an_offline_move_of_a_running_domain_is_refused(two_hosts):
    two_hosts["h1"].start_domain("app")

    outcome = run(two_hosts, migrate(two_hosts))

    assert outcome.status == "failed"
    assert "moves a shut-off domain only" in outcome.error
    assert two_hosts["h1"].domain_power("app")[0].active


def test_a_moved_volume_is_not_deleted_while_its_domain_is_still_on_the_source(two_hosts):
    outcome = run(two_hosts, plans.DeleteMovedVolume("default", "app-root", "app", UUID, "h2"))

    assert outcome.status == "failed"
    assert "still defined here" in outcome.error
    assert two_hosts["h1"].volume_exists("default", "app-root")


def test_a_moved_volume_is_not_deleted_when_the_domain_is_on_no_host(two_hosts):
    two_hosts["h1"].undefine_domain("app")

    outcome = run(two_hosts, plans.DeleteMovedVolume("default", "app-root", "app", UUID, "h2"))

    assert outcome.status == "failed"
    assert "may be its only copy" in outcome.error
    assert two_hosts["h1"].volume_exists("default", "app-root")


def test_migration_steps_render_as_plan_json():
    step = plans.DeleteMovedVolume("default", "app-root", "app", UUID, "h2", running=True, source="h1")

    assert step.to_dict() == {"kind": "delete_moved_volume", "pool": "default", "name": "app-root", "domain": "app",
                              "uuid": UUID, "destination": "h2", "running": True, "source": "h1", "abandoned": False}
    assert "left behind by app (now on h2)" in step.describe()


def test_a_local_socket_destination_gets_its_migration_stream_on_loopback():
    assert hv.migration_stream_uri("qemu+unix:///system?socket=/var/tmp/lab/h2/run/libvirt-sock") == "tcp://127.0.0.1"
    assert hv.migration_stream_uri("qemu+ssh://root@kvm2/system") is None
    assert hv.migration_stream_uri("qemu:///system") is None


def test_a_restart_move_whose_checks_fail_leaves_the_guest_running(two_hosts):
    two_hosts["h1"].start_domain("app")
    step = plans.MigrateDomain("app", UUID, "h1", "h2", two_hosts["h2"].uri, plans.MigrationMode.OFFLINE,
                               sends=(("default", "app-root"),), media=(("default", "rescue.iso"),), stop_first=True, start_after=True, shutdown_timeout=5)

    outcome = run(two_hosts, step)

    assert outcome.status == "failed"
    assert "h2 has no default/rescue.iso" in outcome.error
    assert two_hosts["h1"].domain_power("app")[0].active  # checked before the guest was stopped


def test_a_moved_volume_the_destination_mark_does_not_record_as_left_here_is_not_deleted(two_hosts):
    xml = two_hosts["h1"].domain_xml("app")
    two_hosts["h1"].undefine_domain("app")
    two_hosts["h2"].define_domain(xml, "app")  # moved, but its mark names no copy left on h1

    outcome = run(two_hosts, plans.DeleteMovedVolume("default", "app-root", "app", UUID, "h2", source="h1"))

    assert outcome.status == "failed"
    assert "cannot prove this volume is that copy" in outcome.error
    assert two_hosts["h1"].volume_exists("default", "app-root")


def test_forgetting_a_moved_volume_drops_only_that_record_from_the_destination_mark(two_hosts):
    from reconciler.core import domxml, model

    xml = two_hosts["h1"].domain_xml("app")
    two_hosts["h1"].undefine_domain("app")
    owner = domxml.parse_owner(domxml.parse_tree(xml))
    left = (model.LeftBehind("h1", "default", "app-root"), model.LeftBehind("h1", "default", "app-seed"))
    two_hosts["h2"].define_domain(domxml.remark(xml, owner.__class__(**{**owner.__dict__, "left_behind": left})), "app")

    outcome = run(two_hosts, plans.ForgetMovedVolume("default", "app-root", "app", UUID, "h1", "h2"))

    assert outcome.status == "converged", outcome.error
    after = domxml.parse_owner(domxml.parse_tree(two_hosts["h2"].domain_xml("app")))
    assert after.left_behind == (model.LeftBehind("h1", "default", "app-seed"),)
    assert run(two_hosts, plans.ForgetMovedVolume("default", "app-root", "app", UUID, "h1", "h2")).steps[0].detail == \
        "already forgotten"


@pytest.fixture
def interrupted_move(two_hosts):
    """h1 keeps ``app`` and its disk; h2 holds a copy of that disk a move cut short began, recorded in app's mark."""
    from reconciler.core import domxml, model

    hosts = two_hosts
    hosts["h2"].create_volume("default", volume_xml("app-root"), "app-root")
    xml = hosts["h1"].domain_xml("app")
    owner = domxml.parse_owner(domxml.parse_tree(xml))
    sending = (model.Sending("h2", "default", "app-root"), model.Sending("h2", "default", "app-seed"))
    hosts["h1"].set_owner("app", owner.__class__(**{**owner.__dict__, "sending": sending}))
    return hosts


def run_on_h2(hosts: dict, *steps: plans.Step) -> execute.ResourceOutcome:
    resource = plans.ResourcePlan("VirtualMachine", "app", (plans.Action.UPDATE,), steps=steps)
    return execute.execute(plans.Plan(hosts["h2"].uri, (resource,)), hosts["h2"], hosts=hosts).outcomes[0]


def sending_recorded(hosts: dict) -> tuple:
    from reconciler.core import domxml

    return domxml.parse_owner(domxml.parse_tree(hosts["h1"].domain_xml("app"))).sending


def test_a_partial_copy_a_cut_short_move_left_on_another_host_is_deleted_and_its_record_dropped(interrupted_move):
    hosts = interrupted_move

    outcome = run_on_h2(hosts,
                        plans.DeleteMovedVolume("default", "app-root", "app", UUID, "h1", source="h2", abandoned=True),
                        plans.ForgetMovedVolume("default", "app-root", "app", UUID, "h2", "h1", abandoned=True))

    assert outcome.status == "converged", outcome.error
    assert not hosts["h2"].volume_exists("default", "app-root")
    assert hosts["h1"].volume_exists("default", "app-root")  # the VM's own disk, where it stayed
    assert [(s.host, s.pool, s.name) for s in sending_recorded(hosts)] == [("h2", "default", "app-seed")]


def test_a_volume_the_mark_does_not_record_as_a_partial_copy_is_not_deleted(interrupted_move):
    hosts = interrupted_move
    hosts["h2"].create_volume("default", volume_xml("app-data"), "app-data")

    outcome = run_on_h2(hosts, plans.DeleteMovedVolume("default", "app-data", "app", UUID, "h1", source="h2",
                                                        abandoned=True))

    assert outcome.status == "failed"
    assert "does not record default/app-data as a copy a move began here" in outcome.error
    assert hosts["h2"].volume_exists("default", "app-data")


def test_a_partial_copy_is_not_deleted_while_a_domain_there_uses_it(interrupted_move):
    hosts = interrupted_move
    hosts["h2"].define_domain(owned_domain_xml("other", OTHER_UUID, volumes=(("app-root", "Retain", False),)), "other")

    outcome = run_on_h2(hosts, plans.DeleteMovedVolume("default", "app-root", "app", UUID, "h1", source="h2",
                                                        abandoned=True))

    assert outcome.status == "failed"
    assert hosts["h2"].volume_exists("default", "app-root")
    assert len(sending_recorded(hosts)) == 2



def left_by_a_finished_move(hosts: dict[str, hv.Hypervisor], *, source: dict, destination: dict) -> dict[str, hv.Hypervisor]:
    """Return ``hosts`` with ``app`` as libvirt leaves it when h1's libvirtd loses the end of its move to h2: running on h2
    with the move's definition (its mark naming h2, with the records ``destination``), and still on h1, paused (its mark
    naming h1, with the records ``source``)."""
    import dataclasses

    from reconciler.core import domxml

    h1, h2 = hosts["h1"], hosts["h2"]
    owner = mark(h1)
    h1.set_owner("app", dataclasses.replace(owner, fleet="default", host="h1", **source))
    h2.define_domain(domxml.remark(h1.domain_xml("app"), dataclasses.replace(
        owner, fleet="default", host="h2", **destination)), "app")
    h2.start_domain("app")
    h1.start_domain("app")
    h1._connection.lookupByName("app").suspend()
    return hosts


@pytest.fixture
def finished_move(two_hosts):
    """``app`` as libvirt leaves it when h1's libvirtd loses the end of its move to h2: running on h2 with the move's
    definition (its mark names h2 and the disk left on h1), and still on h1, paused, its mark recording the disk it was
    sending to h2."""
    from reconciler.core import model

    two_hosts["h2"].create_volume("default", volume_xml("app-root"), "app-root")
    return left_by_a_finished_move(two_hosts, source={"sending": (model.Sending("h2", "default", "app-root"),)},
                                   destination={"left_behind": (model.LeftBehind("h1", "default", "app-root"),)})


def test_the_half_a_finished_move_left_paused_on_its_source_is_destroyed_and_undefined(finished_move):
    hosts = finished_move

    outcome = run(hosts, plans.DiscardMovedSource("app", UUID, "h1", "h2"))

    assert outcome.status == "converged", outcome.error
    assert outcome.steps[0].detail == "destroyed and undefined; it runs on h2"
    assert not hosts["h1"].domain_exists("app")
    assert hosts["h1"].volume_exists("default", "app-root")  # for the DeleteMovedVolume that follows
    assert hosts["h2"].domain_power("app")[0].active


def test_a_half_that_no_longer_proves_a_finished_move_is_not_discarded(finished_move):
    hosts = finished_move
    hosts["h2"].destroy_domain("app")  # the guest stopped there: which half is the VM is no longer proven

    outcome = run(hosts, plans.DiscardMovedSource("app", UUID, "h1", "h2"))

    assert outcome.status == "failed"
    assert "no longer prove a move to h2 that libvirt finished there" in outcome.error
    assert hosts["h1"].domain_exists("app") and hosts["h1"].domain_power("app")[0].active

def test_recording_the_roster_never_rewrites_the_mark_another_step_writes_at_that_moment(two_hosts, monkeypatch):
    from reconciler.core import domxml

    h1 = two_hosts["h1"]
    read = h1.domain_xml

    def read_then_another_writer(name: str, *args, **kwargs) -> str:
        xml = read(name, *args, **kwargs)
        owner = domxml.parse_owner(domxml.parse_tree(xml))
        h1.set_owner(name, owner.__class__(**{**owner.__dict__, "digest": "sha256:written-meanwhile"}))
        return xml
    monkeypatch.setattr(h1, "domain_xml", read_then_another_writer)

    outcome = run(two_hosts, plans.RecordRoster("app", UUID, ("h1", "h2")))

    monkeypatch.undo()
    assert outcome.status == "converged", outcome.error
    after = domxml.parse_owner(domxml.parse_tree(h1.domain_xml("app")))
    assert after.digest == "sha256:written-meanwhile" and after.roster == ("h1", "h2")



PROBING = """
import os, sys, time
from reconciler.adapters import hypervisor as hv
if sys.argv[1] == "alive":
    os.kill = lambda pid, signal: time.sleep(60)  # the crash hook's kill: this one stops there and lives on
h = hv.Hypervisor.open("test:///default")
h.shares_pool_with("default-pool", h)
"""


def probing_kvmops(how: str) -> tuple[str, subprocess.Popen]:
    """Start a kvmops process that checks a pool and stops right before it creates its probe file, ``killed`` (the crash
    hook) or ``alive``; return the name of that probe (which the hook reports) and the process."""
    process = subprocess.Popen([sys.executable, "-c", PROBING, how], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, hv.CRASH_AT_VARIABLE: "1"})
    reported = process.stderr.readline()
    return reported.split("create_volume(default-pool, ", 1)[1].split(")", 1)[0], process


def test_a_probe_file_a_killed_kvmops_left_is_removed_by_the_next_check_and_a_running_ones_is_kept(two_hosts):
    from reconciler.core import storagexml

    dead, killed = probing_kvmops("killed")
    alive, running = probing_kvmops("alive")  # a kvmops probing this very pool right now
    try:
        assert killed.wait(30) == -9
        unknown = "kvmops-shared-probe-0123456789ab"  # another machine's, of unknown age: only a minute makes it old
        h1 = two_hosts["h1"]
        for probe in (dead, alive, unknown):  # what their libvirtd had created for them
            h1.create_volume("default", storagexml.render_volume(probe, 0, image_format="raw"), probe)

        h1.shares_pool_with("default", two_hosts["h2"])

        left = sorted(v.name for v in h1.list_volumes("default") if v.name.startswith("kvmops-shared-probe-"))
        assert left == sorted([alive, unknown])
    finally:
        running.kill()
        running.wait()


def mark(host: hv.Hypervisor, name: str = "app"):
    from reconciler.core import domxml

    return domxml.parse_owner(domxml.parse_tree(host.domain_xml(name)))


def test_a_move_records_its_destination_before_its_first_copy_and_a_move_that_fails_takes_the_record_back(
        two_hosts, monkeypatch):
    hosts = two_hosts
    seen = []
    real = hv.Hypervisor.send_volume

    def send_watched(self, pool, volume, *args, **kwargs):
        seen.append(mark(self).moving_to)  # what a kill at this moment would leave
        return real(self, pool, volume, *args, **kwargs)

    monkeypatch.setattr(hv.Hypervisor, "send_volume", send_watched)
    step = plans.MigrateDomain("app", UUID, "h1", "h2", hosts["h2"].uri, plans.MigrationMode.OFFLINE,
                               sends=(("default", "app-root"),))

    outcome = run(hosts, step)

    assert seen == ["h2"]
    assert outcome.status == "failed"  # the test driver cannot copy a volume
    assert hosts["h1"].domain_name_by_uuid(UUID) == "app" and hosts["h2"].domain_name_by_uuid(UUID) is None
    assert (mark(hosts["h1"]).moving_to, mark(hosts["h1"]).sending) == ("", ())


@pytest.fixture
def finished_shared_move(two_hosts):
    """``app`` as libvirt leaves it when h1's libvirtd loses the end of a move to h2 that copied nothing (its disk on
    storage both see): running on h2 with the move's definition (its mark names h2 and where it came from, h1), and
    still on h1, paused, its mark recording the move to h2 begun."""
    return left_by_a_finished_move(two_hosts, source={"moving_to": "h2"}, destination={"moved_from": "h1"})


def test_the_half_a_move_that_copied_nothing_left_paused_on_its_source_is_destroyed_and_undefined(finished_shared_move):
    hosts = finished_shared_move

    outcome = run(hosts, plans.DiscardMovedSource("app", UUID, "h1", "h2"))

    assert outcome.status == "converged", outcome.error
    assert not hosts["h1"].domain_exists("app")
    assert hosts["h1"].volume_exists("default", "app-root")  # the disk (shared, in real life) is never touched
    assert hosts["h2"].domain_power("app")[0].active


def test_a_half_whose_move_the_destination_no_longer_records_is_not_discarded(finished_shared_move):
    import dataclasses

    hosts = finished_shared_move
    hosts["h2"].set_owner("app", dataclasses.replace(mark(hosts["h2"]), moved_from=""))  # since the plan

    outcome = run(hosts, plans.DiscardMovedSource("app", UUID, "h1", "h2"))

    assert outcome.status == "failed"
    assert "no longer prove a move to h2 that libvirt finished there" in outcome.error
    assert hosts["h1"].domain_exists("app") and hosts["h1"].domain_power("app")[0].active


@pytest.fixture
def held_at_hand_over(two_hosts):
    """``app`` as a kill of kvmops between libvirt's end of a live move from h1 to h2 and its resume leaves it: gone
    from h1, paused on h2, its mark there recording the move from h1 and the hand-over."""
    import dataclasses

    from reconciler.core import domxml

    h1, h2 = two_hosts["h1"], two_hosts["h2"]
    h2.define_domain(domxml.remark(h1.domain_xml("app"), dataclasses.replace(
        mark(h1), fleet="default", host="h2", moved_from="h1", resume_after_move=True)), "app")
    h1.undefine_domain("app")
    h2.start_domain("app")
    h2._connection.lookupByName("app").suspend()
    return two_hosts


def test_a_guest_held_paused_at_the_hand_over_is_resumed_and_its_record_dropped(held_at_hand_over):
    hosts = held_at_hand_over

    outcome = run(hosts, plans.ResumeMovedDomain("app", UUID, "h2", "h1"))

    assert outcome.status == "converged", outcome.error
    assert outcome.steps[0].detail == "resumed; h1 holds it no longer"
    assert hosts["h2"].domain_power("app")[0] is model.PowerState.RUNNING
    assert mark(hosts["h2"]).resume_after_move is False and mark(hosts["h2"]).moved_from == "h1"


def test_a_guest_held_at_the_hand_over_is_not_resumed_while_the_source_still_holds_it(held_at_hand_over):
    hosts = held_at_hand_over
    hosts["h1"].define_domain(hosts["h2"].domain_xml("app"), "app")  # (the same UUID: libvirt's copy on h1)

    outcome = run(hosts, plans.ResumeMovedDomain("app", UUID, "h2", "h1"))

    assert outcome.status == "failed"
    assert "h1 still holds app" in outcome.error and "not resuming it on h2" in outcome.error
    assert hosts["h2"].domain_power("app")[0] is model.PowerState.PAUSED
    assert mark(hosts["h2"]).resume_after_move is True


def test_a_guest_paused_again_after_its_hand_over_ended_stays_paused(held_at_hand_over):
    hosts = held_at_hand_over
    assert run(hosts, plans.ResumeMovedDomain("app", UUID, "h2", "h1")).status == "converged"
    hosts["h2"]._connection.lookupByName("app").suspend()  # a person pauses it

    outcome = run(hosts, plans.ResumeMovedDomain("app", UUID, "h2", "h1"))  # a stale plan

    assert outcome.status == "converged", outcome.error
    assert outcome.steps[0].detail == "its hand-over is already over"
    assert hosts["h2"].domain_power("app")[0] is model.PowerState.PAUSED


def test_a_guest_that_runs_with_the_record_of_its_hand_over_only_loses_the_record(held_at_hand_over):
    hosts = held_at_hand_over
    hosts["h2"]._connection.lookupByName("app").resume()  # kvmops was killed between its resume and the record

    outcome = run(hosts, plans.ResumeMovedDomain("app", UUID, "h2", "h1"))

    assert outcome.status == "converged", outcome.error
    assert outcome.steps[0].detail == "not paused (running): the record of its hand-over dropped"
    assert mark(hosts["h2"]).resume_after_move is False

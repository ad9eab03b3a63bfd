"""Fleet plans in text, JSON and Markdown: grouped per host, migrations, unreachable hosts, a fleet summary."""

from __future__ import annotations

import json

from reconciler.core import fleet, render
from tests.unit import test_fleet as fleets


def moving_fleet(*, b_down: bool = False) -> fleet.FleetPlan:
    state = fleets.manifests(fleets.vm_yaml("web", where="{host: b}"), fleets.vm_yaml("db", where="{host: a}"))
    a = fleets.host_state(fleets.running_on("a", state.vms["web"]), state=state, pools=("vmstore", "everywhere"))
    b = fleet.HostUnreachable("b", "cannot connect: No route to host") if b_down else fleets.host_state(
        state=state, pools=("vmstore", "everywhere"))
    return fleet.plan_fleet(state, {"a": a, "b": b})


def test_text_groups_the_plan_per_host_with_migrations_in_the_source_host_then_the_fleet_summary():
    output = render.fleet_text(moving_fleet(), source="manifests")
    lines = output.splitlines()
    assert lines[0] == "kvmops fleet plan for fleet default from manifests"
    host_a, host_b = (lines.index(line) for line in (
        "Host a (qemu+ssh://a/system) (1 VM, 2 pools)", "Host b (qemu+ssh://b/system) (0 VMs, 2 pools)"))
    assert host_a < host_b
    section_a = lines[host_a:host_b]
    assert "  + VirtualMachine db  (vms/1.yaml)  create, start" in section_a
    migration = section_a.index("  → VirtualMachine web  (vms/0.yaml)  migrate")
    assert section_a[migration + 1] == (
        "      ~ host  a -> b  (live)  live migration with a copy of the local disks (the guest keeps running)")
    assert "Plan: 1 to create, 1 to start, 1 to migrate. 2 unchanged." in section_a
    assert lines[-1] == "Fleet default: 2 hosts; VMs per host: a 1, b 1; 1 migration"


def test_text_puts_an_unreachable_host_in_its_own_section():
    output = render.fleet_text(moving_fleet(b_down=True))
    assert "Host b (qemu+ssh://b/system): UNREACHABLE: cannot connect: No route to host" in output
    assert "Host b (qemu+ssh://b/system) (" not in output
    assert output.rstrip().endswith("0 migrations; 1 unreachable (b)")
    assert "Fleet problems (1): pruning is suspended on every host" in output


def test_a_vm_that_may_run_on_an_unreachable_host_says_why_it_waits_and_how_to_end_the_wait():
    state = fleets.manifests(fleets.vm_yaml("web"), fleets.vm_yaml("db", where="{host: a}"))
    down = fleet.plan_fleet(state, {"a": fleets.host_state(state=state), "b": fleet.HostUnreachable("b", "down")})
    output = render.fleet_text(down)
    assert "  Unknown: web\n    web is on no reachable host and its placement admits b, which does not answer" in output
    assert "kvmops keeps no record of past placements" in output
    assert "pin it to a reachable Host (spec.placement.host, or a hostSelector b does not match)" in output
    assert "if that host is dead for good: kvmops evacuate b --host-is-dead" in output
    both = fleet.plan_fleet(state, {"a": fleet.HostUnreachable("a", "down"), "b": fleet.HostUnreachable("b", "down")})
    text = render.fleet_text(both)
    assert "Unknown: VM web may run on any of the unreachable hosts a, b; it is not created\n  web is on no" in text
    assert "if those hosts are dead for good" in text
    assert ":warning: **Unknown**: VM `web` may run on any of the unreachable hosts `a`, `b`" in render.fleet_markdown(both)


def test_json_has_a_plan_per_host_migrations_and_the_summary():
    data = json.loads(render.fleet_to_json(moving_fleet(b_down=True)))
    assert (data["kind"], data["fleet"], data["format_version"]) == ("fleet", "default", render.JSON_FORMAT_VERSION)
    assert data["summary"]["vms"] == {"a": 2, "b": 0} and data["summary"]["unreachable"] == ["b"]
    a, b = data["hosts"]
    assert a["plan"]["resources"] and (b["plan"], b["unreachable"]) == (None, "cannot connect: No route to host")
    moving = json.loads(render.fleet_to_json(moving_fleet()))
    assert moving["migrations"] == [
        {"vm": "web", "source": "a", "destination": "b", "mode": "live-copy-storage", "impact": "live"}]
    (migration,) = [r for r in moving["hosts"][0]["plan"]["resources"] if r["actions"] == ["migrate"]]
    assert migration["steps"][0]["kind"] == "migrate_domain" and migration["steps"][0]["mode"] == "live-copy-storage"


def test_markdown_leads_with_the_fleet_then_a_section_per_host():
    output = render.fleet_markdown(moving_fleet())
    assert output.startswith(render.MARKDOWN_MARKER + "\n## kvmops fleet plan for fleet default\n")
    assert "| → | `web` | `a` | `b` | live-copy-storage | live |" in output
    assert output.index("### Host a (qemu+ssh://a/system): 1 VM") < output.index("### Host b (qemu+ssh://b/system): 1 VM")
    down = render.fleet_markdown(moving_fleet(b_down=True))
    assert "> :x: **Host `b` is unreachable** (cannot connect: No route to host)" in down

"""A live ``kvmops plan`` of a fleet looks at its Hosts while a forked child reads the manifests.

The child and the early look are an optimisation only: the plan equals one made in one
process, the manifests the child read decide which Hosts are planned and at which URI
(a Host the quick scan missed is still planned, what a Host looked at elsewhere showed
is dropped), and a broken manifest is reported exactly as without the child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from reconciler.adapters import manifests
from reconciler.core import fleet as fleets
from reconciler.core import model, planner
from reconciler.runtime import fleet_reconcile, reconcile
from tests import factories
from tests.integration.conftest import REPOSITORY, node_uri, single_threaded
from tests.integration.test_fleet_cli import fleet, host_doc, web  # noqa: F401  (fleet: the fixture)


# Another thread running keeps kvmops from forking: the command reads the manifests, then looks at the Hosts.
ALONE = ("import sys, threading; threading.Thread(target=threading.Event().wait, daemon=True).start(); "
         "from reconciler.cli import main; sys.exit(main(sys.argv[1:]))")


def kvmops(*argv: str, alone: bool = False) -> subprocess.CompletedProcess:
    """Run kvmops in a process of its own: one thread (the child may be forked), or ``alone`` with two."""
    command = [sys.executable, "-c", ALONE] if alone else [sys.executable, "-m", "reconciler"]
    return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=120, cwd=REPOSITORY,
                          env={**os.environ, "NO_COLOR": "1"})


def test_a_live_fleet_plan_made_while_looking_equals_one_made_in_one_process(fleet):  # noqa: F811
    looking = kvmops("plan", str(fleet.manifests), "-o", "json")
    alone = kvmops("plan", str(fleet.manifests), "-o", "json", alone=True)

    assert (looking.returncode, alone.returncode) == (0, 0), looking.stderr + alone.stderr
    planned = json.loads(looking.stdout)
    assert planned == json.loads(alone.stdout)
    assert sorted(vm for host in planned["hosts"] for vm in host["vms"]) == ["web-1", "web-2", "web-3", "web-4"]


def test_the_manifests_are_read_by_a_child_while_the_hosts_are_looked_at(fleet, tmp_path):  # noqa: F811
    reader = tmp_path / "reader"
    done = single_threaded(f"""
        import os
        from reconciler.runtime import early_look, reconcile

        def load():
            with open({str(reader)!r}, "w") as written:
                written.write(str(os.getpid()))
            return reconcile.load_desired({str(fleet.manifests)!r})

        desired, looked = early_look.read_while_looking({str(fleet.manifests)!r}, load=load)
        assert int(open({str(reader)!r}).read()) != os.getpid(), "the manifests were read in this process"
        assert desired == reconcile.load_desired({str(fleet.manifests)!r}), "the child read other manifests"
        assert {{name: uri for name, (uri, _shown) in looked.items()}} == {{
            name: host.uri for name, host in desired.hosts.items()}}
        assert sum(len(shown.domains) for _uri, shown in looked.values()) == 0
        print("read aside")
    """)
    assert done.stdout.strip() == "read aside", done.stderr


@pytest.mark.parametrize("child", ["hands-over", "fails reading", "dies looking"])
def test_the_child_looks_at_its_share_of_the_hosts_and_a_failed_child_leaves_them_to_the_plan(fleet, child):  # noqa: F811
    done = single_threaded(f"""
        import os
        from reconciler.adapters import hypervisor as hv
        from reconciler.core import planner
        from reconciler.runtime import early_look, fleet_reconcile, reconcile

        early_look.CHILD_SHARE = 2  # the child looks at h2, this process at h1 and h3
        parent = os.getpid()
        read_here = []

        def load():
            if {child == "fails reading"!r} and os.getpid() != parent:
                os._exit(3)  # the child ends without handing anything over
            if os.getpid() == parent:
                read_here.append(True)
            return reconcile.load_desired({str(fleet.manifests)!r})

        def opener(uri, read_only):
            if {child == "dies looking"!r} and os.getpid() != parent:
                os._exit(3)  # the child has handed the manifests over and ends while it looks
            return hv.Hypervisor.open(uri, read_only=read_only)

        desired, looked = early_look.read_while_looking({str(fleet.manifests)!r}, load=load, opener=opener)
        print(sorted(looked), "read here" if read_here else "read by the child")
        planned = fleet_reconcile.plan_live(desired, settings=planner.Settings(), looked=looked)
        print(sorted(planned.observed), [h.host for h in planned.plan.unreachable])
    """)
    seen = "['h1', 'h2', 'h3']" if child == "hands-over" else "['h1', 'h3']"
    # a child that dies while it looks has handed the manifests over already: they are not read again
    reader = "read here" if child == "fails reading" else "read by the child"
    assert done.stdout.splitlines() == [f"{seen} {reader}", "['h1', 'h2', 'h3'] []"], done.stderr


def test_a_host_the_quick_scan_misses_is_still_looked_at_and_planned(fleet, tmp_path):  # noqa: F811
    (tmp_path / "h4").mkdir()
    uri = node_uri(tmp_path / "h4")
    # "Ho\x73t" is Host to YAML, but its bytes never say it: the scan does not parse this file
    (fleet.manifests / "escaped.yaml").write_text(textwrap.dedent(f"""\
        apiVersion: kvmops/v1
        kind: "Ho\\x73t"
        metadata: {{name: h4, labels: {{room: cellar}}}}
        spec: {{uri: "{uri}"}}
    """), encoding="utf-8")
    factories.write(fleet.manifests, "cellar.yaml", web("cellar-1", host="h4"))
    assert "h4" not in manifests.declared_hosts(fleet.manifests)

    looking = kvmops("plan", str(fleet.manifests), "-o", "json")

    assert looking.returncode == 0, looking.stderr
    assert {host["host"]: host["vms"] for host in json.loads(looking.stdout)["hosts"]}["h4"] == ["cellar-1"]


def test_what_a_host_showed_is_taken_only_at_the_uri_the_manifests_declare_it(fleet):  # noqa: F811
    desired = reconcile.load_desired(str(fleet.manifests))
    dead = fleets.HostUnreachable("h1", "seen dead moments ago")

    def planned(looked):
        return fleet_reconcile.plan_live(desired, settings=planner.Settings(), looked=looked)

    at_its_uri = planned({"h1": (fleet.uris["h1"], dead)})
    elsewhere = planned({"h1": ("test:///elsewhere", dead), "h9": (fleet.uris["h2"], dead)})

    assert [(h.host, h.unreachable) for h in at_its_uri.plan.unreachable] == [("h1", "seen dead moments ago")]
    assert elsewhere.plan.unreachable == ()
    assert sorted(elsewhere.observed) == ["h1", "h2", "h3"]
    assert all(isinstance(shown, model.ActualState) for shown in elsewhere.observed.values())


def test_a_broken_manifest_is_reported_as_without_the_child(fleet):  # noqa: F811
    (fleet.manifests / "broken.yaml").write_text("kind: VirtualMachine\nmetadata: [unclosed\n", encoding="utf-8")

    looking = kvmops("plan", str(fleet.manifests))
    alone = kvmops("plan", str(fleet.manifests), alone=True)

    assert looking.returncode == alone.returncode == 1
    assert "broken.yaml:" in looking.stderr + looking.stdout and "Traceback" not in looking.stderr
    assert (looking.stdout, looking.stderr) == (alone.stdout, alone.stderr)


def test_the_quick_scan_names_valid_hosts_whose_name_no_other_document_claims(tmp_path):
    tree = tmp_path / "manifests"
    outside = tmp_path / "outside.yaml"
    factories.write(tmp_path, "outside.yaml", host_doc("h5", "test:///default"))
    factories.write(tree, "hosts.yaml", host_doc("h1", "test:///one"), host_doc("h3", "test:///three"),
                    {"apiVersion": "kvmops/v1", "kind": "Host", "metadata": {"name": "h2"}, "spec": {}})
    factories.write(tree, "more/hosts.yaml", host_doc("h3", "test:///another-three"))
    factories.write(tree, "vm.yaml", factories.vm("v1"))
    (tree / "vm.yaml").write_text("# runs on the Host h1\n" + (tree / "vm.yaml").read_text(), encoding="utf-8")
    (tree / "linked.yaml").symlink_to(outside)

    assert manifests.declared_hosts(tree) == {"h1": "test:///one"}
    assert manifests.declared_hosts(tree / "hosts.yaml") == {"h1": "test:///one", "h3": "test:///three"}
    assert manifests.declared_hosts(tmp_path / "nowhere") == {}


@pytest.mark.parametrize("host", ["h1", "nowhere"])
def test_plan_for_one_host_gives_what_it_gave_before(fleet, host):  # noqa: F811
    looking = kvmops("plan", str(fleet.manifests), "--host", host)
    alone = kvmops("plan", str(fleet.manifests), "--host", host, alone=True)

    assert (looking.returncode, looking.stdout, looking.stderr) == (alone.returncode, alone.stdout, alone.stderr)
    assert looking.returncode == (0 if host == "h1" else 1)

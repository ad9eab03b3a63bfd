"""Fuzzing the pure core: any document body gets problems or a plan, never an exception.

Property-based (Hypothesis), below the YAML layer: the bodies of the example manifests
have a field replaced by an arbitrary value (any type YAML can build: null, booleans,
integers of any size, finite floats, strings, lists, mappings), removed, or joined by an
unknown one.  ``desired.build`` and ``planner.plan_changes`` (against the host the
unmutated manifests converged to) must answer with located problems or a plan that
renders as text and JSON.  Derandomized: CI runs the same examples every time.
"""

from __future__ import annotations

import copy
import os
import dataclasses
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.adapters import manifests
from reconciler.core import desired, fleet, model, offline, planner, render
from tests import manifest_seeds
from tests.unit import builders as b

SEED_DOCUMENTS = [
    document
    for seed in manifest_seeds.CORE_SEEDS  # one host's documents, all together (the fleet and policy trees repeat them)
    for relpath, text in sorted(manifest_seeds.SEEDS[seed].items()) if relpath.endswith(".yaml")
    for document in manifests.parse_text(text, f"manifests/{relpath}", relpath)[0]
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    st.sampled_from(["", "/", "/etc", "..", "../x", "1GiB", "-1", "vda", "default", "52:54:00:00:00:01", "none"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                      max_leaves=12)


def field_paths(body: object, prefix: tuple = ()) -> list[tuple]:
    """Return the path (keys and indexes) of every field in ``body``, the root excluded."""
    found = []
    children = body.items() if isinstance(body, dict) else enumerate(body) if isinstance(body, list) else ()
    for key, child in children:
        found.append((*prefix, key))
        found.extend(field_paths(child, (*prefix, key)))
    return found


FLEET_DOCUMENTS = [  # examples/fleet: Hosts, placement, a shared pool, hosts selectors
    document
    for relpath, text in sorted(manifest_seeds.SEEDS["fleet"].items())
    if relpath.startswith(f"{manifest_seeds.MANIFESTS}/") and relpath.endswith(".yaml")
    for document in manifests.parse_text(text, f"manifests/{relpath}", relpath)[0]
]


@st.composite
def mutated_documents(draw, seeds: list[model.Document] = SEED_DOCUMENTS) -> list[model.Document]:
    """Return the seed documents with one to three fields replaced, removed or added."""
    documents = list(seeds)
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(documents) - 1))
        body = copy.deepcopy(documents[index].body)
        paths = field_paths(body)
        path = draw(st.sampled_from(paths))
        parent = body
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "remove":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(values)
        else:
            parent.append(draw(values))
        documents[index] = dataclasses.replace(documents[index], body=body, fingerprint="")
    return documents


def read_file(_document, path: str) -> bytes:
    return b"vncpass" if path.endswith(".pass") else f"content of {path}".encode()  # VNC passwords: 8 bytes at most


def build(documents) -> model.DesiredState:
    return desired.build(model.ManifestSet("manifests", tuple(documents), (), len(documents)), read_file=read_file)


BASE = build(SEED_DOCUMENTS)
CONVERGED = b.converged(dataclasses.replace(BASE, problems=()))


def test_the_seed_documents_build_without_a_problem():
    """The fuzz starts from valid documents, so every problem below is the mutation's doing."""
    assert [str(p) for p in BASE.problems] == [] and len(BASE.vms) >= 5


@settings(max_examples=int(os.environ.get("KVMOPS_FUZZ_EXAMPLES", "300")), derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents=mutated_documents())
def test_any_document_body_gets_located_problems_or_a_plan(documents):
    """desired.build and the planner never raise; every problem names a file, and the plan renders."""
    state = build(documents)
    plan = planner.plan_changes(state, CONVERGED, settings=planner.Settings(prune=True))
    for problem in (*state.problems, *plan.problems):
        assert problem.file.startswith("manifests/") and problem.message, problem
    render.text(plan)
    json.loads(render.to_json(plan))


@settings(max_examples=int(os.environ.get("KVMOPS_FUZZ_EXAMPLES", "300")) // 3, derandomize=True, deadline=None,
          database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents=mutated_documents())
def test_a_diff_between_identical_revisions_of_any_manifest_set_is_empty(documents):
    """Whatever the manifests hold, planning them against the offline host of themselves changes nothing."""
    state = build(documents)
    host = offline.with_host_stand_ins(offline.converged_host(state, uri="git base"), state)
    plan = planner.plan_changes(state, host, settings=planner.Settings(prune=True))
    assert [(r.kind, r.name, [str(c) for c in r.changes], [s.kind for s in r.steps]) for r in plan.resources
            if not r.problems and (r.actions or r.changes or r.steps)] == []


FLEET = build(FLEET_DOCUMENTS)


def test_the_fleet_seed_builds_without_a_problem():
    assert [str(p) for p in FLEET.problems] == [] and len(FLEET.hosts) == 3 and len(FLEET.vms) == 3


@settings(max_examples=int(os.environ.get("KVMOPS_FUZZ_EXAMPLES", "300")) // 2, derandomize=True, deadline=None,
          database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents=mutated_documents(FLEET_DOCUMENTS), unreachable=st.sampled_from([None, "kvm1", "kvm2", "kvm3"]))
def test_any_fleet_document_body_gets_located_problems_or_a_fleet_plan(documents, unreachable):
    """Hosts, placement and hosts selectors of any shape: plan_fleet never raises, problems name a file, the plan renders."""
    state = build(documents)
    observed = {name: fleet.HostUnreachable(name, "down") if name == unreachable else b.actual() for name in state.hosts}
    plan = fleet.plan_fleet(state, observed, planner.Settings(prune=True))
    for problem in (*state.problems, *plan.problems, *(p for h in plan.hosts if h.plan for p in h.plan.problems)):
        assert problem.file.startswith("manifests/") and problem.message, problem
    render.fleet_text(plan)
    json.loads(render.fleet_to_json(plan))

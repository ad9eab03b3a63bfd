"""The compiled acceptor agrees with jsonschema on every document: it never lets an invalid one through.

Validation asks a schema compiled into closures first (fast) and jsonschema only for the
documents it refuses; so a document the acceptor accepts is never checked again.  These
tests compare the two verdicts on the seed manifests, the example fleet's Hosts, and every
one-field mutation of them (each field replaced by a value of every type, by the values
the schemas themselves name, and by the bounds +/- one; removed; joined by an unknown
one; a list item duplicated), then on random deeper mutations (Hypothesis).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.adapters import manifests
from reconciler.core import validation
from tests.unit.test_fuzz_desired import SEED_DOCUMENTS, field_paths, values

REPO = Path(__file__).resolve().parents[2]
HOST_DOCUMENTS = [
    document
    for path in sorted((REPO / "examples" / "fleet" / "hosts").glob("*.yaml"))
    for document in manifests.load_file(path, path.parent)[0]
]
DOCUMENTS = [*SEED_DOCUMENTS, *HOST_DOCUMENTS]


def schema_values() -> list[object]:
    """Return every enum value, const, default and example the schemas name, and each bound +/- 1."""
    found: list[object] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "enum":
                    found.extend(value)
                elif key in ("const", "default"):
                    found.append(value)
                elif key == "examples":
                    found.extend(value)
                elif key in ("minimum", "maximum", "minLength", "maxLength", "maxItems", "minItems") and isinstance(value, int):
                    found.extend([value - 1, value, value + 1, "x" * max(value + 1, 0) if "Length" in key else value])
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(validation.schemas())
    unique: list[object] = []
    for value in found:
        if not any(type(value) is type(seen) and value == seen for seen in unique):
            unique.append(value)
    return unique


GENERIC = [
    None, True, False, 0, 1, -1, 1.0, 1.5, 2**40, "", "x", "web", "2GiB", "a\n", "x" * 300, "52:54:00:00:00:01",
    [], {}, ["x"], [1], {"x": 1}, [{}], {"name": "x"},
]
SCHEMA_VALUES = schema_values()
CANDIDATES = [*GENERIC, *SCHEMA_VALUES]
ROTATION = 8  # each field gets the generic values and every 8th schema value (a different eighth per field)


def agree(body: object, kind: str) -> None:
    """Assert that the acceptor of ``kind`` and jsonschema give ``body`` the same verdict."""
    accept = validation._acceptor(kind)
    assert accept is not None, f"no acceptor for {kind}"
    valid = validation._validator(kind).is_valid(body)
    assert accept(body) == valid, f"acceptor says {not valid}, jsonschema says {valid}: {body!r}"


def replaced(body: dict, path: tuple, value: object) -> dict:
    result = copy.deepcopy(body)
    target = result
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return result


def removed(body: dict, path: tuple) -> dict:
    result = copy.deepcopy(body)
    target = result
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return result


def test_every_kind_has_an_acceptor():
    assert all(validation._acceptor(kind) is not None for kind in validation.SCHEMA_FILES)


def test_the_seed_documents_are_valid_for_both():
    for document in DOCUMENTS:
        assert validation._acceptor(document.body["kind"])(document.body)
        agree(document.body, document.body["kind"])


def test_every_one_field_mutation_gets_the_same_verdict():
    checked = 0
    for document in DOCUMENTS:
        body, kind = document.body, document.body["kind"]
        for number, path in enumerate(field_paths(body)):
            for value in [*GENERIC, *SCHEMA_VALUES[number % ROTATION::ROTATION]]:
                agree(replaced(body, path, value), kind)
                checked += 1
            agree(removed(body, path), kind)
        for path in [(), *field_paths(body)]:
            target = body
            for key in path:
                target = target[key]
            if isinstance(target, dict):
                grown = copy.deepcopy(body)
                place = grown
                for key in path:
                    place = place[key]
                place["unknownField"] = "x"
                agree(grown, kind)
            if isinstance(target, list) and target:
                agree(replaced(body, path, [*target, copy.deepcopy(target[0])]), kind)
    assert checked > 10_000  # 364 fields x ~43 values


@settings(max_examples=200, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_mutations_get_the_same_verdict(data):
    body = copy.deepcopy(data.draw(st.sampled_from(DOCUMENTS)).body)
    kind = body["kind"]
    for _ in range(data.draw(st.integers(1, 3))):
        paths = field_paths(body)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        body = replaced(body, path, data.draw(st.one_of(values, st.sampled_from(CANDIDATES))))
    agree(body, kind)


SMALL_SCHEMAS = [
    {"oneOf": [{"type": "integer"}, {"type": "number"}]},  # 1 matches both: not one of
    {"anyOf": [{"type": "integer"}, {"minimum": 3}]},
    {"enum": [1, "a", None, [1, 2], {"k": False}]},  # True is not 1, False is not 0
    {"const": 0},
    {"type": "integer", "minimum": 1, "exclusiveMaximum": 10},
    {"type": "array", "uniqueItems": True, "items": {"type": ["integer", "boolean"]}, "maxItems": 3},
    {"not": {"type": "string", "pattern": "^a$"}},
    {"type": "object", "properties": {"mode": {"const": "custom"}}, "if": {"properties": {"mode": {"const": "custom"}}},
     "then": {"required": ["model"]}, "else": {"maxProperties": 1}},
    {"type": "object", "propertyNames": {"maxLength": 2}, "additionalProperties": {"type": "string"}, "minProperties": 1},
    {"allOf": [{"type": "string"}, {"minLength": 2}, {"maxLength": 3}]},
]
SMALL_VALUES = [*GENERIC, 2, 3, 9, 10, 2.0, 3.5, True, "a", "ab", "a\n", [True, 1], [1, 1.0], [False, 0], [1, 2], [1, 2, 3, 4],
                {"mode": "custom"}, {"mode": "custom", "model": "x"}, {"mode": "other"}, {"mode": "x", "y": 1},
                {"abc": "x"}, {"ab": 1}, {"k": 0}, {"k": False}, [1, 2.0]]


def test_the_compiler_follows_jsonschema_on_overlapping_and_boolean_cases():
    for schema in SMALL_SCHEMAS:
        accept = validation._Compiler().compile(schema, schema)
        check = validation._validator_class()(schema)
        for value in [*SMALL_VALUES, *([value] for value in SMALL_VALUES)]:
            assert accept(value) == check.is_valid(value), f"{schema} on {value!r}"


def test_a_keyword_the_compiler_does_not_know_leaves_validation_to_jsonschema():
    with pytest.raises(validation._Unsupported):
        validation._Compiler().compile({"type": "object", "dependentRequired": {"a": ["b"]}}, {})

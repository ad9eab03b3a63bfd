"""Check documents against the JSON Schemas in ``schemas/`` and fill in their defaults.

The schemas are the single source of a manifest's shape: which fields exist, their
types, bounds and defaults.  This module turns jsonschema's findings into one
:class:`~reconciler.core.model.Problem` per fault, worded for the person who wrote the
file (``unknown field 'memroy' (did you mean 'memory'?)``), and applies each schema's
``default`` values so that :mod:`reconciler.core.desired` never repeats them.

Schemas are read once from the package; everything else is pure.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib.resources
import json
import re
from collections.abc import Iterable

import jsonschema
import referencing
import referencing.jsonschema

from reconciler.core import memo, model, trash

API_VERSION = "kvmops/v1"
SCHEMA_FILES = {
    "VirtualMachine": "virtualmachine.schema.json",
    "StoragePool": "storagepool.schema.json",
    "Network": "network.schema.json",
    "Image": "image.schema.json",
    "Host": "host.schema.json",
}
SHARED_SCHEMA_FILES = ("metadata.schema.json", "config.schema.json")
CONFIG_SCHEMA = "config.schema.json"


def schema_directory() -> importlib.resources.abc.Traversable:
    """Return the schemas as package data: inside an installed wheel, or next to the package in a checkout.

    They are part of the program, read once like its code (``importlib.resources``), not
    input from the world: the core does no I/O of its own.
    """
    package = importlib.resources.files("reconciler")
    for candidate in (package / "schemas", package / ".." / "schemas"):
        if (candidate / SCHEMA_FILES["VirtualMachine"]).is_file():
            return candidate
    raise FileNotFoundError(f"kvmops schemas not found next to {package}")


@functools.cache
def schemas() -> dict[str, dict]:
    """Return every schema by file name (the kinds' and the shared ones)."""
    directory = schema_directory()
    return {
        name: json.loads((directory / name).read_text(encoding="utf-8"))
        for name in (*SCHEMA_FILES.values(), *SHARED_SCHEMA_FILES)
    }


@functools.cache
def _registry() -> referencing.Registry:
    # Without '$schema', jsonschema keeps kvmops' validator class (its ECMA 'pattern') when
    # it follows a $ref into another schema, instead of picking the stock one by '$schema'.
    resources = [
        (schema["$id"], referencing.jsonschema.DRAFT202012.create_resource(
            {key: value for key, value in schema.items() if key != "$schema"}))
        for schema in schemas().values()
    ]
    return referencing.Registry().with_resources(resources)


@functools.cache
def _end_anchored(pattern: str) -> re.Pattern[str]:
    # JSON Schema patterns are ECMA-262 regular expressions, where '$' is the very end of
    # the text; Python's '$' also matches before a final newline, which let "web\n" pass
    # as a name and "52:54:00:00:00:01\n" as a MAC.  \Z is ECMA's '$'.
    return re.compile(re.sub(r"(?<!\\)\$", r"\\Z", pattern))


def _pattern(validator, pattern: str, instance: object, schema: dict):
    if validator.is_type(instance, "string") and not _end_anchored(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})


@functools.cache
def _validator(kind: str) -> jsonschema.Draft202012Validator:
    return _Validator(schemas()[SCHEMA_FILES[kind]], registry=_registry())


@functools.cache
def _config_validator() -> jsonschema.Draft202012Validator:
    return _Validator(schemas()[CONFIG_SCHEMA], registry=_registry())


def validate_config(document: model.Document) -> tuple[dict | None, list[model.Problem]]:
    """Return the controller configuration in ``document`` with defaults, or its problems."""
    body = document.body if document.body is not None else {}
    if not isinstance(body, dict):
        return None, [document.origin.problem("", "the configuration must be a mapping of settings")]
    problems = _problems(_config_validator().iter_errors(body), document.origin)
    retention = body.get("policy", {}).get("trashRetention") if not problems else None
    if retention is not None:
        try:
            trash.parse_retention(retention)  # the schema checks its shape, not its size
        except ValueError as exc:
            problems.append(document.origin.problem("policy.trashRetention", str(exc)))
    if problems:
        return None, problems
    schema = schemas()[CONFIG_SCHEMA]
    return with_defaults(body, schema, schema), []


_VALID_BODIES: memo.Memo[dict] = memo.Memo()  # body with defaults of documents that validated, by fingerprint


def validate(document: model.Document) -> tuple[dict | None, list[model.Problem]]:
    """Return ``document``'s body with defaults applied, or the problems that stop it.

    The body is returned only when there are no problems; treat it as read-only.  A
    document whose source text validated before (same fingerprint) is not validated
    again: the result is a function of that text alone, and the controller re-reads
    thousands of unchanged documents every pass.
    """
    cached = _VALID_BODIES.get(document.fingerprint) if document.fingerprint else None
    if cached is not None:
        return cached, []
    body, problems = _validate(document)
    if body is not None and document.fingerprint:
        _VALID_BODIES.put(document.fingerprint, body)
    return body, problems


def _validate(document: model.Document) -> tuple[dict | None, list[model.Problem]]:
    body = document.body
    origin = document.origin
    if not isinstance(body, dict):
        return None, [origin.problem("", "a manifest document must be a mapping with apiVersion, kind, metadata and spec")]
    kind = body.get("kind")
    if not isinstance(kind, str) or kind not in SCHEMA_FILES:
        known = " or ".join(SCHEMA_FILES)
        message = "missing 'kind'" if kind is None else f"unknown kind {_short(kind)}"
        return None, [origin.problem("kind", f"{message}; expected {known}")]
    problems = []
    if body.get("apiVersion") != API_VERSION:  # reported, and the rest still checked against the kind's schema
        got = body.get("apiVersion")
        message = "missing 'apiVersion'" if got is None else f"apiVersion {got!r} is not supported"
        problems.append(origin.problem("apiVersion", f"{message}; write apiVersion: {API_VERSION}"))
        body = {**body, "apiVersion": API_VERSION}
    problems = sorted(problems + _problems(_validator(kind).iter_errors(body), origin), key=lambda p: (p.line or 0, p.path))
    if problems:
        return None, problems
    root = schemas()[SCHEMA_FILES[kind]]
    return with_defaults(body, root, root), []


_ONE_PER_FIELD = {"type", "enum", "const", "pattern", "minLength", "maxLength", "minimum", "maximum",
                  "exclusiveMinimum", "exclusiveMaximum", "oneOf", "anyOf"}


def _problems(found: Iterable[jsonschema.ValidationError], origin: model.Origin) -> list[model.Problem]:
    """Return one problem per fault, in file order; a value wrong in several ways is reported once."""
    problems: dict[tuple[str, str], model.Problem] = {}
    judged: set[str] = set()
    for error in sorted(found, key=lambda e: [str(p) for p in e.absolute_path]):
        for path, message in _explain(error):
            if error.validator in _ONE_PER_FIELD:
                if path in judged:
                    continue
                judged.add(path)
            problems.setdefault((path, message), origin.problem(path, message))
    return sorted(problems.values(), key=lambda p: (p.line or 0, p.path))


def dotted(parts: Iterable[object]) -> str:
    """Return a field path as users write it: ``spec.disks[0].size``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def describe(value: object) -> str:
    """Return the YAML type of ``value`` in words, with the value when it is short."""
    kind = {
        bool: "a boolean", int: "an integer", float: "a number", str: "a string",
        list: "a list", dict: "a mapping", type(None): "null",
    }.get(type(value), type(value).__name__)  # fmt: skip
    if isinstance(value, bool):
        return f"{kind} ({'true' if value else 'false'})"
    if isinstance(value, (int, float, str)) and len(repr(value)) <= 40:
        return f"{kind} ({value!r})"
    return kind


_TYPE_WORDS = {
    "integer": "an integer", "string": "a string", "boolean": "true or false",
    "object": "a mapping", "array": "a list", "number": "a number", "null": "null",
}  # fmt: skip


def _explain(error: jsonschema.ValidationError) -> list[tuple[str, str]]:
    """Return (path, message) pairs explaining one jsonschema error in plain words."""
    path = dotted(error.absolute_path)
    keyword, expected, value, schema = error.validator, error.validator_value, error.instance, error.schema
    if keyword == "additionalProperties" and isinstance(value, dict):
        allowed = sorted(schema.get("properties", {}))
        found = []
        for key in sorted(set(value) - set(allowed)):
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; allowed: {', '.join(allowed)}"
            found.append((dotted([*error.absolute_path, key]), f"unknown field {key!r}{hint}"))
        return found
    if keyword == "required":
        missing = [name for name in expected if isinstance(value, dict) and name not in value]
        return [(path, f"missing required field {name!r}") for name in missing]
    if keyword == "type":
        types = expected if isinstance(expected, list) else [expected]
        hint = ""
        if types == ["string"] and isinstance(value, (int, float, bool)):
            hint = "; YAML read it as a number or boolean: put it in quotes"
        return [(path, f"expected {' or '.join(_TYPE_WORDS.get(t, t) for t in types)}, got {describe(value)}{hint}")]
    if keyword == "enum":
        return [(path, f"{value!r} is not allowed; use one of: {', '.join(map(str, expected))}")]
    if keyword == "const":
        return [(path, f"must be {expected!r}, got {value!r}")]
    if keyword in ("minimum", "exclusiveMinimum"):
        return [(path, f"{value} is too small; the minimum is {expected}")]
    if keyword in ("maximum", "exclusiveMaximum"):
        return [(path, f"{value} is too large; the maximum is {expected}")]
    if keyword == "pattern":
        hint = schema.get("x-pattern-hint", f"must match {expected}")
        return [(path, f"{_short(value)} is not valid: {hint}")]
    if keyword == "minLength":
        return [(path, "must not be empty" if expected == 1 else f"must be at least {expected} characters")]
    if keyword == "maxLength":
        return [(path, f"is {len(value)} characters long; at most {expected} are allowed")]
    if keyword in ("maxItems", "maxProperties"):
        return [(path, f"has {len(value)} entries; at most {expected} are allowed")]
    if keyword in ("minItems", "minProperties"):
        return [(path, f"needs at least {expected} entr{'y' if expected == 1 else 'ies'}")]
    if keyword in ("oneOf", "anyOf"):
        return _explain_alternatives(error, path)
    if keyword == "propertyNames":
        hint = expected.get("x-pattern-hint", "invalid key") if isinstance(expected, dict) else "invalid key"
        return [(path, f"{_short(value)}: {hint}")]
    return [(path, error.message)]


def _explain_alternatives(error: jsonschema.ValidationError, path: str) -> list[tuple[str, str]]:
    hint = error.schema.get("x-oneof-hint")
    if hint:
        return [(path, hint)]
    context = error.context or []
    if context and all(sub.validator == "type" for sub in context if not sub.relative_path):
        types = []
        for sub in context:
            for t in sub.validator_value if isinstance(sub.validator_value, list) else [sub.validator_value]:
                if t not in types:
                    types.append(t)
        if types:
            words = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
            if "string" in types:
                words += " with a unit such as 2GiB"
            return [(path, f"expected {words}, got {describe(error.instance)}")]
    relevant = [sub for sub in context if sub.validator != "type"]
    # A fault inside the alternative the value is shaped like (a mapping's field) beats
    # "is not one of" from an alternative it was never meant to be.
    deeper = [sub for sub in relevant if sub.relative_path]
    if deeper:
        return _explain(jsonschema.exceptions.best_match(deeper))
    if relevant:
        return _explain(jsonschema.exceptions.best_match(relevant))
    return [(path, error.message)]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


def with_defaults(instance: object, schema: dict, root: dict) -> object:
    """Return a copy of ``instance`` with every absent property's schema ``default`` filled in."""
    schema = _resolve(schema, root)
    if isinstance(instance, dict):
        result = {}
        properties = schema.get("properties", {})
        for key, value in instance.items():
            sub = properties.get(key)
            result[key] = with_defaults(value, sub, root) if sub is not None else copy.deepcopy(value)
        for key, sub in properties.items():
            sub = _resolve(sub, root)
            if key not in result and "default" in sub:
                result[key] = copy.deepcopy(sub["default"])
        return result
    if isinstance(instance, list):
        items = schema.get("items")
        return [with_defaults(item, items, root) if items else copy.deepcopy(item) for item in instance]
    return instance


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        ref = schema["$ref"]
        if ref.startswith("#/"):
            target = root
            for part in ref[2:].split("/"):
                target = target[part]
        else:
            target = next(s for s in schemas().values() if s.get("$id") == ref)
        schema = target
    return schema

"""Check documents against the JSON Schemas in ``schemas/`` and fill in their defaults.

The schemas are the single source of a manifest's shape: which fields exist, their
types, bounds and defaults.  This module turns jsonschema's findings into one
:class:`~reconciler.core.model.Problem` per fault, worded for the person who wrote the
file (``unknown field 'memroy' (did you mean 'memory'?)``), and applies each schema's
``default`` values so that :mod:`reconciler.core.desired` never repeats them.

Schemas are read once from the package; everything else is pure.  jsonschema (with
its referencing and rpds stack) is imported, and the validators built, at the first
document checked: a command that checks none (``kvmops --version``, ``status``) never
pays for them, and one that checks thousands builds them once.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from reconciler.core import memo, model, trash

if TYPE_CHECKING:
    import importlib.resources.abc

    import jsonschema
    import referencing

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
    import importlib.resources

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
    import referencing
    import referencing.jsonschema

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
        import jsonschema

        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.cache
def _validator_class() -> type[jsonschema.Draft202012Validator]:
    import jsonschema

    return jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})


@functools.cache
def _validator(kind: str) -> jsonschema.Draft202012Validator:
    return _validator_class()(schemas()[SCHEMA_FILES[kind]], registry=_registry())


@functools.cache
def _config_validator() -> jsonschema.Draft202012Validator:
    return _validator_class()(schemas()[CONFIG_SCHEMA], registry=_registry())


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
    accept = _acceptor(kind)
    if accept is None or not accept(body):  # jsonschema finds and words every fault (and confirms a doubtful "no")
        problems = sorted(problems + _problems(_validator(kind).iter_errors(body), origin), key=lambda p: (p.line or 0, p.path))
    if problems:
        return None, problems
    root = schemas()[SCHEMA_FILES[kind]]
    return with_defaults(body, root, root), []


@functools.cache
def _acceptor(kind: str) -> Callable[[object], bool] | None:
    """Return a fast yes/no check of documents of ``kind`` against its schema, or None.

    jsonschema walks the schema anew for every document (about half a millisecond for a
    VirtualMachine, most of reading 10,000 of them in a fresh process).  The acceptor is
    the same schema compiled once into nested closures that answer only "valid or not",
    for the keywords kvmops' schemas use, with jsonschema's semantics (its own equality
    and uniqueness, the ECMA ``pattern`` above, ``format`` as an annotation as long as
    the validator has no format checker).  A document it accepts is valid; one it refuses
    goes to jsonschema, which finds and words the problems (or, if the two ever
    disagreed, finds none).  A schema with any keyword it does not know gets no acceptor
    at all: everything then goes to jsonschema.
    """
    if _jsonschema_equality() is None or _validator(kind).format_checker is not None:
        return None
    try:
        return _Compiler().compile(schemas()[SCHEMA_FILES[kind]], schemas()[SCHEMA_FILES[kind]])
    except _Unsupported:
        return None


@functools.cache
def _jsonschema_equality() -> tuple[Callable[[object, object], bool], Callable[[list], bool]] | None:
    """Return jsonschema's own equality (True is not 1) and uniqueness, so that the acceptor agrees with it.

    None for a jsonschema without them: every document is then validated by jsonschema alone.
    """
    try:
        from jsonschema._utils import equal, uniq
    except ImportError:
        return None
    return equal, uniq


class _Unsupported(Exception):
    """A schema keyword (or form of one) the acceptor does not evaluate."""


_PLAIN = (dict, list, str, int, float, bool, type(None))  # what YAML (and JSON) documents are made of
_TYPES = {
    "object": lambda x: type(x) is dict,
    "array": lambda x: type(x) is list,
    "string": lambda x: type(x) is str,
    "boolean": lambda x: type(x) is bool,
    "null": lambda x: x is None,
    "number": lambda x: type(x) is int or type(x) is float,
    # draft 6 and later: 1.0 is an integer too
    "integer": lambda x: type(x) is int or (type(x) is float and x.is_integer()),
}
_EXACT_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}
_OBJECT_KEYWORDS = frozenset({"properties", "additionalProperties", "required"})  # checked together: _k_mapping
_ANNOTATIONS = {"$schema", "$id", "$comment", "$defs", "title", "description", "default", "examples", "deprecated",
                "readOnly", "writeOnly", "then", "else"}  # then/else are evaluated with their 'if'


def _always(instance: object) -> bool:
    return True


def _never(instance: object) -> bool:
    return False


class _Compiler:
    """Compile a JSON Schema (draft 2020-12, the keywords kvmops uses) into a yes/no check."""

    def __init__(self) -> None:
        self.by_id = {schema["$id"]: schema for schema in schemas().values() if "$id" in schema}
        self.references: dict[tuple[int, str], Callable[[object], bool]] = {}

    def compile(self, schema: object, root: dict) -> Callable[[object], bool]:
        if schema is True:
            return _always
        if schema is False:
            return _never
        if not isinstance(schema, dict):
            raise _Unsupported(repr(schema))
        if "$id" in schema and schema is not root:
            raise _Unsupported("$id inside a schema")
        wanted = schema.get("type")
        exact = _EXACT_TYPES.get(wanted) if type(wanted) is str else None  # the type test is then made first, inline
        checks = []
        if not _OBJECT_KEYWORDS.isdisjoint(schema):
            checks.append(_k_mapping(self, schema, root))
        for keyword, value in schema.items():
            if keyword in _ANNOTATIONS or keyword.startswith("x-") or keyword == "format":
                continue
            if keyword in _OBJECT_KEYWORDS or (keyword == "type" and exact is not None):
                continue
            make = _KEYWORDS.get(keyword)
            if make is None:
                raise _Unsupported(keyword)
            checks.append(make(self, value, schema, root))
        checks_ = tuple(checks)
        if exact is not None:  # an instance of one of these types is plain data
            if not checks_:
                return lambda instance: type(instance) is exact
            if len(checks_) == 1:
                (only,) = checks_
                return lambda instance: type(instance) is exact and only(instance)

            def typed_all(instance: object) -> bool:
                if type(instance) is not exact:
                    return False
                for each in checks_:
                    if not each(instance):
                        return False
                return True
            return typed_all
        if len(checks_) == 1:
            (only,) = checks_

            def check(instance: object) -> bool:
                return type(instance) in _PLAIN and only(instance)
            return check

        def check_all(instance: object) -> bool:
            if type(instance) not in _PLAIN:
                return False
            for each in checks_:
                if not each(instance):
                    return False
            return True
        return check_all

    def reference(self, ref: str, root: dict) -> Callable[[object], bool]:
        if ref.startswith("#/"):
            if "~" in ref or "%" in ref:
                raise _Unsupported(ref)
            target: object = root
            for part in ref[2:].split("/"):
                if not isinstance(target, dict) or part not in target:
                    raise _Unsupported(ref)
                target = target[part]
            target_root = root
        elif ref in self.by_id:
            target = target_root = self.by_id[ref]
        else:
            raise _Unsupported(ref)
        key = (id(target_root), ref)
        if key not in self.references:
            compiled: list[Callable[[object], bool]] = []
            self.references[key] = lambda instance: compiled[0](instance)  # a schema may refer to itself
            compiled.append(self.compile(target, target_root))
            self.references[key] = compiled[0]
        return self.references[key]


def _k_type(compiler: _Compiler, value: object, schema: dict, root: dict) -> Callable[[object], bool]:
    names = value if isinstance(value, list) else [value]
    if not names or any(name not in _TYPES for name in names):
        raise _Unsupported(f"type {value!r}")
    tests = tuple(_TYPES[name] for name in names)
    if len(tests) == 1:
        return tests[0]
    return lambda x: any(test(x) for test in tests)


def _k_pattern(compiler: _Compiler, value: object, schema: dict, root: dict) -> Callable[[object], bool]:
    search = _end_anchored(value).search
    return lambda x: type(x) is not str or search(x) is not None


def _bound(test: Callable[[float, float], bool], applies: Callable[[object], bool]):
    def make(compiler: _Compiler, value: object, schema: dict, root: dict) -> Callable[[object], bool]:
        if type(value) not in (int, float):
            raise _Unsupported(f"bound {value!r}")
        return lambda x: not applies(x) or test(x, value)
    return make


def _is_number(x: object) -> bool:
    return type(x) is int or type(x) is float


def _k_mapping(compiler: _Compiler, schema: dict, root: dict) -> Callable[[object], bool]:
    """Return the check of ``required``, ``properties`` and ``additionalProperties`` together: one walk over a mapping."""
    checks = {name: compiler.compile(sub, root) for name, sub in schema.get("properties", {}).items()}
    required = tuple(schema.get("required", ()))
    additional = schema.get("additionalProperties", True)
    extra = None if additional is True else compiler.compile(additional, root)

    def mapping(x: object) -> bool:
        if type(x) is not dict:
            return True
        for name in required:
            if name not in x:
                return False
        for name, item in x.items():
            check = checks.get(name)
            if check is None:
                if extra is not None and not extra(item):
                    return False
            elif not check(item):
                return False
        return True
    return mapping


def _k_items(compiler: _Compiler, value: object, schema: dict, root: dict) -> Callable[[object], bool]:
    if "prefixItems" in schema:
        raise _Unsupported("prefixItems")
    check = compiler.compile(value, root)
    return lambda x: type(x) is not list or all(check(item) for item in x)


def _k_property_names(compiler: _Compiler, value: object, schema: dict, root: dict) -> Callable[[object], bool]:
    check = compiler.compile(value, root)
    return lambda x: type(x) is not dict or all(check(name) for name in x)


def _k_enum(compiler: _Compiler, value: object, schema: dict, root: dict) -> Callable[[object], bool]:
    allowed = tuple(value)
    equal, _ = _jsonschema_equality()
    texts = frozenset(each for each in allowed if type(each) is str)  # jsonschema compares a string with ==

    def enum(x: object) -> bool:
        if type(x) is str:
            return x in texts
        return any(equal(each, x) for each in allowed)
    return enum


def _k_const(compiler: _Compiler, value: object, schema: dict, root: dict) -> Callable[[object], bool]:
    equal, _ = _jsonschema_equality()
    return lambda x: equal(x, value)


def _k_unique(compiler: _Compiler, value: object, schema: dict, root: dict) -> Callable[[object], bool]:
    if not value:
        return _always
    _, uniq = _jsonschema_equality()
    return lambda x: type(x) is not list or uniq(x)


def _k_not(compiler: _Compiler, value: object, schema: dict, root: dict) -> Callable[[object], bool]:
    check = compiler.compile(value, root)
    return lambda x: not check(x)


def _k_one_of(compiler: _Compiler, value: object, schema: dict, root: dict) -> Callable[[object], bool]:
    checks = tuple(compiler.compile(sub, root) for sub in value)

    def one_of(x: object) -> bool:
        matched = False
        for check in checks:
            if check(x):
                if matched:
                    return False  # a second match: the rest cannot change the answer
                matched = True
        return matched
    return one_of


def _k_any_of(compiler: _Compiler, value: object, schema: dict, root: dict) -> Callable[[object], bool]:
    checks = tuple(compiler.compile(sub, root) for sub in value)
    return lambda x: any(check(x) for check in checks)


def _k_all_of(compiler: _Compiler, value: object, schema: dict, root: dict) -> Callable[[object], bool]:
    checks = tuple(compiler.compile(sub, root) for sub in value)
    return lambda x: all(check(x) for check in checks)


def _k_if(compiler: _Compiler, value: object, schema: dict, root: dict) -> Callable[[object], bool]:
    condition = compiler.compile(value, root)
    then = compiler.compile(schema.get("then", True), root)
    otherwise = compiler.compile(schema.get("else", True), root)
    return lambda x: then(x) if condition(x) else otherwise(x)


def _k_ref(compiler: _Compiler, value: object, schema: dict, root: dict) -> Callable[[object], bool]:
    if not isinstance(value, str):
        raise _Unsupported(f"$ref {value!r}")
    return compiler.reference(value, root)


def _count(of: type, test: Callable[[int, int], bool]):
    def make(compiler: _Compiler, value: object, schema: dict, root: dict) -> Callable[[object], bool]:
        if type(value) is not int:
            raise _Unsupported(f"count {value!r}")
        return lambda x: type(x) is not of or test(len(x), value)
    return make


def _length(test: Callable[[int, int], bool]):
    def make(compiler: _Compiler, value: object, schema: dict, root: dict) -> Callable[[object], bool]:
        if type(value) is not int:
            raise _Unsupported(f"length {value!r}")
        return lambda x: type(x) is not str or test(len(x), value)
    return make


_KEYWORDS = {
    "type": _k_type, "pattern": _k_pattern, "items": _k_items, "propertyNames": _k_property_names,
    "enum": _k_enum, "const": _k_const, "uniqueItems": _k_unique, "not": _k_not, "oneOf": _k_one_of,
    "anyOf": _k_any_of, "allOf": _k_all_of, "if": _k_if, "$ref": _k_ref,
    "minimum": _bound(lambda x, bound: x >= bound, _is_number),
    "maximum": _bound(lambda x, bound: x <= bound, _is_number),
    "exclusiveMinimum": _bound(lambda x, bound: x > bound, _is_number),
    "exclusiveMaximum": _bound(lambda x, bound: x < bound, _is_number),
    "minLength": _length(lambda n, bound: n >= bound), "maxLength": _length(lambda n, bound: n <= bound),
    "minItems": _count(list, lambda n, bound: n >= bound), "maxItems": _count(list, lambda n, bound: n <= bound),
    "minProperties": _count(dict, lambda n, bound: n >= bound),
    "maxProperties": _count(dict, lambda n, bound: n <= bound),
}  # fmt: skip


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
    import jsonschema

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
    if type(instance) in _IMMUTABLE:
        return instance
    properties, defaults, items = _defaults_of(schema, root)
    if isinstance(instance, dict):
        result = {}
        for key, value in instance.items():
            if type(value) in _IMMUTABLE:  # what both branches below return for it
                result[key] = value
                continue
            sub = properties.get(key)
            result[key] = with_defaults(value, sub, root) if sub is not None else _copied(value)
        for key, default in defaults:
            if key not in result:
                result[key] = _copied(default)
        return result
    if isinstance(instance, list):
        return [with_defaults(item, items, root) if items else _copied(item) for item in instance]
    return instance


_Defaults = tuple[dict, tuple[tuple[str, object], ...], object]  # properties, (property, default) pairs, items
_DEFAULTS_OF: dict[tuple[int, int], tuple[dict, dict, _Defaults]] = {}


def _defaults_of(schema: dict, root: dict) -> _Defaults:
    """Return the properties, the (property, default) pairs and the items of ``schema``, its $refs followed.

    Worked out once per schema: following the $refs of every property of every mapping
    anew was most of filling in the defaults of 10,000 documents.  The schemas are kept
    in the entry, so that an id in the key is never reused for another schema.
    """
    key = (id(schema), id(root))
    found = _DEFAULTS_OF.get(key)
    if found is None:
        resolved = _resolve(schema, root)
        properties = resolved.get("properties", {})
        defaults = []
        for name, sub in properties.items():
            sub = _resolve(sub, root)
            if "default" in sub:
                defaults.append((name, sub["default"]))
        found = _DEFAULTS_OF[key] = (schema, root, (properties, tuple(defaults), resolved.get("items")))
    return found[2]


_IMMUTABLE = (str, int, float, bool, type(None))


def _copied(value: object) -> object:
    """Return a deep copy of ``value`` (copy.deepcopy's result, without its bookkeeping for plain data)."""
    if type(value) in _IMMUTABLE:
        return value
    if type(value) is dict:
        return {key: _copied(item) for key, item in value.items()}
    if type(value) is list:
        return [_copied(item) for item in value]
    return copy.deepcopy(value)


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

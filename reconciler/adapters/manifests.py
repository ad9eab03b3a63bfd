"""Read manifest files from disk into :class:`~reconciler.core.model.Document` values.

The only module that imports ``yaml``.  It finds ``*.yaml``/``*.yml`` files recursively
under a root (skipping hidden files and directories and editor leftovers), parses every
document with PyYAML's safe composer, and converts the node graph to plain data itself so
that it can

* remember the line of every field, for ``FILE:LINE: field.path: message`` problems;
* refuse what a manifest never needs: duplicate keys, custom tags, recursive aliases,
  alias "bombs" (a node budget per file), absurd nesting, files over 1 MiB, binary junk.

Nothing here raises for a bad file: each becomes a :class:`Problem` in the returned
:class:`ManifestSet`, and the other files still load.  Only a root that does not exist
raises :class:`~reconciler.errors.ManifestError`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml

from reconciler import errors
from reconciler.adapters import manifest_tree
from reconciler.core import memo, model, validation

MAX_FILE_BYTES = 1024 * 1024
MAX_NODES_PER_FILE = 50_000
MAX_DEPTH = 32
MANIFEST_SUFFIXES = (".yaml", ".yml")

_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# The safe loader's implicit resolvers by a scalar's first character, combined the way its
# resolve() combines them: those for that character, then those for any character.
_ANY_FIRST = tuple(_SafeLoader.yaml_implicit_resolvers.get(None, ()))
_BY_FIRST = {first: (*resolvers, *_ANY_FIRST)
             for first, resolvers in _SafeLoader.yaml_implicit_resolvers.items() if first is not None}
_COLLECTION_TAGS = {yaml.SequenceNode: _SafeLoader.DEFAULT_SEQUENCE_TAG, yaml.MappingNode: _SafeLoader.DEFAULT_MAPPING_TAG}
_SCALAR_TAG = _SafeLoader.DEFAULT_SCALAR_TAG


class _QuickResolver(_SafeLoader):
    """The safe loader (PyYAML's C one where it is built), resolving tags with less Python per node.

    The composer asks the resolver three times per node (descend, resolve, ascend); for the
    safe loader, which has no path resolvers, descending and ascending do nothing, and
    resolving is one lookup of the implicit resolvers by first character.  Inherited,
    those calls were a fifth of composing 10,000 manifests.  The tags are the same.
    """

    def resolve(self, kind, value, implicit):
        if kind is yaml.ScalarNode:
            if implicit[0]:
                for tag, regexp in _BY_FIRST.get(value[:1], _ANY_FIRST):
                    if regexp.match(value):
                        return tag
            return _SCALAR_TAG
        return _COLLECTION_TAGS.get(kind)

    def descend_resolver(self, current_node, current_index):
        pass

    def ascend_resolver(self):
        pass


# A path resolver added to the safe loader (kvmops adds none) would need the inherited ones.
_Loader = _SafeLoader if _SafeLoader.yaml_path_resolvers else _QuickResolver
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_STANDARD_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


class _Refused(Exception):
    """A document that cannot become data; converted to a Problem by the caller."""

    def __init__(self, line: int | None, path: str, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.path = path
        self.message = message


def discover(root: Path) -> list[Path]:
    """Return the manifest files under ``root``, sorted, skipping hidden and backup files."""
    found = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in names:
            if name.startswith((".", "#")) or not name.endswith(MANIFEST_SUFFIXES):
                continue
            found.append(Path(directory, name))
    return sorted(found, key=lambda path: path.parts)  # Path's own order, without its comparison's overhead


def load(root: str | os.PathLike) -> model.ManifestSet:
    """Return every document under ``root`` (a directory or a single file).

    Raises ``ManifestError`` when ``root`` does not exist or is not readable, because an
    absent manifest directory must never look like "every VM was deleted".  A manifest
    file that is a symlink leading out of the tree is a problem, not read.
    """
    root_path = Path(root)
    files, base = _files_of(root_path)
    tree = manifest_tree.ManifestTree(base)
    documents: list[model.Document] = []
    problems: list[model.Problem] = []
    for path in files:
        file_documents, file_problems = load_file(path, base, tree=tree)
        documents.extend(file_documents)
        problems.extend(file_problems)
    return model.ManifestSet(str(root_path), tuple(documents), tuple(problems), len(files), tree=str(base))


def _files_of(root_path: Path) -> tuple[list[Path], Path]:
    """Return the manifest files ``root_path`` (a directory or a single file) holds, and the tree they are read in.

    Raises ``ManifestError`` when it does not exist or cannot be listed.
    """
    if root_path.is_file():
        return [root_path], root_path.parent
    if root_path.is_dir():
        try:
            return discover(root_path), root_path
        except OSError as exc:
            raise errors.ManifestError(f"{root_path}: cannot list manifests: {exc.strerror}") from exc
    raise errors.ManifestError(f"{root_path}: no such manifest file or directory; check the path (nothing was changed)")


def declared_hosts(root: str | os.PathLike) -> dict[str, str]:
    """Return name -> ``spec.uri`` of the Host manifests a quick scan of ``root`` finds; never raises.

    A head start for looking at the Hosts while the whole tree is read
    (:mod:`reconciler.runtime.early_look`), never the truth: only files whose bytes say
    ``Host`` are parsed (a Host spelt with YAML escapes is missed), and a Host is named
    only when its document is valid by itself and no other document found claims its
    name. Whatever is in the way (a missing tree, a file that cannot be read) gives fewer
    Hosts, or none; :func:`load` says what is wrong.
    """
    found: dict[str, str] = {}
    claimed: set[str] = set()
    try:
        files, base = _files_of(Path(root))
    except errors.ManifestError:
        return {}
    tree = manifest_tree.ManifestTree(base)
    for path in files:
        try:
            if b"Host" not in tree.read(_relpath(path, base), limit=MAX_FILE_BYTES):
                continue
        except OSError:
            continue
        documents, _problems = load_file(path, base, tree=tree)
        for document in documents:
            if not (isinstance(document.body, dict) and document.body.get("kind") == "Host"):
                continue
            body, problems = validation.validate(document)
            if body is None or problems:
                continue
            name = body["metadata"]["name"]
            if name in claimed:
                found.pop(name, None)
            else:
                found[name] = body["spec"]["uri"]
            claimed.add(name)
    return found


def dump(documents: list[dict], *, header: str = "") -> str:
    """Return ``documents`` as one multi-document YAML text, keys in the order given."""
    text = yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return header + text


class TreeFiles:
    """The files manifests of one tree refer to, for :func:`reconciler.core.desired.build`.

    A path in a manifest is relative to that manifest's directory and must stay inside
    the tree (see :mod:`reconciler.adapters.manifest_tree`); every method raises
    ``OSError`` with a message saying what is wrong and what to do.
    """

    def __init__(self, tree: str) -> None:
        self.tree = manifest_tree.ManifestTree(tree)

    def read(self, document: model.Document, path: str) -> bytes:
        """Return the bytes of ``path`` (relative to ``document``'s directory); at most 1 MiB."""
        return self.tree.read(self.locate(document, path), limit=MAX_FILE_BYTES)

    def check(self, document: model.Document, path: str) -> str:
        """Return ``path`` relative to the tree, once it is known to open as a regular file inside it."""
        relpath = self.locate(document, path)
        self.tree.open(relpath).close()
        return relpath

    @staticmethod
    def locate(document: model.Document, path: str) -> str:
        """Return ``path``, written in ``document``, relative to the tree (still to be checked)."""
        if os.path.isabs(path):
            raise OSError(f"{path} is an absolute path; give a path relative to the manifest, "
                          f"{manifest_tree.NOT_INSIDE_HINT}")
        return os.path.normpath(os.path.join(os.path.dirname(document.relpath), path))


def load_document(path: str | os.PathLike) -> model.Document:
    """Return the single YAML document in file ``path`` (a configuration file, say).

    Raises ``ManifestError`` carrying the problems when it cannot be read or parsed.
    """
    path = Path(path)
    documents, problems = load_file(path, path.parent)
    if problems:
        raise errors.ManifestError("; ".join(str(p) for p in problems), tuple(problems))
    if len(documents) > 1:
        raise errors.ManifestError(f"{path}: holds {len(documents)} YAML documents; expected one")
    if not documents:
        return model.Document(file=str(path), relpath=path.name, index=0, line=1, body={})
    return documents[0]


def load_file(path: Path, base: Path, *, tree: manifest_tree.ManifestTree | None = None,
              ) -> tuple[list[model.Document], list[model.Problem]]:
    """Return the documents of one file, or the problems that kept them from loading.

    With ``tree``, the file is read through it: a manifest that is a symlink out of the
    tree is a problem, like any file a manifest refers to.
    """
    display = str(path)
    relpath = _relpath(path, base)
    try:
        if tree is not None:
            raw = tree.read(relpath, limit=MAX_FILE_BYTES)
        else:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise manifest_tree.FileTooLarge(relpath, size, MAX_FILE_BYTES)
            raw = path.read_bytes()
    except manifest_tree.FileTooLarge as exc:
        return [], [model.Problem(display, None, "", f"file is {exc.size / 1e6:.1f} MB; manifests are limited to 1 MiB (split it into several files)")]
    except OSError as exc:
        return [], [model.Problem(display, None, "", f"cannot read file: {exc.strerror or exc}")]
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return [], [model.Problem(display, None, "", "file is UTF-16 text (as Windows PowerShell writes it); save the file as UTF-8")]
    if b"\x00" in raw:
        return [], [model.Problem(display, None, "", "binary data (NUL bytes), not a YAML text file; remove it or give it another extension")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return [], [model.Problem(display, line, "", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8")]
    return parse_text(text, display, relpath)


def _relpath(path: Path, base: Path) -> str:
    """Return ``path`` relative to ``base`` in POSIX form ("." for ``base``), or its name when it is not below it."""
    parts, base_parts = path.parts, base.parts
    if parts[:len(base_parts)] == base_parts:  # path.relative_to(base).as_posix(), without pathlib's parsing
        return "/".join(parts[len(base_parts):]) or "."
    return path.name


_PARSED: memo.Memo[tuple[tuple[model.Document, ...], tuple[model.Problem, ...]]] = memo.Memo()


def parse_text(text: str, display: str, relpath: str) -> tuple[list[model.Document], list[model.Problem]]:
    """Return the documents in YAML ``text``; ``display`` names the file in problems.

    Memoised by file and content: the controller re-reads every unchanged file each
    pass, and parsing YAML is most of reading them.  The documents are frozen values.
    """
    key = (display, relpath, hashlib.blake2b(text.encode(), digest_size=16).digest())
    found = _PARSED.get(key)
    if found is None:
        documents, problems = _parse_text(text, display, relpath)
        found = (tuple(documents), tuple(problems))
        _PARSED.put(key, found)
    return list(found[0]), list(found[1])


def _parse_text(text: str, display: str, relpath: str) -> tuple[list[model.Document], list[model.Problem]]:
    documents: list[model.Document] = []
    problems: list[model.Problem] = []
    converter = _Converter()
    try:
        for index, node in enumerate(yaml.compose_all(text, Loader=_Loader)):
            if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null" and not node.value):
                continue  # an empty document: a trailing '---', or one holding only comments
            converter.lines = {}
            try:
                body = converter.convert(node, "", 0)
            except _Refused as refusal:
                problems.append(model.Problem(display, refusal.line, refusal.path, refusal.message))
                if converter.budget < 0:
                    break
                continue
            source = text[node.start_mark.index:node.end_mark.index]
            documents.append(
                model.Document(
                    file=display, relpath=relpath, index=index, line=node.start_mark.line + 1,
                    body=body, lines=converter.lines,
                    fingerprint=hashlib.blake2b(source.encode(), digest_size=16).hexdigest(),
                )
            )
    except yaml.MarkedYAMLError as exc:
        line, detail = _syntax_error(exc, text)
        problems.append(model.Problem(display, line, "", f"YAML syntax error: {detail}"))
    except yaml.YAMLError as exc:
        problems.append(model.Problem(display, None, "", f"YAML error: {_one_line(str(exc))}"))
    return documents, problems


def _syntax_error(exc: yaml.MarkedYAMLError, text: str) -> tuple[int | None, str]:
    """Return the line and words that best explain a YAML syntax error."""
    mark, context = exc.problem_mark, exc.context_mark
    detail = exc.problem or exc.context or "invalid YAML"
    if mark is not None and 0 <= mark.index < len(text) and text[mark.index] == "\t":
        return mark.line + 1, "a tab character; YAML indentation must use spaces"
    unclosed = "end of stream" in detail or (exc.context or "").startswith(("while scanning a quoted", "while parsing a flow"))
    if context is not None and exc.context and (mark is None or unclosed):
        # an unclosed quote or bracket: where it opened helps more than where the file ended
        return context.line + 1, f"{exc.context} that is never closed ({detail})"
    if mark is None:
        return None, detail
    return mark.line + 1, detail


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _short_tag(tag: str) -> str:
    """Return ``tag`` as it is written in YAML: ``!!bool`` for the standard ones."""
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


def _clip(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")


def _unbuildable(node: yaml.ScalarNode, tag: str, exc: Exception) -> str:
    """Return why the scalar ``node`` cannot become a value, and what to write instead."""
    if isinstance(exc, ValueError) and "digits" in str(exc):
        return f"a number of {len(node.value)} digits; no field takes one that long"
    if node.tag not in yaml.constructor.SafeConstructor.yaml_constructors:
        # a tag the safe constructor does not know: custom, python/*, '!!merge' on a value
        return f"unsupported YAML value: tag {tag!r} on {_clip(node.value)}; manifests use plain YAML, remove the tag"
    return f"{_clip(node.value)} is not a valid {tag!r} value; remove the tag {tag!r} (or fix the value)"


class _Converter:
    """Turn a composed YAML node graph into plain data, recording each field's line."""

    def __init__(self) -> None:
        self.constructor = yaml.constructor.SafeConstructor()
        self.budget = MAX_NODES_PER_FILE
        self.lines: dict[str, int] = {}
        self.in_progress: set[int] = set()

    def convert(self, node: yaml.Node, path: str, depth: int) -> object:
        line = node.start_mark.line + 1
        self.budget -= 1
        if self.budget < 0:
            raise _Refused(line, path, f"more than {MAX_NODES_PER_FILE} YAML nodes (an alias bomb?); manifests are small, split or simplify it")
        if depth > MAX_DEPTH:
            raise _Refused(line, path, f"nested more than {MAX_DEPTH} levels deep")
        if path:
            self.lines.setdefault(path, line)
        if isinstance(node, yaml.ScalarNode):
            return node.value if node.tag == _STR_TAG else self._scalar(node, path)  # most scalars are text
        if node.tag not in _STANDARD_TAGS:
            raise _Refused(self.lines.get(path, line), path, f"unsupported YAML tag {node.tag!r}; manifests use plain YAML only")
        if id(node) in self.in_progress:
            raise _Refused(self.lines.get(path, line), path, "recursive YAML alias; a manifest cannot contain itself")
        self.in_progress.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.convert(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(node.value)]
            return self._mapping(node, path, depth)
        finally:
            self.in_progress.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: str) -> object:
        if node.tag == _STR_TAG:
            return node.value  # what SafeConstructor makes of it, without its machinery: most scalars are text
        line = node.start_mark.line + 1
        try:
            value = self.constructor.construct_object(node, deep=True)
        # PyYAML's constructors trust the resolver: an explicit tag on text it does not fit
        # ("!!timestamp 1GiB", "!!bool zz") fails with whatever the constructor trips over
        # (AttributeError, KeyError, ValueError...), so any exception here is the value's fault.
        except Exception as exc:  # noqa: BLE001
            raise _Refused(line, path, _unbuildable(node, _short_tag(node.tag), exc)) from exc
        if isinstance(value, float) and value != value:
            raise _Refused(line, path, f"{node.value!r} is not a number (NaN); write a number or a size such as 2GiB")
        if isinstance(value, float) and value in (float("inf"), float("-inf")):
            raise _Refused(line, path, f"{_clip(node.value)} is infinite; write a finite number")
        if not isinstance(value, (str, int, float, bool, type(None))):
            return str(node.value)  # timestamps and binary stay text; the schema judges them
        return value

    def _mapping(self, node: yaml.MappingNode, path: str, depth: int) -> dict:
        result: dict[str, object] = {}
        key_lines: dict[str, int] = {}
        merged: dict[str, object] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                recorded = dict(self.lines)  # keys written out explicitly keep their own lines
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        raise _Refused(line, path, "a '<<' merge needs a mapping (an alias to one)")
                    if id(source) in self.in_progress:
                        raise _Refused(line, path, "recursive YAML merge; a mapping cannot merge itself")
                    self.in_progress.add(id(source))
                    try:
                        for key, value in self._mapping(source, path, depth + 1).items():
                            merged.setdefault(key, value)
                    finally:
                        self.in_progress.discard(id(source))
                self.lines.update(recorded)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Refused(line, path, "a mapping key must be a plain value, not a list or mapping")
            key = key_node.value if key_node.tag == _STR_TAG else str(self._scalar(key_node, path))
            child = f"{path}.{key}" if path else key
            if key in key_lines:
                raise _Refused(line, child, f"duplicate key '{key}' (first at line {key_lines[key]}); keep one")
            key_lines[key] = line
            self.lines[child] = line
            result[key] = self.convert(value_node, child, depth + 1)
        for key, value in merged.items():
            result.setdefault(key, value)
        return result

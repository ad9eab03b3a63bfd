"""Reading manifest files: field lines, refusals of YAML surprises, and which files are read."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import errors
from reconciler.adapters import manifests

WEB = """\
# a comment first
apiVersion: kvmops/v1
kind: VirtualMachine
metadata:
  name: web
spec:
  memory: 1GiB
  disks:
    - name: root
      pool: vmstore
      size: 10
    - name: data
      pool: vmstore
      size: 100GiB
"""


def parse(text: str):
    """Return (documents, problems) of ``text`` read as ``m/web.yaml``."""
    return manifests.parse_text(text, "m/web.yaml", "web.yaml")


def test_every_field_remembers_its_line():
    """Top-level, nested and list-item fields each map to the 1-based line they are written on."""
    (document,), problems = parse(WEB)
    assert problems == []
    assert document.line == 2
    assert {path: document.lines[path] for path in (
        "apiVersion", "metadata.name", "spec.memory", "spec.disks", "spec.disks[0]", "spec.disks[0].name",
        "spec.disks[1].pool", "spec.disks[1].size",
    )} == {
        "apiVersion": 2, "metadata.name": 5, "spec.memory": 7, "spec.disks": 8, "spec.disks[0]": 9,
        "spec.disks[0].name": 9, "spec.disks[1].pool": 13, "spec.disks[1].size": 14,
    }


def test_documents_of_one_file_keep_their_index_and_first_line():
    """Each document of a multi-document file knows its position and where it starts."""
    text = "a: 1\n---\n# second\nb: 2\n---\nc: 3\n"
    documents, problems = parse(text)
    assert problems == []
    assert [(d.index, d.line, d.body) for d in documents] == [(0, 1, {"a": 1}), (1, 4, {"b": 2}), (2, 6, {"c": 3})]
    assert {(d.file, d.relpath) for d in documents} == {("m/web.yaml", "web.yaml")}


def test_comment_only_file_has_no_documents():
    """A file holding only comments yields no document and no problem."""
    assert parse("# nothing here yet\n") == ([], [])


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a: 1\n---\n", id="trailing-separator"),
        pytest.param("a: 1\n---\n# later\n---\nb: 2\n", id="empty-between-separators"),
    ],
)
def test_empty_documents_are_skipped(text):
    """An empty document is nothing to validate, as kubectl treats it; only the real ones are returned."""
    documents, problems = parse(text)
    assert problems == []
    assert all(d.body is not None for d in documents)


def test_duplicate_key_is_refused_at_its_second_occurrence():
    """PyYAML would keep the last value silently; kvmops names both lines instead."""
    text = "spec:\n  memory: 1GiB\n  vcpus: 2\n  memory: 2GiB\n"
    documents, problems = parse(text)
    assert documents == []
    assert [str(p) for p in problems] == [
        "m/web.yaml:4: spec.memory: duplicate key 'memory' (first at line 2); keep one"
    ]


def test_merge_key_fills_in_fields_the_mapping_does_not_set():
    """``<<: *defaults`` supplies missing keys, and keys written next to it win."""
    text = (
        "defaults: &defaults\n  memory: 1GiB\n  vcpus: 2\n"
        "spec:\n  <<: *defaults\n  vcpus: 4\n"
    )
    (document,), problems = parse(text)
    assert problems == []
    assert document.body["spec"] == {"memory": "1GiB", "vcpus": 4}
    assert document.lines["spec.vcpus"] == 6


def test_merge_key_accepts_a_list_of_mappings_first_one_wins():
    """With ``<<: [*a, *b]`` a key both supply comes from the first, as YAML specifies."""
    text = "a: &a {x: 1}\nb: &b {x: 2, y: 2}\nc:\n  <<: [*a, *b]\n"
    (document,), problems = parse(text)
    assert problems == []
    assert document.body["c"] == {"x": 1, "y": 2}


def test_merge_of_a_scalar_is_refused():
    """A merge key needs a mapping; merging a plain value is a located problem."""
    documents, problems = parse("a: &a 1\nb:\n  <<: *a\n")
    assert documents == []
    assert [(p.line, p.path) for p in problems] == [(3, "b")]
    assert "'<<' merge needs a mapping" in problems[0].message


def test_explicit_key_keeps_its_own_line_when_a_merge_follows():
    """A key written in the mapping is located on its own line even if a later ``<<`` supplies it too."""
    text = "defaults: &d\n  memory: 1GiB\nspec:\n  memory: 2GiB\n  <<: *d\n"
    (document,), _ = parse(text)
    assert document.body["spec"]["memory"] == "2GiB"
    assert document.lines["spec.memory"] == 4


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a: &a [1, *a]\n", id="list-contains-itself"),
        pytest.param("a: &a {b: *a}\n", id="mapping-contains-itself"),
    ],
)
def test_recursive_alias_is_refused(text):
    """An alias that contains itself becomes a problem, not an endless structure."""
    documents, problems = parse(text)
    assert documents == []
    assert len(problems) == 1
    assert "recursive YAML" in problems[0].message
    assert problems[0].line == 1


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a: &a\n  <<: *a\n  b: 1\n", id="merge-first-raises-recursion-error"),
        pytest.param("a: &a\n  b: 1\n  <<: *a\n", id="merge-last-says-nested-too-deep"),
    ],
)
def test_mapping_that_merges_itself_is_refused(text):
    """``a: &a {<<: *a}`` is a recursive alias too, and is reported like one."""
    try:
        documents, problems = parse(text)
    except RecursionError:
        pytest.fail("RecursionError escaped parse_text")
    assert documents == []
    assert "recursive YAML" in problems[0].message


def test_alias_bomb_is_refused_by_the_node_budget():
    """A "billion laughs" document stops at the node budget with a problem, quickly."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    documents, problems = parse("\n".join(lines) + "\n")
    assert documents == []
    assert len(problems) == 1
    assert "YAML nodes (an alias bomb?)" in problems[0].message


def test_a_file_stops_at_the_alias_bomb_but_earlier_documents_survive():
    """The documents before a bomb are kept; the bomb ends the file's reading."""
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
    )
    documents, problems = parse("ok: 1\n---\n" + bomb + "---\nlater: 2\n")
    assert [d.body for d in documents] == [{"ok": 1}]
    assert len(problems) == 1


def test_deep_nesting_is_refused():
    """Nesting deeper than any manifest needs is a problem with the line where it went too deep."""
    text = "a: " + "[" * 40 + "]" * 40 + "\n"
    documents, problems = parse(text)
    assert documents == []
    assert "nested more than 32 levels deep" in problems[0].message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param("a: !!python/object:os.system ls\n", "unsupported YAML value", id="python-tag"),
        pytest.param("a: !custom 1\n", "unsupported YAML value", id="custom-scalar-tag"),
        pytest.param("[1, 2]: x\n", "mapping key must be a plain value", id="complex-key"),
    ],
)
def test_yaml_features_a_manifest_never_needs_are_refused(text, words):
    """Tags and complex keys are refused with a located problem."""
    documents, problems = parse(text)
    assert documents == []
    assert words in problems[0].message and problems[0].line == 1


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("spec: !custom {memory: 1GiB}\n", id="tagged-mapping"),
        pytest.param("disks: !custom [a, b]\n", id="tagged-sequence"),
        pytest.param("s: !!set {a, b}\n", id="yaml-set"),
    ],
)
def test_custom_tag_on_a_collection_is_refused(text):
    """Tags on mappings and sequences are refused like tags on plain values."""
    documents, problems = parse(text)
    assert documents == []
    assert "unsupported YAML" in problems[0].message and problems[0].line == 1


def test_syntax_error_is_a_problem_with_its_line():
    """Broken YAML becomes one problem naming the line, not an exception."""
    documents, problems = parse("a: 1\nb: 2\n  c: 3\n")
    assert documents == []
    assert len(problems) == 1
    assert problems[0].message.startswith("YAML syntax error")
    assert problems[0].line == 3


def test_unclosed_bracket_is_located_where_it_opened():
    """An unclosed flow list points at its opening line, not at the end of the file."""
    documents, problems = parse("a: 1\nb: [1, 2\nc: 3\nd: 4\n")
    assert documents == []
    assert [(p.line, p.message.startswith("YAML syntax error")) for p in problems] == [(2, True)]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        pytest.param("spec:\n\tmemory: 1GiB\n", 2, "tab character", id="tab-indentation"),
        pytest.param("a: \"unclosed\nb: 1\n", 1, "never closed", id="unclosed-quote"),
    ],
)
def test_common_syntax_mistakes_are_explained(text, line, words):
    """Tabs and unclosed quotes are named in words, on the line where the mistake is."""
    documents, problems = parse(text)
    assert documents == []
    assert [(p.line, words in p.message) for p in problems] == [(line, True)]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        pytest.param("!!timestamp 1GiB", "'!!timestamp'", id="timestamp-tag-on-a-size"),
        pytest.param("!!timestamp 2024-13-45", "'!!timestamp'", id="timestamp-tag-impossible-date"),
        pytest.param("!!bool zz", "'!!bool'", id="bool-tag-on-junk"),
        pytest.param("!!int zz", "'!!int'", id="int-tag-on-junk"),
        pytest.param("!!float zz", "'!!float'", id="float-tag-on-junk"),
        pytest.param("!!binary a", "'!!binary'", id="binary-tag-not-base64"),
        pytest.param("!!merge x", "'!!merge'", id="merge-tag-on-a-value"),
        pytest.param("!!python/none ''", "'!!python/none'", id="python-tag"),
        pytest.param("!<tag:example.com,2000:x> 1", "tag:example.com,2000:x", id="verbatim-unknown-tag"),
        pytest.param("!!int " + "9" * 5000, "5000 digits", id="int-beyond-python-digit-limit"),
        pytest.param("9" * 5000, "digits", id="plain-int-beyond-python-digit-limit"),
        pytest.param(".nan", "not a number", id="nan"),
        pytest.param("-.inf", "infinite", id="minus-infinity"),
        pytest.param("1.0e+999", "infinite", id="float-overflowing-to-infinity"),
    ],
)
def test_a_scalar_yaml_cannot_build_is_a_located_problem_not_an_exception(value, words):
    """Tags and values PyYAML's constructors choke on become one problem on their line; the file's other documents load."""
    documents, problems = parse(f"apiVersion: kvmops/v1\nspec:\n  memory: {value}\n---\nb: 2\n")
    assert [d.body for d in documents] == [{"b": 2}]
    assert [(p.line, p.path) for p in problems] == [(3, "spec.memory")]
    assert words in problems[0].message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("!!str 123", "123", id="str-tag"),
        pytest.param("!!null ''", None, id="null-tag"),
        pytest.param("!!int 0x10", 16, id="int-tag"),
        pytest.param("!!bool yes", True, id="bool-tag"),
        pytest.param("!!binary aGk=", "aGk=", id="binary-stays-text"),
        pytest.param("!!timestamp 2001-12-14", "2001-12-14", id="timestamp-stays-text"),
        pytest.param("!!float 1.5", 1.5, id="float-tag"),
    ],
)
def test_a_scalar_with_a_standard_tag_it_fits_is_a_plain_value(value, expected):
    """A standard tag on a value it fits yields a plain value for the schema to judge."""
    (document,), problems = parse(f"a: {value}\n")
    assert problems == []
    assert document.body == {"a": expected}


def test_a_tagged_mapping_key_is_a_problem_or_text():
    """A key PyYAML cannot build is a problem on its line, never an exception."""
    documents, problems = parse("a:\n  !!bool zz: 1\n")
    assert documents == []
    assert [(p.line, "'!!bool'" in p.message) for p in problems] == [(2, True)]


PLAIN_SCALARS = [
    "", "~", "null", "Null", "NULL", "true", "True", "FALSE", "yes", "No", "on", "OFF", "y", "n", "0", "-1", "+7",
    "0x1F", "0o17", "017", "0b101", "1_000", "190:20:30", "1.5", "-.5", "+1e3", "6.8523015e+5", ".inf", "-.Inf",
    ".NaN", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "=", "<<", "~x", "web", "1GiB",
    "52:54:00:00:00:01", "kvmops/v1", "/var/lib", ".5x", "+", "0.", "Yes please", "nulls", "1e", "'0x10'", '"true"',
]


def tags(node) -> list:
    """Return the (tag, value) of every node of a composed YAML graph, in document order."""
    if isinstance(node.value, str):
        return [(node.tag, node.value)]
    children = [child for pair in node.value for child in pair] if node.tag.endswith(":map") else node.value
    return [(node.tag, None), *(found for child in children for found in tags(child))]


def test_plain_scalars_get_the_tags_pyyaml_safe_loader_gives_them():
    """The manifest loader resolves every scalar, value or key, to the tag PyYAML's own safe loader resolves it to."""
    import yaml

    values = "".join(f"v{index}: {text}\n" for index, text in enumerate(PLAIN_SCALARS))
    keys = "".join(f"{text}: {index}\n" for index, text in enumerate(PLAIN_SCALARS) if text and text != "<<")
    items = "".join(f"- {text}\n" for text in PLAIN_SCALARS)
    for text in (values, keys, items):
        assert tags(yaml.compose(text, Loader=manifests._Loader)) == tags(yaml.compose(text, Loader=yaml.SafeLoader))


def test_timestamps_stay_text():
    """A value YAML would read as a date stays the text that was written, for the schema to judge."""
    (document,), _ = parse("when: 2024-01-02\n")
    assert document.body == {"when": "2024-01-02"}


# --- files ------------------------------------------------------------------------------


def write(root: Path, relpath: str, text: str = "a: 1\n") -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_hidden_and_backup_files_are_skipped(tmp_path):
    """Only *.yaml/*.yml files are read; hidden files and directories and editor leftovers are not."""
    for relpath in (
        "vms/web.yaml", "pools/store.yml", ".hidden.yaml", ".git/config.yaml", "vms/.web.yaml.swp",
        "vms/#web.yaml#", "vms/#draft.yaml", "vms/.#web.yaml", "vms/web.yaml~", "vms/web.yaml.bak", "README.md",
    ):
        write(tmp_path, relpath)
    loaded = manifests.load(tmp_path)
    assert loaded.files == 2
    assert sorted(d.relpath for d in loaded.documents) == ["pools/store.yml", "vms/web.yaml"]
    assert loaded.problems == ()


def test_relpath_is_relative_to_the_root_and_file_names_it_as_given(tmp_path):
    """A document records its path under the root ('/'-separated) and the path the user can open."""
    write(tmp_path, "vms/prod/web.yaml")
    (document,) = manifests.load(tmp_path).documents
    assert document.relpath == "vms/prod/web.yaml"
    assert document.file == str(tmp_path / "vms" / "prod" / "web.yaml")


def test_single_file_can_be_loaded(tmp_path):
    """A path to one file loads just that file."""
    path = write(tmp_path, "web.yaml", "a: 1\n")
    write(tmp_path, "other.yaml", "b: 2\n")
    loaded = manifests.load(path)
    assert (loaded.files, [d.body for d in loaded.documents]) == (1, [{"a": 1}])


def test_missing_directory_raises_manifest_error(tmp_path):
    """A root that does not exist must never read as "every VM was deleted"."""
    with pytest.raises(errors.ManifestError, match="no such manifest file or directory"):
        manifests.load(tmp_path / "nope")


def test_empty_directory_loads_nothing_without_problems(tmp_path):
    """An existing but empty directory is an empty manifest set, not an error."""
    loaded = manifests.load(tmp_path)
    assert (loaded.files, loaded.documents, loaded.problems) == (0, (), ())


def test_one_broken_file_does_not_hide_the_others(tmp_path):
    """A file that fails to parse becomes a problem; the other files still load."""
    write(tmp_path, "a.yaml", "a: [\n")
    write(tmp_path, "b.yaml", "b: 1\n")
    loaded = manifests.load(tmp_path)
    assert [d.body for d in loaded.documents] == [{"b": 1}]
    assert [p.file for p in loaded.problems] == [str(tmp_path / "a.yaml")]


@pytest.mark.parametrize(
    ("content", "words", "line"),
    [
        pytest.param(b"a: 1\n\x00\x01", "binary data", None, id="nul-bytes"),
        pytest.param(b"a: 1\nb: \xff\n", "not valid UTF-8", 2, id="not-utf8"),
    ],
)
def test_files_that_are_not_yaml_text_are_problems(tmp_path, content, words, line):
    """Binary or non-UTF-8 files are refused with a problem, located when possible."""
    (tmp_path / "junk.yaml").write_bytes(content)
    loaded = manifests.load(tmp_path)
    assert loaded.documents == ()
    (problem,) = loaded.problems
    assert words in problem.message and problem.line == line


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    """Editors that write a BOM do not break the manifest."""
    (tmp_path / "bom.yaml").write_bytes("\ufeffa: 1\n".encode())
    assert [d.body for d in manifests.load(tmp_path).documents] == [{"a": 1}]


def test_oversized_file_is_refused_before_parsing(tmp_path):
    """A file over 1 MiB is a problem; manifests are small."""
    (tmp_path / "big.yaml").write_text("# " + "x" * manifests.MAX_FILE_BYTES + "\n", encoding="utf-8")
    (problem,) = manifests.load(tmp_path).problems
    assert "limited to 1 MiB" in problem.message

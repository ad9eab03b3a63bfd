"""kvmops runs on the Python of every distribution the README names, its own /usr/bin/python3 included.

Debian 12 ships 3.11.2, Ubuntu 22.04 3.10 and Ubuntu 24.04 3.12.  ``scripts/test`` runs
``kvmops demo`` with /usr/bin/python3 in a virtualenv of its own and names that
interpreter in ``$KVMOPS_SYSTEM_PYTHON`` for the tests here that need it.
"""

from __future__ import annotations

import enum
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import reconciler
from reconciler import cli, errors
from reconciler.adapters import git
from reconciler.core import model
from reconciler.core import plan as plans

REPO = Path(__file__).resolve().parents[2]
DISTRIBUTION_PYTHONS = {"Debian 12": (3, 11, 2), "Ubuntu 22.04": (3, 10, 12), "Ubuntu 24.04": (3, 12, 3)}
GIT_ENV = {
    "GIT_AUTHOR_NAME": "kvmops tests", "GIT_AUTHOR_EMAIL": "tests@kvmops.invalid",
    "GIT_COMMITTER_NAME": "kvmops tests", "GIT_COMMITTER_EMAIL": "tests@kvmops.invalid",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
}


def requires_python() -> tuple[int, ...]:
    """Return the minimum version in pyproject.toml's ``requires-python = ">=X.Y[.Z]"``."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^requires-python = ">=([0-9.]+)"$', text, re.MULTILINE)
    assert match, "requires-python must read \">=X.Y[.Z]\""
    return tuple(int(part) for part in match.group(1).split("."))


@pytest.mark.parametrize("distribution", sorted(DISTRIBUTION_PYTHONS))
def test_requires_python_admits_the_python_of_every_distribution_the_readme_names(distribution):
    """pip installs kvmops with the distribution's own python3: requires-python is not above it."""
    assert DISTRIBUTION_PYTHONS[distribution] >= requires_python()


def test_the_package_version_is_the_one_in_pyproject():
    """``kvmops --version`` reports the version pyproject.toml builds."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert f'version = "{reconciler.__version__}"' in text


def test_kvmops_version_names_the_version_and_the_python(capsys):
    """``kvmops --version`` prints the version and the interpreter, and exits 0."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    out, _ = capsys.readouterr()

    assert stop.value.code == 0
    assert out.strip() == f"kvmops {reconciler.__version__} (Python {sys.version.split()[0]})"


def test_the_distribution_python_runs_kvmops():
    """The virtualenv scripts/test made with /usr/bin/python3 runs kvmops, and validates the example manifests."""
    python = os.environ.get("KVMOPS_SYSTEM_PYTHON")
    if not python:
        pytest.skip("$KVMOPS_SYSTEM_PYTHON is not set (scripts/test sets it after running the demo with /usr/bin/python3)")
    version = subprocess.run([python, "-m", "reconciler", "--version"], capture_output=True, text=True, timeout=60)
    validate = subprocess.run([python, "-m", "reconciler", "validate", str(REPO / "manifests")],
                              capture_output=True, text=True, timeout=60)

    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith(f"kvmops {reconciler.__version__} (Python ")
    assert validate.returncode == 0, validate.stdout + validate.stderr


@pytest.mark.parametrize("enumeration", [model.RunStrategy, model.DeletionPolicy, model.PowerState,
                                         model.ShutoffReason, plans.Action, plans.Impact])
def test_string_enums_print_and_format_as_their_value(enumeration):
    """Every member reads as its value in str(), format() and f-strings, and equals that string, as enum.StrEnum's do."""
    for member in enumeration:
        assert str(member) == member.value
        assert f"{member}" == member.value
        assert format(member, ">20") == format(member.value, ">20")
        assert member == member.value and isinstance(member, str)
        assert enumeration(member.value) is member
    if hasattr(enum, "StrEnum"):  # Python 3.11+: the same as the standard library's
        reference = enum.StrEnum("Reference", {m.name: m.value for m in enumeration})
        for member in enumeration:
            assert (str(member), f"{member}", repr(member.value)) == (
                str(reference[member.name]), f"{reference[member.name]}", repr(reference[member.name].value))


def git_repository(path: Path, files: dict[str, str], links: dict[str, str]) -> str:
    """Commit ``files`` and symbolic ``links`` in a new repository at ``path``; return the commit."""
    environment = {**os.environ, **GIT_ENV}
    subprocess.run(["git", "init", "-q", str(path)], check=True, env=environment)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text, encoding="utf-8")
    for name, target in links.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path / name)
    subprocess.run(["git", "add", "-A"], cwd=path, check=True, env=environment)
    subprocess.run(["git", "commit", "-qm", "test"], cwd=path, check=True, env=environment)
    return git.resolve(path, "HEAD")


@pytest.fixture(params=["data filter", "without data filter"])
def tar_extraction(request, monkeypatch):
    """Run a test with tarfile's ``data`` filter, and as on Debian 12's 3.11.2, whose tarfile lacks it."""
    if request.param == "without data filter":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no data filter")
    return request.param


def test_a_revision_is_materialised_with_its_files_and_inner_links(tmp_path, tar_extraction):
    """Files, subdirectories and links within the tree come out as committed."""
    commit = git_repository(tmp_path / "repo", {"manifests/vms/web.yaml": "kind: VirtualMachine\n"},
                            {"manifests/web.yaml": "vms/web.yaml"})

    target = git.materialize(tmp_path / "repo", commit, "manifests", tmp_path / "out")

    assert (target / "vms" / "web.yaml").read_text() == "kind: VirtualMachine\n"
    assert os.readlink(target / "web.yaml") == "vms/web.yaml"
    assert (target / "web.yaml").read_text() == "kind: VirtualMachine\n"


@pytest.mark.parametrize("link", ["/etc", "../../../../etc"])
def test_a_revision_with_a_link_leading_out_of_its_tree_is_refused(tmp_path, tar_extraction, link):
    """A committed link to an absolute path or out of the tree is a SourceError, and nothing is written outside."""
    commit = git_repository(tmp_path / "repo", {"manifests/web.yaml": "kind: VirtualMachine\n"},
                            {"manifests/escape": link})

    with pytest.raises(errors.SourceError, match="cannot be read safely"):
        git.materialize(tmp_path / "repo", commit, "manifests", tmp_path / "out")
    assert not (tmp_path / "out" / "manifests" / "escape").exists()


def test_setup_refuses_a_too_old_python_at_once_in_one_line(tmp_path):
    """setup.sh with a Python older than requires-python says so in one line, with what to do, before apt or pip run."""
    old_python = tmp_path / "python3.9"
    old_python.write_text(  # answers like Python 3.9.2: too old for the version check, and its version when asked
        "#!/bin/sh\ncase \"$*\" in *platform*) echo 3.9.2 ;; *) exit 1 ;; esac\n", encoding="ascii")
    old_python.chmod(0o755)
    started = time.monotonic()

    result = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), "client"], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": str(old_python), "VENV": str(tmp_path / "venv")}, timeout=60)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"==> kvmops needs Python {'.'.join(map(str, requires_python()))} or newer, but {old_python} is 3.9.2: install a "
        f"newer python3 (Debian 12 and Ubuntu 22.04 or later have one) and run PYTHON=/path/to/it "
        f"{REPO / 'scripts' / 'setup.sh'} client"]
    assert not (tmp_path / "venv").exists() and time.monotonic() - started < 10

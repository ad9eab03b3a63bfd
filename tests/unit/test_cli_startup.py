"""Starting kvmops loads only what the command needs: the test suites start hundreds of them.

Each check runs a fresh interpreter (the modules a process loads are its own business)
and reads what it loaded from ``sys.modules`` or ``-X importtime``.  Nothing here imports
the CLI into the test process: it would reach libvirt (see test_boundaries.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# What no command needs before it runs: the hypervisor, schema validation, the controller's
# file watching, HTTP server and event loop, the log machinery, PyYAML.
NOT_AT_START_UP = (
    "libvirt", "libvirtmod", "jsonschema", "referencing", "rpds", "watchdog", "asyncio", "http.server", "structlog",
    "logging", "yaml", "concurrent.futures", "subprocess", "urllib.request", "ssl",
)
VM = """\
apiVersion: kvmops/v1
kind: VirtualMachine
metadata:
  name: web
spec:
  vcpus: 1
  memory: 64MiB
"""


def python(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run this interpreter on this checkout (not whatever kvmops is installed) and return the result."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def loaded_by(script: str) -> set[str]:
    """Return the modules loaded by the end of ``script``, which runs in a fresh interpreter."""
    result = python("-c", f"{script}\nimport sys\nprint('\\n'.join(sys.modules))")
    return set(result.stdout.split())


def imported_by(*argv: str) -> set[str]:
    """Return every module a whole process (``-m reconciler ...``, a script) imports, from ``-X importtime``."""
    result = python("-X", "importtime", *argv)
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \| +(\S+)$", result.stderr, re.MULTILINE))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m in NOT_AT_START_UP or m.split(".")[0] in NOT_AT_START_UP)


def test_importing_the_cli_loads_no_library_a_command_may_not_need():
    """``import reconciler.cli`` loads no libvirt, jsonschema, watchdog, asyncio, structlog or PyYAML."""
    assert heavy(loaded_by("import reconciler.cli")) == []


def test_importing_the_cli_loads_no_adapter_and_no_runtime_module():
    """Each command imports the runtime modules it runs: the parser needs none of them."""
    loaded = loaded_by("import reconciler.cli")
    assert sorted(m for m in loaded if m.startswith(("reconciler.runtime", "reconciler.adapters"))) == []


def test_the_check_sees_a_library_that_is_loaded():
    """The checks above can fail: a process that loads libvirt and builds a validator is caught."""
    found = heavy(loaded_by("import reconciler.adapters.hypervisor, reconciler.core.validation as v; v._validator('Host')"))
    assert {"libvirt", "jsonschema", "referencing", "rpds"} <= set(found)


def test_python_dash_m_reconciler_version_imports_no_library_it_does_not_need():
    """``python -m reconciler --version`` (how the e2e suite runs kvmops) stays light as a whole process."""
    imported = imported_by("-m", "reconciler", "--version")
    assert "reconciler.cli" in imported
    assert heavy(imported) == []


def test_the_console_script_imports_no_library_it_does_not_need():
    """The installed ``kvmops`` script (``reconciler.cli:main``) stays light as a whole process."""
    script = Path(sys.executable).parent / "kvmops"
    if not script.is_file():
        pytest.skip(f"no kvmops console script next to {sys.executable}")
    imported = imported_by(str(script), "--version")
    assert "reconciler.cli" in imported
    assert heavy(imported) == []


def test_validate_without_connect_never_loads_libvirt_or_the_controller(tmp_path):
    """``kvmops validate DIR`` checks schemas (jsonschema, PyYAML) but needs no hypervisor and no controller."""
    (tmp_path / "web.yaml").write_text(VM, encoding="utf-8")
    loaded = loaded_by(
        "import contextlib, io, sys\n"
        "from reconciler import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    status = cli.main(['validate', {str(tmp_path)!r}])\n"
        "assert status == 0, out.getvalue()"
    )
    assert {"jsonschema", "yaml"} <= loaded  # it did validate
    assert [m for m in ("libvirt", "watchdog", "asyncio", "http.server", "reconciler.runtime.execute",
                        "reconciler.runtime.controller") if m in loaded] == []


def test_events_below_the_level_are_dropped_without_loading_structlog():
    """At level warning, info and debug events load no structlog; the first warning loads it and is written."""
    result = python("-c", (
        "import io, json, sys\n"
        "from reconciler import logconfig\n"
        "stream = io.StringIO()\n"
        "logconfig.configure(format='json', level='warning', stream=stream)\n"
        "log = logconfig.get_logger('kvmops.test')\n"
        "log.info('step_done', vm='web')\n"
        "log.debug('detail')\n"
        "print('structlog' in sys.modules)\n"
        "log.warning('pool_missing', pool='vmstore')\n"
        "print('structlog' in sys.modules)\n"
        "print(stream.getvalue(), end='')\n"
    ))
    before, after, *events = result.stdout.splitlines()
    assert (before, after) == ("False", "True")
    assert [json.loads(e)["event"] for e in events] == ["pool_missing"]


def test_a_one_shot_apply_at_the_default_level_never_loads_structlog(tmp_path):
    """``kvmops apply`` logs its steps at info, below its default level: structlog (and asyncio) stay unloaded."""
    loaded = loaded_by(
        "import contextlib, io\n"
        "from reconciler import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    status = cli.main(['apply', {str(REPO / 'manifests')!r}, '--connect', 'test:///default'])\n"
        "assert status == 0, out.getvalue()\n"
        "assert 'Converged' in out.getvalue(), out.getvalue()"
    )
    assert "reconciler.runtime.execute" in loaded  # it did apply
    assert [m for m in ("structlog", "asyncio", "watchdog", "http.server") if m in loaded] == []


def test_status_of_one_host_reads_no_manifest_and_loads_no_fleet():
    """``kvmops status`` without ``--manifests`` needs libvirt alone: no PyYAML, jsonschema, executor or fleet."""
    loaded = loaded_by(
        "import contextlib, io\n"
        "from reconciler import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    status = cli.main(['status', '--connect', 'test:///default'])\n"
        "assert status == 0, out.getvalue()"
    )
    assert "libvirt" in loaded  # it did look
    assert [m for m in ("yaml", "jsonschema", "structlog", "reconciler.runtime.execute", "reconciler.runtime.fleet_reconcile")
            if m in loaded] == []

"""What ``kvmops status`` and the controller's /status say about VMs no manifest declares.

Only a domain whose mark is bound to it is ever pruned; one carrying a mark from an older
kvmops (unbound) is kept, so neither status may call it "to be pruned".
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.core import planner
from reconciler.runtime.controller import Controller, ControllerSettings
from reconciler.adapters import systemd
from tests import factories
from tests.integration import conftest as c

LEGACY_UUID = "0b0b0b0b-0000-4000-8000-000000000001"
BOUND_UUID = "0b0b0b0b-0000-4000-8000-000000000002"


def unbound(xml: str) -> str:
    """Return ``xml`` with its mark as kvmops wrote it before marks named their domain."""
    return re.sub(r' domain="[^"]*" uuid="[^"]*"', "", xml, count=1)


@pytest.fixture
def uri(tmp_path: Path, manifest_dir: Path) -> str:
    """A host with `legacy` (unbound mark) and `gone` (bound mark), neither declared; the manifests declare `keep`."""
    factories.write(manifest_dir, "keep.yaml", factories.vm("keep", memory="64MiB", runStrategy="Halted"))
    legacy = unbound(c.owned_domain_xml("legacy", LEGACY_UUID, manifest="legacy.yaml", digest="sha256:0"))
    gone = c.owned_domain_xml("gone", BOUND_UUID, manifest="gone.yaml", digest="sha256:0")
    host = tmp_path / "host"
    host.mkdir()
    return c.node_uri(host, legacy + gone)


def test_kvmops_status_never_says_a_vm_with_an_unbound_mark_would_be_pruned(uri, manifest_dir, capsys):
    """`kvmops status --manifests` says the legacy VM is kept and how to bind its mark; the bound orphan is drifted."""
    assert cli.main(["status", "--connect", uri, "--manifests", str(manifest_dir), "--output", "json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    legacy = " ".join(condition["message"] for condition in rows["legacy"]["conditions"])
    assert "pruned" not in legacy.replace("never pruned", "")
    assert "older kvmops" in legacy and "adopt" in legacy
    assert "Drifted" in [condition["type"] for condition in rows["gone"]["conditions"]]  # its prune is planned


def test_the_controller_status_never_says_a_vm_with_an_unbound_mark_is_to_be_pruned(uri, manifest_dir, tmp_path):
    """/status shows the legacy VM as kept (never pruned on that mark), not as "absent (to be pruned)"."""
    settings = ControllerSettings(path=str(manifest_dir), uri=uri, planner=planner.Settings(prune=True),
                                  resync_interval=600, quiet_period=0.05, termination_grace=5, state_dir=tmp_path / "state")
    controller = Controller(settings, notifier=systemd.Notifier({}))
    thread = threading.Thread(target=controller.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not controller.status_document()["ready"] and time.monotonic() < deadline:
            time.sleep(0.05)
        vms = controller.status_document()["vms"]
    finally:
        controller.request_stop()
        thread.join(10)
    assert "legacy" in vms
    assert "to be pruned" not in vms["legacy"]["desired"]
    assert "never pruned" in vms["legacy"]["desired"]

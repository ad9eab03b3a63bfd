"""Adopting real VMs is exact: virt-install's own domains, imported, adopted and planned.

The corpus in ``tests/e2e/corpus/`` is domain XML exactly as ``virt-install --print-xml``
writes it over its options (disks by path and by pool, CD-ROMs empty and full, UEFI,
Windows profiles without TPM, NIC models, CPU modes, boot orders): ``generate.py`` there
made it, and each file starts with the command.  Each domain is defined on the real
libvirtd under the test's prefix, then run through ``kvmops import``, ``validate``,
``adopt`` and ``plan``: the plan must be empty, or ``adopt`` must have refused the domain
naming it and what a manifest cannot express.  Nothing is started.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.commands import kvmops, output

pytestmark = pytest.mark.e2e

CORPUS = Path(__file__).resolve().parent / "corpus"
EMPTY_AT_LEAST = 0.95


def corpus_xml() -> dict[str, str]:
    """Return the corpus: variant name -> XML with placeholders."""
    return {path.stem: re.sub(r"^<!--.*?-->\n", "", path.read_text(encoding="utf-8"), flags=re.S)
            for path in sorted(CORPUS.glob("*.xml"))}


FILES = ("root.qcow2", "data.qcow2", "data.img", "install.iso", "tools.iso", "vmlinuz", "initrd.gz")


def lay_out_files(host, variants) -> dict[str, str]:
    """Create each variant's own files (outside any pool and in the pool), the pool and the network; return the placeholders."""
    files = host.workdir / "files"
    files.mkdir()
    host.pool_path.mkdir()
    for directory in (files, host.pool_path):
        for variant in variants:
            for name in FILES:
                path = directory / f"{variant}-{name}"
                if name.endswith(".qcow2"):
                    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1G"], check=True)
                else:
                    path.write_bytes(b"\0" * 2048)
    pool = host.connection.storagePoolDefineXML(
        f"<pool type='dir'><name>{host.pool}</name><target><path>{host.pool_path}</path></target></pool>")
    pool.create()
    network = host.name("net")
    host.connection.networkDefineXML(f"<network><name>{network}</name></network>")
    return {"@DIR@": str(files), "@POOLDIR@": str(host.pool_path), "@POOL@": host.pool, "@NET@": network}


def instantiate(template: str, variant: str, name: str, values: dict[str, str]) -> str:
    """Return the variant's XML for this host: its own name, UUID, network, pool and files.

    The corpus keeps the UUIDs virt-install drew; libvirtd refuses a second domain with one of
    them, so each run (and any other session on the same libvirtd) gets fresh ones.
    """
    xml = template.replace("@NAME@", name)
    xml = re.sub(r"<uuid>[^<]*</uuid>", lambda _: f"<uuid>{uuid.uuid4()}</uuid>", xml)
    for file in FILES:
        xml = xml.replace(f"/{file}", f"/{variant}-{file}").replace(f"vol={file}", f"vol={variant}-{file}")
        xml = xml.replace(f"volume=\"{file}\"", f"volume=\"{variant}-{file}\"")
    for placeholder, value in values.items():
        xml = xml.replace(placeholder, value)
    return xml


def short(text: str, limit: int = 1500) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."


def import_validate_and_adopt(host, variant: str, name: str) -> tuple[str, str]:
    """Run ``import``, ``validate`` and ``adopt`` for one defined domain; return (outcome, what was said).

    The outcome is ``adopted``, ``refused`` (adopt named the domain and what a manifest cannot
    express) or ``failed``.
    """
    manifest = host.manifests / f"{variant}.yaml"
    imported = kvmops(host, "import", name, "--connect", host.uri, "-o", manifest)
    if imported.returncode != 0 or "Traceback" in imported.stderr:
        return "failed", f"{variant}: import failed\n{output(imported)}"
    validated = kvmops(host, "validate", manifest)
    if validated.returncode != 0:
        return "failed", f"{variant}: the imported manifest does not validate\n{output(validated)}\n{manifest.read_text()}"
    adopted = kvmops(host, "adopt", name, "--connect", host.uri, "--manifests", host.manifests)
    if adopted.returncode == 0:
        return "adopted", ""
    said = adopted.stdout + adopted.stderr
    if name in said and "cannot express" in said and "Traceback" not in said:
        return "refused", f"{variant}: {said.strip()}"
    return "failed", f"{variant}: adopt failed without saying what it cannot express\n{short(output(adopted))}"


def test_virt_install_domains_plan_empty_after_import_and_adopt_or_are_refused_clearly(host):
    """At least 95 % of virt-install's domains plan nothing after import + adopt; adopt refuses each other one by name."""
    corpus = corpus_xml()
    values = lay_out_files(host, corpus)
    names = {variant: host.name(variant)[:60] for variant in corpus}
    for variant, template in corpus.items():
        host.connection.defineXML(instantiate(template, variant, names[variant], values))
    # Each domain's import, validate and adopt are its own (a domain of its own, a manifest of
    # its own), so domains go side by side: the commands mostly wait for an interpreter to start.
    with ThreadPoolExecutor(max_workers=4) as workers:
        outcomes = dict(zip(corpus, workers.map(lambda v: import_validate_and_adopt(host, v, names[v]), corpus)))
    failures = [said for outcome, said in outcomes.values() if outcome == "failed"]
    refused = [said for outcome, said in outcomes.values() if outcome == "refused"]
    adopted = [variant for variant, (outcome, _) in outcomes.items() if outcome == "adopted"]
    aside = host.workdir / "not-adopted"
    aside.mkdir()
    for variant in set(corpus) - set(adopted):
        with contextlib.suppress(FileNotFoundError):
            (host.manifests / f"{variant}.yaml").rename(aside / f"{variant}.yaml")
    # One plan of every adopted manifest: the plan of each VM is empty, the same as planning each file alone.
    planned = kvmops(host, "plan", host.manifests, "--output", "json")
    document = json.loads(planned.stdout) if planned.stdout.startswith("{") else {"resources": [], "problems": [planned]}
    problems = [p["text"] for p in document.get("problems", []) if isinstance(p, dict)]
    assert planned.returncode == 0 and not problems, output(planned)
    resources = {r["name"]: r for r in document["resources"] if r["kind"] == "VirtualMachine"}
    empty = []
    for variant in adopted:
        resource = resources.get(names[variant])
        if resource is not None and not resource["actions"] and not resource["changes"] and not resource["problems"]:
            empty.append(variant)
        else:
            failures.append(f"{variant}: the plan after adopt is not empty\n{json.dumps(resource, indent=1)}\n"
                            f"{(host.manifests / f'{variant}.yaml').read_text()}")
    total = len(empty) + len(refused) + len(failures)
    print(f"virt-install corpus: {len(empty)} of {total} plan empty after import + adopt, {len(refused)} refused by adopt")
    for line in refused:
        print(f"  refused: {line}")
    assert failures == [], "\n\n".join(failures)
    assert len(empty) >= EMPTY_AT_LEAST * total, f"only {len(empty)} of {total} plan empty; refused:\n" + "\n".join(refused)

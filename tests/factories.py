"""Build manifests for tests: small YAML texts written into a manifest directory."""

from __future__ import annotations

from pathlib import Path

import yaml


def vm(name: str, *, memory: object = "64MiB", **spec: object) -> dict:
    """Return a VirtualMachine document; ``spec`` keys are the manifest's camelCase fields."""
    return {"apiVersion": "kvmops/v1", "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {"memory": memory, **spec}}


def pool(name: str, path: str, **spec: object) -> dict:
    """Return a StoragePool document for a dir pool at ``path``."""
    return {"apiVersion": "kvmops/v1", "kind": "StoragePool", "metadata": {"name": name},
            "spec": {"path": path, **spec}}


def disk(name: str, pool: str, size: object = "64MiB", **fields: object) -> dict:
    """Return a disk entry of a VM spec."""
    return {"name": name, "pool": pool, "size": size, **fields}


def write(directory: Path, relpath: str, *documents: dict) -> Path:
    """Write ``documents`` as one multi-document YAML file at ``directory/relpath``."""
    path = directory / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")
    return path

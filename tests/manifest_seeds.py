"""Valid manifest trees that the fuzz tests mutate: the examples, and one naming every kind of file.

Kept apart from :mod:`tests.manifest_fuzzing` (which runs the CLI, and so reaches
libvirt) so that unit tests of the pure core can start from the same documents.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HOSTILE_TREE = {
    "vms/files.yaml": """\
apiVersion: kvmops/v1
kind: VirtualMachine
metadata:
  name: files
spec:
  memory: 64MiB
  vcpus: 1
  disks:
    - name: root
      pool: store
      size: 1GiB
      deletionPolicy: Delete
  cloudInit:
    userDataFile: user-data
  graphics:
    type: vnc
    listen: 127.0.0.1
    passwordFile: vnc.pass
  autostart: true
  runStrategy: Always
  shutdownTimeout: 30
---
apiVersion: kvmops/v1
kind: StoragePool
metadata:
  name: store
spec:
  path: /var/lib/kvmops/fuzz-store
  autostart: true
---
apiVersion: kvmops/v1
kind: Image
metadata:
  name: blank
spec:
  pool: store
  source:
    path: disk.raw
  sha256: "30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58"
  format: raw
""",
    "vms/user-data": "#cloud-config\npackages: [nginx]\n",
    "vms/vnc.pass": "notreal1\n",
    "vms/disk.raw": "\0" * 512,
}
HOSTILE_LINKS = {"vms/escape": "/etc/hostname", "vms/up": ".."}  # symlinks out of the tree, for path mutations


def seed_trees() -> dict[str, dict[str, str]]:
    """Return the valid trees cases start from: {name: {relpath: text}}."""
    trees = {}
    for name, root in (("manifests", REPO / "manifests"), ("cloud-images", REPO / "examples" / "cloud-images")):
        files = {}
        for path in sorted(root.rglob("*")):
            if path.is_file():
                files[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8")
        trees[name] = files
    trees["hostile"] = dict(HOSTILE_TREE)
    return trees


SEEDS = seed_trees()

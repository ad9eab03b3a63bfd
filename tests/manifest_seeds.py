"""Valid manifest trees that the fuzz tests mutate: the examples, one naming every kind of file, a fleet, a policy.

* ``manifests`` and ``cloud-images``: the examples of the repository, as they are;
* ``hostile``: a tree naming every kind of file a manifest may name;
* ``fleet``: ``examples/fleet`` (Hosts with labels, capacity and a cordon; VM placement by
  host, hostSelector, spreadBy and antiAffinity; a ``shared`` pool and ``hosts`` selectors)
  with each Host's URI a test driver of its own (:data:`HOST_XML`), and a configuration
  file with a policy and ``hostTimeout``;
* ``policy``: the ``manifests`` example under a configuration file whose policy names
  every rule (:data:`CONFIG`).

A tree with a configuration file keeps its manifests under :data:`MANIFESTS` and the file
at :data:`CONFIG` (outside the manifests, which would read it as one); ``plan`` is given
``--config`` for it. Kept apart from :mod:`tests.manifest_fuzzing` (which runs the CLI,
and so reaches libvirt) so that unit tests of the pure core can start from the same documents.
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
    "vms/vnc.pass": "notreal\n",
    "vms/disk.raw": "\0" * 512,
}
HOSTILE_LINKS = {"vms/escape": "/etc/hostname", "vms/up": ".."}  # symlinks out of the tree, for path mutations


MANIFESTS = "manifests"  # where a tree with a configuration file keeps its manifests
CONFIG = "kvmops/config.yaml"  # that tree's configuration file (plan --config)
HOST_XML = "@HOST_XML@"  # in a Host's URI: the absolute path of the test driver's host file, filled in when written
CORE_SEEDS = ("cloud-images", "hostile", "manifests")  # single-host trees whose documents build together

POLICY_CONFIG = """\
scope: default
policy:
  allowedPoolPaths: [/var/lib/kvmops, /var/lib/libvirt/images]
  allowedNetworks: [lab, lan, backend, "default*"]
  allowedBridges: [br0, "kvlab*"]
  imageSources: ["https://cloud.debian.org/images/", /var/lib/kvmops]
  limits:
    maxVcpus: 16
    maxMemory: 64GiB
    maxDiskSize: 500GiB
    allowedGraphicsListen: [127.0.0.1, "::1"]
    allowHostPassthrough: false
  quota:
    vms: 20
    vcpus: 64
    memory: 256GiB
    disk: 2TiB
  maxPrunePerPass: "50%"
  allowDataLoss: true
  trashRetention: 24h
  scopes:
    other:
      limits: {maxVcpus: 2, maxMemory: 4096}
      quota: {vms: 2, disk: 100}
      maxPrunePerPass: 1
      allowDataLoss: false
"""

FLEET_CONFIG = """\
hostTimeout: 5
policy:
  allowedPoolPaths: [/srv/nfs, /var/lib/kvmops]
  allowedNetworks: ["fleet*", default]
  imageSources: ["https://cloud.debian.org/images/cloud/"]
  limits: {maxVcpus: 8, maxMemory: 32GiB, maxDiskSize: 100GiB}
  quota: {vms: 10, vcpus: 32, memory: 64GiB}
  maxPrunePerPass: 2
"""


def _files(root: Path) -> dict[str, str]:
    return {path.relative_to(root).as_posix(): path.read_text(encoding="utf-8")
            for path in sorted(root.rglob("*")) if path.is_file()}


def _test_driver_hosts(text: str) -> str:
    """Return Host manifests ``text`` with each Host's ``uri:`` a test driver of its own (the same host file)."""
    lines = []
    host = ""
    for line in text.splitlines(keepends=True):
        if line.startswith("  name: "):
            host = line.split(":", 1)[1].strip()
        if line.startswith("  uri: "):
            line = f"  uri: test://{HOST_XML}?host={host}\n"
        lines.append(line)
    return "".join(lines)


def seed_trees() -> dict[str, dict[str, str]]:
    """Return the valid trees cases start from: {name: {relpath: text}}."""
    trees = {
        "manifests": _files(REPO / "manifests"),
        "cloud-images": _files(REPO / "examples" / "cloud-images"),
        "hostile": dict(HOSTILE_TREE),
    }
    fleet = {f"{MANIFESTS}/{relpath}": text for relpath, text in _files(REPO / "examples" / "fleet").items()}
    fleet[f"{MANIFESTS}/hosts/hosts.yaml"] = _test_driver_hosts(fleet[f"{MANIFESTS}/hosts/hosts.yaml"])
    trees["fleet"] = {**fleet, CONFIG: FLEET_CONFIG}
    trees["policy"] = {**{f"{MANIFESTS}/{relpath}": text for relpath, text in trees["manifests"].items()},
                       CONFIG: POLICY_CONFIG}
    return trees


def manifest_root(tree: dict[str, str]) -> str:
    """Return where the manifests of ``tree`` are, relative to it: "" (the tree) or :data:`MANIFESTS`."""
    return MANIFESTS if CONFIG in tree else ""


SEEDS = seed_trees()

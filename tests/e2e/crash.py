"""Crash trials: kill kvmops or libvirtd at a seeded point, finish the job, check the world.

A :class:`CrashWorld` is one private libvirtd (a :mod:`tests.lab` host, which may be
killed and restarted without disturbing anyone) holding a manifest set:

* a StoragePool; an isolated Network with a bridge named after the test prefix;
* an Image (raw, random bytes, pinned by sha256) served by a loopback HTTP server;
* three VMs (TCG, ``runStrategy: Always``; they sit in firmware): ``a`` with an overlay
  root on the image (Delete) and a data disk (Retain) on the network; ``b`` with a full
  copy of the image (Retain), a scratch disk (Delete) and a cloud-init seed; ``c`` with
  UEFI (an NVRAM file) and one disk (Delete);
* a VM ``keeper`` (Halted, no disk) that no trial removes;
* foreign objects placed before any trial: a domain without kvmops' mark, a volume it
  uses, and a plain file in the pool.

A trial (:func:`run_trial`) starts from a known state, runs ``kvmops apply`` as a
process, kills it (SIGKILL) or libvirtd (SIGKILL, then restarted) at a :class:`KillPoint`,
re-applies until ``apply`` exits 0, and then checks the INVARIANTS, each a function of the
world returning what it found wrong.  ``apply`` trials start from nothing (the foreign
objects only) and apply the whole set; ``prune`` trials start from the converged set and
apply it without its VMs and Network (pool and image stay declared).

Kill points are seeded: a delay (uniform over a measured uninterrupted run), the N-th
mutating libvirt call (``KVMOPS_TEST_CRASH_AT=N``: kvmops kills itself right before it;
only when the code has that hook), or an event seen in the world (a file appears in the
pool or in kvmops' temporary directory, a domain disappears): the events aim at the
windows where known bugs live.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import yaml

from reconciler.core.trash import TRASH_DIRECTORY
from tests import lab as labs

REPO = Path(__file__).resolve().parents[2]
OWNER_NS = "https://kvmops.dev/xmlns/owner/v1"
CRASH_HOOK = "KVMOPS_TEST_CRASH_AT"
MIB = 1024 * 1024
COMMAND_TIMEOUT = 180.0
REAPPLY_ATTEMPTS = 4
PARTIAL = ".kvmops-partial-"
POLL = 0.002  # seconds between looks at the world while waiting for an event

libvirt.registerErrorHandler(lambda _context, _error: None, None)


def crash_hook_available() -> bool:
    """Return whether this kvmops can kill itself before its N-th mutating libvirt call."""
    return any(CRASH_HOOK in path.read_text(encoding="utf-8") for path in (REPO / "reconciler").rglob("*.py"))


# --- kill points ------------------------------------------------------------------------


@dataclass(frozen=True)
class KillPoint:
    """Where a trial kills: ``victim`` (kvmops or libvirtd), ``how`` (delay, hook, event) and ``at``."""

    victim: str
    how: str
    at: float | int | str

    def __str__(self) -> str:
        if self.how == "delay":
            return f"kill {self.victim} {self.at:.3f}s after the start"
        if self.how == "hook":
            return f"kill {self.victim} before mutating call #{self.at} ({CRASH_HOOK}={self.at})"
        return f"kill {self.victim} once {EVENTS[self.at]} ({self.at})"


# Events, by name: what must have happened in the world for the kill to fire.
EVENTS = {
    "image-downloading": "a quarter of the image was downloaded",
    "image-uploading": "the .kvmops-partial-* volume exists",
    "image-copying": "the image's final volume exists (being copied into)",
    "volume-created": "the Delete volume of VM c exists (before its domain is defined)",
    "domain-undefined": "domain c is gone (its volumes not yet deleted)",
    "bridge-created": "the network's bridge exists (libvirt is still starting the network)",
}


# --- the world --------------------------------------------------------------------------


class ImageServer:
    """Serve one file over HTTP on 127.0.0.1, ``rate`` bytes a second (None: as fast as possible).

    ``sent`` counts the bytes of the body sent so far in the current download: how the
    trials see a download in progress, whatever kvmops does with the bytes.
    """

    def __init__(self, content: bytes, rate: float | None = None) -> None:
        body, chunk, server = content, 256 * 1024, self
        self.sent = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                server.sent = 0
                with contextlib.suppress(OSError):
                    for start in range(0, len(body), chunk):
                        self.wfile.write(body[start:start + chunk])
                        server.sent = start + chunk
                        if rate:
                            time.sleep(chunk / rate)

            def log_message(self, *_args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """Return the file's URL."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/base.raw"

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class Disk:
    """A disk of the set: its VM, name, policy, and the image it starts from (overlay or copy)."""

    vm: str
    name: str
    policy: str
    image: str | None = None  # "overlay" or "copy"


@dataclass
class CrashWorld:
    """One lab host, the manifest set of the trials, and everything needed to judge a trial."""

    host: labs.LabHost
    prefix: str
    image_size: int = 16 * MIB
    image_rate: float | None = 64 * MIB  # a quarter of a second per download: long enough to be hit
    image: bytes = b""
    server: ImageServer | None = None
    foreign_snapshot: dict = field(default_factory=dict)

    DISKS = (
        Disk("a", "root", "Delete", "overlay"),
        Disk("a", "data", "Retain"),
        Disk("b", "root", "Retain", "copy"),
        Disk("b", "scratch", "Delete"),
        Disk("c", "sys", "Delete"),
    )

    # --- layout -----------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.host.directory / "crash"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def tmpdir(self) -> Path:
        """Return kvmops' TMPDIR: where image downloads go (nothing may stay there)."""
        return self.root / "tmp"

    @property
    def statedir(self) -> Path:
        return self.root / "state"

    @property
    def pool_path(self) -> Path:
        return self.host.pools / "crash"

    @property
    def nvram_dir(self) -> Path:
        return self.host.directory / "lib" / "qemu" / "nvram"

    @property
    def pool(self) -> str:
        return f"{self.prefix}-pool"

    @property
    def network(self) -> str:
        return f"{self.prefix}-net"

    @property
    def bridge(self) -> str:
        """Return the Linux bridge of the set's network."""
        return labs.bridge_name(self.prefix.split("-lab-")[0], self.prefix[-4:])

    def vm(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    @property
    def image_sha256(self) -> str:
        return hashlib.sha256(self.image).hexdigest()

    @property
    def image_volume(self) -> str:
        return f"{self.prefix}-base-{self.image_sha256[:12]}.raw"

    def volume(self, disk: Disk) -> str:
        return f"{self.vm(disk.vm)}-{disk.name}.qcow2"

    @property
    def foreign_domain(self) -> str:
        return f"{self.prefix}-foreign"

    @property
    def foreign_volume(self) -> str:
        return f"{self.prefix}-foreign.raw"

    FOREIGN_FILE = "README-not-kvmops.txt"

    # --- setup ------------------------------------------------------------------------

    def open(self, seed: int = 0) -> CrashWorld:
        """Create the directories, the image and its server, the foreign objects; return self."""
        for directory in (self.manifests, self.tmpdir, self.statedir, self.pool_path):
            directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.pool_path, 0o755)
        self.image = random.Random(seed).randbytes(self.image_size)
        self.server = ImageServer(self.image, self.image_rate)
        self._place_foreign_objects()
        self.foreign_snapshot = self.snapshot_foreign()
        return self

    def close(self) -> None:
        """Stop the image server (the lab removes everything else)."""
        if self.server is not None:
            self.server.close()

    def connection(self) -> libvirt.virConnect:
        return libvirt.open(self.host.uri)

    def _place_foreign_objects(self) -> None:
        (self.pool_path / self.FOREIGN_FILE).write_text("written by a person; kvmops must never touch it\n")
        conn = self.connection()
        try:
            pool = conn.storagePoolCreateXML(
                f"<pool type='dir'><name>{self.prefix}-foreign-pool</name>"
                f"<target><path>{self.pool_path}</path></target></pool>", 0)
            content = random.Random("foreign").randbytes(MIB)
            volume = pool.createXML(
                f"<volume><name>{self.foreign_volume}</name><capacity>{len(content)}</capacity>"
                "<target><format type='raw'/></target></volume>", 0)
            stream = conn.newStream(0)
            volume.upload(stream, 0, len(content), 0)
            stream.send(content)
            stream.finish()
            pool.destroy()  # a transient pool: the kvmops pool of the set will list the same files
            conn.defineXML(
                f"<domain type='qemu'><name>{self.foreign_domain}</name><memory unit='MiB'>64</memory>"
                "<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>"
                f"<driver name='qemu' type='raw'/><source file='{self.pool_path / self.foreign_volume}'/>"
                "<target dev='vda' bus='virtio'/></disk></devices></domain>")
        finally:
            conn.close()

    def snapshot_foreign(self) -> dict:
        """Return what must never change: the foreign domain's XML, the foreign files' bytes and owners."""
        conn = self.connection()
        try:
            xml = conn.lookupByName(self.foreign_domain).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        except libvirt.libvirtError as exc:
            xml = f"missing: {exc.get_error_message()}"
        finally:
            conn.close()
        files = {}
        for name in (self.foreign_volume, self.FOREIGN_FILE):
            path = self.pool_path / name
            try:
                st = path.stat()
                files[name] = (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mode, st.st_uid, st.st_gid)
            except OSError as exc:
                files[name] = f"missing: {exc.strerror}"
        return {"domain": xml, "files": files}

    # --- manifests --------------------------------------------------------------------

    def write_manifests(self, *, with_vms: bool) -> None:
        """Write the whole set, or (``with_vms=False``) only its pool and image: the VMs and network are pruned."""
        shutil.rmtree(self.manifests, ignore_errors=True)
        self.manifests.mkdir(parents=True)
        documents = [
            _doc("StoragePool", self.pool, path=str(self.pool_path)),
            _doc("Image", f"{self.prefix}-base", pool=self.pool, source={"url": self.server.url},
                 sha256=self.image_sha256, format="raw"),
        ]
        # A VM that stays declared: a manifest set without VMs is refused (kvmops' empty-set guard).
        documents.append(_doc("VirtualMachine", self.vm("keeper"), virtType="qemu", memory="64MiB",
                              runStrategy="Halted"))
        if with_vms:
            documents.append(_doc("Network", self.network, mode="isolated",
                                  bridge=self.bridge,
                                  ipv4={"address": str(self._subnet()[1]), "prefix": 24}))
            documents += [self._vm_document(short) for short in ("a", "b", "c")]
        for index, document in enumerate(documents):
            (self.manifests / f"{index:02d}-{document['metadata']['name']}.yaml").write_text(
                yaml.safe_dump(document, sort_keys=False), encoding="utf-8")

    def _vm_document(self, short: str) -> dict:
        disks = []
        for disk in (d for d in self.DISKS if d.vm == short):
            entry = {"name": disk.name, "pool": self.pool, "size": "64MiB", "deletionPolicy": disk.policy}
            if disk.image:
                entry |= {"image": f"{self.prefix}-base", "clone": disk.image}
            disks.append(entry)
        spec = {"virtType": "qemu", "memory": "64MiB", "shutdownTimeout": 1, "runStrategy": "Always", "disks": disks}
        if short == "a":
            spec["networks"] = [{"network": self.network}]
        if short == "b":
            spec["cloudInit"] = {"userData": "#cloud-config\nhostname: crash-b\n"}
        if short == "c":
            spec |= {"firmware": "uefi", "memory": "128MiB"}
        return _doc("VirtualMachine", self.vm(short), **spec)

    def _subnet(self) -> ipaddress.IPv4Network:
        taken = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
        digest = int(hashlib.sha256(self.prefix.encode()).hexdigest(), 16)
        for attempt in range(64):
            value = digest >> (attempt * 4)
            subnet = ipaddress.IPv4Network(f"10.{200 + value % 50}.{(value >> 8) % 256}.0/24")
            if str(subnet.network_address)[:-1] not in taken:
                return subnet
        raise RuntimeError("no free 10.x subnet for the crash network")

    # --- what the set declares --------------------------------------------------------

    def expected_volumes(self, *, with_vms: bool) -> set[str]:
        """Return the names that must be in the pool after converging (foreign ones included)."""
        names = {self.image_volume, self.foreign_volume, self.FOREIGN_FILE}
        names |= {self.volume(d) for d in self.DISKS if with_vms or d.policy == "Retain"}
        if with_vms:
            names |= {name for name in self.pool_files() if self._is_seed(name, "b")}
        return names

    def image_records(self) -> set[str]:
        """Return the names kvmops may keep beside the image volume: its completion record."""
        return {f".kvmops-complete-{self.image_volume}"}

    def _is_seed(self, name: str, short: str) -> bool:
        return name.startswith(self.vm(short)) and name.endswith(".iso")

    def pool_files(self) -> set[str]:
        """Return the pool directory's entries, its trash aside: a volume in the trash is kept on purpose."""
        return {path.name for path in self.pool_path.iterdir()} - {TRASH_DIRECTORY}

    def trash_problems(self) -> list[str]:
        """Return the trash entries that are not whole: each holds its record and the one volume it kept."""
        trash = self.pool_path / TRASH_DIRECTORY
        entries = sorted(trash.iterdir()) if trash.is_dir() else []
        found = []
        for entry in entries:
            files = {path.name for path in entry.iterdir()} if entry.is_dir() else set()
            if "entry.json" not in files or len(files - {"entry.json"}) != 1:
                found.append(f"trash entry {entry.name} holds {sorted(files)}")
        return found

    # --- commands ---------------------------------------------------------------------

    def env(self, crash_at: int | None = None) -> dict:
        env = {**os.environ, "TMPDIR": str(self.tmpdir), "KVMOPS_STATE_DIR": str(self.statedir),
               "KVMOPS_CONNECT": self.host.uri}
        env.pop(CRASH_HOOK, None)
        if crash_at is not None:
            env[CRASH_HOOK] = str(crash_at)
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "reconciler", "--log-format", "json", *args]

    def kvmops(self, *args: str) -> subprocess.CompletedProcess:
        """Run kvmops to completion against the lab host."""
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                              env=self.env(), cwd=REPO)

    def apply_counting_calls(self) -> tuple[subprocess.CompletedProcess, int | None]:
        """Run ``kvmops apply`` to completion; return it and how many mutating libvirt calls it made (hook only)."""
        if not crash_hook_available():
            return self.kvmops("apply", str(self.manifests), "--connect", self.host.uri), None
        # the hook counts calls once N is set; N larger than any run never fires
        counting = ("import atexit, runpy, sys; from reconciler.adapters import hypervisor as hv; "
                    "atexit.register(lambda: print('MUTATING_CALLS', hv._mutating_calls, file=sys.stderr)); "
                    "sys.argv[0] = 'kvmops'; runpy.run_module('reconciler', run_name='__main__')")
        done = subprocess.run([sys.executable, "-c", counting, "--log-format", "json", "apply", str(self.manifests),
                               "--connect", self.host.uri], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, env=self.env(crash_at=10**9), cwd=REPO)
        found = re.search(r"^MUTATING_CALLS (\d+)$", done.stderr, re.M)
        return done, int(found.group(1)) if found else None

    def start_apply(self, crash_at: int | None = None) -> subprocess.Popen:
        """Start ``kvmops apply`` of the manifests, in its own process group (one worker under the hook: a set order)."""
        serial = ("--parallel", "1") if crash_at is not None else ()
        return subprocess.Popen(self.argv("apply", str(self.manifests), "--connect", self.host.uri, *serial),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env(crash_at), cwd=REPO, start_new_session=True)

    # --- getting to a known state -----------------------------------------------------

    def reset(self) -> None:
        """Remove everything the set made (domains, network, volumes, files), keeping the foreign objects."""
        if self.host.libvirtd_pid is None:
            self.host.restart_libvirtd()
        conn = self.connection()
        try:
            domains = [d for d in conn.listAllDomains(0) if d.name() != self.foreign_domain]

            def destroy(domain: libvirt.virDomain) -> None:
                with contextlib.suppress(libvirt.libvirtError):
                    domain.destroy()

            with ThreadPoolExecutor(max_workers=4) as workers:  # tearing a QEMU down takes a while: side by side
                list(workers.map(destroy, domains))
            for domain in domains:
                with contextlib.suppress(libvirt.libvirtError):
                    domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            for network in conn.listAllNetworks(0):
                with contextlib.suppress(libvirt.libvirtError):
                    if network.isActive():
                        network.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    network.undefine()
            for pool in conn.listAllStoragePools(0):
                with contextlib.suppress(libvirt.libvirtError):
                    if pool.isActive():
                        pool.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    pool.undefine()
        finally:
            conn.close()
        keep = {self.foreign_volume, self.FOREIGN_FILE}
        for path in self.pool_path.iterdir():
            if path.name in keep:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)  # the pool's .kvmops-trash
            else:
                path.unlink()
        for directory in (self.tmpdir, self.nvram_dir):
            if directory.exists():
                for path in directory.iterdir():
                    path.unlink()


def _doc(kind: str, name: str, **spec) -> dict:
    return {"apiVersion": "kvmops/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


# --- invariants: each returns what it found wrong ---------------------------------------


def converged(world: CrashWorld) -> list[str]:
    """A fresh plan of the manifests is empty (``plan --detailed-exitcode`` exits 0)."""
    result = world.kvmops("plan", str(world.manifests), "--connect", world.host.uri, "--detailed-exitcode")
    if result.returncode == 0:
        return []
    summary = " | ".join(line.strip() for line in result.stdout.splitlines() if line.strip().startswith(("+", "-", "~", "Plan", "■")))
    return [f"plan exits {result.returncode} after convergence: {summary or _last_line(result.stderr)}"]


def no_volume_lost(world: CrashWorld, with_vms: bool) -> list[str]:
    """Every declared volume and every Retain volume exists; image volumes hold the pinned bytes."""
    found = []
    present = world.pool_files()
    for name in sorted(world.expected_volumes(with_vms=with_vms) - present):
        found.append(f"volume {name} is missing")
    image = world.pool_path / world.image_volume
    if image.exists():
        digest = _sha256(image)
        if digest != world.image_sha256:
            found.append(f"image volume {image.name} has sha256 {digest[:12]}…, the manifest pins {world.image_sha256[:12]}…")
    copy = world.pool_path / world.volume(Disk("b", "root", "Retain"))
    if copy.exists() and image.exists():
        if not _same_guest_content(copy, image, len(world.image)):
            found.append(f"{copy.name} (a copy of the image) does not hold the image's bytes")
    return found


def nothing_leaked(world: CrashWorld, with_vms: bool) -> list[str]:
    """No volume, partial, seed, NVRAM or temporary file is left that nothing declares; no bridge of a pruned network."""
    extra = world.pool_files() - world.expected_volumes(with_vms=with_vms) - world.image_records()
    found = [f"volume {name} is left over" for name in sorted(extra) if not name.startswith(PARTIAL)]
    found += world.trash_problems()
    nvram = sorted(world.nvram_dir.iterdir()) if world.nvram_dir.exists() else []
    wanted_nvram = {f"{world.vm('c')}_VARS.fd"} if with_vms else set()
    found += [f"NVRAM file {path.name} is left over" for path in nvram if path.name not in wanted_nvram]
    if with_vms and not any(path.name in wanted_nvram for path in nvram):
        found.append(f"NVRAM of {world.vm('c')} is missing")
    conn = world.connection()
    try:
        if not with_vms:
            found += [f"domain {d.name()} is left over" for d in conn.listAllDomains(0)
                      if d.name() not in (world.foreign_domain, world.vm("keeper"))]
            found += [f"network {n.name()} is left over" for n in conn.listAllNetworks(0)]
    finally:
        conn.close()
    if not with_vms and Path(f"/sys/class/net/{world.bridge}").exists():
        found.append(f"bridge {world.bridge} of the pruned network is left over")
    return found


def no_temporary_file_left(world: CrashWorld) -> list[str]:
    """No download in kvmops' TMPDIR, no partial upload volume, nothing but its host locks in its state directory."""
    found = [f"temporary file {path} is left over" for path in sorted(world.tmpdir.iterdir())]
    found += [f"partial volume {name} is left over" for name in sorted(world.pool_files()) if name.startswith(PARTIAL)]
    found += [f"state file {path} is left over" for path in sorted(world.statedir.rglob("*"))
              if path.is_file() and not path.name.startswith("lock")]
    return found


def every_domain_marked(world: CrashWorld) -> list[str]:
    """Every domain but the foreign one carries kvmops' mark, written for that very domain."""
    found = []
    conn = world.connection()
    try:
        for domain in conn.listAllDomains(0):
            if domain.name() == world.foreign_domain:
                continue
            try:
                mark = ET.fromstring(domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, 0))
            except libvirt.libvirtError:
                found.append(f"domain {domain.name()} has no kvmops mark")
                continue
            # a mark that names its domain (uuid=, domain=) must name this one; older marks name none
            for attribute, actual in (("uuid", domain.UUIDString()), ("domain", domain.name())):
                if mark.get(attribute) not in (None, actual):
                    found.append(f"domain {domain.name()} carries a mark written for {attribute} {mark.get(attribute)}")
    finally:
        conn.close()
    return found


def foreign_untouched(world: CrashWorld) -> list[str]:
    """The foreign domain's XML and the foreign files' bytes and owners are as they were."""
    now = world.snapshot_foreign()
    found = []
    if now["domain"] != world.foreign_snapshot["domain"]:
        found.append(f"foreign domain {world.foreign_domain} changed")
    for name, before in world.foreign_snapshot["files"].items():
        if now["files"].get(name) != before:
            found.append(f"foreign file {name} changed: {before} -> {now['files'].get(name)}")
    return found


INVARIANTS: dict[str, Callable[..., list[str]]] = {
    "converged": lambda world, with_vms: converged(world),
    "lost": no_volume_lost,
    "leaked": nothing_leaked,
    "temp files": lambda world, with_vms: no_temporary_file_left(world),
    "unmarked": lambda world, with_vms: every_domain_marked(world),
    "foreign changed": lambda world, with_vms: foreign_untouched(world),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _same_guest_content(qcow2: Path, raw: Path, length: int) -> bool:
    """Return whether the guest-visible first ``length`` bytes of ``qcow2`` equal ``raw``'s."""
    done = subprocess.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "raw", str(qcow2), str(raw)],
                          capture_output=True, text=True, timeout=60)
    # exit 1: "images differ" (also when only the qcow2's extra capacity, zeros, differs in size)
    return done.returncode == 0 or "Images are identical" in done.stdout or (
        done.returncode == 1 and "size mismatch" in done.stdout.lower() and _prefix_equal(qcow2, raw, length))


def _prefix_equal(qcow2: Path, raw: Path, length: int) -> bool:
    with subprocess.Popen(["qemu-img", "dd", "-U", "-f", "qcow2", "-O", "raw", f"if={qcow2}", "of=/dev/stdout",
                           "bs=1M", f"count={length // MIB}"], stdout=subprocess.PIPE) as dd:
        return hashlib.sha256(dd.stdout.read()).hexdigest() == _sha256(raw)


def _last_line(text: str) -> str:
    """Return the line of kvmops' output that says why it failed (its last error), else its last line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("✗", "kvmops: error")) or '"level": "error"' in line]
    return (errors or lines or [""])[-1][:400]


# --- trials -----------------------------------------------------------------------------


@dataclass
class TrialResult:
    """What one trial did and found."""

    kind: str  # "apply" or "prune"
    point: KillPoint
    seed: int
    killed: bool = False
    reapplies: int = 0
    violations: dict[str, list[str]] = field(default_factory=dict)
    internal_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    where: str = ""  # the call the hook stopped before
    last_error: str = ""  # the last line of the last failed re-apply

    @property
    def ok(self) -> bool:
        return not any(self.violations.values()) and not self.internal_errors

    def describe(self) -> str:
        """Return one paragraph saying how to reproduce the trial and what broke."""
        where = f", before {self.where}" if self.where else ""
        head = f"{self.kind} trial, seed {self.seed}, {self.point} ({'killed' if self.killed else 'not killed'}{where})"
        lines = [f"  {name}: {detail}" for name, details in self.violations.items() for detail in details]
        lines += [f"  internal error: {detail}" for detail in self.internal_errors]
        return "\n".join([head, *lines])


# kvmops' own "internal error: KeyError: ..." or a traceback; not libvirt's "internal error: client socket is closed"
_INTERNAL = re.compile(r"internal error: [A-Z][A-Za-z]*: |Traceback \(most recent call last\)")


def _internal_errors(output: str) -> list[str]:
    return [line.strip()[:300] for line in output.splitlines() if _INTERNAL.search(line)]


def prepare(world: CrashWorld, kind: str) -> None:
    """Bring the world to a trial's start: nothing (apply) or the whole set converged (prune)."""
    world.reset()
    if kind == "prune":
        world.write_manifests(with_vms=True)
        scratch = TrialResult(kind, KillPoint("kvmops", "delay", 0.0), 0)
        if not _apply_until_it_succeeds(world, scratch):
            raise RuntimeError(f"the set does not converge before a prune trial: {scratch.last_error}")
    world.write_manifests(with_vms=kind == "apply")


def run_trial(world: CrashWorld, kind: str, point: KillPoint, seed: int) -> TrialResult:
    """Run one trial of ``kind`` ("apply" or "prune") killing at ``point``; return what was found."""
    started = time.monotonic()
    prepare(world, kind)
    result = TrialResult(kind, point, seed)
    _interrupted_apply(world, point, result)
    if world.host.libvirtd_pid is None:
        world.host.restart_libvirtd()
    if not _apply_until_it_succeeds(world, result):
        result.violations["converged"] = [f"apply still fails after {REAPPLY_ATTEMPTS} attempts: {result.last_error}"]
    _check(result, world, with_vms=kind == "apply")
    if kind == "apply" and not result.violations.get("converged"):
        # What a kill left behind may only show when the VMs go: a Delete volume that the
        # next pass no longer counts as its own is leaked by the prune, not by the apply.
        world.write_manifests(with_vms=False)
        if not _apply_until_it_succeeds(world, result, count=False):
            result.violations["converged"] = [f"after a later prune: apply still fails: {result.last_error}"]
        _check(result, world, with_vms=False, when="after a later prune: ")
    result.seconds = time.monotonic() - started
    return result


def _interrupted_apply(world: CrashWorld, point: KillPoint, result: TrialResult) -> None:
    """Run ``kvmops apply`` and kill it (or libvirtd) at ``point``; record what happened in ``result``."""
    world.server.sent = 0  # the count of the previous download is not this one's
    process = world.start_apply(crash_at=point.at if point.how == "hook" else None)
    result.killed = _kill_at(world, process, point)
    try:
        out, err = process.communicate(timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        result.internal_errors.append(f"the interrupted apply hung for {COMMAND_TIMEOUT:.0f}s")
    if point.how == "hook":
        result.killed = process.returncode == -signal.SIGKILL
        found = re.search(r"SIGKILL before mutating call \d+: (.*)", err)
        result.where = found.group(1) if found else ""
    result.internal_errors += _internal_errors(out + err)


def _apply_until_it_succeeds(world: CrashWorld, result: TrialResult, *, count: bool = True) -> bool:
    """Re-run ``kvmops apply`` until it exits 0 (at most REAPPLY_ATTEMPTS times); return whether it did."""
    for attempt in range(1, REAPPLY_ATTEMPTS + 1):
        if count:
            result.reapplies = attempt
        done = world.kvmops("apply", str(world.manifests), "--connect", world.host.uri)
        result.internal_errors += _internal_errors(done.stdout + done.stderr)
        if done.returncode == 0:
            return True
        result.last_error = _last_line(done.stdout + done.stderr)
    return False


def _check(result: TrialResult, world: CrashWorld, *, with_vms: bool, when: str = "") -> None:
    """Add to ``result`` what each invariant finds wrong now (a finding already reported is not repeated)."""
    for name, invariant in INVARIANTS.items():
        known = result.violations.setdefault(name, [])
        known += [when + found for found in invariant(world, with_vms) if found not in known]
        if not known:
            del result.violations[name]


def _kill_at(world: CrashWorld, process: subprocess.Popen, point: KillPoint) -> bool:
    """Wait for ``point`` while ``process`` runs, then kill its victim; return whether it did."""
    if point.how == "hook":
        return False  # kvmops kills itself
    if point.how == "event" and point.at in LIFECYCLE_EVENTS:
        return _kill_on_lifecycle_event(world, process, point)
    if point.how == "delay":
        deadline = time.monotonic() + point.at
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
    else:
        happened = _event(world, point.at)
        while not happened():
            if process.poll() is not None:
                return False
            time.sleep(POLL)
    if process.poll() is not None:
        return False
    _kill_victim(world, process, point.victim)
    return True


def _kill_victim(world: CrashWorld, process: subprocess.Popen, victim: str) -> None:
    if victim == "kvmops":
        os.killpg(process.pid, signal.SIGKILL)
    else:
        world.host.kill_libvirtd()
        world.host.restart_libvirtd()


# Events libvirt reports itself: the kill happens in libvirt's event callback, within a
# millisecond, because the window they aim at (between two calls of kvmops) is that short.
LIFECYCLE_EVENTS = {"domain-undefined": ("c", libvirt.VIR_DOMAIN_EVENT_UNDEFINED)}
_event_loop_started = threading.Event()


def _kill_on_lifecycle_event(world: CrashWorld, process: subprocess.Popen, point: KillPoint) -> bool:
    if not _event_loop_started.is_set():
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, daemon=True).start()
        _event_loop_started.set()
    short, wanted = LIFECYCLE_EVENTS[point.at]
    killed = threading.Event()

    def on_event(_conn, domain, event, _detail, _opaque) -> None:
        if domain.name() == world.vm(short) and event == wanted and not killed.is_set() and process.poll() is None:
            _kill_victim(world, process, point.victim)
            killed.set()

    conn = world.connection()
    callback = conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_event, None)
    try:
        while not killed.wait(0.01) and process.poll() is None:
            pass
        return killed.is_set()
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.domainEventDeregisterAny(callback)
        conn.close()


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def _event(world: CrashWorld, name: str) -> Callable[[], bool]:
    """Return a predicate telling whether event ``name`` (see EVENTS) has happened."""
    if name == "image-downloading":
        return lambda: world.server.sent >= len(world.image) // 4
    if name == "image-uploading":
        return lambda: any(world.pool_path.glob(".kvmops-partial-*"))
    if name == "image-copying":
        return lambda: (world.pool_path / world.image_volume).exists()
    if name == "volume-created":
        return lambda: (world.pool_path / world.volume(Disk("c", "sys", "Delete"))).exists()
    if name == "bridge-created":
        return lambda: Path(f"/sys/class/net/{world.bridge}").exists()
    raise ValueError(f"unknown event {name!r}: one of {', '.join(EVENTS)}")


# --- choosing kill points ---------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """An uninterrupted apply and prune: how long each takes (delays are drawn below), how many applies each needs."""

    apply_seconds: float
    prune_seconds: float
    apply_passes: int
    prune_passes: int
    apply_calls: int | None = None  # mutating libvirt calls of the first pass (known with the crash hook)
    prune_calls: int | None = None


def measure_baseline(world: CrashWorld) -> Baseline:
    """Run the set's apply and prune without killing (re-applying until exit 0); raise if that breaks an invariant."""
    timings, passes, calls = {}, {}, {}
    for kind in ("apply", "prune"):
        prepare(world, kind)
        started = time.monotonic()
        result, calls[kind] = world.apply_counting_calls()
        timings[kind] = time.monotonic() - started
        passes[kind] = 1
        while result.returncode != 0 and passes[kind] < REAPPLY_ATTEMPTS:
            passes[kind] += 1
            result = world.kvmops("apply", str(world.manifests), "--connect", world.host.uri)
        if result.returncode != 0:
            raise RuntimeError(f"uninterrupted {kind} fails: {_last_line(result.stdout + result.stderr)}")
        problems = {name: found for name, inv in INVARIANTS.items() if (found := inv(world, kind == "apply"))}
        if problems:
            raise RuntimeError(f"uninterrupted {kind} breaks invariants: {problems}")
    return Baseline(timings["apply"], timings["prune"], passes["apply"], passes["prune"], calls["apply"], calls["prune"])


def random_point(rng: random.Random, kind: str, victim: str, baseline: Baseline, *, hook: bool) -> KillPoint:
    """Return a seeded kill point: a delay within the uninterrupted run, or (kvmops, with the hook) a call number."""
    calls = baseline.apply_calls if kind == "apply" else baseline.prune_calls
    if victim == "kvmops" and hook and calls and rng.random() < 0.5:
        return KillPoint(victim, "hook", rng.randint(1, calls))
    span = baseline.apply_seconds if kind == "apply" else baseline.prune_seconds
    # skip most of the interpreter's start-up (~0.3 s), when nothing has happened yet
    # and the end of the span: a loaded machine measured the baseline slower than most runs
    return KillPoint(victim, "delay", round(rng.uniform(min(0.3, span / 2), 0.8 * span), 3))


# Kill points aimed at the windows of known bugs (issue 8, items 4-6; a network's bridge, issue 9).
TARGETED = (
    ("apply", KillPoint("kvmops", "event", "image-downloading")),     # temp file left (item 6)
    ("apply", KillPoint("libvirtd", "event", "image-copying")),       # corrupt image accepted (item 4)
    ("apply", KillPoint("kvmops", "event", "volume-created")),        # Delete volume leaked (item 5)
    ("prune", KillPoint("kvmops", "event", "domain-undefined")),      # Delete volume orphaned (item 5)
    ("apply", KillPoint("libvirtd", "event", "bridge-created")),      # the bridge blocks every start (issue 9)
)

"""Issue 5's features on a real libvirtd with QEMU: real guests, networks, images, cloud-init, import/adopt.

Each test is a sentence about behaviour, checked against the state of the world after
``kvmops`` (run as a separate process against ``qemu:///system``) has acted: domains, their
power state and XML through libvirt, volumes through the pool and its directory, images
through ``qemu-img``, seed ISOs read back with :mod:`reconciler.core.seediso`, DHCP leases
through ``kvmops status``.  Nothing is mocked.

* A tiny real guest (tests/e2e/tinyguest.py: a Debian kernel and a busybox initramfs that
  takes a DHCP lease and powers off on the ACPI button), booted by kvmops with direct
  kernel boot from volumes of a kvmops-managed pool, on a kvmops-managed isolated network.
* A base image served over HTTP on loopback, imported once, verified against its sha256,
  shared by overlays and copied in full.
* A cloud-init NoCloud seed: its content, its label, and that user data never leaks.
* ``kvmops import`` + ``kvmops adopt --manifests``: the next plan is empty, for a domain
  virt-install made and for one defined from hand-written XML.

The host is shared: every ``plan``/``apply``/``adopt`` runs in the test's own scope
(``--scope <prefix>``) and ``plan``/``apply`` pass ``--no-prune``; every libvirt object is
named with the test's prefix, so the ``host`` fixture removes it afterwards.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import ipaddress
import json
import os
import random
import re
import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
import yaml

from reconciler.core import seediso
from tests import factories
from tests.e2e.commands import apply_ok, kvmops, output, plan_is_empty

MIB = 1024 * 1024
OWNER_NS = "https://kvmops.dev/xmlns/owner/v1"
LEASE_TIMEOUT = 60.0  # seconds from the apply that starts the tiny guest to its DHCP lease
SHUTDOWN_TIMEOUT = 20  # the tiny guest's shutdownTimeout: a graceful stop takes ~2 s

pytestmark = pytest.mark.e2e


# --- helpers ---------------------------------------------------------------------------


def write_pool(host) -> Path:
    """Declare the test's storage pool (a dir pool at ``host.pool_path``) in ``pools/pool.yaml``."""
    return factories.write(host.manifests, "pools/pool.yaml", factories.pool(host.pool, str(host.pool_path)))


def free_subnet(connection) -> str:
    """Return ``10.214.X`` (a /24) that no libvirt network and no host route uses now."""
    used = set()
    for network in connection.listAllNetworks(0):
        try:
            root = ET.fromstring(network.XMLDesc(0))
        except libvirt.libvirtError:
            continue
        for ip in root.iterfind("ip"):
            if ip.get("address", "").startswith("10.214."):
                used.add(int(ip.get("address").split(".")[2]))
    routes = ""
    if shutil.which("ip"):
        routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=False).stdout
    used |= {int(octet) for octet in re.findall(r"\b10\.214\.(\d+)\.", routes)}
    return f"10.214.{random.choice([x for x in range(1, 255) if x not in used])}"


def write_network(host) -> tuple[str, str]:
    """Declare a kvmops-managed isolated network with DHCP on a free /24; return (name, subnet prefix)."""
    name = host.name("net")
    subnet = free_subnet(host.connection)
    document = {
        "apiVersion": "kvmops/v1", "kind": "Network", "metadata": {"name": name},
        "spec": {
            "mode": "isolated",
            "bridge": "kvt" + host.prefix[-6:],  # at most 15 characters, unique per test
            "ipv4": {"address": f"{subnet}.1", "prefix": 24,
                     "dhcp": {"start": f"{subnet}.10", "end": f"{subnet}.250"}},
        },
    }
    factories.write(host.manifests, "networks/net.yaml", document)
    return name, subnet


def qemu_img_info(path: Path) -> dict:
    """Return ``qemu-img info`` of ``path`` (``-U``: a running QEMU may hold it open)."""
    done = subprocess.run(["qemu-img", "info", "-U", "--output", "json", str(path)],
                          capture_output=True, text=True, timeout=30, check=True)
    return json.loads(done.stdout)


def same_content(a: Path, b: Path) -> bool:
    """Return whether two images show the guest the same bytes (``qemu-img compare``)."""
    done = subprocess.run(["qemu-img", "compare", "-U", str(a), str(b)], capture_output=True, text=True, timeout=60)
    return done.returncode == 0


def pool_volume_names(host) -> list[str]:
    """Return the names of the volumes of the test's pool, after a refresh (the pool must exist)."""
    pool = host.connection.storagePoolLookupByName(host.pool)
    if pool.isActive():
        pool.refresh(0)
    return sorted(volume.name() for volume in pool.listAllVolumes(0))


def inactive_xml(host, name: str) -> str:
    """Return the persistent configuration of domain ``name``."""
    return host.domain(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def without_kvmops_mark(xml: str) -> str:
    """Return domain ``xml`` without kvmops' owner element (and a <metadata> it leaves empty), canonical."""
    root = ET.fromstring(xml)
    metadata = root.find("metadata")
    if metadata is not None:
        for owner in metadata.findall(f"{{{OWNER_NS}}}owner"):
            metadata.remove(owner)
        if not len(metadata):
            root.remove(metadata)
    return ET.canonicalize(ET.tostring(root, encoding="unicode"), strip_text=True)


def status_of(host, name: str) -> dict:
    """Return ``kvmops status NAME --output json`` as data (its only row)."""
    result = host.kvmops("status", name, "--output", "json")
    assert result.returncode == 0, output(result)
    rows = json.loads(result.stdout)
    assert [row["name"] for row in rows] == [name], output(result)
    return rows[0]


# --- a tiny real guest ----------------------------------------------------------------


def test_tiny_guest_gets_a_dhcp_lease_and_a_halt_shuts_it_down_gracefully(host, tiny_guest):
    """A kvmops-managed real guest (kernel and initrd from pool volumes, a managed DHCP network) gets a lease
    that status, wait and the network agree on; runStrategy Halted then stops it through ACPI, not a destroy."""
    # The kernel and initrd are files of the pool's directory before the pool starts, so they are its volumes.
    host.pool_path.mkdir(mode=0o755)
    kernel, initrd = tiny_guest.kernel.name, tiny_guest.initrd.name
    for source in (tiny_guest.kernel, tiny_guest.initrd):
        shutil.copyfile(source, host.pool_path / source.name)
        os.chmod(host.pool_path / source.name, 0o644)
    write_pool(host)
    network, subnet = write_network(host)
    name = host.name("tiny")

    def write_vm(run_strategy: str) -> None:
        factories.write(host.manifests, "vms/tiny.yaml", factories.vm(
            name, memory="128MiB", virtType="qemu", shutdownTimeout=SHUTDOWN_TIMEOUT, runStrategy=run_strategy,
            install={"kernel": {"pool": host.pool, "volume": kernel}, "initrd": {"pool": host.pool, "volume": initrd},
                     "cmdline": tiny_guest.cmdline},
            networks=[{"network": network}],
        ))

    write_vm("Always")
    apply_ok(host)
    assert host.is_running(name)
    assert host.connection.networkLookupByName(network).isActive()
    assert set(pool_volume_names(host)) >= {kernel, initrd}
    os_element = ET.fromstring(inactive_xml(host, name)).find("os")
    assert os_element.findtext("kernel") == str(host.pool_path / kernel)
    assert os_element.findtext("initrd") == str(host.pool_path / initrd)
    assert os_element.findtext("cmdline") == tiny_guest.cmdline

    # The guest takes a DHCP lease from the network kvmops defined; `status` reports it as such.
    deadline = time.monotonic() + LEASE_TIMEOUT
    leased: list[dict] = []
    while time.monotonic() < deadline and not leased:
        row = status_of(host, name)
        leased = [a for a in row["addresses"] if a["source"] == "lease"]
        if not leased:
            time.sleep(1)
    assert leased, f"no DHCP lease within {LEASE_TIMEOUT:g}s: {row}"
    address = leased[0]["ip"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(f"{subnet}.0/24")
    assert leased[0]["mac"] in row["macs"]
    assert row["state"] == "running"

    waited = host.kvmops("wait", name, "--for", "ip", "--timeout", "30")
    assert waited.returncode == 0, output(waited)
    assert waited.stdout.strip() == address, output(waited)
    plan_is_empty(host)  # a running guest booted from install media is converged, not "restart pending"

    # After a restart the network still holds the previous boot's lease (for an hour): wait must not
    # return it, but the address the guest takes in this boot, once it has it.
    domain = host.domain(name)
    mac = leased[0]["mac"]
    domain.destroy()
    restarted = time.time()
    domain.create()
    rewaited = host.kvmops("wait", name, "--for", "ip", "--timeout", "60")
    returned = time.time()
    assert rewaited.returncode == 0 and rewaited.stdout.strip() == address, output(rewaited)
    lease = next(lease for lease in host.connection.networkLookupByName(network).DHCPLeases() if lease["mac"] == mac)
    assert lease["expirytime"] - 3600 >= int(restarted), (
        f"wait returned {returned - restarted:.1f}s after the restart, before the guest's new lease: {lease}")
    print(f"\nwait --for ip after a restart returned after {returned - restarted:.1f}s")

    # Halted: an ACPI shutdown the guest honours at once, well before the destroy deadline.
    write_vm("Halted")
    planned = kvmops(host, "plan", host.manifests)
    assert f"destroy after {SHUTDOWN_TIMEOUT}s" in planned.stdout, output(planned)
    started = time.monotonic()
    halted = apply_ok(host)
    elapsed = time.monotonic() - started
    state, reason = host.domain(name).state()
    assert (state, reason) == (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN), (state, reason)
    stop = re.search(rf"done: stop {re.escape(name)} .*\(shut down by the guest\) \[(\d+) ms\]", halted.stdout)
    assert stop, output(halted)
    assert int(stop.group(1)) < SHUTDOWN_TIMEOUT * 1000 / 2, output(halted)
    assert "destroyed" not in halted.stdout, output(halted)
    assert elapsed < SHUTDOWN_TIMEOUT + 30, elapsed
    stopped = host.kvmops("wait", name, "--for", "stopped", "--timeout", "5")
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"{name} is stopped (shutdown)", output(stopped)
    row = status_of(host, name)
    assert (row["state"], row["desired"], row["addresses"]) == ("shutoff", "stopped", []), row
    plan_is_empty(host)

    # ssh to a stopped VM: one clear line, exit 1, no ssh started.
    refused = host.kvmops("ssh", name)
    assert refused.returncode == 1, output(refused)
    assert f"{name} is not running" in refused.stderr, output(refused)
    assert "Traceback" not in refused.stderr, output(refused)
    assert "ssh to" not in refused.stderr, output(refused)


# --- base images over HTTP -------------------------------------------------------------


class ImageServer:
    """An HTTP server on loopback serving one directory, counting the requests per path.

    While ``truncate`` is above zero, each request it answers is cut short (and ``truncate``
    counts down): the full Content-Length, then only half of the body, then the connection
    closes, as a flaky mirror or a dropped connection does.
    """

    def __init__(self, directory: Path) -> None:
        self.requests: list[str] = []
        self.truncate = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append(self.path)
                if server.truncate > 0:
                    server.truncate -= 1
                    body = Path(self.translate_path(self.path)).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *_args) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="image-server", daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        """Return the URL of ``path`` (relative to the served directory)."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/{path}"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def image_server(host):
    """Yield an :class:`ImageServer` for ``host.workdir/www``; stopped afterwards whatever happened."""
    www = host.workdir / "www"
    www.mkdir()
    server = ImageServer(www)
    host.env.update(no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    try:
        yield server, www
    finally:
        server.close()


def test_an_image_is_verified_imported_once_and_shared_by_overlays_and_copies(host, image_server):
    """A base image over HTTP: a wrong sha256 leaves nothing in the pool; the right one imports it once,
    overlays are backed by it, a copy is independent of it, and a second apply downloads nothing."""
    server, www = image_server
    source = www / "x.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(source), "64M"], capture_output=True, check=True, timeout=30)
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    wrong = hashlib.sha256(b"not the image").hexdigest()
    downloads = host.workdir / "tmp"  # where kvmops downloads to ($TMPDIR): nothing may stay there either
    downloads.mkdir()
    host.env["TMPDIR"] = str(downloads)
    write_pool(host)

    def write_manifests(digest: str) -> None:
        factories.write(host.manifests, "images/base.yaml", {
            "apiVersion": "kvmops/v1", "kind": "Image", "metadata": {"name": "base"},
            "spec": {"pool": host.pool, "source": {"url": server.url("x.qcow2")}, "sha256": digest},
        })
        for suffix, disks in (
            ("a", [factories.disk("root", host.pool, "64MiB", image="base"),
                   factories.disk("copy", host.pool, "96MiB", image="base", clone="copy")]),
            ("b", [factories.disk("root", host.pool, "96MiB", image="base")]),
        ):
            factories.write(host.manifests, f"vms/{suffix}.yaml", factories.vm(
                host.name(suffix), virtType="qemu", runStrategy="Halted", disks=disks))

    # A wrong sha256: refused, and nothing of the image in the pool, not even a partial upload.
    write_manifests(wrong)
    refused = kvmops(host, "apply", host.manifests)
    assert refused.returncode == 1, output(refused)
    assert "checksum mismatch" in refused.stdout + refused.stderr, output(refused)
    assert server.requests == ["/x.qcow2"]
    assert pool_volume_names(host) == []
    assert sorted(p.name for p in host.pool_path.iterdir()) == []
    assert list(downloads.iterdir()) == []
    assert host.domain(host.name("a")) is None and host.domain(host.name("b")) is None  # they wait for their image

    # The right sha256: imported once, under a name carrying the digest.
    write_manifests(sha256)
    apply_ok(host)
    assert server.requests == ["/x.qcow2"] * 2
    volume = f"base-{sha256[:12]}.qcow2"
    image = host.pool_path / volume
    assert volume in pool_volume_names(host)
    info = qemu_img_info(image)
    assert (info["format"], info["virtual-size"], info.get("backing-filename")) == ("qcow2", 64 * MIB, None), info
    assert same_content(source, image)

    for vm_suffix, size in (("a", 64), ("b", 96)):  # an overlay may be larger than its image
        overlay = qemu_img_info(host.pool_path / f"{host.name(vm_suffix)}-root.qcow2")
        assert overlay["format"] == "qcow2", overlay
        assert overlay.get("full-backing-filename") == str(image), overlay
        assert overlay.get("backing-filename-format") == "qcow2", overlay
        assert overlay["virtual-size"] == size * MIB, overlay
    copy_path = host.pool_path / f"{host.name('a')}-copy.qcow2"
    copy = qemu_img_info(copy_path)
    assert copy["format"] == "qcow2" and "backing-filename" not in copy, copy
    assert copy["virtual-size"] == 96 * MIB, copy  # grown to the disk's size
    assert same_content(source, copy_path)  # the first 64 MiB are the image's, the rest reads as zeros
    assert list(downloads.iterdir()) == []

    # Applying again downloads nothing and changes nothing.
    again = apply_ok(host)
    assert "No changes." in again.stdout, output(again)
    assert server.requests == ["/x.qcow2"] * 2
    plan_is_empty(host)


def test_an_image_file_is_imported_from_inside_the_manifest_tree_and_never_from_outside_it(host):
    """An Image ``path:`` is relative to its manifest and read through the tree: a file inside is imported;
    a symlink to a host file is refused before anything reaches the pool."""
    secret = host.workdir / "secret.raw"  # beside the manifest tree, like /etc/shadow
    secret.write_bytes(b"root:not-for-guests\n" * 64)
    images = host.manifests / "images"
    images.mkdir(parents=True)
    os.symlink(secret, images / "leak.raw")
    write_pool(host)
    factories.write(host.manifests, "images/leak.yaml", {
        "apiVersion": "kvmops/v1", "kind": "Image", "metadata": {"name": "leak"},
        "spec": {"pool": host.pool, "source": {"path": "leak.raw"}, "format": "raw",
                 "sha256": hashlib.sha256(secret.read_bytes()).hexdigest()},
    })
    refused = kvmops(host, "apply", host.manifests)
    assert refused.returncode == 1, output(refused)
    assert "images/leak.yaml:" in refused.stdout and "outside the manifest tree" in refused.stdout, output(refused)
    assert not [n for n in pool_volume_names(host) if n.startswith("leak")]

    (images / "leak.yaml").unlink()
    (images / "leak.raw").unlink()
    blank = b"\0" * (1024 * 1024)
    (images / "blank.raw").write_bytes(blank)
    sha256 = hashlib.sha256(blank).hexdigest()
    factories.write(host.manifests, "images/blank.yaml", {
        "apiVersion": "kvmops/v1", "kind": "Image", "metadata": {"name": "blank"},
        "spec": {"pool": host.pool, "source": {"path": "blank.raw"}, "format": "raw", "sha256": sha256},
    })
    apply_ok(host)
    assert (host.pool_path / f"blank-{sha256[:12]}.raw").read_bytes() == blank
    plan_is_empty(host)


def test_a_truncated_download_is_reported_as_incomplete_and_leaves_nothing(host, image_server):
    """A download cut short (fewer bytes than its Content-Length) leaves nothing in the pool and is reported
    as an incomplete download, not as a wrong sha256 in the manifest; the next apply imports the image."""
    server, www = image_server
    source = www / "x.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(source), "64M"], capture_output=True, check=True, timeout=30)
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    write_pool(host)
    factories.write(host.manifests, "images/base.yaml", {
        "apiVersion": "kvmops/v1", "kind": "Image", "metadata": {"name": "base"},
        "spec": {"pool": host.pool, "source": {"url": server.url("x.qcow2")}, "sha256": sha256},
    })

    server.truncate = 1
    cut = kvmops(host, "apply", host.manifests)
    assert cut.returncode == 1, output(cut)
    assert server.requests == ["/x.qcow2"]
    assert pool_volume_names(host) == [] and list(host.pool_path.iterdir()) == []

    apply_ok(host)  # the source is fine again: the same manifest imports it
    assert server.requests == ["/x.qcow2"] * 2
    assert same_content(source, host.pool_path / f"base-{sha256[:12]}.qcow2")

    # The manifest's sha256 was right all along: the message must say the transfer was incomplete.
    said = cut.stdout + cut.stderr
    assert "checksum mismatch" not in said and "Fix the sha256" not in said, output(cut)
    assert re.search(r"incomplete|truncated|ended after|of \d+ bytes", said), output(cut)


# --- cloud-init ------------------------------------------------------------------------


PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmopsE2eTestKeyNotARealOneAtAll0000000 e2e@kvmops"
NETWORK_CONFIG = {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}


def user_data(secret: str) -> str:
    """Return #cloud-config user data carrying ``secret`` (a password, as people do put there)."""
    return f"#cloud-config\nchpasswd:\n  expire: false\n  users:\n    - name: root\n      password: {secret}\n      type: text\n"


def seed_files(host, vm_name: str) -> tuple[str, dict[str, bytes]]:
    """Return (label, files) of the seed ISO volume of ``vm_name`` in the test's pool."""
    image = (host.pool_path / f"{vm_name}-cidata.iso").read_bytes()
    return seediso.label(image), seediso.read(image)


def test_cloud_init_seed_carries_the_manifest_and_user_data_never_leaks(host):
    """A VM with cloudInit gets a cidata seed ISO holding exactly its user data, meta-data and network
    config; the user data shows in no plan and no apply output; changing it rewrites the seed, an
    effect for the next boot of a running VM and a live one for a halted VM."""
    write_pool(host)
    running, halted = host.name("ci"), host.name("ci-off")
    secrets = [f"S3cret-{os.urandom(8).hex()}" for _ in range(4)]

    def write_vms(first: str, second: str) -> None:
        for name, secret, strategy in ((running, first, "Always"), (halted, second, "Halted")):
            factories.write(host.manifests, f"vms/{name}.yaml", factories.vm(
                name, virtType="qemu", shutdownTimeout=1, runStrategy=strategy,
                disks=[factories.disk("root", host.pool, "16MiB")],
                cloudInit={"userData": user_data(secret), "metaData": {"hostname": "ci-host"},
                           "sshAuthorizedKeys": [PUBLIC_KEY], "networkConfig": NETWORK_CONFIG},
            ))

    def leaks(*results: subprocess.CompletedProcess) -> list[str]:
        return [s for s in secrets for r in results if s in r.stdout or s in r.stderr]

    write_vms(secrets[0], secrets[1])
    first_plans = [kvmops(host, "plan", host.manifests, "--output", form) for form in ("json", "text", "markdown")]
    assert all(p.returncode == 0 for p in first_plans), "\n".join(map(output, first_plans))
    created = apply_ok(host)
    assert not leaks(*first_plans, created), "user data leaked into plan or apply output"
    assert host.is_running(running) and not host.is_running(halted)

    for name, secret in ((running, secrets[0]), (halted, secrets[1])):
        seed = f"{name}-cidata.iso"
        assert seed in pool_volume_names(host)
        label, files = seed_files(host, name)
        assert label == "cidata"
        if shutil.which("blkid"):  # what cloud-init itself looks for
            probed = subprocess.run(["blkid", "-p", "-o", "value", "-s", "LABEL", str(host.pool_path / seed)],
                                    capture_output=True, text=True, timeout=30)
            assert probed.stdout.strip() == "cidata", probed
        assert set(files) == {"user-data", "meta-data", "network-config"}, sorted(files)
        assert files["user-data"].decode() == user_data(secret)
        meta = yaml.safe_load(files["meta-data"])
        assert meta["local-hostname"] == "ci-host", meta
        assert meta["public-keys"] == [PUBLIC_KEY], meta
        assert meta["instance-id"], meta
        assert yaml.safe_load(files["network-config"]) == NETWORK_CONFIG
        cdroms = [d for d in ET.fromstring(inactive_xml(host, name)).iterfind("devices/disk") if d.get("device") == "cdrom"]
        assert [(c.find("source").get("pool"), c.find("source").get("volume")) for c in cdroms] == [(host.pool, seed)]
    plan_is_empty(host)

    # New user data: a cloudInit change, for the next boot of the running VM, at once for the halted one.
    write_vms(secrets[2], secrets[3])
    changed = kvmops(host, "plan", host.manifests, "--output", "json", "--detailed-exitcode")
    text = kvmops(host, "plan", host.manifests)
    markdown = kvmops(host, "plan", host.manifests, "--output", "markdown")
    assert changed.returncode == 2, output(changed)
    assert not leaks(changed, text, markdown), "user data leaked into a plan"
    resources = {r["name"]: r for r in json.loads(changed.stdout)["resources"]}
    for name, impact in ((running, "restart"), (halted, "live")):
        assert [(c["path"], c["impact"]) for c in resources[name]["changes"]] == [("cloudInit", impact)], resources[name]
    assert "cloudInit" in text.stdout, output(text)

    rewritten = apply_ok(host)
    assert not leaks(rewritten), "user data leaked into apply output"
    for name, secret in ((running, secrets[2]), (halted, secrets[3])):
        label, files = seed_files(host, name)
        assert label == "cidata"
        assert files["user-data"].decode() == user_data(secret)
        assert yaml.safe_load(files["meta-data"])["local-hostname"] == "ci-host"
    assert host.is_running(running) and not host.is_running(halted)  # kvmops restarts nothing for it
    plan_is_empty(host)


# --- import, then adopt ----------------------------------------------------------------


def prepare_pool_and_network(host) -> str:
    """Apply the test's pool and a managed network (both stay in the manifests); return the network's name."""
    write_pool(host)
    network, _subnet = write_network(host)
    apply_ok(host)
    return network


def import_adopt_and_plan(host, name: str) -> dict:
    """Import foreign domain ``name`` into the manifests, adopt it and plan; return the imported document.

    Insists on each promise: the manifest validates, adoption succeeds, the next plan is empty
    (so nothing is replaced or restarted), and the domain's XML changed only by kvmops' mark.
    """
    before = inactive_xml(host, name)
    domain_id = host.domain(name).ID()  # -1 when shut off; a restart would give a running domain a new one
    manifest = host.manifests / "vms" / f"{name}.yaml"
    manifest.parent.mkdir(exist_ok=True)
    imported = host.kvmops("import", name, "-o", str(manifest))
    assert imported.returncode == 0, output(imported)
    document = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    validated = host.kvmops("validate", str(host.manifests), "--connect", host.uri)
    assert validated.returncode == 0, output(validated) + "\n--- manifest\n" + manifest.read_text(encoding="utf-8")

    adopted = kvmops(host, "adopt", name, "--manifests", host.manifests)
    assert adopted.returncode == 0, output(adopted)
    planned = kvmops(host, "plan", host.manifests, "--detailed-exitcode")
    assert planned.returncode == 0 and "No changes." in planned.stdout, (
        output(planned) + "\n--- manifest\n" + manifest.read_text(encoding="utf-8")
    )

    after = inactive_xml(host, name)
    assert without_kvmops_mark(after) == without_kvmops_mark(before)
    assert host.domain(name).ID() == domain_id
    owner = ET.fromstring(after).find(f"metadata/{{{OWNER_NS}}}owner")
    assert owner is not None and owner.get("scope") == host.prefix and owner.get("runStrategy") == "Manual"
    assert {v.get("created") for v in owner.iterfind(f"{{{OWNER_NS}}}volume")} == {"false"}  # never deleted
    return document


@pytest.mark.parametrize("os_variant", [
    "linux2022",  # q35, a virtio disk and NIC, the guest agent channel
    pytest.param("generic", id="generic"),  # pc machine, an IDE disk (hda)
])
def test_a_virt_install_domain_is_imported_and_adopted_with_an_empty_plan(host, os_variant):
    """A domain virt-install made (a file disk in the pool, a NIC on our network) imports into a manifest
    that validates; after adopt the plan is empty and the domain's XML differs only by kvmops' mark."""
    network = prepare_pool_and_network(host)
    name = host.name("vi")
    done = subprocess.run([
        "virt-install", "--connect", host.uri, "--name", name, "--virt-type", "qemu", "--memory", "128",
        "--vcpus", "1", "--disk", f"pool={host.pool},size=0.0625,format=qcow2", "--import",
        "--os-variant", os_variant, "--network", f"network={network}", "--graphics", "none",
        "--noautoconsole", "--noreboot",
    ], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert host.domain(name) is not None

    document = import_adopt_and_plan(host, name)
    spec = document["spec"]
    assert [(d["pool"], d["volume"]) for d in spec["disks"]] == [(host.pool, f"{name}.qcow2")]
    assert [n["network"] for n in spec["networks"]] == [network]
    assert spec["runStrategy"] == "Manual"


@pytest.mark.parametrize("running", [False, True])
def test_a_domain_from_handwritten_xml_is_imported_and_adopted_with_an_empty_plan(host, running):
    """A domain defined from hand-written XML (a file disk that is a pool volume, a NIC with a MAC, a serial
    console), shut off or running, imports, adopts and then plans nothing; its XML differs only by kvmops'
    mark, and a running one keeps running, never restarted."""
    network = prepare_pool_and_network(host)
    name = host.name("hand")
    storage = host.connection.storagePoolLookupByName(host.pool)
    storage.createXML(f"""<volume><name>{name}.qcow2</name><capacity unit='MiB'>32</capacity>
        <target><format type='qcow2'/></target></volume>""", 0)
    mac = "52:54:00:" + ":".join(f"{b:02x}" for b in os.urandom(3))
    host.connection.defineXML(f"""
        <domain type='qemu'>
          <name>{name}</name>
          <memory unit='MiB'>64</memory>
          <vcpu>1</vcpu>
          <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
          <features><acpi/></features>
          <devices>
            <disk type='file' device='disk'>
              <driver name='qemu' type='qcow2'/>
              <source file='{host.pool_path / f"{name}.qcow2"}'/>
              <target dev='vda' bus='virtio'/>
            </disk>
            <interface type='network'>
              <mac address='{mac}'/>
              <source network='{network}'/>
            </interface>
            <serial type='pty'><target port='0'/></serial>
            <console type='pty'><target type='serial' port='0'/></console>
          </devices>
        </domain>""")
    if running:
        host.domain(name).create()

    document = import_adopt_and_plan(host, name)
    spec = document["spec"]
    assert spec["disks"] == [{"name": "vda", "pool": host.pool, "volume": f"{name}.qcow2", "size": "32MiB",
                              "bus": "virtio"}], spec
    assert [(n["network"], n["mac"]) for n in spec["networks"]] == [(network, mac)], spec
    assert spec["console"] == "serial"

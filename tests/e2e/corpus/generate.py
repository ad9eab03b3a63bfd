#!/usr/bin/env python3
"""Regenerate the virt-install corpus: domain XML exactly as ``virt-install --print-xml`` writes it.

Run on a host with virt-install and libvirtd (as root):  python3 tests/e2e/corpus/generate.py
Each variant is printed with ``--dry-run`` (nothing is created), then the host-specific
names are replaced by placeholders that tests/e2e/test_adopt_corpus.py fills in with its
own: @NAME@ (the domain), @DIR@ (a directory of disk files and ISOs outside any pool),
@POOLDIR@ (the directory of storage pool @POOL@) and @NET@ (a libvirt network).  A transient
pool ``$KVMOPS_TEST_PREFIX-genpool`` is created at @POOLDIR@ for the run so that ``--disk pool=`` and ``vol=`` resolve,
and removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = os.environ.get("KVMOPS_TEST_PREFIX", "kvmops-corpus")  # names on the shared libvirtd carry it
WORK = Path(f"/var/tmp/{PREFIX}-gen")
DIR = WORK / "files"
POOLDIR = WORK / "pool"
POOL = f"{PREFIX}-genpool"
NET = "kvmopscorpusnet"  # only printed, never defined
NAME = "kvmopscorpusvm"

# name -> (print-xml step or None for the final XML, virt-install arguments)
D, I, P = "@D@", "@I@", "@P@"
LINUX = ["--memory", "1024", "--vcpus", "2"]
VARIANTS: dict[str, tuple[str | None, list[str]]] = {
    "import-path-debian": (None, [*LINUX, "--osinfo", "debian11", "--import", "--disk", f"path={D}/root.qcow2",
                                  "--network", f"network={NET}"]),
    "import-path-fedora-graphics-none": (None, [*LINUX, "--osinfo", "fedora37", "--import", "--disk", f"path={D}/root.qcow2",
                                                "--network", f"network={NET}", "--graphics", "none"]),
    "cdrom-install-step": ("1", [*LINUX, "--osinfo", "debian11", "--disk", f"path={D}/root.qcow2",
                                 "--cdrom", f"{I}/install.iso", "--network", f"network={NET}"]),
    "cdrom-installed-empty-drive": ("2", [*LINUX, "--osinfo", "debian11", "--disk", f"path={D}/root.qcow2",
                                          "--cdrom", f"{I}/install.iso", "--network", f"network={NET}"]),
    "cdrom-device-full": (None, [*LINUX, "--osinfo", "centos8", "--import", "--disk", f"path={D}/root.qcow2",
                                 "--disk", f"path={I}/tools.iso,device=cdrom", "--network", f"network={NET}"]),
    "pool-volume": (None, [*LINUX, "--osinfo", "debian11", "--import", "--disk", f"vol={POOL}/root.qcow2",
                           "--network", f"network={NET}"]),
    "pool-volume-and-path": (None, [*LINUX, "--osinfo", "debian11", "--import", "--disk", f"vol={POOL}/root.qcow2",
                                    "--disk", f"path={D}/data.qcow2", "--network", f"network={NET}"]),
    "pool-cdrom-install": ("1", [*LINUX, "--osinfo", "debian11", "--disk", f"vol={POOL}/root.qcow2",
                                 "--cdrom", f"{P}/install.iso", "--network", f"network={NET}"]),
    "pool-cdrom-installed": ("2", [*LINUX, "--osinfo", "debian11", "--disk", f"vol={POOL}/root.qcow2",
                                   "--cdrom", f"{P}/install.iso", "--network", f"network={NET}"]),
    "uefi": (None, [*LINUX, "--osinfo", "fedora37", "--import", "--boot", "uefi", "--disk", f"path={D}/root.qcow2",
                    "--network", f"network={NET}"]),
    "uefi-cdrom-install": ("1", [*LINUX, "--osinfo", "fedora37", "--boot", "uefi", "--disk", f"path={D}/root.qcow2",
                                 "--cdrom", f"{I}/install.iso", "--network", f"network={NET}"]),
    "win10": (None, ["--memory", "4096", "--vcpus", "2", "--osinfo", "win10", "--import",
                     "--disk", f"path={D}/root.qcow2", "--network", f"network={NET}"]),
    "win10-install": ("1", ["--memory", "4096", "--vcpus", "2", "--osinfo", "win10", "--disk", f"path={D}/root.qcow2",
                            "--cdrom", f"{I}/install.iso", "--network", f"network={NET}"]),
    "win10-installed": ("2", ["--memory", "4096", "--vcpus", "2", "--osinfo", "win10", "--disk", f"path={D}/root.qcow2",
                              "--cdrom", f"{I}/install.iso", "--network", f"network={NET}"]),
    "win2k19-uefi-no-tpm": (None, ["--memory", "4096", "--vcpus", "2", "--osinfo", "win2k19", "--import", "--boot", "uefi",
                                   "--tpm", "none", "--disk", f"path={D}/root.qcow2", "--network", f"network={NET}"]),
    "win11-no-tpm": (None, ["--memory", "4096", "--vcpus", "2", "--osinfo", "win11", "--import", "--boot", "uefi",
                            "--tpm", "none", "--disk", f"path={D}/root.qcow2", "--network", f"network={NET}"]),
    "nic-e1000": (None, [*LINUX, "--osinfo", "debian11", "--import", "--disk", f"path={D}/root.qcow2",
                         "--network", f"network={NET},model=e1000"]),
    "nic-e1000e": (None, [*LINUX, "--osinfo", "debian11", "--import", "--disk", f"path={D}/root.qcow2",
                          "--network", f"network={NET},model=e1000e"]),
    "nic-rtl8139": (None, [*LINUX, "--osinfo", "debian11", "--import", "--disk", f"path={D}/root.qcow2",
                           "--network", f"network={NET},model=rtl8139"]),
    "nic-pcnet-pc": (None, [*LINUX, "--osinfo", "debian11", "--import", "--machine", "pc", "--disk", f"path={D}/root.qcow2",
                            "--network", f"network={NET},model=pcnet"]),
    "nic-two": (None, [*LINUX, "--osinfo", "debian11", "--import", "--disk", f"path={D}/root.qcow2",
                       "--network", f"network={NET}", "--network", f"network={NET},model=e1000e"]),
    "nic-none": (None, [*LINUX, "--osinfo", "debian11", "--import", "--disk", f"path={D}/root.qcow2", "--network", "none"]),
    "cpu-host-model": (None, [*LINUX, "--osinfo", "debian11", "--import", "--cpu", "host-model",
                              "--disk", f"path={D}/root.qcow2", "--network", f"network={NET}"]),
    "cpu-maximum": (None, [*LINUX, "--osinfo", "debian11", "--import", "--cpu", "maximum",
                           "--disk", f"path={D}/root.qcow2", "--network", f"network={NET}"]),
    "cpu-mode-maximum": (None, [*LINUX, "--osinfo", "debian11", "--import", "--cpu", "mode=maximum",
                                "--disk", f"path={D}/root.qcow2", "--network", f"network={NET}"]),
    "cpu-custom": (None, [*LINUX, "--osinfo", "debian11", "--import", "--cpu", "Skylake-Client",
                          "--disk", f"path={D}/root.qcow2", "--network", f"network={NET}"]),
    "virt-type-qemu": (None, [*LINUX, "--osinfo", "debian11", "--import", "--virt-type", "qemu",
                              "--disk", f"path={D}/root.qcow2", "--network", f"network={NET}"]),
    "machine-pc-ide": (None, [*LINUX, "--osinfo", "centos7.0", "--import", "--machine", "pc",
                              "--disk", f"path={D}/root.qcow2,bus=ide", "--cdrom", f"{I}/install.iso",
                              "--network", f"network={NET}"]),
    "disks-sata-scsi-raw": (None, [*LINUX, "--osinfo", "debian11", "--import", "--disk", f"path={D}/root.qcow2,bus=sata",
                                   "--disk", f"path={D}/data.img,format=raw,bus=scsi", "--network", f"network={NET}"]),
    "boot-order-devices": (None, [*LINUX, "--osinfo", "debian11", "--disk", f"path={D}/root.qcow2,boot.order=2",
                                  "--disk", f"path={I}/tools.iso,device=cdrom,boot.order=1", "--network", f"network={NET}",
                                  "--import"]),
    "boot-menu-network": (None, [*LINUX, "--osinfo", "debian11", "--import", "--boot", "network,hd,menu=on",
                                 "--disk", f"path={D}/root.qcow2", "--network", f"network={NET}"]),
    "vnc-listen-any": (None, [*LINUX, "--osinfo", "debian11", "--import", "--graphics", "vnc,listen=0.0.0.0",
                              "--disk", f"path={D}/root.qcow2", "--network", f"network={NET}"]),
    "direct-kernel-boot": (None, [*LINUX, "--osinfo", "debian11", "--import",
                                  "--boot", f"kernel={I}/vmlinuz,initrd={I}/initrd.gz,kernel_args=console=ttyS0",
                                  "--disk", f"path={D}/root.qcow2", "--network", f"network={NET}"]),
    "nic-user": (None, [*LINUX, "--osinfo", "debian11", "--import", "--disk", f"path={D}/root.qcow2",
                        "--network", "user"]),
}


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    DIR.mkdir(parents=True)
    POOLDIR.mkdir(parents=True)
    for name in ("root.qcow2", "data.qcow2"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(DIR / name), "1G"], check=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(POOLDIR / name), "1G"], check=True)
    for name in ("data.img", "install.iso", "tools.iso", "vmlinuz", "initrd.gz"):
        (DIR / name).write_bytes(b"\0" * 2048)
    (POOLDIR / "install.iso").write_bytes(b"\0" * 2048)
    uri = "qemu:///system"
    subprocess.run(["virsh", "-c", uri, "pool-create-as", POOL, "dir", "--target", str(POOLDIR)], check=True,
                   capture_output=True)
    try:
        for variant, (step, arguments) in VARIANTS.items():
            argv = ["virt-install", "--connect", uri, "--name", NAME, "--dry-run", "--noautoconsole",
                    "--print-xml", *([step] if step else []),
                    *(a.replace(D, str(DIR)).replace(I, str(DIR)).replace(P, str(POOLDIR)) for a in arguments)]
            result = subprocess.run(argv, capture_output=True, text=True)
            if result.returncode != 0:
                print(f"{variant}: virt-install failed: {result.stderr.strip()}", file=sys.stderr)
                continue
            xml = result.stdout
            if not step and xml.count("<domain") > 1:  # two phases printed: keep the final one
                xml = xml[xml.rindex("<domain"):]
            xml = (xml.replace(str(POOLDIR), "@POOLDIR@").replace(str(DIR), "@DIR@")
                   .replace(POOL, "@POOL@").replace(NET, "@NET@").replace(NAME, "@NAME@"))
            command = " ".join(["virt-install", "--print-xml", *([step] if step else []), *arguments])
            (HERE / f"{variant}.xml").write_text(f"<!-- {command} -->\n{xml}", encoding="utf-8")
            print(f"{variant}.xml")
    finally:
        subprocess.run(["virsh", "-c", uri, "pool-destroy", POOL], capture_output=True)
        shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

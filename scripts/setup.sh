#!/usr/bin/env bash
# Install what kvmops needs on a Debian/Ubuntu machine and create the virtualenv .venv.
#
#   scripts/setup.sh client   libvirt's client library and build deps: enough for the
#                             test:///default driver (`kvmops demo`), no daemon installed
#   scripts/setup.sh host     also libvirtd, QEMU and qemu-img, and starts virtlogd and
#                             libvirtd when they are not running (for the test suite)
#
# PYTHON (default python3) is the interpreter, VENV (default .venv) the virtualenv's directory.
# Idempotent: installs only what is missing, starts only what is stopped.
set -euo pipefail
mode=${1:-client}
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

say() { printf '==> %s\n' "$*" >&2; }

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# pip would refuse kvmops on an older interpreter only after minutes of backtracking through
# every release of every dependency: say it at once, in one line, with what to install.
minimum=$(sed -n 's/^requires-python = ">=\([0-9.]*\)"$/\1/p' pyproject.toml)
new_enough() {
  "$1" -c 'import sys; sys.exit(sys.version_info[:3] < tuple(int(p) for p in sys.argv[1].split(".")))' "$minimum" 2>/dev/null
}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  say "kvmops needs Python $minimum or newer, and $PYTHON is not installed: apt-get install python3 (or set PYTHON=/path/to/python3)"
  exit 1
fi
if ! new_enough "$PYTHON"; then
  say "kvmops needs Python $minimum or newer, but $PYTHON is $("$PYTHON" -c 'import platform; print(platform.python_version())'): install a newer python3 (Debian 12 and Ubuntu 22.04 or later have one) and run PYTHON=/path/to/it $0 $mode"
  exit 1
fi
client_packages=(libvirt-dev pkg-config gcc libc6-dev)
host_packages=(libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base ovmf virtinst git)

# The interpreter needs venv and its C headers to build libvirt-python (sdist only).
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then client_packages+=(python3-venv); fi
if ! "$PYTHON" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
  client_packages+=(python3-dev)
fi

wanted=("${client_packages[@]}")
if [ "$mode" = host ]; then wanted+=("${host_packages[@]}"); fi
missing=()
for package in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # policy-rc.d keeps Debian's maintainer scripts from starting daemons the caller did not ask for.
  $SUDO sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
  trap - EXIT
fi

if [ -x "$VENV/bin/python" ] && ! new_enough "$VENV/bin/python"; then
  say "$VENV was made with a Python older than $minimum: recreating it with $PYTHON"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import reconciler, libvirt, pytest, xdist' 2>/dev/null || [ pyproject.toml -nt "$VENV/.installed" ]; then
  say "installing kvmops into $VENV"
  # (grep drops pip's noise about optional local package indexes some machines configure)
  "$VENV/bin/python" -m pip install -q -e '.[test]' 2> >(grep -v '^WARNING: Location' >&2)
  touch "$VENV/.installed"
fi
# Byte-compile kvmops itself: with PYTHONDONTWRITEBYTECODE set (some images set it), every
# command would otherwise recompile the package, a third of a one-shot plan's time.
"$VENV/bin/python" -m compileall -q reconciler >/dev/null

if [ "$mode" != host ]; then exit 0; fi

# QEMU runs as libvirt-qemu (group kvm). Without group access to /dev/kvm it cannot use
# KVM, and libvirtd then re-probes QEMU on every capabilities call (seconds each).
if [ -c /dev/kvm ]; then
  $SUDO chgrp kvm /dev/kvm 2>/dev/null || true
  $SUDO chmod 0660 /dev/kvm 2>/dev/null || true
fi

running() { pgrep -x "$1" >/dev/null 2>&1; }
if [ -d /run/systemd/system ]; then
  running virtlogd || $SUDO systemctl start virtlogd.socket virtlogd.service || true
  running libvirtd || $SUDO systemctl start libvirtd.service
else
  running virtlogd || { say "starting virtlogd"; $SUDO virtlogd -d; }
  running libvirtd || { say "starting libvirtd"; $SUDO libvirtd -d; }
fi
for _ in $(seq 1 50); do
  if $SUDO virsh -c qemu:///system version >/dev/null 2>&1; then exit 0; fi
  sleep 0.2
done
say "libvirtd did not answer on qemu:///system"
exit 1

"""The defaults ``kvmops --help`` shows, shared with the modules that apply them.

The command line builds its parser before it knows the command, so what the parser
needs lives here, in a module that imports nothing: reading a default must not load
libvirt, the executor or the fleet machinery (see :mod:`reconciler.cli`).
"""

DEFAULT_URI = "qemu:///system"  # the libvirt URI without --connect or $KVMOPS_CONNECT
DEFAULT_SCOPE = "default"  # the manifest set's name without --scope or a configuration file
DEFAULT_WORKERS = 4  # VMs worked on at once on one host
DEFAULT_HOST_WORKERS = 8  # hosts connected to, observed and applied at once
DEFAULT_HOST_TIMEOUT = 10.0  # seconds a Host gets to be connected to, or to stay silent, before it counts as unreachable
DEFAULT_STEP_TIMEOUT = 3600.0  # seconds one step of a one-shot apply may take before it is abandoned
MAX_STEP_TIMEOUT = 604800.0  # a week: --step-timeout 0 for no limit at all
WAIT_CONDITIONS = ("ip", "running", "stopped")  # what `kvmops wait --for` can wait for

"""How libvirt's refusals to authenticate are classed: terminal, with what to check."""

from __future__ import annotations

import libvirt
import pytest

from reconciler import errors
from reconciler.adapters import hypervisor as hv

_NODE_WITH_A_USER = """<node>
  <auth><user password="right-password">alice</user></auth>
</node>
"""


def _refused_login(tmp_path) -> libvirt.libvirtError:
    node = tmp_path / "node.xml"
    node.write_text(_NODE_WITH_A_USER)

    def answer(credentials, _data):
        for credential in credentials:
            credential[4] = "alice" if credential[0] == libvirt.VIR_CRED_AUTHNAME else "wrong-password"
        return 0

    auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], answer, None]
    with pytest.raises(libvirt.libvirtError) as refused:
        libvirt.openAuth(f"test://{node}", auth, 0)
    return refused.value


def test_a_refused_login_is_terminal_and_says_what_to_check(tmp_path):
    """A wrong password is not a lost connection: retrying cannot help, and the message says what to check."""
    refusal = _refused_login(tmp_path)
    assert refusal.get_error_code() == libvirt.VIR_ERR_AUTH_FAILED

    error = hv.translate(refusal, "cannot connect to qemu+ssh://host/system", connected=False)

    assert isinstance(error, errors.AuthenticationFailed)
    assert not error.retryable
    assert not isinstance(error, errors.ConnectionLost)
    assert "credentials" in str(error)


def test_a_refused_login_on_an_open_connection_is_not_a_lost_connection(tmp_path):
    """Even on an open connection, an authentication refusal is not read as libvirtd going away."""
    error = hv.translate(_refused_login(tmp_path), "cannot list domains")

    assert isinstance(error, errors.AuthenticationFailed)
    assert "connection to libvirtd was lost" not in str(error)


def test_a_call_libvirtd_failed_with_eagain_is_retryable_and_anything_else_it_refused_is_terminal():
    """libvirtd's "failed to load cgroup BPF prog: Resource temporarily unavailable" (a signal during the kernel's
    check of the program) passes on a second start; an error of the request itself never does."""
    libvirt.virResetLastError()
    transient = libvirt.libvirtError("failed to load cgroup BPF prog: Resource temporarily unavailable")
    refused = libvirt.libvirtError("unsupported configuration: domain type 'kvm' is not available")

    assert hv.translate(transient, "cannot start domain web").retryable
    assert not hv.translate(refused, "cannot start domain web").retryable

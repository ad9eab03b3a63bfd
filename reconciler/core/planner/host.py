"""What the host decides: the domain type ``virtType: auto`` becomes, and whether libvirt runs on this machine."""

from __future__ import annotations

from urllib.parse import urlparse

from reconciler.core import model

UNDECIDED_VIRT_TYPE = "auto (decided on the host)"  # what virtType auto is, planned without a host



def resolve_virt_type(requested: str, host: model.HostInfo) -> tuple[str | None, str | None]:
    """Return (domain type, None) for ``requested``, or (None, why it is impossible).

    ``auto`` means kvm where libvirt offers it and it can run guests, else qemu (TCG).
    libvirt's test driver emulates every type, so ``auto`` is ``test`` there and an
    explicit type is kept as written.  Without a host (``kvmops diff``) ``auto`` stays
    :data:`UNDECIDED_VIRT_TYPE`: saying kvm there would be a guess.
    """
    offered = host.virt_types
    if host.offline and requested == "auto":
        return UNDECIDED_VIRT_TYPE, None  # kvm or qemu depends on the host's /dev/kvm: not known offline
    if host.test_driver:
        return ("test" if requested == "auto" else requested), None
    if requested == "auto":
        if "kvm" in offered and not host.kvm_unusable_reason:
            return "kvm", None
        if "qemu" in offered:
            return "qemu", None
        return None, f"no usable domain type on {host.uri} (libvirt offers: {', '.join(offered) or 'none'})"
    if requested not in offered:
        hint = "use virtType: qemu (software emulation)" if requested == "kvm" else "use virtType: auto"
        return None, f"virtType {requested} is not available on {host.uri} (offers: {', '.join(offered) or 'none'}); {hint}"
    return requested, None


# --- pools ------------------------------------------------------------------------------


def host_is_local(uri: str) -> bool:
    """Return whether libvirt at ``uri`` runs on this machine (no host name in the URI)."""
    return not urlparse(uri).hostname

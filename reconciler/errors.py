"""The one exception tree of kvmops.

Every error that crosses a module boundary is one of these; ``libvirtError`` never
leaves ``reconciler.adapters.hypervisor``, which translates it once.  Each class says
whether trying again later can help (``retryable``), which is what the controller's
work queue and the CLI's exit status are built on::

    KvmopsError
    ├── ManifestError              the manifests cannot be read or do not validate   terminal
    ├── PlanningError              the desired state cannot be planned on this host  terminal
    ├── OwnershipError             the object is not kvmops' to change               terminal
    ├── LockHeld                   another kvmops is acting on the same host         retryable
    ├── SourceError                a git revision or repository cannot be read       terminal
    └── HypervisorError            libvirt said no, or could not be reached
        ├── RetryableHypervisorError                                                  retryable
        │   ├── ConnectionLost     libvirtd went away, or never answered
        │   │   └── HostTimedOut   a Host did not answer within its deadline
        │   └── StepTimedOut       libvirtd answers, but a step's call did not return in time
        └── TerminalHypervisorError                                                   terminal
            ├── AuthenticationFailed   libvirtd refused our credentials
            ├── ObjectNotFound     a domain, pool or volume is not there
            ├── OperationUnsupported   the driver cannot do this at all
            └── OperationRefused   libvirt refused the request (bad XML, in use, ...)
"""

from __future__ import annotations


class KvmopsError(Exception):
    """Base of every error kvmops raises on purpose; its text is for the user."""

    retryable: bool = False


class ManifestError(KvmopsError):
    """Manifests could not be loaded or validated; carries the problems found."""

    def __init__(self, message: str, problems: tuple = ()) -> None:
        super().__init__(message)
        self.problems = problems


class PlanningError(KvmopsError):
    """The desired state cannot be planned against this host (e.g. unknown virt type)."""


class OwnershipError(KvmopsError):
    """An action would touch an object kvmops does not own; refused, always."""


class LockHeld(KvmopsError):
    """Another kvmops process holds the host lock; waiting may help."""

    retryable = True


class SourceError(KvmopsError):
    """git could not produce the manifests asked for (unknown revision, unreachable remote)."""


class HypervisorError(KvmopsError):
    """libvirt refused a request or could not be reached."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class RetryableHypervisorError(HypervisorError):
    """A transient libvirt failure: trying again later may succeed."""

    retryable = True


class ConnectionLost(RetryableHypervisorError):
    """libvirtd is unreachable, or the connection to it broke."""


class HostTimedOut(ConnectionLost):
    """A Host did not answer within the deadline (``--host-timeout``): it counts as unreachable for this pass."""


class StepTimedOut(RetryableHypervisorError):
    """A step did not finish within ``--step-timeout``: it was abandoned, and may still take effect in libvirtd."""


class TerminalHypervisorError(HypervisorError):
    """libvirt refused in a way that trying again will not change."""


class AuthenticationFailed(TerminalHypervisorError):
    """libvirtd (or the transport to it) refused or cancelled the login: retrying will not fix credentials."""


class ObjectNotFound(TerminalHypervisorError):
    """The domain, pool or volume named does not exist."""


class OperationUnsupported(TerminalHypervisorError):
    """The connected driver does not implement the operation."""


class OperationRefused(TerminalHypervisorError):
    """libvirt rejected the request: invalid XML, an object in use, a conflict."""

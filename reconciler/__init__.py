"""kvmops: a declarative GitOps reconciler for KVM virtual machines.

``reconciler.core`` is the pure functional core (manifests -> desired model, libvirt XML
-> actual model, diff -> plan); ``reconciler.adapters`` wraps one side-effecting library
each; ``reconciler.runtime`` runs passes; ``reconciler.cli`` is the ``kvmops`` command.
"""

__version__ = "0.1.0"

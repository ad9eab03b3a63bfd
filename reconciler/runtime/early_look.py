"""The fleet's Hosts looked at while the manifests are read: a live ``kvmops plan`` of a large fleet.

A fresh ``kvmops plan`` of a fleet spends its time in two independent halves of pure
Python: reading and validating the manifests, and observing every Host (interpreting two
domain XMLs per running VM). Python runs one thread at a time, so they ran one after the
other. Now a child forked first, before any thread starts, reads the whole tree
(:mod:`reconciler.runtime.side_process`), hands the desired state over at once (this
process unpickles it while the child goes on) and then looks at one of its Hosts in
:data:`CHILD_SHARE`; meanwhile, on the other core, this process names the Hosts by a
quick scan (:func:`reconciler.adapters.manifests.declared_hosts`: the few files that
mention ``Host``, parsed and validated by the real loader), connects to the others and
observes them.

The child's desired state is the only truth: the scan only decides whom to look at
early. :func:`reconciler.runtime.fleet_reconcile.plan_live` takes what a Host showed only
for a Host the manifests declare at the URI it was looked at; a Host the scan missed, or
whose manifest changed meanwhile, is connected to and observed then, and what a Host the
manifests do not declare showed is dropped. Without the child (threads already running,
no ``fork``, the child failed) the manifests are read here, after this process's look, and
any error in them is reported exactly as without it; the Hosts the child would have looked
at are looked at by the plan. Looking is read-only, as the plan's own look is. Manifests
without Hosts are read by the child too: this process, finding no Host, only waits for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from reconciler.adapters import hypervisor as hv
from reconciler.adapters import manifests
from reconciler.core import model
from reconciler.runtime import fleet_reconcile, side_process

Looked = dict[str, tuple[str, object]]  # Host -> (URI it was looked at, what it showed)

# The child also looks at every seventh Host. Measured with 10,000 VMs on 50 Hosts: the child reads and hands the
# manifests over in 2.8 s, this process scans in 0.3 s and takes them in 0.2 s, and looking at all the Hosts takes
# 3.3 s; one Host in seven leaves both processes done at about the same moment.
CHILD_SHARE = 7


def read_while_looking(
    path: str,
    *,
    load: Callable[[], model.DesiredState],
    host_workers: int = fleet_reconcile.DEFAULT_HOST_WORKERS,
    host_timeout: float = fleet_reconcile.DEFAULT_HOST_TIMEOUT,
    opener: Callable[..., hv.Hypervisor] | None = None,
    only_host: str | None = None,
) -> tuple[model.DesiredState, Looked]:
    """Return ``load()`` (the manifests under ``path``) and what the Hosts they declare showed meanwhile.

    ``load`` runs in a forked child, which hands its result over and then looks at its
    share of the Hosts it read, while this process scans the manifests for Hosts and
    looks at the others; or here afterwards when no child can be used, and whatever it
    raises is raised. Pass what was looked at to
    :func:`~reconciler.runtime.fleet_reconcile.plan_live`. Nobody is looked at when
    ``only_host`` (``--host``) is not among the Hosts: the command is about to refuse it.
    """
    def wanted(uris: dict[str, str]) -> dict[str, str]:
        """Return the Hosts of ``uris`` to look at early: none when ``only_host`` is not among them."""
        return uris if only_host is None or only_host in uris else {}

    def read_and_look() -> Iterator[object]:
        desired = load()
        yield desired  # handed over at once: this process unpickles it while the child looks at its share
        theirs = children_share(wanted({name: host.uri for name, host in desired.hosts.items()}))
        yield fleet_reconcile.look_at(theirs, host_workers=host_workers, host_timeout=host_timeout,
                                      opener=opener) if theirs else {}
    with side_process.started(read_and_look, (model.DesiredState, dict)) as reading:
        uris = wanted(manifests.declared_hosts(path))
        childs = children_share(uris)
        ours = {name: uri for name, uri in uris.items() if name not in childs}
        looked = fleet_reconcile.look_at(ours, host_workers=host_workers, host_timeout=host_timeout,
                                         opener=opener) if ours else {}
        desired = reading.take() if reading is not None else None
        # a child that ends while looking leaves its Hosts to the plan, which looks at every Host not looked at yet
        looked_there = reading.take() if reading is not None and desired is not None else None
    if desired is None:
        return load(), looked
    return desired, {**looked, **(looked_there or {})}


def children_share(uris: dict[str, str]) -> dict[str, str]:
    """Return the Hosts of ``uris`` the child looks at: one in :data:`CHILD_SHARE`, by name.

    The child picks from the Hosts it read, this process from those the scan found: when
    both found the same Hosts, each is looked at once.
    """
    return {name: uris[name] for name in sorted(uris)[CHILD_SHARE - 1::CHILD_SHARE]}

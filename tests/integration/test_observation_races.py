"""Observation on a shared host where other tools define and undefine domains and networks all the time.

An object gone between the listing and its reading is left out; it never fails status,
plan or apply.  On ``test:///default`` every connection of the process shares one host, so
a second connection undefines objects while the first observes.
"""

from __future__ import annotations

import os
import threading
import time

import libvirt

from reconciler.adapters import hypervisor as hv
from reconciler.runtime import inspect, observe
from tests.integration import conftest as c

ROUNDS = 300


def _domain_xml(name: str, uuid: str) -> str:
    """A domain carrying kvmops' mark, so `kvmops status` reads it further (addresses, memory)."""
    return c.owned_domain_xml(name, uuid, manifest=f"{name}.yaml", digest="sha256:0")


def _network_xml(name: str, index: int) -> str:
    return (f"<network><name>{name}</name><bridge name='kvr{os.getpid() % 1000}x{index}'/>"
            f"<ip address='10.{200 + index}.{os.getpid() % 250}.1' netmask='255.255.255.0'/></network>")


def _churn(stop: threading.Event, errors: list[str]) -> None:
    """Define, start, stop and undefine domains and networks until ``stop``, on a connection of its own."""
    connection = libvirt.open("test:///default")
    names = [f"kvmops-race-{os.getpid()}-{i}" for i in range(3)]
    uuids = [f"0e0e0e0e-0000-4000-8000-{os.getpid():08d}000{i}" for i in range(3)]
    try:
        while not stop.is_set():
            for index, name in enumerate(names):
                try:
                    domain = connection.defineXML(_domain_xml(name, uuids[index]))
                    domain.create()  # running then undefined: transient for a moment, then gone
                    domain.undefine()
                    domain.destroy()
                    network = connection.networkDefineXML(_network_xml(name, index))
                    network.create()
                    network.destroy()
                    network.undefine()
                    connection.networkCreateXML(_network_xml(name, index)).destroy()  # transient: gone when stopped
                except libvirt.libvirtError as exc:
                    errors.append(str(exc))
    finally:
        for name in names:  # stopped mid-round: leave nothing on the shared host
            for lookup in (connection.lookupByName, connection.networkLookupByName):
                try:
                    found = lookup(name)
                except libvirt.libvirtError:
                    continue
                if found.isActive():
                    found.destroy()
                if found.isPersistent():
                    found.undefine()
        connection.close()


def test_observing_survives_domains_and_networks_undefined_meanwhile():
    """Hundreds of observations while a second connection defines, starts, undefines and destroys domains and networks: none fails."""
    stop = threading.Event()
    churn_errors: list[str] = []
    thread = threading.Thread(target=_churn, args=(stop, churn_errors), daemon=True)
    failures: list[str] = []
    with hv.Hypervisor.open("test:///default") as reader:
        thread.start()
        try:
            for _ in range(ROUNDS):
                try:
                    observe.observe(reader)
                    reader.list_networks()
                    inspect.status_rows(reader)
                except Exception as exc:  # noqa: BLE001 - any escape is the failure under test
                    failures.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0)
        finally:
            stop.set()
            thread.join(10)
    assert churn_errors == [], churn_errors[:3]  # the churn really ran
    assert failures == [], f"{len(failures)} of {ROUNDS} observations failed, e.g. {sorted(set(failures))[:3]}"

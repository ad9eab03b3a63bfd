"""Fixtures for integration tests on libvirt's in-process test driver.

Each test gets its own ``test:///<file>`` URI: the test driver builds a fresh, private
host from that file for every connection, so tests never share state.  The host has a
``default`` dir pool and a ``default`` network, like a freshly installed libvirt.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.adapters import hypervisor as hv

NODE_XML = """\
<node>
  <pool type='dir'>
    <name>default</name>
    <target><path>/var/lib/libvirt/images</path></target>
  </pool>
  <network>
    <name>default</name>
    <bridge name='virbr0'/>
    <forward/>
    <ip address='192.168.122.1' netmask='255.255.255.0'/>
  </network>
  {extra}
</node>
"""


def node_uri(directory: Path, extra: str = "") -> str:
    """Write a test-driver host description into ``directory``; return its URI."""
    path = directory / "node.xml"
    path.write_text(NODE_XML.format(extra=extra), encoding="utf-8")
    return f"test://{path}"


@pytest.fixture
def uri(tmp_path: Path) -> str:
    """Return the URI of a fresh, private test-driver host."""
    return node_uri(tmp_path)


@pytest.fixture
def hypervisor(uri: str):
    """Return a connection to a fresh test-driver host; its state lives as long as it does."""
    with hv.Hypervisor.open(uri) as connection:
        yield connection


@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    """Return an empty manifest directory."""
    directory = tmp_path / "manifests"
    directory.mkdir()
    return directory

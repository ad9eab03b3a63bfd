"""Render a :class:`NetworkDefinition` as libvirt network XML, and parse one back.

Like :mod:`reconciler.core.domxml`, only the managed essence goes in and comes out, and
``parse(render(d)) == d``.  kvmops' mark lives in the network's ``<metadata>``.  DHCP
answers use dnsmasq's ``no-ping`` option: without it dnsmasq pings every address before
offering it, which makes a fresh guest wait seconds for its lease.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET

from reconciler.core import model
from reconciler.core.domxml import NAMESPACE, DomainXMLError

DNSMASQ_NAMESPACE = "http://libvirt.org/schemas/network/dnsmasq/1.0"
ET.register_namespace("dnsmasq", DNSMASQ_NAMESPACE)
_OWNER = f"{{{NAMESPACE}}}owner"
_DNSMASQ_OPTIONS = f"{{{DNSMASQ_NAMESPACE}}}options"
_DNSMASQ_OPTION = f"{{{DNSMASQ_NAMESPACE}}}option"


def render(definition: model.NetworkDefinition, *, mac: str | None = None) -> str:
    """Return the network XML for ``definition``, ready for ``virConnect.networkDefineXML``.

    ``mac`` keeps the bridge's MAC address of an existing network across a redefinition.
    """
    network = ET.Element("network")
    ET.SubElement(network, "name").text = definition.name
    if definition.uuid:
        ET.SubElement(network, "uuid").text = definition.uuid
    if definition.owner is not None:
        metadata = ET.SubElement(network, "metadata")
        ET.SubElement(metadata, _OWNER, manifest=definition.owner.manifest, digest=definition.owner.digest,
                      scope=definition.owner.scope)
    if definition.mode == "nat":
        ET.SubElement(network, "forward", mode="nat")
    elif definition.mode == "bridge":
        ET.SubElement(network, "forward", mode="bridge")
    if definition.bridge:
        ET.SubElement(network, "bridge", name=definition.bridge)
    if mac:
        ET.SubElement(network, "mac", address=mac)
    if definition.address and definition.prefix is not None:
        ip = ET.SubElement(network, "ip", address=definition.address, prefix=str(definition.prefix))
        if definition.dhcp_start and definition.dhcp_end:
            dhcp = ET.SubElement(ip, "dhcp")
            ET.SubElement(dhcp, "range", start=definition.dhcp_start, end=definition.dhcp_end)
            for host in definition.hosts:
                dhcp.append(render_host(host))
        options = ET.SubElement(network, _DNSMASQ_OPTIONS)
        ET.SubElement(options, _DNSMASQ_OPTION, value="no-ping")
    ET.indent(network)
    return ET.tostring(network, encoding="unicode")


def render_host(host: model.DhcpHost) -> ET.Element:
    """Return the ``<host>`` element of a static lease."""
    element = ET.Element("host", mac=host.mac, ip=host.ip)
    if host.name:
        element.set("name", host.name)
    return element


def host_xml(host: model.DhcpHost) -> str:
    """Return a static lease as the XML ``virNetworkUpdate`` takes."""
    return ET.tostring(render_host(host), encoding="unicode")


def bridge_mac(xml: str) -> str | None:
    """Return the MAC address of a network's bridge, as libvirt chose it."""
    try:
        element = ET.fromstring(xml).find("mac")
    except ET.ParseError:
        return None
    return element.get("address") if element is not None else None


def parse(xml: str) -> model.NetworkDefinition:
    """Return the managed essence of network ``xml``."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DomainXMLError(f"unreadable network XML: {exc}") from exc
    forward = root.find("forward")
    # route, open, passthrough...: reported as they are, never produced by kvmops
    mode = forward.get("mode", "nat") if forward is not None else "isolated"
    bridge = root.find("bridge")
    ip = next((i for i in root.findall("ip") if i.get("family", "ipv4") == "ipv4"), None)
    address = prefix = start = end = None
    hosts: list[model.DhcpHost] = []
    if ip is not None:
        address = ip.get("address")
        if ip.get("prefix"):
            prefix = int(ip.get("prefix"))
        elif ip.get("netmask"):
            prefix = ipaddress.ip_network(f"0.0.0.0/{ip.get('netmask')}").prefixlen
        dhcp = ip.find("dhcp")
        if dhcp is not None:
            span = dhcp.find("range")
            if span is not None:
                start, end = span.get("start"), span.get("end")
            hosts = [
                model.DhcpHost((h.get("mac") or "").lower(), h.get("ip", ""), h.get("name"))
                for h in dhcp.findall("host")
            ]
    owner = root.find(f"metadata/{_OWNER}")
    return model.NetworkDefinition(
        name=root.findtext("name", ""),
        mode=mode,
        bridge=bridge.get("name") if bridge is not None else None,
        address=address,
        prefix=prefix,
        dhcp_start=start,
        dhcp_end=end,
        hosts=tuple(hosts),
        owner=model.NetworkOwnership(owner.get("manifest", ""), owner.get("digest", ""), owner.get("scope") or "default")
        if owner is not None else None,
        uuid=root.findtext("uuid"),
    )

"""The floor for bench/apply_real.py: kvmops' libvirt calls made directly, and nothing else.

Run as its own process by apply_real.py, so that it pays what a ``kvmops`` process pays
(interpreter start-up, importing libvirt, connecting) but none of kvmops' own work.  It
imports only the standard library's smallest modules and libvirt-python.

    python bench/libvirt_floor.py converge URI POOL NAME...
        per VM, sequentially: create its qcow2 volume in POOL, define the domain, start it
        (the XML is what kvmops renders for apply_real.py's manifest, minus kvmops'
        <metadata>).  Prints one JSON line: time to connect, the loop, each kind of call.

    python bench/libvirt_floor.py observe URI
        the read-only calls of one kvmops observation (runtime/observe.py with
        adapters/hypervisor.py): capabilities; every domain's persistence, inactive XML,
        state, autostart, UUID; the live XML of each running one kvmops owns; every pool's XML,
        state, autostart; every volume of each active pool with its info and path.  Unlike
        kvmops it parses nothing and reads no manifest.  Prints one JSON line.
"""

import json
import sys
import time

import libvirt

MEMORY_KIB = 64 * 1024
VOLUME_BYTES = 64 * 1024 * 1024
OWNER_NAMESPACE = "https://kvmops.dev/xmlns/owner/v1"

VOLUME_XML = """\
<volume>
  <name>{name}</name>
  <capacity unit="bytes">{capacity}</capacity>
  <allocation unit="bytes">0</allocation>
  <target>
    <format type="qcow2" />
  </target>
</volume>"""

DOMAIN_XML = """\
<domain type="qemu">
  <name>{name}</name>
  <memory unit="KiB">{memory}</memory>
  <currentMemory unit="KiB">{memory}</currentMemory>
  <vcpu placement="static">1</vcpu>
  <os>
    <type arch="x86_64">hvm</type>
    <boot dev="hd" />
  </os>
  <features>
    <acpi />
    <apic />
  </features>
  <clock offset="utc" />
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type="volume" device="disk">
      <driver name="qemu" type="qcow2" />
      <source pool="{pool}" volume="{volume}" />
      <target dev="vda" bus="virtio" />
    </disk>
    <serial type="pty">
      <target port="0" />
    </serial>
    <console type="pty">
      <target type="serial" port="0" />
    </console>
  </devices>
</domain>"""


def converge(uri, pool_name, names):
    """Create, define and start each VM in turn; return the time spent per kind of call."""
    started = time.perf_counter()
    connection = libvirt.open(uri)
    pool = connection.storagePoolLookupByName(pool_name)
    connected = time.perf_counter()
    spent = {"create volume": 0.0, "define domain": 0.0, "start domain": 0.0}
    for name in names:
        volume = f"{name}-root.qcow2"
        t0 = time.perf_counter()
        pool.createXML(VOLUME_XML.format(name=volume, capacity=VOLUME_BYTES), 0)
        t1 = time.perf_counter()
        domain = connection.defineXML(DOMAIN_XML.format(name=name, memory=MEMORY_KIB, pool=pool_name, volume=volume))
        t2 = time.perf_counter()
        domain.create()
        t3 = time.perf_counter()
        spent["create volume"] += t1 - t0
        spent["define domain"] += t2 - t1
        spent["start domain"] += t3 - t2
    finished = time.perf_counter()
    connection.close()
    return {"connect_s": connected - started, "loop_s": finished - connected, "calls_s": spent}


def observe(uri):
    """Make the read-only calls of one kvmops observation; return how long they took."""
    started = time.perf_counter()
    connection = libvirt.openReadOnly(uri)
    connected = time.perf_counter()
    connection.getCapabilities()
    domains = 0
    for domain in connection.listAllDomains(0):
        try:
            persistent = domain.isPersistent()
            xml = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if persistent else 0)
            state, _reason = domain.state()
            if persistent:
                domain.autostart()
            domain.UUIDString()
            owned = OWNER_NAMESPACE in xml  # kvmops reads the live XML of its own domains only
            if owned and state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_PAUSED):
                live = connection.lookupByName(domain.name())
                if live.isActive():
                    live.XMLDesc(0)
        except libvirt.libvirtError:
            continue  # gone since the listing (other people's domains come and go): as kvmops does
        domains += 1
    volumes = 0
    for pool in connection.listAllStoragePools(0):
        try:
            pool.XMLDesc(0)
            active = pool.isActive()
            pool.autostart()
            if not active:
                continue
            for volume in connection.storagePoolLookupByName(pool.name()).listAllVolumes(0):
                try:
                    volume.info()
                    volume.name()
                    volume.path()
                except libvirt.libvirtError:
                    continue
                volumes += 1
        except libvirt.libvirtError:
            continue
    finished = time.perf_counter()
    connection.close()
    return {"connect_s": connected - started, "calls_s": finished - connected, "domains": domains, "volumes": volumes}


if __name__ == "__main__":
    libvirt.registerErrorHandler(lambda _context, _error: None, None)
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "converge" and len(sys.argv) >= 4:
        print(json.dumps(converge(sys.argv[2], sys.argv[3], sys.argv[4:])))
    elif mode == "observe" and len(sys.argv) == 3:
        print(json.dumps(observe(sys.argv[2])))
    else:
        sys.exit(f"usage: {sys.argv[0]} converge URI POOL NAME... | observe URI")

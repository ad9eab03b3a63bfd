"""Removing things in the pure core: VMs with the network they use, seeds, NVRAM, and what the plan says.

Built on the manifests, hosts and small libvirt simulation of :mod:`tests.unit.test_vm_features`
(:func:`applied` carries a plan's steps out the way libvirt would).  The order in which
the executor runs them is tested on the test driver (``tests/integration/test_converge.py``).
"""

from __future__ import annotations

import dataclasses

from reconciler.core import domxml, model, render
from reconciler.core import plan as plans
from reconciler.core.plan import Action, Impact
from tests.unit import builders as b
from tests.unit.test_vm_features import (
    applied, changes, converged, image_doc, kinds, lab, plan, resource, valid, vm_doc, vm_on_lab,
)


# --- a network removed together with the VMs that use it ------------------------------------------


def test_a_network_pruned_with_the_vms_using_it_is_removed_in_the_same_pass_after_them():
    """Removing VMs and their network together plans the network's removal now, requiring the VMs' prunes."""
    before = converged(valid(lab(), vm_on_lab("web"), vm_on_lab("db"), vm_doc("keep", disks=[])))
    result = plan(valid(vm_doc("keep", disks=[])), before)
    network = resource(result, "lab", "Network")
    assert network.steps == (plans.RemoveNetwork("lab"),)
    assert set(network.requires) == {"VirtualMachine/web", "VirtualMachine/db"}
    after = applied(result, before)
    assert not plan(valid(vm_doc("keep", disks=[])), after).has_changes


def test_a_network_is_still_kept_while_a_vm_that_stays_uses_it():
    """Only the VMs removed by the same plan stop counting as users: a declared VM on the network keeps it."""
    before = converged(valid(lab(), vm_on_lab("web"), vm_on_lab("db")))
    network = resource(plan(valid(vm_on_lab("db")), before), "lab", "Network")
    assert network.steps == ()
    assert "db still use" in network.notes[0]


# --- what a prune deletes, in words ---------------------------------------------------------------


def test_pruning_a_vm_removes_its_cloud_init_seed_without_calling_it_data_loss():
    """A generated seed ISO is not data: its deletion with the VM is live, and the plan has no data loss to count."""
    before = converged(valid(vm_doc(disks=[], cloudInit={"pool": b.POOL, "userData": "#cloud-config\n"}),
                             vm_doc("keep", disks=[])))
    result = plan(valid(vm_doc("keep", disks=[])), before)
    gone = resource(result, "web")
    assert ("delete_volume", "web-cidata.iso") in [(s.kind, getattr(s, "name", "")) for s in gone.steps]
    assert all(c.impact is not Impact.DATA_LOSS for c in gone.changes), changes(gone)
    assert result.impact_counts()[Impact.DATA_LOSS] == 0
    assert "DATA LOSS" not in render.text(result) and "Data loss" not in render.markdown(result)


def test_pruning_a_uefi_vm_says_that_its_nvram_goes_unless_keep_nvram():
    """The plan says the UEFI variables are deleted with the domain, and that keepNvram keeps them."""
    for keep in (False, True):
        before = converged(valid(vm_doc(disks=[], firmware="uefi", keepNvram=keep), vm_doc("keep", disks=[])))
        gone = resource(plan(valid(vm_doc("keep", disks=[])), before), "web")
        said = " ".join([*(f"{c.path} {c.note}" for c in gone.changes), *gone.notes])
        if keep:
            assert "NVRAM" in said and "kept (keepNvram)" in said
        else:
            assert "NVRAM" in said and "deleted with the domain" in said and "keepNvram: true" in said


def test_pruning_a_bios_vm_says_nothing_about_nvram():
    """A BIOS VM has no NVRAM, so its prune does not mention one."""
    before = converged(valid(vm_doc(disks=[]), vm_doc("keep", disks=[])))
    gone = resource(plan(valid(vm_doc("keep", disks=[])), before), "web")
    assert "NVRAM" not in " ".join([*(c.note for c in gone.changes), *gone.notes])


# --- the plan header -------------------------------------------------------------------------------


def test_the_plan_header_counts_every_kind_declared():
    """VMs, pools, networks and images declared are all counted in the header line."""
    result = plan(valid(lab(), image_doc(), vm_on_lab("web"), vm_doc("db", disks=[])))
    header = render.text(result).splitlines()[0]
    assert header.endswith("(2 VMs, 1 network, 1 image)"), header


def test_the_plan_header_leaves_out_what_is_only_being_removed():
    """A network being pruned is not declared, so it is not counted."""
    before = converged(valid(lab(), vm_doc("keep", disks=[])))
    header = render.text(plan(valid(vm_doc("keep", disks=[])), before)).splitlines()[0]
    assert header.endswith("(1 VM)"), header


# --- a bridge-mode network, as the running domain shows it ---------------------------------------


def test_a_running_nic_on_a_bridge_mode_network_is_read_as_that_network():
    """libvirt shows a NIC of a bridge-mode network as type='bridge' in the live XML; it is still the network's NIC."""
    live = ("<interface type='bridge'><mac address='52:54:00:55:72:75'/>"
            "<source network='lan' portid='b03c0acd-e306-4a07-b2e6-226d7482a008' bridge='br0'/>"
            "<target dev='vnet8'/><model type='virtio'/></interface>")
    nic = domxml.parse_nics(domxml.parse_tree(
        f"<domain type='kvm'><name>web</name><memory>65536</memory><os><type>hvm</type></os>"
        f"<devices>{live}</devices></domain>"))[0]
    assert (nic.kind, nic.source, nic.mac) == ("network", "lan", "52:54:00:55:72:75")


def test_a_vm_on_a_bridge_mode_network_has_no_restart_pending_after_a_fresh_boot():
    """The live XML libvirt writes for a bridge-mode network's NIC is no difference from the configuration."""
    bridged = {"apiVersion": "kvmops/v1", "kind": "Network", "metadata": {"name": "lab"},
               "spec": {"mode": "bridge", "bridge": "br0"}}
    state = valid(bridged, vm_on_lab())
    before = converged(state)
    (web,) = [d for d in before.domains if d.name == "web"]
    live = web.live_xml.replace("<interface type=\"network\">", "<interface type=\"bridge\">").replace(
        "<source network=\"lab\" />", "<source network=\"lab\" bridge=\"br0\" />")
    assert live != web.live_xml
    booted = dataclasses.replace(before, domains=tuple(
        dataclasses.replace(d, live_xml=live) if d.name == "web" else d for d in before.domains))
    result = plan(state, booted)
    assert not result.has_changes
    assert not [n for n in resource(result, "web").notes if "restart pending" in n]


def test_the_plan_header_does_not_count_a_network_kept_only_because_a_vm_uses_it():
    """A network no manifest declares any more is not counted, even while a VM keeps it."""
    before = converged(valid(lab(), vm_on_lab("web")))
    header = render.text(plan(valid(vm_on_lab("web")), before)).splitlines()[0]
    assert header.endswith("(1 VM)"), header

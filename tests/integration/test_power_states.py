"""How libvirt's state and reason of a domain read as kvmops' power state."""

from __future__ import annotations

import libvirt
import pytest

from reconciler.adapters import hypervisor as hv
from reconciler.core import model


@pytest.mark.parametrize(("state", "reason", "power", "shutoff"), [
    pytest.param(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP, model.PowerState.TRANSITIONAL, None,
                 id="paused-while-libvirt-starts-it-is-in-transition"),
    pytest.param(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER, model.PowerState.PAUSED, None,
                 id="paused-by-someone-is-paused"),
    pytest.param(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION, model.PowerState.PAUSED, None,
                 id="paused-by-a-migration-is-paused"),
    pytest.param(libvirt.VIR_DOMAIN_SHUTDOWN, 0, model.PowerState.TRANSITIONAL, None, id="shutting-down"),
    pytest.param(libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DAEMON, model.PowerState.SHUTOFF,
                 model.ShutoffReason.OTHER, id="killed-by-a-restarted-daemon-is-off"),
    pytest.param(libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED, model.PowerState.SHUTOFF,
                 model.ShutoffReason.CRASHED, id="crashed"),
    pytest.param(libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED, model.PowerState.RUNNING, None,
                 id="running"),
])
def test_libvirts_state_and_reason_read_as_a_power_state(state, reason, power, shutoff):
    assert hv.power_state(state, reason) == (power, shutoff)

"""Lab hosts share the machine's network: each gets migration ports no other lab host uses."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab's port locks live in /run/lock (root)")


def test_two_claims_get_different_blocks_and_a_block_comes_back_when_its_last_holder_closes_it():
    first, first_low, first_high = lab.claim_migration_ports()
    try:
        second, second_low, _ = lab.claim_migration_ports()
        os.close(second)
        assert first_low != second_low
        assert first_high - first_low + 1 == lab.MIGRATION_PORT_BLOCKS.step
        again, again_low, _ = lab.claim_migration_ports()
        os.close(again)
        assert again_low == second_low  # given back, and the first free block is taken
    finally:
        os.close(first)


def test_a_block_stays_claimed_while_a_child_process_inherited_it():
    claimed, low, _ = lab.claim_migration_ports()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                             pass_fds=(claimed,))
    try:
        os.close(claimed)
        other, other_low, _ = lab.claim_migration_ports()
        os.close(other)
        assert other_low != low
    finally:
        child.communicate(b"")
    freed, freed_low, _ = lab.claim_migration_ports()
    os.close(freed)
    assert freed_low == low

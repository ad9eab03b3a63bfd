"""The memo that lets a pass skip parsing what the last pass parsed: what it keeps, and how much."""

from __future__ import annotations

from reconciler.core import memo


def passes(remembered: memo.Memo, keys: range, count: int) -> int:
    """Run ``count`` passes each asking for every key (computing the misses); return the misses of the last."""
    misses = 0
    for _ in range(count):
        misses = 0
        for key in keys:
            if remembered.get(key) is None:
                misses += 1
                remembered.put(key, f"value of {key}")
    return misses


def test_a_pass_finds_everything_the_last_pass_used_on_a_10000_vm_host():
    """A 10,000-VM host's pass parses 20,000 domain XMLs (persistent and live): the next pass finds every
    one of them, pass after pass (a memo of 4,096 entries cleared when full found none and re-parsed them all)."""
    remembered = memo.Memo()
    assert passes(remembered, range(20_000), 1) == 20_000
    assert passes(remembered, range(20_000), 3) == 0


def test_a_pass_as_large_as_the_memo_finds_everything_again():
    """Entries found in the old generation move to the young one, so none is lost at a generation change."""
    remembered = memo.Memo(capacity=100)
    assert passes(remembered, range(100), 5) == 0


def test_a_pass_larger_than_the_memo_still_finds_what_the_young_generation_kept():
    """Past its capacity the memo stays bounded: never more than twice its capacity."""
    remembered = memo.Memo(capacity=100)
    passes(remembered, range(250), 4)
    assert len(remembered) <= 200


def test_entries_no_pass_uses_any_more_are_dropped():
    """What passes stop asking for goes within two generations, so a long-running controller does not grow."""
    remembered = memo.Memo(capacity=10)
    passes(remembered, range(0, 10), 1)
    passes(remembered, range(100, 120), 1)
    assert all(remembered.get(key) is None for key in range(10))


def test_forgetting_all_memos_empties_every_one_of_them_including_the_modules_own():
    from reconciler.core import actual

    first, second = memo.Memo(capacity=4), memo.Memo(capacity=4)
    for index in range(6):
        first.put(index, "value")
        second.put(index, "value")
    actual._read("<domain type='kvm'><name>x</name></domain>")

    memo.forget_all()

    assert (len(first), len(second), len(actual._READ)) == (0, 0, 0)
    assert first.get(5) is None

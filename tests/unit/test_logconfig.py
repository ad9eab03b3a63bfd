"""Logging is set up lazily, once, however many threads log their first event together."""

from __future__ import annotations

import io
import json
import threading

import pytest
import structlog

from reconciler import logconfig


@pytest.fixture(autouse=True)
def structlog_restored():
    """Leave structlog as the other tests found it."""
    yield
    structlog.reset_defaults()


def test_threads_logging_their_first_event_at_once_all_get_the_configured_output():
    """Sixteen threads logging at the same moment right after configure() each write one JSON line."""
    stream = io.StringIO()
    logconfig.configure(format="json", level="info", stream=stream)
    barrier = threading.Barrier(16)
    failures: list[BaseException] = []

    def first_event(index: int) -> None:
        logger = logconfig.get_logger("kvmops.test")
        barrier.wait()
        try:
            logger.info("thread_logged", index=index)
        except BaseException as exc:  # the race this test exists for raised TypeError here
            failures.append(exc)

    threads = [threading.Thread(target=first_event, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert sorted(e["index"] for e in events) == list(range(16))
    assert {e["event"] for e in events} == {"thread_logged"}


def test_configure_before_structlog_is_loaded_is_applied_at_the_first_event():
    """A configuration given before any logging takes effect when the first event is logged."""
    stream = io.StringIO()
    logconfig.configure(format="json", level="warning", stream=stream)
    logger = logconfig.get_logger("kvmops.test")
    logger.info("too_quiet_to_show")
    logger.warning("shown")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["shown"]

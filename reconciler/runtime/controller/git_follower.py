"""Follow a git branch for ``kvmops run``: fetch on an interval, wake a full pass when a good commit arrives."""

from __future__ import annotations

import threading
from collections.abc import Callable

from reconciler import errors, logconfig
from reconciler.core import redaction
from reconciler.runtime import gitsource, metrics

log = logconfig.get_logger("kvmops.controller")


class GitFollower:
    """Polls a :class:`~reconciler.runtime.gitsource.GitSource` on a thread of its own until ``stop`` is set.

    ``wake`` is called when a new commit is applied.  An unexpected exception never ends
    the thread: it goes to ``survive`` (the controller's internal-error record) and the
    next interval tries again; ``recovered`` is called after each clean fetch.
    """

    def __init__(
        self,
        source: gitsource.GitSource,
        stop: threading.Event,
        *,
        wake: Callable[[], None],
        survive: Callable[..., object],
        recovered: Callable[[str], None],
        metrics: metrics.Metrics,
    ) -> None:
        self._source = source
        self._stop = stop
        self._wake = wake
        self._survive = survive
        self._recovered = recovered
        self._metrics = metrics
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start following, on the thread ``kvmops-git``."""
        self._thread = threading.Thread(target=self._follow, name="kvmops-git", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (after ``stop`` was set), so the next follower never fetches beside it."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _follow(self) -> None:
        """Fetch the branch on its interval; wake a full pass when a good commit arrives."""
        source = self._source
        announced: dict[str, str | None] = {"error": None, "rejection": None}
        while not self._stop.is_set():
            try:
                self._poll(source, announced)
            except Exception as exc:  # the thread must outlive a bug: the next interval tries again
                self._survive("git", exc, retry_in=source.settings.interval)
            else:
                self._recovered("git")
            self._stop.wait(source.settings.interval)

    def _poll(self, source: gitsource.GitSource, announced: dict[str, str | None]) -> None:
        """Fetch once; log what changed since the last fetch (``announced`` remembers what was said)."""
        try:
            commit = source.poll()
        except errors.SourceError as exc:
            source.last_error = str(exc)
            if str(exc) != announced["error"]:
                log.error("git_fetch_failed", url=redaction.redact_url(source.settings.url), error=str(exc), retrying=True)
                announced["error"] = str(exc)
            self._metrics.inc("kvmops_errors_total", kind="git")
            return
        announced["error"] = None
        if commit is not None:
            log.info("git_revision_applied", commit=commit, branch=source.settings.branch)
            self._wake()
        rejected = source.rejected
        if rejected is not None and rejected.commit != announced["rejection"]:
            announced["rejection"] = rejected.commit
            for problem in rejected.problems:
                log.error("git_revision_rejected", commit=rejected.commit, file=problem.file,
                          line=problem.line, field=problem.path, error=problem.message)
            if rejected.error:
                log.error("git_revision_rejected", commit=rejected.commit, error=rejected.error)
            log.warning("git_revision_kept", commit=source.applied,
                        reason=f"commit {rejected.commit[:12]} does not validate")

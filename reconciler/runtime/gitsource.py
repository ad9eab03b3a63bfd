"""Follow a git branch: the controller's manifests come from a repository it fetches itself.

A :class:`GitSource` keeps a bare clone under the state directory, fetches the branch on
an interval, materialises each new commit into its own directory, and only moves forward
to a commit whose manifests all load and validate.  A broken commit is reported (once)
and the last good commit stays applied; the next good commit is taken as soon as it is
fetched.  The commit the controller applies is recorded in each domain it changes.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from reconciler import errors
from reconciler.adapters import git
from reconciler.core import model, redaction
from reconciler.runtime import reconcile


@dataclass(frozen=True)
class GitSettings:
    """Where the manifests come from when the controller follows git."""

    url: str = ""  # may hold credentials (https://user:TOKEN@host/...): never stored, never in argv
    branch: str = "main"
    path: str = ""  # subdirectory of the repository holding the manifests
    interval: float = 60.0  # seconds between fetches
    url_file: str = ""  # file holding the URL instead of ``url``; read at every fetch
    token_file: str = ""  # file holding an http(s) token (the password for the URL's user); read at every fetch

    def remote(self) -> git.Remote:
        """Return the repository without credentials, with the credentials git gets through its environment."""
        try:
            url = Path(self.url_file).read_text(encoding="utf-8").strip() if self.url_file else self.url
            token = Path(self.token_file).read_text(encoding="utf-8").strip() if self.token_file else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise errors.SourceError(f"cannot read the git URL or token file: {exc}") from exc
        if not url:
            raise errors.SourceError(f"{self.url_file or 'the git URL'} is empty")
        return git.Remote.parse(url, token=token)

    def shown(self) -> str:
        """Return the URL as it may be shown: credentials redacted (or the file it comes from)."""
        return redaction.redact_url(self.url) if self.url else f"(from {self.url_file})"


@dataclass(frozen=True)
class Rejected:
    """A fetched commit that was not applied, and why."""

    commit: str
    problems: tuple[model.Problem, ...] = ()
    error: str = ""


@dataclass
class GitSource:
    """The branch as fetched, the commit applied, and the last commit refused."""

    settings: GitSettings
    state_dir: Path
    applied: str | None = None  # commit whose manifests the controller converges on
    manifests: Path | None = None  # where that commit is materialised
    fetched: str | None = None
    rejected: Rejected | None = None
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def root(self) -> Path:
        """Return this source's directory under the state directory."""
        key = hashlib.sha256(f"{self.settings.url or self.settings.url_file}#{self.settings.branch}".encode()).hexdigest()[:16]
        return self.state_dir / "git" / key

    def poll(self) -> str | None:
        """Fetch and move forward if possible; return the newly applied commit, or None.

        Raises ``SourceError`` when the repository cannot be reached; the applied commit
        stays as it was.
        """
        with self._lock:
            repository = self.root / "repository.git"
            remote = self.settings.remote()
            if not (repository / "HEAD").exists():
                shutil.rmtree(repository, ignore_errors=True)
                git.clone(remote, self.settings.branch, repository)
            commit = git.fetch(repository, self.settings.branch, remote)
            self.fetched = commit
            self.last_error = None
            if commit == self.applied or (self.rejected is not None and self.rejected.commit == commit):
                return None
            target = self.root / "revisions" / commit
            shutil.rmtree(target, ignore_errors=True)
            manifests = git.materialize(repository, commit, self.settings.path, target)
            try:
                desired = reconcile.load_desired(str(manifests))
            except errors.ManifestError as exc:
                self.rejected = Rejected(commit, error=str(exc))
                shutil.rmtree(target, ignore_errors=True)
                return None
            if desired.problems:
                labels = {str(target) + "/": f"{commit[:12]}:"}
                self.rejected = Rejected(commit, problems=reconcile.relabel(desired.problems, labels))
                shutil.rmtree(target, ignore_errors=True)
                return None
            previous = self.root / "revisions" / self.applied if self.applied else None
            self.applied, self.manifests, self.rejected = commit, manifests, None
            if previous is not None and previous != target:
                shutil.rmtree(previous, ignore_errors=True)
            return commit

    def status(self) -> dict:
        """Return what ``/status`` shows of the source."""
        with self._lock:
            rejected = None
            if self.rejected is not None:
                rejected = {
                    "commit": self.rejected.commit,
                    "problems": [str(p) for p in self.rejected.problems],
                    "error": self.rejected.error or None,
                }
            return {
                "url": self.settings.shown(), "branch": self.settings.branch, "path": self.settings.path,
                "applied": self.applied, "fetched": self.fetched, "rejected": rejected, "error": self.last_error,
            }

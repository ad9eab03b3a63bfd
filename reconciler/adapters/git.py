"""Read manifests out of git: the only module that runs ``git``.

``kvmops diff`` materialises two revisions of a manifest directory side by side; the
controller's git source clones a repository, fetches it, and materialises the revision it
moves to.  Materialising goes through ``git archive`` into a fresh directory, extracted
with tarfile's ``data`` filter (or, on Pythons whose tarfile predates it, such as Debian
12's 3.11.2, the same confinement written out below), so a revision never touches a
working tree and a hostile archive cannot write outside its directory.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from reconciler import errors
from reconciler.core import redaction

GIT_TIMEOUT = 120


@dataclass(frozen=True)
class Remote:
    """A repository URL without credentials, and the credentials git gets for it through its environment only.

    Credentials never go into argv (``/proc/PID/cmdline`` is world-readable) nor into the
    clone's ``config``: git reads an ``http.extraHeader`` from ``GIT_CONFIG_*`` variables.
    """

    url: str
    username: str = field(default="", repr=False)
    secret: str = field(default="", repr=False)

    @classmethod
    def parse(cls, url: str, *, token: str = "") -> Remote:
        """Split an http(s) URL's userinfo off; ``token`` (from a file) replaces its password."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not (parts.username or token):
            return cls(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        public = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        username, secret = unquote(parts.username or ""), token or unquote(parts.password or "")
        if not secret and username:  # https://TOKEN@host: the token is the user name
            username, secret = "kvmops", username
        return cls(public, username or "kvmops", secret)

    def environment(self) -> dict[str, str]:
        """Return the variables giving git this remote's credentials, for this one command."""
        if not self.secret:
            return {}
        basic = base64.b64encode(f"{self.username}:{self.secret}".encode()).decode()
        return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"}


def run(*args: str, cwd: str | os.PathLike | None = None, timeout: float = GIT_TIMEOUT,
        remote: Remote | None = None) -> bytes:
    """Run ``git args`` and return its stdout; raise ``SourceError`` with git's own words on failure.

    ``remote``'s credentials reach git through the environment, never ``args``.
    """
    environment = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", **(remote.environment() if remote else {})}
    if cwd is not None and not Path(cwd).is_dir():
        raise errors.SourceError(f"{cwd}: no such directory")
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=timeout, env=environment)
    except FileNotFoundError as exc:
        raise errors.SourceError("git is not installed (apt-get install git)") from exc
    except subprocess.TimeoutExpired as exc:
        raise errors.SourceError(f"git {args[0]} did not finish within {timeout}s") from exc
    if result.returncode != 0:
        message = [line.strip() for line in result.stderr.decode(errors="replace").splitlines() if line.strip()]
        detail = next((line for line in message if line.startswith(("fatal:", "error:"))),
                      message[-1] if message else f"exit status {result.returncode}")
        detail = redaction.redact_text(detail.removeprefix("fatal: ").removeprefix("error: "))  # git quotes the remote's URL
        raise errors.SourceError(f"git {args[0]} failed: {detail}")
    return result.stdout


def toplevel(path: str | os.PathLike) -> Path:
    """Return the root of the git working tree holding ``path`` (which need not exist any more)."""
    directory = Path(path).absolute()
    while not directory.is_dir() and directory != directory.parent:
        directory = directory.parent
    return Path(run("rev-parse", "--show-toplevel", cwd=directory).decode().strip())


def resolve(repository: str | os.PathLike, ref: str) -> str:
    """Return the full commit id ``ref`` names in ``repository``."""
    try:
        return run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", cwd=repository).decode().strip()
    except errors.SourceError:
        raise errors.SourceError(f"unknown git revision {ref!r} in {repository}") from None


def path_exists(repository: str | os.PathLike, commit: str, subpath: str) -> bool:
    """Return whether ``subpath`` exists at ``commit``."""
    if subpath in ("", "."):
        return True
    return bool(run("ls-tree", "--name-only", commit, "--", subpath.strip("/"), cwd=repository).strip())


def materialize(repository: str | os.PathLike, commit: str, subpath: str, destination: Path) -> Path:
    """Write ``subpath`` as of ``commit`` under ``destination``; return the materialised path.

    A ``subpath`` absent at that commit gives an empty directory: every VM is new.
    """
    destination.mkdir(parents=True, exist_ok=True)
    subpath = subpath.strip("/") or "."
    try:
        archive = run("archive", "--format=tar", commit, "--", subpath, cwd=repository)
    except errors.SourceError as exc:
        if "did not match any files" not in str(exc):
            raise
        archive = b""
    if archive:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            try:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(destination, filter="data")
                else:
                    extract_confined(tar, destination)
            except tarfile.TarError as exc:  # FilterError is a TarError
                raise errors.SourceError(f"revision {commit} cannot be read safely: {exc}") from exc
    target = destination / subpath
    target.mkdir(parents=True, exist_ok=True)
    return target


def extract_confined(tar: tarfile.TarFile, destination: Path) -> None:
    """Extract ``tar`` under ``destination`` as tarfile's ``data`` filter would, for Pythons without it.

    Only directories, regular files and links are written; a member whose name or link
    target is absolute or leads outside ``destination`` (through ``..`` or a symbolic link
    extracted before it) raises ``tarfile.TarError`` before anything of it is written.
    Owners, times and special mode bits are not restored.
    """
    root = os.path.realpath(destination)

    def inside(path: str) -> bool:
        return os.path.commonpath([root, os.path.realpath(path)]) == root

    for member in tar.getmembers():
        name = member.name
        if os.path.isabs(name) or not inside(os.path.join(root, name)):
            raise tarfile.TarError(f"{name!r} would be written outside the destination")
        if member.issym():
            if os.path.isabs(member.linkname):
                raise tarfile.TarError(f"{name!r} is a link to an absolute path ({member.linkname!r})")
            if not inside(os.path.join(root, os.path.dirname(name), member.linkname)):
                raise tarfile.TarError(f"{name!r} is a link to {member.linkname!r}, outside the destination")
        elif member.islnk():
            if os.path.isabs(member.linkname) or not inside(os.path.join(root, member.linkname)):
                raise tarfile.TarError(f"{name!r} is a hard link to {member.linkname!r}, outside the destination")
        elif not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"{name!r} is a special file")
        tar.extract(member, root, set_attrs=False)


def describe(path: str | os.PathLike) -> str:
    """Return the revision of the working tree holding ``path``: a short id, ``-dirty`` when edited; '' outside git."""
    try:
        root = toplevel(path)
        commit = run("rev-parse", "--short=12", "HEAD", cwd=root).decode().strip()
        changed = run("status", "--porcelain", "--", str(Path(path).resolve()), cwd=root).strip()
    except errors.SourceError:
        return ""
    return commit + ("-dirty" if changed else "")


def clone(remote: Remote, branch: str, destination: Path) -> None:
    """Clone ``branch`` of ``remote`` into ``destination`` without a working tree (its config: the URL without credentials)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    run("clone", "--bare", "--single-branch", "--branch", branch, "--", remote.url, str(destination), remote=remote)


def fetch(repository: Path, branch: str, remote: Remote) -> str:
    """Fetch ``branch`` from ``remote`` into ``repository``; return the commit it points at.

    The clone's ``origin`` is set to the URL without credentials first: clones made by
    older kvmops kept the URL as given, token included.
    """
    run("config", "remote.origin.url", remote.url, cwd=repository)
    run("fetch", "--quiet", "--force", "origin", f"+refs/heads/{branch}:refs/heads/{branch}", cwd=repository, remote=remote)
    return resolve(repository, f"refs/heads/{branch}")

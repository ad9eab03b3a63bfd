"""Open files of a manifest tree without ever leaving it: the only way kvmops reads what a manifest names.

A manifest tree is the directory given on the command line (or the controller's
directory, or a git checkout): the manifests, and every file they refer to (cloud-init
user-data, VNC password files, Image ``path:`` sources), live inside it.  A symlink is
fine as long as it leads to a file inside the tree; one that leads out (to
``/etc/shadow``, ``/root/.ssh``...) is refused, because whoever can write the repository
must not be able to make a root process read the host's files into a guest.

:meth:`ManifestTree.open` is race-safe: the check is made on the file really opened, not
on a name that could be swapped for a symlink between a check and the open.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

NOT_INSIDE_HINT = "keep the file inside the manifest tree (copy it in, or make the link point inside)"


class ManifestTree:
    """The directory ``root`` (symlinks in its own path are resolved once, here)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = os.path.realpath(root)
        self._directories: dict[str, str] = {}  # directory as named -> as resolved, for this tree's lifetime (a pass)

    def contains(self, path: str) -> bool:
        """Return whether the resolved, absolute ``path`` is the tree or inside it."""
        return path == self.root or path.startswith(self.root.rstrip("/") + "/")

    def open(self, relpath: str) -> BinaryIO:
        """Return ``relpath`` (relative to the root) opened for reading, if it is a regular file inside the tree.

        Raises ``OSError`` with a message that says what is wrong and what to do: an
        absolute path, a path or symlink leading out of the tree, something that is not a
        regular file (a FIFO would block a reader forever, a device never ends).
        """
        descriptor, _size = self._descriptor(relpath)
        try:
            os.set_blocking(descriptor, True)
            return os.fdopen(descriptor, "rb")
        except BaseException:
            os.close(descriptor)
            raise

    def _descriptor(self, relpath: str) -> tuple[int, int]:
        """Return a descriptor of ``relpath`` opened as :meth:`open` says, still non-blocking, and the file's size."""
        if os.path.isabs(relpath):
            raise OSError(f"{relpath} is an absolute path; give a path relative to the manifest, {NOT_INSIDE_HINT}")
        resolved = self._resolve(os.path.join(self.root, relpath))
        if not self.contains(resolved):
            raise OSError(f"{relpath} leads to {resolved}, outside the manifest tree {self.root}; {NOT_INSIDE_HINT}")
        # Race safety: realpath() above named a file inside the tree, but any component of
        # that name may be replaced by a symlink before open() runs.  O_NOFOLLOW refuses a
        # symlink swapped in as the last component; a swapped directory is caught below by
        # asking the kernel which file the descriptor really is (/proc/self/fd), so the
        # decision is made on the opened file itself.  O_NONBLOCK keeps open() of a FIFO
        # from blocking; the S_ISREG check then refuses it.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            descriptor = os.open(resolved, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # the last component became a symlink after the check
                raise OSError(f"{relpath} was replaced by a symlink while being read; {NOT_INSIDE_HINT}") from exc
            raise OSError(f"cannot open {relpath}: {exc.strerror}") from exc
        try:
            try:
                opened = os.readlink(f"/proc/self/fd/{descriptor}")
            except OSError as exc:  # no /proc: where the file is cannot be proven, so it is not read
                raise OSError(f"cannot verify where {relpath} leads (/proc is not mounted); not read") from exc
            if not self.contains(opened):
                raise OSError(f"{relpath} leads to {opened}, outside the manifest tree {self.root}; {NOT_INSIDE_HINT}")
            status = os.fstat(descriptor)
            if not stat.S_ISREG(status.st_mode):
                raise OSError(f"{relpath} is not a regular file")
            return descriptor, status.st_size
        except BaseException:
            os.close(descriptor)
            raise

    def _resolve(self, path: str) -> str:
        """Return ``os.path.realpath(path)``, each directory resolved once: a pass opens thousands of files in a few."""
        directory, name = os.path.split(path)
        if name in ("", ".", ".."):
            return os.path.realpath(path)
        real = self._directories.get(directory)
        if real is None:
            real = self._directories[directory] = os.path.realpath(directory)
        candidate = os.path.join(real, name)
        try:
            if not stat.S_ISLNK(os.lstat(candidate).st_mode):
                return candidate
        except OSError:
            pass  # missing or unreadable: realpath says what it leads to, open() then says why it fails
        return os.path.realpath(path)

    def read(self, relpath: str, *, limit: int) -> bytes:
        """Return the content of ``relpath`` (see :meth:`open`); refuse files over ``limit`` bytes.

        Read from the descriptor itself: a file object's setup (buffering, tty and seek
        checks) was four more system calls per file, a fifth of reading 10,000 small
        manifests.
        """
        descriptor, size = self._descriptor(relpath)
        try:
            os.set_blocking(descriptor, True)
            if size > limit:
                raise FileTooLarge(relpath, size, limit)
            data = b""
            wanted = size + 1  # the file's size and one byte, not the limit: a 1 MiB buffer per manifest was costly
            while len(data) < wanted:
                chunk = os.read(descriptor, wanted - len(data))
                if not chunk:
                    break
                data += chunk
                if len(data) == wanted and wanted <= limit:  # it grew since fstat: read on, as far as the limit allows
                    wanted = limit + 1
        finally:
            os.close(descriptor)
        if len(data) > limit:  # it grew while being read
            raise FileTooLarge(relpath, len(data), limit)
        return data


class FileTooLarge(OSError):
    """A file over the size a reader accepts; ``size`` says how large it is."""

    def __init__(self, relpath: str, size: int, limit: int) -> None:
        super().__init__(f"{relpath} is {size / 1e6:.1f} MB; at most {limit // (1024 * 1024)} MiB")
        self.size = size

"""The trash directory of a pool on this machine: moving a volume's file in, purging it, moving it back.

``<pool directory>/.kvmops-trash/<entry>/`` holds one deleted volume's file under its own
name and ``entry.json``, its record (:mod:`reconciler.core.trash`).  The trash sits inside
the pool's directory so that moving a file in or out is a ``rename`` on one filesystem:
atomic, instant whatever the size, and needing no space (a sibling directory could be on
another filesystem when the pool's directory is a mount point).  libvirt's ``dir`` pool
does not list what is inside a subdirectory (checked on libvirt 9.0: the trash itself
shows as one volume of type ``dir``, named ``.kvmops-trash``, which the observation
leaves out and ``virsh vol-delete`` cannot remove while it holds anything).

Every operation works relative to directory descriptors opened with ``O_NOFOLLOW``, and
refuses a trash or an entry that is a symlink or not owned by this process's user: a
symlink planted there must not lead a root process's renames and unlinks elsewhere.

Order of operations, so a ``kill -9`` anywhere leaves nothing lost and nothing unknown
(docs/design.md, "Crash safety"):

* moving in: create the entry directory, write the record (temporary file, fsync,
  rename), then rename the volume's file into the entry and fsync both directories.
  Cut before the file moved, the entry is an empty directory or a record alone, and the
  volume is still in its pool, still recorded by its domain: the next pass moves it again
  and removes what the cut-short move left (it holds no data).
* purging: rename the entry to ``<entry>.purging`` (the decision, atomic), then unlink
  the file, the record and the directory.  Cut after the rename, the next pass finishes
  the purge.
* restoring: write the record with ``restoredAt`` first, then link the file back into the
  pool under its name (``link`` refuses to overwrite, ``rename`` would not) and unlink
  it from the entry.  Cut in between, the volume is in the trash still (restorable
  again) or in both places (the pool's name is the one that counts; a purge of the
  entry only drops the trash's name).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import stat
from collections.abc import Iterator

from reconciler import errors
from reconciler.adapters import hypervisor as hv
from reconciler.core import trash

DIRECTORY_MODE = 0o700  # deleted volumes hold guests' data: nobody but kvmops' user reads them here
RECORD_MODE = 0o600


class PoolTrash:
    """The trash of pool ``pool``, whose directory on this machine is ``pool_path``."""

    def __init__(self, pool: str, pool_path: str) -> None:
        self.pool = pool
        self.pool_path = pool_path.rstrip("/") or "/"
        self.path = os.path.join(self.pool_path, trash.TRASH_DIRECTORY)

    # -- reading --------------------------------------------------------------------------

    def entries(self) -> tuple[list[trash.TrashEntry], list[str]]:
        """Return the entries of this trash, and a sentence for each thing in it that is not a readable entry."""
        found: list[trash.TrashEntry] = []
        unreadable: list[str] = []
        try:
            # Shared: a move, purge or restore of another pass, maybe in another scope, holds the
            # lock exclusively until it is done; seen half done, its entry would look cut short.
            directory = self._open_trash(create=False, lock=fcntl.LOCK_SH)
        except FileNotFoundError:
            return found, unreadable
        except OSError as exc:
            return found, [f"{self.path}: cannot read the trash: {exc.strerror or exc}"]
        with _closing(directory):
            for name in sorted(os.listdir(directory)):
                if name.startswith(".") or not trash.is_entry_name(name):
                    continue  # temporary files of an unfinished record write, and what is not kvmops'
                try:
                    found.append(self._read_entry(directory, name))
                except (OSError, trash.RecordError) as exc:
                    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    unreadable.append(f"{self.path}/{name}: {why}")
        return found, unreadable

    def _read_entry(self, directory: int, name: str) -> trash.TrashEntry:
        with _closing(_open_directory(name, directory)) as entry_fd:
            purging = name.endswith(trash.PURGING_SUFFIX)
            try:
                with _open_file(trash.RECORD_NAME, entry_fd) as record:
                    text = record.read(64 * 1024).decode("utf-8")
            except FileNotFoundError:
                held = [child for child in os.listdir(entry_fd) if not child.startswith(".")]
                if held and not purging:
                    raise trash.RecordError("holds files but no record; kvmops did not leave it so") from None
                # A move cut short before its record, or the end of a purge (the record goes last): nothing to
                # restore, nothing anyone owns; the next pass removes it.
                return trash.TrashEntry(pool=self.pool, volume="", entry=name.removesuffix(trash.PURGING_SUFFIX),
                                        scope="", vm="", vm_uuid="", deleted_at=0, holds_volume=bool(held),
                                        purging=purging)
            parsed = trash.from_record(text, entry=name, holds_volume=False, purging=purging)
            return dataclasses.replace(parsed, holds_volume=_exists(parsed.volume, entry_fd))

    # -- moving in ------------------------------------------------------------------------

    def move_in(self, volume_path: str, entry: trash.TrashEntry) -> None:
        """Move the file ``volume_path`` (at the top of the pool's directory) into a new entry recorded as ``entry``.

        An entry of that name that already exists is reused only if it is the record alone
        of this very volume (a move cut short by a crash); anything else is refused.
        """
        if os.path.dirname(volume_path) != self.pool_path or os.path.basename(volume_path) != entry.volume:
            raise errors.OperationRefused(
                f"volume {self.pool}/{entry.volume} is at {volume_path}, not at the top of the pool's directory "
                f"{self.pool_path}; kvmops moves only files there to the trash"
            )
        with _closing(_open_directory(self.pool_path)) as pool_fd, \
                _closing(self._open_trash(create=True, lock=fcntl.LOCK_EX)) as trash_fd, \
                _closing(self._new_or_interrupted_entry(trash_fd, entry)) as entry_fd:
            if _exists(entry.volume, entry_fd):
                raise errors.OperationRefused(f"trash entry {self.path}/{entry.entry} already holds a file "
                                              f"named {entry.volume}; plan again")
            hv.count_mutating_call("move_volume_to_trash", (self.pool, entry.volume))
            os.rename(entry.volume, entry.volume, src_dir_fd=pool_fd, dst_dir_fd=entry_fd)
            os.fsync(entry_fd)
            os.fsync(pool_fd)

    def _new_or_interrupted_entry(self, trash_fd: int, entry: trash.TrashEntry) -> int:
        """Return the descriptor of entry ``entry.entry`` with its record written: new, or the interrupted one."""
        try:
            os.mkdir(entry.entry, DIRECTORY_MODE, dir_fd=trash_fd)
        except FileExistsError:
            existing = self._read_entry(trash_fd, entry.entry)
            same = (existing.pool, existing.volume, existing.vm_uuid) == (entry.pool, entry.volume, entry.vm_uuid)
            if existing.volume and (not same or existing.holds_volume or existing.restored_at is not None):
                raise errors.OperationRefused(
                    f"trash entry {self.path}/{entry.entry} exists and is not this volume's interrupted move; plan again"
                ) from None
            if existing.volume:
                return _open_directory(entry.entry, trash_fd)
        else:
            os.fsync(trash_fd)
        entry_fd = _open_directory(entry.entry, trash_fd)
        try:
            hv.count_mutating_call("write_trash_record", (self.pool, entry.entry))
            _write_record(entry_fd, entry)
        except BaseException:
            os.close(entry_fd)
            raise
        return entry_fd

    # -- purging --------------------------------------------------------------------------

    def purge(self, entry_name: str, *, expect_volume: bool) -> str | None:
        """Remove entry directory ``entry_name`` and what it holds; return why nothing was done, if so.

        ``entry_name`` ending in ``.purging`` finishes a purge a crash cut short.

        ``expect_volume`` is what the plan saw: a purge planned for an entry holding a
        volume does nothing if the volume has left it since (restored), and one planned
        for a record alone does nothing if a volume is in it now.
        """
        with _closing(self._open_trash(create=False, lock=fcntl.LOCK_EX)) as trash_fd:
            name = entry_name
            if not entry_name.endswith(trash.PURGING_SUFFIX):
                if not _exists(entry_name, trash_fd):
                    return "already gone"
                current = self._read_entry(trash_fd, entry_name)
                if current.holds_volume != expect_volume:
                    return ("its volume was restored since the plan was made" if expect_volume
                            else "a volume is in it now; plan again")
                name = entry_name + trash.PURGING_SUFFIX
                hv.count_mutating_call("purge_trash_entry", (self.pool, entry_name))
                os.rename(entry_name, name, src_dir_fd=trash_fd, dst_dir_fd=trash_fd)
                os.fsync(trash_fd)
            elif not _exists(name, trash_fd):
                return "already gone"
            with _closing(_open_directory(name, trash_fd)) as entry_fd:
                # the record last: until it goes, what is left still says what it was
                for child in sorted(os.listdir(entry_fd), key=lambda child: child == trash.RECORD_NAME):
                    info = os.stat(child, dir_fd=entry_fd, follow_symlinks=False)
                    if stat.S_ISDIR(info.st_mode):
                        raise errors.OperationRefused(
                            f"trash entry {self.path}/{name} holds a directory {child}, which kvmops never puts there; "
                            "remove it by hand"
                        )
                    os.unlink(child, dir_fd=entry_fd)
            os.rmdir(name, dir_fd=trash_fd)
            os.fsync(trash_fd)
        return None

    # -- restoring ------------------------------------------------------------------------

    def restore(self, entry: trash.TrashEntry, now: int) -> str:
        """Move ``entry``'s volume back to the top of the pool's directory; return its path there.

        The record stays, with ``restoredAt``: it is the claim that lets the next
        definition of the VM record the volume as kvmops' own creation again.
        """
        with _closing(_open_directory(self.pool_path)) as pool_fd, \
                _closing(self._open_trash(create=False, lock=fcntl.LOCK_EX)) as trash_fd, \
                _closing(_open_directory(entry.entry, trash_fd)) as entry_fd:
            if not _exists(entry.volume, entry_fd):
                raise errors.ObjectNotFound(f"trash entry {self.path}/{entry.entry} holds no volume any more")
            if _exists(entry.volume, pool_fd):
                raise errors.OperationRefused(
                    f"a file named {entry.volume} is already in pool {self.pool}'s directory; kvmops will not "
                    "overwrite it. Rename or remove it first"
                )
            hv.count_mutating_call("write_trash_record", (self.pool, entry.entry))
            _write_record(entry_fd, trash.restored(entry, now))
            hv.count_mutating_call("restore_from_trash", (self.pool, entry.volume))
            try:
                os.link(entry.volume, entry.volume, src_dir_fd=entry_fd, dst_dir_fd=pool_fd, follow_symlinks=False)
            except FileExistsError:
                raise errors.OperationRefused(
                    f"a file named {entry.volume} appeared in pool {self.pool}'s directory; kvmops will not "
                    "overwrite it"
                ) from None
            os.fsync(pool_fd)
            os.unlink(entry.volume, dir_fd=entry_fd)
            os.fsync(entry_fd)
        return os.path.join(self.pool_path, entry.volume)

    # -- the directory itself ---------------------------------------------------------------

    def _open_trash(self, *, create: bool, lock: int = 0) -> int:
        """Return a descriptor of the trash directory (made if ``create``); refuse a symlink or another user's.

        With ``lock`` (``fcntl.LOCK_EX`` or ``LOCK_SH``) the descriptor holds that ``flock``
        until it is closed: moves, purges and restores in one trash happen one at a time
        (the controller runs VMs' steps side by side; other scopes' passes share the pool's
        directory), taking it exclusively, so a purge never sees a move half done; listing
        the entries takes it shared, so an observation never does either.
        """
        pool_fd = _open_directory(self.pool_path)
        try:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(trash.TRASH_DIRECTORY, DIRECTORY_MODE, dir_fd=pool_fd)
                    os.fsync(pool_fd)
            try:
                directory = _open_directory(trash.TRASH_DIRECTORY, pool_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise errors.OperationRefused(
                        f"{self.path} is not a directory (a symlink?); kvmops keeps its trash only in a real directory. "
                        "Move it away"
                    ) from exc
                raise
        finally:
            os.close(pool_fd)
        owner = os.fstat(directory).st_uid
        if owner != os.geteuid():
            os.close(directory)
            raise errors.OperationRefused(
                f"{self.path} belongs to uid {owner}, not to kvmops' user (uid {os.geteuid()}); kvmops will not use it"
            )
        if lock:
            fcntl.flock(directory, lock)
        return directory


@contextlib.contextmanager
def _closing(descriptor: int) -> Iterator[int]:
    """Yield ``descriptor``, closed on the way out whatever happens."""
    try:
        yield descriptor
    finally:
        os.close(descriptor)


def _open_directory(name: str, dir_fd: int | None = None) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


@contextlib.contextmanager
def _open_file(name: str, dir_fd: int) -> Iterator:
    descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise OSError(errno.EINVAL, "the record is not a regular file")
        yield file


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _write_record(entry_fd: int, entry: trash.TrashEntry) -> None:
    """Replace the entry's record atomically: a temporary file, fsync, rename, fsync of the directory."""
    temporary = f".{trash.RECORD_NAME}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary, dir_fd=entry_fd)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         RECORD_MODE, dir_fd=entry_fd)
    with os.fdopen(descriptor, "wb") as file:
        file.write(trash.to_record(entry).encode("utf-8"))
        file.flush()
        os.fsync(file.fileno())
    os.rename(temporary, trash.RECORD_NAME, src_dir_fd=entry_fd, dst_dir_fd=entry_fd)
    os.fsync(entry_fd)

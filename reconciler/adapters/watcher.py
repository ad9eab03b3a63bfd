"""Notice changes to manifest files: the only module that imports ``watchdog``.

:class:`ManifestWatcher` watches a directory recursively and calls back on any change
that could alter the manifests: a YAML file created, modified, deleted or renamed, or a
directory appearing or vanishing (``git checkout`` swapping trees).  Changes to hidden
files and other suffixes are ignored, like the loader ignores them.  It does not
debounce: the controller's quiet period does, so that an editor's save, an atomic
rename or a ``git pull`` of many files gives one pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from reconciler.adapters import manifests


def relevant(path: str, root: str, *, directory: bool = False) -> bool:
    """Return whether a change at ``path`` (under ``root``) could change the manifests."""
    relative = os.path.relpath(path, root)
    if relative == ".":
        return True
    if any(part.startswith(".") for part in Path(relative).parts):
        return False
    name = os.path.basename(relative)
    return directory or name.endswith(manifests.MANIFEST_SUFFIXES)


class _Handler(FileSystemEventHandler):
    def __init__(self, callback: Callable[[str], None], root: str) -> None:
        self._callback = callback
        self._root = root

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        for path in paths:
            if path and relevant(os.fsdecode(path), self._root, directory=event.is_directory):
                self._callback(os.fsdecode(path))
                return


class ManifestWatcher:
    """Watch ``root`` (a directory, or a file's directory) and report relevant changes."""

    def __init__(self, root: str | os.PathLike, callback: Callable[[str], None]) -> None:
        root_path = Path(root)
        self.directory = root_path if root_path.is_dir() else root_path.parent
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.schedule(_Handler(callback, str(self.directory)), str(self.directory), recursive=True)

    def start(self) -> None:
        """Begin watching, in watchdog's own thread."""
        self._observer.start()

    def stop(self) -> None:
        """Stop watching and wait for watchdog's thread."""
        self._observer.stop()
        self._observer.join(timeout=5)

"""Fetch base images: the only module that speaks HTTP.

:func:`download` copies an http(s) URL or a local file into a temporary file while
computing its sha256, and hands back the verified file only when the digest is the one
the manifest pins.  A failed or corrupt download never leaves anything behind, and
neither does a ``kill -9``: the temporary file has no name (``O_TMPFILE``, or unlinked
right after it was made where the filesystem lacks it), so it lives only as long as the
process holds it open and the kernel frees it whenever that process ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import BinaryIO

from reconciler import errors

CHUNK = 1024 * 1024
TIMEOUT = 60


def download(url: str | None, path: str | None, sha256: str, *, progress: Callable[[int, int | None], None] | None = None,
             directory: str | None = None) -> BinaryIO:
    """Return an anonymous temporary file holding the verified image, positioned at its start.

    The file has no name in ``directory`` (default ``$TMPDIR``, else /var/tmp): closing it,
    or the end of the process however it ends, frees its space.  The caller closes it.
    ``progress(done, total)`` is called at most twice a second.  Raises
    ``OperationRefused`` on a checksum mismatch and ``RetryableHypervisorError`` when the
    source cannot be read (a network error may pass).
    """
    out = tempfile.TemporaryFile(prefix="kvmops-image-", dir=directory or os.environ.get("TMPDIR") or "/var/tmp")
    digest = hashlib.sha256()
    try:
        with _open(url, path) as (source, total):
            done, reported = 0, 0.0
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
                if progress is not None and time.monotonic() - reported >= 0.5 and done != total:
                    progress(done, total)
                    reported = time.monotonic()
            if progress is not None:
                progress(done, total)
        if total is not None and done != total:
            raise errors.RetryableHypervisorError(
                f"download of {url or path} ended after {done} of {total} bytes; nothing was kept, apply again"
            )
        actual = digest.hexdigest()
        if actual != sha256.lower():
            raise errors.OperationRefused(
                f"checksum mismatch for {url or path}: got sha256 {actual}, the manifest pins {sha256}; "
                "the download was discarded. Fix the sha256 in the Image manifest, or the source"
            )
        out.flush()
        out.seek(0)
        return out
    except BaseException:
        out.close()
        raise


@contextlib.contextmanager
def _open(url: str | None, path: str | None):
    try:
        if url is not None:
            request = urllib.request.Request(url, headers={"User-Agent": "kvmops"})
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                length = response.headers.get("Content-Length")
                yield response, int(length) if length and length.isdigit() else None
        else:
            with open(path, "rb") as handle:
                yield handle, os.fstat(handle.fileno()).st_size
    except urllib.error.HTTPError as exc:
        raise errors.RetryableHypervisorError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise errors.RetryableHypervisorError(f"cannot download {url}: {reason}") from exc
    except OSError as exc:
        raise errors.OperationRefused(f"cannot read image {path}: {exc.strerror}") from exc


def copy_chunks(handle: BinaryIO):
    """Yield the content of the open file ``handle`` from its start, in chunks (for a streamed upload)."""
    handle.seek(0)
    while chunk := handle.read(CHUNK):
        yield chunk


def size(handle: BinaryIO) -> int:
    """Return the size in bytes of the open file ``handle``."""
    return os.fstat(handle.fileno()).st_size



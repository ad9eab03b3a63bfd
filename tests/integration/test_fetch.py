"""Image downloads leave nothing behind: a temporary file without a name, freed with the process."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from reconciler import errors
from reconciler.adapters import fetch


def test_a_verified_download_has_no_name_in_its_directory(tmp_path):
    """The verified image is readable through the returned file, yet its directory stays empty."""
    source = tmp_path / "image.raw"
    source.write_bytes(os.urandom(3 * fetch.CHUNK + 5))
    downloads = tmp_path / "tmp"
    downloads.mkdir()
    with fetch.download(None, str(source), hashlib.sha256(source.read_bytes()).hexdigest(), directory=str(downloads)) as got:
        assert list(downloads.iterdir()) == []
        assert fetch.size(got) == source.stat().st_size
        assert b"".join(fetch.copy_chunks(got)) == source.read_bytes()


def test_a_refused_download_leaves_nothing(tmp_path):
    """A checksum mismatch raises and leaves the directory empty."""
    source = tmp_path / "image.raw"
    source.write_bytes(b"not the image")
    downloads = tmp_path / "tmp"
    downloads.mkdir()
    with pytest.raises(errors.OperationRefused):
        fetch.download(None, str(source), "0" * 64, directory=str(downloads))
    assert list(downloads.iterdir()) == []


def test_a_download_killed_midway_leaves_nothing(tmp_path):
    """kill -9 while the image is being written leaves no file in the download directory."""
    fifo = tmp_path / "source"
    os.mkfifo(fifo)  # a source that never ends: the download is in flight when it is killed
    downloads = tmp_path / "tmp"
    downloads.mkdir()
    code = f"from reconciler.adapters import fetch; fetch.download(None, {str(fifo)!r}, '0' * 64, directory={str(downloads)!r})"
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        with open(fifo, "wb") as writer:
            writer.write(os.urandom(4 * fetch.CHUNK))
            writer.flush()
            time.sleep(0.5)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert list(downloads.iterdir()) == []

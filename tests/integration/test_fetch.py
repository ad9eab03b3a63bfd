"""Image downloads leave nothing behind: a temporary file without a name, freed with the process."""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
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
    with fetch.download(None, source.name, hashlib.sha256(source.read_bytes()).hexdigest(), directory=str(downloads),
                        tree=str(tmp_path)) as got:
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
        fetch.download(None, source.name, "0" * 64, directory=str(downloads), tree=str(tmp_path))
    assert list(downloads.iterdir()) == []


def test_a_download_killed_midway_leaves_nothing(tmp_path):
    """kill -9 while the image is being written leaves no file in the download directory."""
    sent, release = threading.Event(), threading.Event()

    class Endless(http.server.BaseHTTPRequestHandler):
        """Send 4 MiB of a 100 MiB image, then stall: the download is in flight when it is killed."""

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(100 * 1024 * 1024))
            self.end_headers()
            for _ in range(4):
                self.wfile.write(os.urandom(fetch.CHUNK))
            self.wfile.flush()
            sent.set()
            release.wait(30)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/image.raw"
    downloads = tmp_path / "tmp"
    downloads.mkdir()
    code = f"from reconciler.adapters import fetch; fetch.download({url!r}, None, '0' * 64, directory={str(downloads)!r})"
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        assert sent.wait(30), "the download never started"
        time.sleep(0.3)  # let the child write what it received
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
        release.set()
        server.shutdown()
        server.server_close()
    assert list(downloads.iterdir()) == []

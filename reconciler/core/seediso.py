"""Write a cloud-init NoCloud seed: an ISO 9660 image labelled ``cidata``.

cloud-init finds the seed by its volume label and reads ``user-data``, ``meta-data`` and
``network-config`` from its root.  Those names are not valid ISO 9660 file names, so the
image carries Joliet and Rock Ridge names too, as ``genisoimage -J -r`` would write.
pycdlib writes it in memory, in pure Python: no ``genisoimage`` to install, nothing to
shell out to.
"""

from __future__ import annotations

import io

import pycdlib

VOLUME_LABEL = "cidata"


def build(files: tuple[tuple[str, bytes], ...]) -> bytes:
    """Return the bytes of a NoCloud seed ISO holding ``files`` (name, content) at its root."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_LABEL)
    for index, (name, content) in enumerate(files):
        iso.add_fp(
            io.BytesIO(content), len(content), f"/FILE{index:04d}.;1", rr_name=name, joliet_path=f"/{name}",
        )
    output = io.BytesIO()
    iso.write_fp(output)
    iso.close()
    return output.getvalue()


def read(image: bytes) -> dict[str, bytes]:
    """Return the files of a seed ISO by their long (Rock Ridge) names; for checks and tests."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        files = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dir():
                continue
            name = child.rock_ridge.name().decode()
            buffer = io.BytesIO()
            iso.get_file_from_iso_fp(buffer, rr_path=f"/{name}")
            files[name] = buffer.getvalue()
        return files
    finally:
        iso.close()


def label(image: bytes) -> str:
    """Return the volume label of an ISO image."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        return iso.pvd.volume_identifier.decode().strip()
    finally:
        iso.close()

"""Digests of graphics passwords, as kept in the owner mark.

libvirt never shows a VNC/SPICE password back, so the mark keeps a digest of it to tell
whether the manifest's password changed.  Domain metadata is readable by read-only
clients (no ``VIR_DOMAIN_XML_SECURE`` needed), so the digest must not let them recover
a password: it is scrypt (memory-hard, slow) with a salt stored beside it, and a
password is checked by recomputing the digest with that salt.

Format: ``scrypt$N$r$p$<salt, base64>$<hash, base64>``.  Marks written by older kvmops
hold ``sha256:<hex>`` (unsalted); :func:`is_legacy` tells them apart so that the planner
replaces them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # 16 MiB and ~50 ms per digest
HASH_BYTES = 32
_LEGACY_PREFIX = "sha256:"


def digest(password: str, salt: bytes) -> str:
    """Return the salted scrypt digest of ``password`` (``salt``: 16 bytes, unique per domain)."""
    hashed = _scrypt(password, salt)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(hashed)}"


def matches(stored: str, password: str) -> bool:
    """Return whether ``stored`` (a digest from a mark) is the digest of ``password``.

    Unreadable or foreign formats never match: the password is then written again.
    """
    if is_legacy(stored):
        expected = _LEGACY_PREFIX + hashlib.sha256(password.encode()).hexdigest()
        return hmac.compare_digest(stored, expected)
    try:
        scheme, n, r, p, salt, hashed = stored.split("$")
        if scheme != "scrypt" or (int(n), int(r), int(p)) != (SCRYPT_N, SCRYPT_R, SCRYPT_P):
            return False  # parameters kvmops did not write: never spend unbounded memory on them
        expected = _scrypt(password, base64.b64decode(salt))
        return hmac.compare_digest(base64.b64decode(hashed), expected)
    except (ValueError, TypeError):
        return False


def is_legacy(stored: str) -> bool:
    """Return whether ``stored`` is an unsalted digest written by an older kvmops."""
    return stored.startswith(_LEGACY_PREFIX)


@functools.lru_cache(maxsize=4096)
def _scrypt(password: str, salt: bytes) -> bytes:
    """Return scrypt of ``password`` with ``salt``; memoised, since every pass checks every VM's
    password again (about 0.1 s each on a busy host) and the answer never changes."""
    return hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=HASH_BYTES)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")

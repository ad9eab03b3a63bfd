"""Credentials out of everything kvmops prints: URLs, libvirt URIs, and text quoting them.

A git remote (``https://user:TOKEN@host/repo.git``), an image URL signed with a query
parameter (``?token=…``, ``X-Amz-Signature=…``) or a libvirt URI carrying a password may
reach a log event, ``/status``, an error message quoting git's own stderr, or a plan.
Whatever kvmops shows goes through :func:`redact_text` (logs do, in every string value);
the real value is kept only where it is used: to fetch, to clone, to connect.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote

MASK = "***"

# Query parameters whose value is a credential (compared lowercased, '-' read as '_').
SECRET_PARAMETERS = frozenset({
    "token", "access_token", "refresh_token", "id_token", "auth", "auth_token", "authorization",
    "password", "passwd", "pass", "pwd", "secret", "client_secret", "api_key", "apikey", "key",
    "private_token", "sig", "signature", "x_amz_signature", "x_amz_credential", "x_amz_security_token",
    "x_goog_signature", "x_goog_credential", "sas", "sv_token", "session_token", "credential", "credentials",
})  # fmt: skip
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_URL_PARTS = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):(?://(?P<authority>[^/?#]*))?(?P<path>[^?#]*)"
    r"(?:\?(?P<query>[^#]*))?(?P<fragment>#.*)?", re.DOTALL,
)
# Schemes whose bare userinfo (no ':') is a credential: a token given as the user name.
_TOKEN_AS_USER_SCHEMES = frozenset({"http", "https", "ftp", "ftps"})


def _secret_parameter(name: str) -> bool:
    return name.lower().replace("-", "_") in SECRET_PARAMETERS


def redact_url(url: str) -> str:
    """Return ``url`` with its password (or token-as-user-name) and secret query values masked.

    Only the secrets change: the rest is kept character for character. Anything that does
    not look like ``scheme:...`` is returned as it is.
    """
    # Split by hand, not with urlsplit: urlsplit raises on text libvirt would still quote
    # back (``qemu+tcp://root:pw@[::1``), and urlunsplit turns ``test:///x`` into ``test:/x``.
    parts = _URL_PARTS.fullmatch(url)
    if parts is None:
        return url
    authority = parts["authority"]
    if authority is not None and "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user, has_password, _password = userinfo.partition(":")
        if has_password:
            authority = f"{user}:{MASK}@{host}"
        elif parts["scheme"].lower() in _TOKEN_AS_USER_SCHEMES:
            authority = f"{MASK}@{host}"
    query = parts["query"]
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret_parameter(name) for name, _value in pairs):
            query = "&".join(
                f"{quote(name, safe='')}={MASK if _secret_parameter(name) else quote(value, safe='/:,')}"
                for name, value in pairs
            )
    if authority == parts["authority"] and query == parts["query"]:
        return url
    return "".join((
        parts["scheme"], ":", "" if authority is None else f"//{authority}", parts["path"],
        "" if query is None else f"?{query}", parts["fragment"] or "",
    ))


def redact_text(text: str) -> str:
    """Return ``text`` with every URL in it passed through :func:`redact_url`."""
    if "://" not in text:
        return text
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


def redact_value(value: object) -> object:
    """Return ``value`` with :func:`redact_text` applied to every string inside it (dicts, lists, tuples)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(item) for item in value)
    return value

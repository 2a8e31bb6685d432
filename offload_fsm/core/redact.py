"""Secrets never leave the process: :func:`redact` is the one function every boundary uses
before text is written anywhere (event fields and transition / run-finished reasons, error
messages, structlog lines, stderr, summaries, traces).

What it hides, replaced by ``***``:

- the user-info of a URL: ``http://user:secret@host`` -> ``http://user:***@host``; user-info
  without a password is often a token by itself (``https://TOKEN@host``): ``https://***@host``;
- the credentials of an ``Authorization`` (or ``Proxy-Authorization``) header in any shape
  (``Authorization: Bearer abc``, ``'authorization': 'Basic abc'``), and a bare
  ``Bearer abc`` / ``Basic abc``: the scheme stays, the credentials go;
- the value of a pair whose key names a secret (``api_key``, ``api-key``, ``apikey``,
  ``x-api-key``, ``token``, ``access_token``, ``secret``, ``password``, ``passwd``), as
  ``key=value``, ``key: value`` or ``"key": "value"``;
- every value registered with :func:`register_secret` (a run configuration's ``api_key``, a
  URL's password), wherever it appears and in whatever shape the patterns miss, e.g. an engine
  that echoes the key back in an error body. Values shorter than :data:`MIN_REGISTERED`
  characters are not registered (replacing them everywhere would garble every message);
  the patterns above still hide them where they stand as credentials.

Redacting is idempotent (``redact(redact(t)) == redact(t)``) and leaves text without secrets
unchanged, so a boundary may apply it to text that an inner boundary already cleaned.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

MASK = "***"
MIN_REGISTERED = 4

# scheme://userinfo@ ; greedy up to the last "@" before any "/", "?", "#" or space, so a
# password with an unencoded "@" in it is hidden whole.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<info>[^/?#\s]+)@")
_AUTH_HEADER = re.compile(
    r"(?P<key>\b(?:proxy-)?authorization\b[\"']?\s*[:=]\s*[\"']?)"
    r"(?P<scheme>(?:bearer|basic|token|digest)\s+)?"
    r"(?P<cred>[^\s\"',;}\]]+)",
    re.IGNORECASE,
)
_BARE_SCHEME = re.compile(
    r"(?P<scheme>\b(?:(?i:bearer)|Basic)\s+)(?P<cred>[A-Za-z0-9\-._~+/]{4,}=*)"
)
_SECRET_PAIR = re.compile(
    r"(?P<key>[\"']?\b[\w-]*(?:api[_-]?key|token|secret|password|passwd)\b[\"']?\s*[:=]\s*)"
    r"(?P<q>[\"']?)(?P<value>[^\s\"'&,;}\]]+)",
    re.IGNORECASE,
)

# Longest first (no half-masks), replaced whole on each registration so that a reader in
# another thread always iterates a complete tuple.
_registered: tuple[str, ...] = ()
_registering = threading.Lock()


def register_secret(value: str | None) -> None:
    """Hide ``value`` from everything :func:`redact` cleans, from now on in this process."""
    global _registered
    if value and len(value) >= MIN_REGISTERED and value != MASK:
        with _registering:
            if value not in _registered:
                _registered = tuple(sorted({*_registered, value}, key=len, reverse=True))


def register_url(url: str) -> None:
    """Register the password (or a lone token) of ``url``'s user-info, if it has one."""
    match = _URL_USERINFO.match(url.strip())
    if match is not None:
        user, sep, password = match["info"].partition(":")
        register_secret(password if sep else user)


def register_header(name: str, value: str) -> None:
    """Register the credentials of a header that carries a secret (``Authorization: Bearer
    KEY`` registers ``KEY``; ``X-Api-Key: KEY`` registers ``KEY``)."""
    if _is_secret_key(name):
        scheme, _, cred = value.strip().partition(" ")
        register_secret(cred.strip() if cred else scheme)


def _userinfo(match: re.Match[str]) -> str:
    user, sep, _password = match["info"].partition(":")
    return f"{match['scheme']}{user}:{MASK}@" if sep else f"{match['scheme']}{MASK}@"


def _masked_value(match: re.Match[str]) -> str:
    if match["value"] == MASK:
        return match[0]
    return f"{match['key']}{match['q']}{MASK}"


def _masked_cred(match: re.Match[str]) -> str:
    return f"{match['key']}{match['scheme'] or ''}{MASK}"


def redact(text: str) -> str:
    """``text`` with every secret described in the module docstring replaced by ``***``."""
    if not text:
        return text
    for value in _registered:
        if value in text:
            text = text.replace(value, MASK)
    if "://" in text and "@" in text:
        text = _URL_USERINFO.sub(_userinfo, text)
    text = _AUTH_HEADER.sub(_masked_cred, text)
    text = _BARE_SCHEME.sub(lambda m: m[0] if m["cred"] == MASK else f"{m['scheme']}{MASK}", text)
    return _SECRET_PAIR.sub(_masked_value, text)


def redact_optional(text: str | None) -> str | None:
    """:func:`redact` for an optional field (None stays None)."""
    return None if text is None else redact(text)


def redact_value(value: Any) -> Any:
    """Every string inside ``value`` (nested dicts, lists, tuples) redacted; the values of
    keys that name a secret (``api_key``, ``authorization``, ...) masked whole."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: _field(k, v) for k, v in value.items()}
    if type(value) in (list, tuple):  # not a named tuple: its fields are not a sequence
        return type(value)(redact_value(v) for v in value)
    return value


def _field(key: Any, value: Any) -> Any:
    if isinstance(key, str) and isinstance(value, str) and _is_secret_key(key):
        return MASK
    return redact_value(value)


def _is_secret_key(key: str) -> bool:
    return _SECRET_PAIR.match(f"{key}=x") is not None or key.lower() in (
        "authorization",
        "proxy-authorization",
    )


__all__ = [
    "MASK",
    "redact",
    "redact_optional",
    "redact_value",
    "register_header",
    "register_secret",
    "register_url",
]

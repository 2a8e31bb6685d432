"""The one codec: event <-> JSON line.

A line is ``{"kind":"<kind>", ...fields}``. Decoding peeks the kind from the fixed prefix the
encoder writes and then decodes straight into that kind's dataclass with msgspec (typed,
validated, ~2 us a line); lines written by other tools (kind not first) take a slower generic
path with the same checks. Errors are :class:`EventDecodeError` naming the field.
"""

from __future__ import annotations

from typing import Any

import msgspec

from offload_fsm.errors import EventDecodeError
from offload_fsm.events import KINDS, SCHEMA_VERSION, Event

_encoder = msgspec.json.Encoder()
_generic = msgspec.json.Decoder()
# The fast path's tables (also read by eventlog's reader, which inlines the fast path): a
# line starts with KIND_PREFIX, then the kind's bytes as the encoder writes them.
KIND_PREFIX = b'{"kind":"'
KIND_DECODERS: dict[bytes, msgspec.json.Decoder[Any]] = {
    kind.encode(): msgspec.json.Decoder(cls) for kind, cls in KINDS.items()
}
_PREFIX_LEN = len(KIND_PREFIX)


def encode(event: Event) -> bytes:
    """One JSON line for ``event``, without the trailing newline."""
    body = _encoder.encode(event)
    return b'{"kind":"%s",%s' % (event.kind.encode(), body[1:])


def decode(line: bytes | str, *, lineno: int | None = None) -> Event:
    """Decode one line. Raises :class:`EventDecodeError` (with ``lineno`` when given)."""
    raw = line.encode() if isinstance(line, str) else line
    if raw[:_PREFIX_LEN] == KIND_PREFIX:
        decoder = KIND_DECODERS.get(raw[_PREFIX_LEN : raw.find(b'"', _PREFIX_LEN)])
        if decoder is not None:
            try:
                event: Event = decoder.decode(raw)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                pass  # fall through to the generic path for a precise message
            else:
                if event.v == SCHEMA_VERSION:
                    return event
    return _decode_slow(raw, lineno)


def _decode_slow(raw: bytes, lineno: int | None) -> Event:
    try:
        obj = _generic.decode(raw)
    except msgspec.DecodeError as exc:
        raise EventDecodeError(f"not valid JSON ({exc})", line=lineno) from exc
    except UnicodeDecodeError as exc:  # msgspec lets invalid UTF-8 in a string through as this
        raise EventDecodeError(f"not valid UTF-8 in a string ({exc.reason})", line=lineno) from exc
    except RecursionError:  # arrays nested thousands deep: not an event, whatever it is
        raise EventDecodeError("not an event: nested too deeply", line=lineno) from None
    if not isinstance(obj, dict):
        raise EventDecodeError("an event must be a JSON object", line=lineno)
    kind = obj.pop("kind", None)
    if kind is None:
        raise EventDecodeError("missing field 'kind'", line=lineno, field="kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise EventDecodeError(
            f"unknown event kind {kind!r} (known: {', '.join(sorted(KINDS))})",
            line=lineno,
            field="kind",
        )
    version = obj.get("v")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise EventDecodeError(
            f"event schema version {version} is newer than this offload_fsm reads "
            f"({SCHEMA_VERSION}); upgrade offload_fsm",
            line=lineno,
            field="v",
        )
    try:
        event: Event = msgspec.convert(obj, cls, strict=True)
    except msgspec.ValidationError as exc:
        raise EventDecodeError(f"{kind}: {exc}", line=lineno, field=_field_of(exc)) from exc
    if event.v != SCHEMA_VERSION:
        raise EventDecodeError(
            f"event schema version {event.v} is not supported (this offload_fsm reads "
            f"{SCHEMA_VERSION})",
            line=lineno,
            field="v",
        )
    return event


def _field_of(exc: msgspec.ValidationError) -> str | None:
    text = str(exc)
    if "`$." in text:
        return text.split("`$.", 1)[1].split("`", 1)[0].split("[", 1)[0]
    if "missing required field `" in text:
        return text.split("missing required field `", 1)[1].split("`", 1)[0]
    return None

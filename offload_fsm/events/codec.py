"""The one codec: event <-> JSON line.

A line is ``{"kind":"<kind>", ...fields}``. Decoding peeks the kind from the fixed prefix the
encoder writes and then decodes straight into that kind's dataclass with msgspec (typed,
validated); lines written by other tools (kind not first) take a slower generic
path with the same checks. Errors are :class:`EventDecodeError` naming the field.
"""

from __future__ import annotations

import typing
from typing import Any

import msgspec
import msgspec.inspect

from offload_fsm.core.errors import EventDecodeError
from offload_fsm.events.kinds import KINDS, SCHEMA_VERSION, Event

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
    # UTF-8 is checked here, before msgspec sees the line: msgspec releases differ in how they
    # report a bad byte (0.18 raises UnicodeDecodeError, 0.23 its own DecodeError), and a
    # corrupted log must get the same answer, naming the byte, whichever is installed.
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventDecodeError(
            f"not valid UTF-8 (byte {exc.start + 1} of the line: {exc.reason})", line=lineno
        ) from exc
    try:
        obj = _generic.decode(raw)
    except msgspec.DecodeError as exc:
        raise EventDecodeError(f"not valid JSON ({exc})", line=lineno) from exc
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
        raise _validation_error(kind, obj, cls, exc, lineno) from exc
    if event.v != SCHEMA_VERSION:
        raise EventDecodeError(
            f"event schema version {event.v} is not supported (this offload_fsm reads "
            f"{SCHEMA_VERSION})",
            line=lineno,
            field="v",
        )
    return event


def _validation_error(
    kind: str,
    obj: dict[str, Any],
    cls: type[Event],
    exc: msgspec.ValidationError,
    lineno: int | None,
) -> EventDecodeError:
    """Name the field that does not fit, found by the event's own types.

    msgspec's message text is not a stable interface (it changes between releases), so the
    field and what it should hold are worked out here from the record's type hints.
    """
    hints = _hints(cls)
    for name in _required(cls):
        if name not in obj:
            return EventDecodeError(
                f"{kind}: missing required field '{name}'", line=lineno, field=name
            )
    for name, value in obj.items():
        if name not in hints:
            continue
        found = _misfit(value, hints[name])
        if found is not None:
            path, expected, got = found
            return EventDecodeError(
                f"{kind}: field '{name}{path}' must be {expected}, not {_json_type(got)}",
                line=lineno,
                field=name,
            )
    return EventDecodeError(f"{kind}: {exc}", line=lineno)  # a rule across fields


def _hints(cls: type) -> dict[str, Any]:
    return {
        name: hint
        for name, hint in typing.get_type_hints(cls).items()
        if typing.get_origin(hint) is not typing.ClassVar
    }


def _required(cls: type) -> tuple[str, ...]:
    info = msgspec.inspect.type_info(cls)
    fields = getattr(info, "fields", ())
    return tuple(f.name for f in fields if f.required)


def _misfit(value: Any, hint: Any) -> tuple[str, str, Any] | None:
    """``(path below the field, what it must be, the value found)`` where ``value`` does not
    fit ``hint``; None where it does."""
    try:
        msgspec.convert(value, hint, strict=True)
    except msgspec.ValidationError:
        pass
    else:
        return None
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and isinstance(value, list) and args:
        for i, item in enumerate(value):
            found = _misfit(item, args[0])
            if found is not None:
                return f"[{i}]{found[0]}", found[1], found[2]
    elif isinstance(hint, type) and isinstance(value, dict):
        for name in _required(hint):
            if name not in value:
                return f".{name}", "present", None
        hints = _hints(hint)
        for name, item in value.items():
            found = _misfit(item, hints[name]) if name in hints else None
            if found is not None:
                return f".{name}{found[0]}", found[1], found[2]
    return "", _describe(hint), value


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _describe(hint: Any) -> str:
    if hint is None or hint is type(None):
        return "null"
    if hint in _TYPE_NAMES:
        return _TYPE_NAMES[hint]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args:
        return f"an array (each item {_describe(args[0])})"
    if args:  # a union such as ``int | None``
        return " or ".join(_describe(arg) for arg in args)
    return f"an object ({getattr(hint, '__name__', hint)})"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload_fsm.core.errors import EventDecodeError
from offload_fsm.events import codec
from offload_fsm.events.kinds import EVENT_TYPES, KINDS, SCHEMA_VERSION, Event, Transition

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy for one field type, built from the annotation (new kinds need no edits)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is int:
        return INT64
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is str:
        return st.text()
    if tp is bool:
        return st.booleans()
    if tp is type(None):
        return st.none()
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy_for(a) for a in args))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return st.lists(strategy_for(args[0]), max_size=4).map(tuple)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return record_strategy(tp)
    raise TypeError(f"no strategy for field type {tp!r}: teach tests/test_codec.py about it")


def record_strategy(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        # v is pinned: any other version is (rightly) refused by the decoder.
        fields[f.name] = st.just(SCHEMA_VERSION) if f.name == "v" else strategy_for(hints[f.name])
    return st.builds(cls, **fields)


def test_every_kind_has_a_strategy() -> None:
    for cls in EVENT_TYPES:
        record_strategy(cls)  # raises TypeError for a field type the test cannot generate


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.kind)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_round_trip_is_exact(cls: type[Event], data: st.DataObject) -> None:
    event = data.draw(record_strategy(cls))
    line = codec.encode(event)
    assert b"\n" not in line  # one event, one line
    assert line.startswith(b'{"kind":"%s",' % cls.kind.encode())
    back = codec.decode(line)
    assert type(back) is cls
    assert back == event
    assert codec.encode(back) == line


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_kind_anywhere_in_the_object_decodes_the_same(data: st.DataObject) -> None:
    # Lines written by other tools need not put "kind" first: the slow path must agree.
    cls = data.draw(st.sampled_from(EVENT_TYPES))
    event = data.draw(record_strategy(cls))
    obj = json.loads(codec.encode(event))
    obj["kind"] = obj.pop("kind")  # move it last
    assert codec.decode(json.dumps(obj)) == event


def _line(**changes: Any) -> bytes:
    obj = json.loads(codec.encode(_transition()))
    for key, value in changes.items():
        if value is _DROP:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj).encode()


_DROP = object()


def _transition() -> Transition:
    return Transition(seq=3, ts=1.5, run_id="r", engine_id="e0", src="a", dst="b", trigger="t")


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        (_line(kind="teleport"), "kind", "unknown event kind 'teleport'"),
        (_line(kind=7), "kind", "unknown event kind 7"),
        (_line(kind=_DROP), "kind", "missing field 'kind'"),
        (_line(src=_DROP), "src", "missing required field 'src'"),
        (_line(seq=_DROP), "seq", "missing required field 'seq'"),
        (_line(seq="3"), "seq", "field 'seq' must be an integer, not a string"),
        (_line(seq=True), "seq", "field 'seq' must be an integer, not true"),
        (_line(ts="soon"), "ts", "field 'ts' must be a number, not a string"),
        (_line(gpus=[1]), "gpus", r"field 'gpus\[0\]' must be a string, not the number 1"),
        (
            _line(gpus="GPU-0"),
            "gpus",
            r"'gpus' must be an array \(each item a string\), not a string",
        ),
        (_line(reason=5), "reason", "'reason' must be a string or null, not the number 5"),
        (_line(v=SCHEMA_VERSION + 1), "v", "newer than this offload_fsm reads"),
        (_line(v=0), "v", "not supported"),
        (_line(v="1"), "v", "field 'v' must be an integer, not a string"),
    ],
)
def test_decode_errors_name_the_field(line: bytes, field: str, message: str) -> None:
    with pytest.raises(EventDecodeError, match=message) as info:
        codec.decode(line, lineno=12)
    assert info.value.field == field
    assert info.value.line == 12
    assert str(info.value).startswith("line 12: ")


def test_nested_record_errors_name_the_top_level_field() -> None:
    good = json.loads(
        codec.encode(
            KINDS["attribution_report"](
                seq=1,
                ts=0.0,
                run_id="r",
                used_bytes=(1,),
                engine_resident_bytes=(None,),
                unattributed_bytes=(0,),
            )
        )
    )
    good["processes"] = [{"gpu": "g", "pid": "x", "used_bytes": 1, "owner": "e0"}]
    with pytest.raises(EventDecodeError, match=r"'processes\[0\]\.pid' must be an integer") as info:
        codec.decode(json.dumps(good))
    assert info.value.field == "processes"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"[1, 2]", "must be a JSON object"),
        (b'"transition"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b"not json at all", "not valid JSON"),
        (b'{"kind":"transition","v":1,', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe garbage", "not valid UTF-8 \\(byte 1 "),
        (b'{"kind":"run_started","run_id":"ab\x80"}', "not valid UTF-8 \\(byte 35 "),
    ],
)
def test_garbage_and_non_objects_are_decode_errors(line: bytes, message: str) -> None:
    with pytest.raises(EventDecodeError, match=message) as info:
        codec.decode(line, lineno=4)
    assert info.value.line == 4
    assert info.value.field is None


def test_decode_accepts_str_and_a_trailing_newline() -> None:
    line = codec.encode(_transition())
    assert codec.decode(line.decode()) == _transition()
    assert codec.decode(line + b"\n") == _transition()

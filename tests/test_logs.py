"""structlog set-up and the bus subscriber that logs every event."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

from offload_fsm.core.errors import ConfigError
from offload_fsm.events import logs
from offload_fsm.events.bus import EventBus
from offload_fsm.events.kinds import (
    KINDS,
    AdapterCallFailed,
    AttributionReport,
    Event,
    MemorySample,
    ProcessEntry,
    Transition,
)


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    logs.reset_logging()
    structlog.contextvars.clear_contextvars()
    yield
    logs.reset_logging()
    structlog.contextvars.clear_contextvars()


def transition(seq: int = 1) -> Transition:
    return Transition(
        seq=seq,
        ts=2.0,
        run_id="r",
        engine_id="e0",
        gpus=("GPU-0",),
        src="active",
        dst="releasing",
        trigger="release",
    )


def failed_call() -> AdapterCallFailed:
    return AdapterCallFailed(
        seq=2,
        ts=3.0,
        run_id="r",
        engine_id="e0",
        call="resume",
        elapsed_s=0.5,
        error_type="EngineCallTimeout",
        error="no answer",
    )


def report() -> AttributionReport:
    return AttributionReport(
        seq=3,
        ts=4.0,
        run_id="r",
        gpus=("GPU-0",),
        used_bytes=(5,),
        engine_resident_bytes=(3,),
        unattributed_bytes=(None,),
        processes=(ProcessEntry(gpu="GPU-0", pid=42, used_bytes=3, owner="e0"),),
    )


def test_one_namespaced_name_per_kind() -> None:
    names = {kind: logs.event_name(kind) for kind in KINDS}
    assert all(name == f"offload_fsm.{kind}" for kind, name in names.items())
    assert len(set(names.values())) == len(KINDS)
    with pytest.raises(ValueError, match="teleport"):
        logs.event_name("teleport")


async def test_log_events_logs_every_event_under_its_name_with_its_fields() -> None:
    bus = EventBus()
    sample = MemorySample(
        seq=4,
        ts=5.0,
        run_id="r",
        gpus=("GPU-0",),
        backend="fake",
        used_bytes=1,
        free_bytes=2,
        total_bytes=3,
    )
    published: list[Event] = [transition(), failed_call(), report(), sample]
    with capture_logs() as captured, anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(logs.log_events, bus.subscribe("log"))
            for e in published:
                await bus.publish(e)
            bus.close()
    assert [c["event"] for c in captured] == [
        "offload_fsm.transition",
        "offload_fsm.adapter_call_failed",
        "offload_fsm.attribution_report",
        "offload_fsm.memory_sample",
    ]
    assert [c["log_level"] for c in captured] == ["info", "error", "info", "debug"]
    first = captured[0]
    assert (first["engine_id"], first["src"], first["dst"], first["trigger"]) == (
        "e0",
        "active",
        "releasing",
        "release",
    )
    assert first["seq"] == 1
    assert first["ts"] == 2.0
    assert list(first["gpus"]) == ["GPU-0"]
    procs = [{"gpu": "GPU-0", "pid": 42, "used_bytes": 3, "owner": "e0"}]
    assert list(captured[2]["processes"]) == procs


def test_json_file_gets_one_json_object_per_line_with_bound_context(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    logs.configure_logging(json_file=path, console=False, level="info")
    with logs.bound_context(run="r-42"):
        logs.log_event(transition())
    logs.get_logger("gate").warning("offload_fsm.gate.note", detail="x")
    logs.log_event(failed_call())
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["event"] for line in lines] == [
        "offload_fsm.transition",
        "offload_fsm.gate.note",
        "offload_fsm.adapter_call_failed",
    ]
    assert lines[0]["run"] == "r-42"
    assert "run" not in lines[1]  # the context ended with the block
    assert lines[0]["gpus"] == ["GPU-0"]
    assert (lines[0]["level"], lines[1]["level"], lines[2]["level"]) == ("info", "warning", "error")
    assert lines[1]["logger"] == "offload_fsm.gate"
    assert lines[0]["timestamp"].endswith("Z")


def test_console_renders_for_humans_not_json() -> None:
    stream = io.StringIO()
    logs.configure_logging(console=True, console_stream=stream, level="info")
    logs.log_event(transition())
    text = stream.getvalue()
    assert "offload_fsm.transition" in text
    assert "src=active" in text
    assert "\x1b[" not in text  # no colours when not on a terminal
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_level_filters_lower_levels(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    logs.configure_logging(json_file=path, console=False, level="warning")
    logs.log_event(transition())  # info
    logs.log_event(failed_call())  # error
    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert events == ["offload_fsm.adapter_call_failed"]


def test_configure_again_replaces_the_previous_set_up(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    logs.configure_logging(json_file=first, console=False)
    logs.log_event(transition(1))
    logs.configure_logging(json_file=second, console=False)
    logs.log_event(transition(2))
    assert [json.loads(x)["seq"] for x in first.read_text().splitlines()] == [1]
    assert [json.loads(x)["seq"] for x in second.read_text().splitlines()] == [2]
    assert len(logging.getLogger("offload_fsm").handlers) == 1


@pytest.mark.parametrize("level", ["loud", "", 7, True])
def test_bad_level_is_a_config_error(level: object) -> None:
    with pytest.raises(ConfigError, match="log level"):
        logs.configure_logging(level=level)  # type: ignore[arg-type]


def test_unwritable_log_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="log file"):
        logs.configure_logging(json_file=tmp_path / "missing-dir" / "x.jsonl")
    assert logging.getLogger("offload_fsm").handlers == []


def test_unconfigured_library_logging_never_prints_to_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.log_event(transition())
    logs.get_logger().info("offload_fsm.quiet")
    assert capsys.readouterr().out == ""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Clashing(Event):
    kind: ClassVar[str] = "clashing"
    event: str
    level: int


def test_fields_named_like_structlog_keys_are_renamed_not_lost() -> None:
    fields = logs.event_fields(_Clashing(seq=1, ts=0.0, run_id="r", event="x", level=3))
    assert (fields["event_"], fields["level_"]) == ("x", 3)
    assert "event" not in fields
    assert "level" not in fields
    assert fields["seq"] == 1

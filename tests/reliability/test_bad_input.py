"""Bad input: environment, flags, GPU ids, adapter URLs, event logs and config files.

Each must give a non-zero exit (CLI) or a typed exception (library), a one-line message that
names the input and what is accepted, no traceback, and nothing written half-way (no run
directory, no empty event log). Hypothesis fuzzes the event-log decoder and reader and the
environment, topology and config-file parsers: they answer or refuse, nothing else.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offload_fsm.commands import cli
from offload_fsm.core.errors import (
    ConfigError,
    DeviceIdError,
    EngineUnreachable,
    EventDecodeError,
    OffloadFsmError,
)
from offload_fsm.core.lifecycle import State
from offload_fsm.drivers.config_file import load_run_config
from offload_fsm.drivers.topology import DUAL_ENV, dual_topology
from offload_fsm.engines.sglang import SGLangAdapter
from offload_fsm.engines.vllm import VLLMAdapter
from offload_fsm.events import codec
from offload_fsm.events.eventlog import EventLogWriter, ReadReport, read_events
from offload_fsm.events.kinds import AdapterCallFailed, Event, RunFinished, RunStarted, Transition
from offload_fsm.orchestrator.orchestrator import EngineSpec, OrchestratorConfig
from offload_fsm.probe.base import GIB
from offload_fsm.probe.devices import resolve_devices
from offload_fsm.replay import replay_path
from offload_fsm.settings import THRESHOLD_ENV, GatePolicy, check_threshold_fits, threshold_from_env
from offload_fsm.sim.fake_devices import FakeDeviceSpec, make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.timing.clock import RealClock
from tests.reliability.rig import check_log, open_rig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (THRESHOLD_ENV, *DUAL_ENV):
        monkeypatch.delenv(key, raising=False)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, err: str, *names: str) -> None:
    """Exit 2, one line on stderr naming the input and what is accepted, no traceback."""
    assert code == 2, (code, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    assert "expected" in err or "accepted" in err or "one of" in err, err
    for name in names:
        assert name in err, (name, err)


def demo(tmp_path: Path, *args: str) -> list[str]:
    return ["demo", "--quiet", "--steps", "1", "--out", str(tmp_path / "runs"), *args]


# --- thresholds ------------------------------------------------------------------------------

BAD_THRESHOLDS = ["", "  ", "abc", "8GiB", "0", "-1", "nan", "NaN", "inf", "-inf", "1e30", "80"]


@pytest.mark.parametrize("value", BAD_THRESHOLDS)
def test_bad_threshold_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    code, _, err = run_cli(capsys, *demo(tmp_path, f"--threshold={value}"))
    assert_user_error(code, err, f"--threshold={value!r}")
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.parametrize("value", BAD_THRESHOLDS)
def test_bad_threshold_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(THRESHOLD_ENV, value)
    code, _, err = run_cli(capsys, *demo(tmp_path))
    assert_user_error(code, err, f"{THRESHOLD_ENV}={value!r}")
    assert not (tmp_path / "runs").exists()
    code, _, err = run_cli(capsys, "gate", "--gpus", "0", "--backend", "fake", "--quiet")
    assert_user_error(code, err, f"{THRESHOLD_ENV}={value!r}")


def test_threshold_the_gpu_cannot_exceed_is_refused_by_the_library() -> None:
    """The gate would open onto anything: refused by the library, not only by the CLI."""
    with pytest.raises(ConfigError, match="threshold_bytes=0 "):
        OrchestratorConfig(threshold_bytes=0)
    small = make_devices(1, FakeDeviceSpec(total_bytes=8 * GIB))
    with pytest.raises(ConfigError, match="turns the wake gate off"):
        check_threshold_fits("t", "8", 8 * GIB, small)
    check_threshold_fits("t", "7.9", int(7.9 * GIB), small)  # below: fine


async def test_orchestrator_refuses_an_engine_on_a_gpu_smaller_than_the_threshold(
    tmp_path: Path,
) -> None:
    async with open_rig(tmp_path) as rig:
        small = FakeGpus(make_devices(1, FakeDeviceSpec(total_bytes=8 * GIB)), rig.clock)
        with pytest.raises(ConfigError, match="below the 8 GiB of gpu0"):
            await rig.orch.register(EngineSpec("tiny", _Idle(), small.devices, initial=State.SLEPT))
        assert "tiny" not in rig.orch.engines
    check = check_log(rig)
    assert not check.of(Transition)


# --- topology environment --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"MILES_DUAL_P1_TRAIN": "0"}, ["all four", "missing"]),  # a partial set
        ({"MILES_DUAL_P1_INFER": "0,1,9"}, ["MILES_DUAL_P1_INFER", "out of range"]),
        ({"MILES_DUAL_P2_INFER": "1,1,3"}, ["MILES_DUAL_P2_INFER", "duplicates"]),
        ({"MILES_DUAL_P1_TRAIN": "3"}, ["p1.train", "subset of infer"]),
        ({"MILES_DUAL_P2_TRAIN": "x"}, ["MILES_DUAL_P2_TRAIN", "comma-separated"]),
        ({"MILES_DUAL_P2_TRAIN": "-1"}, ["MILES_DUAL_P2_TRAIN"]),
        ({"MILES_DUAL_P2_TRAIN": "1.5"}, ["MILES_DUAL_P2_TRAIN"]),
        ({"MILES_DUAL_P2_TRAIN": ""}, ["MILES_DUAL_P2_TRAIN"]),
        ({"MILES_DUAL_P2_TRAIN": "3,"}, ["MILES_DUAL_P2_TRAIN"]),
        ({"MILES_DUAL_P2_TRAIN": "٣"}, ["MILES_DUAL_P2_TRAIN"]),  # a non-ASCII digit
    ],
)
def test_bad_topology_env(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    names: list[str],
) -> None:
    full = {"MILES_DUAL_P1_TRAIN": "0", "MILES_DUAL_P1_INFER": "0,1,2"}
    full |= {"MILES_DUAL_P2_TRAIN": "3", "MILES_DUAL_P2_INFER": "1,2,3"}
    partial = len(env) == 1 and "MILES_DUAL_P1_TRAIN" in env and env["MILES_DUAL_P1_TRAIN"] == "0"
    for key, value in (env if partial else {**full, **env}).items():
        monkeypatch.setenv(key, value)
    code, _, err = run_cli(capsys, *demo(tmp_path))
    assert_user_error(code, err, *names)
    assert not (tmp_path / "runs").exists()


def test_bad_numeric_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for flag, value in [
        ("--steps", "0"),
        ("--steps", "2.5"),
        ("--settle", "-3"),
        ("--gate-timeout", "inf"),
        ("--seed", "-1"),
        ("--gpus", "3"),  # odd: no default topology
        ("--gpus", "x"),
        ("--gpu-gib", "0"),
        ("--rollout", "nan"),
        ("--late-release-share", "1.5"),
        ("--fail", "nobody"),
        ("--run-id", "../escape"),
    ]:
        code, _, err = run_cli(capsys, *demo(tmp_path, f"{flag}={value}"))
        assert_user_error(code, err)
        assert flag.lstrip("-").split("-")[0] in err.lower() or "GPU count" in err, (flag, err)
        assert not (tmp_path / "runs").exists(), flag


# --- GPU ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "says"),
    [
        ("GPU-deadbeef", "no GPU UUID starts with"),
        ("GPU-fake000", "is ambiguous"),
        ("zz:00.0", "is not an index, a UUID"),
        ("0000:99:00.0", "no GPU has PCI bus id"),
        ("7", "does not exist"),
        ("0,,1", "empty item"),
        ("0,0", "name the same GPU"),
        ("0,GPU-fake0000", "name the same GPU"),
    ],
)
def test_bad_gpu_ids(capsys: pytest.CaptureFixture[str], ids: str, says: str) -> None:
    code, _, err = run_cli(capsys, "probe", "--backend", "fake", "--gpus", ids)
    assert code == 2 and says in err and "Traceback" not in err and err.count("\n") == 1
    devices = make_devices(2)
    with pytest.raises(DeviceIdError, match=says.split(" ")[0]):
        resolve_devices(ids, devices)


# --- adapter URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["", "not a url", "ftp://host:1", "http://", "http:///x", "://x"])
@pytest.mark.parametrize("adapter", [SGLangAdapter, VLLMAdapter])
def test_malformed_adapter_urls(adapter: Any, url: str) -> None:
    with pytest.raises(ConfigError, match="base_url") as info:
        adapter("e0", url)
    assert "\n" not in str(info.value) and "http(s) URL" in str(info.value)


def test_adapter_url_of_the_wrong_type() -> None:
    with pytest.raises(ConfigError, match="base_url"):
        SGLangAdapter("e0", 8000)  # type: ignore[arg-type]


async def test_unreachable_adapter_url_fails_the_engine_and_says_why(tmp_path: Path) -> None:
    """A well-formed URL nobody listens on: EngineUnreachable, engine failed, in the log."""
    with socket.socket() as s:  # a loopback port that is certainly closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    adapter = SGLangAdapter("sg", f"http://127.0.0.1:{port}", timeout_s=2.0)
    async with open_rig(tmp_path, clock=RealClock()) as rig:
        await rig.orch.register(EngineSpec("sg", adapter, make_devices(1)))
        with pytest.raises(EngineUnreachable, match=f"127.0.0.1:{port}"):
            await rig.orch.release("sg")
        assert rig.orch.state("sg") is State.FAILED
    await adapter.aclose()
    check = check_log(rig)
    failed = check.of(AdapterCallFailed, "sg")
    assert failed and failed[0].error_type == "EngineUnreachable"


# --- event logs ------------------------------------------------------------------------------


def _good_log(path: Path) -> list[Event]:
    run = RunStarted(
        seq=1, ts=1.0, run_id="r", tool_version="0", threshold_bytes=GIB,
        settle_samples=1, fail_open=False, backend="fake",
    )  # fmt: skip
    end = RunFinished(seq=2, ts=2.0, run_id="r", status="ok")
    with EventLogWriter(path) as writer:
        writer.write(run)
        writer.write(end)
    return [run, end]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\x00\xff garbage\n", "line 1"),
        (b'{"kind":"no_such_kind","v":1}\n', "unknown event kind"),
        (b'{"kind":"run_finished","v":99,"seq":1,"ts":1,"run_id":"r","status":"ok"}\n', "newer"),
        (b"[1, 2, 3]\n", "JSON object"),
        (b"[" * 100_000 + b"\n", "nested too deeply"),  # was a RecursionError traceback
        (b'{"kind":"run_started","command":' + b"[" * 100_000 + b"\n", "nested too deeply"),
        # a corrupted byte inside a string (found by the fuzz: it escaped as UnicodeDecodeError)
        (b'{"kind":"run_started","v":1,"seq":1,"ts":1,"run_id":"\x80"}\n', "not valid UTF-8"),
        # the same in the generic path (kind not first), whichever msgspec is installed
        (b'{"v":1,"kind":"run_started","run_id":"\xc3("}\n', "not valid UTF-8"),
        (b'{"kind":"run_finished","v":1,"seq":"one","ts":1,"run_id":"r","status":"ok"}\n', "seq"),
        (
            b'{"kind":"run_finished","v":1,"seq":1,"ts":1,"run_id":"r","status":"ok"}\n',
            "run_started",
        ),
    ],
)
def test_unusable_event_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, says: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    code, _, err = run_cli(capsys, "replay", str(path))
    assert code == 2 and says in err and "Traceback" not in err and err.count("\n") == 1, err
    assert str(path) in err, err  # names the file
    if (
        says != "run_started"
    ):  # (a log that does not begin with a run's start is not a line's fault)
        assert "line 1:" in err, err
        with pytest.raises(EventDecodeError) as info:
            list(read_events(path))
        assert info.value.line == 1


def test_missing_directory_and_empty_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for target in (tmp_path / "missing.jsonl", tmp_path):
        code, _, err = run_cli(capsys, "replay", str(target))
        assert_user_error(code, err, str(target))
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    code, _, err = run_cli(capsys, "replay", str(empty))
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1


def test_a_log_cut_mid_line_is_reported_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cut.jsonl"
    events = _good_log(path)
    path.write_bytes(path.read_bytes()[:-20])  # the last line loses its end
    report = ReadReport(str(path))
    assert [e.seq for e in read_events(path, report=report)] == [events[0].seq]
    assert report.truncated is not None and not report.truncated.kept
    assert replay_path(path).truncated
    code, out, _ = run_cli(capsys, "replay", str(path))
    assert code == 0 and "truncated" in out


# --- config files (drivers/run_miles_*.py --config FILE: offload_fsm.drivers.config_file) ---

ENGINE = """
[[engine]]
id = "e0"
pipeline = "p1"
role = "engine"
adapter = "sglang"
url = "http://127.0.0.1:1"
gpus = [0]
"""
PIPELINE = '[[pipeline]]\nname = "p1"\ntrain = [0]\ninfer = [0]\n'


def drivers(tmp_path: Path, *args: str) -> tuple[int, str]:
    """drivers/run_miles_dual.py in this process; (exit code, stderr)."""
    import contextlib
    import io

    from offload_fsm.drivers.scripts import dual_main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = dual_main(["--quiet", "--out", str(tmp_path / "runs"), *args])
    return code, err.getvalue()


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("runn = 1\n" + ENGINE, ["runn", "a known key"]),  # a typo at the top
        ("[run]\nthresold_gib = 8\n" + ENGINE, ["run.thresold_gib", "a known key"]),
        ("[run]\nthreshold_gib = '8'\n" + ENGINE, ["run.threshold_gib", "int or float"]),
        ("[run]\nthreshold_gib = true\n" + ENGINE, ["run.threshold_gib", "int or float"]),
        ("[run]\nsteps = 2.5\n" + ENGINE, ["run.steps", "int"]),
        ("[run]\nbackend = 3\n" + ENGINE, ["run.backend", "str"]),
        ("run = 3\n" + ENGINE, ["run", "a table"]),
        ("", ["engine", "at least one"]),
        (ENGINE.replace('url = "http://127.0.0.1:1"\n', ""), ["engine[0].url", "URL"]),
        (ENGINE.replace('"sglang"', '"tgi"'), ["engine[0].adapter", "sglang | vllm | trainer"]),
        (ENGINE.replace('"engine"\nadapter', '"boss"\nadapter'), ["engine[0].role"]),
        (ENGINE.replace("gpus = [0]", "gpus = []"), ["engine[0].gpus", "non-empty"]),
        (ENGINE.replace("gpus = [0]", "gpus = [true]"), ["engine[0].gpus"]),
        (ENGINE + "root_pid = -3\n", ["engine[0].root_pid", "positive"]),
        (ENGINE + "root_pid = '7'\n", ["engine[0].root_pid", "int"]),
        (ENGINE + "colour = 'red'\n", ["engine[0].colour", "a known key"]),
        (ENGINE + ENGINE, ["engine ids", "distinct"]),
        (PIPELINE.replace('"p1"', '"p9"') + ENGINE, ["engine[0].pipeline", "p9"]),
        (PIPELINE.replace("train = [0]", "train = [-1]") + ENGINE, ["pipeline[0].train"]),
        (PIPELINE.replace("infer = [0]", "infer = '0'") + ENGINE, ["pipeline[0].infer"]),
        ("this is not toml\n", ["valid TOML"]),
        ("a = " + "[" * 5000 + "\n", ["valid TOML"]),  # nested too deep: was a traceback
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, names: list[str]) -> None:
    path = tmp_path / "run.toml"
    path.write_text(text)
    code, err = drivers(tmp_path, "--config", str(path))
    assert_user_error(code, err, str(path), *names)
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("run.json", b"[" * 100_000, "valid JSON"),  # nested too deep: was a traceback
        ("run.json", b'{"engine": 3}', "an array of tables"),
        ("run.json", b"[]", "a table/object at the top"),
        ("run.json", b"\xff\xfe", "valid JSON"),
        ("run.toml", b"\xff\xfe", "valid TOML"),
        ("run.yaml", b"engine: []", "a .toml or .json file"),
    ],
)
def test_bad_config_file_formats(tmp_path: Path, name: str, content: bytes, says: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    code, err = drivers(tmp_path, "--config", str(path))
    assert_user_error(code, err, says)
    assert not (tmp_path / "runs").exists()


def test_unreadable_config_file(tmp_path: Path) -> None:
    for target in (tmp_path / "missing.toml", tmp_path):
        code, err = drivers(tmp_path, "--config", str(target))
        assert_user_error(code, err, str(target), "a readable file")
        assert not (tmp_path / "runs").exists()


def test_a_good_config_without_any_probe_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real engines from the file, but this machine cannot measure a GPU (nvidia-smi asked
    for, none on PATH): refused before a log exists."""
    path = tmp_path / "run.toml"
    path.write_text("[run]\nbackend = 'smi'\n" + ENGINE)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    code, err = drivers(tmp_path, "--config", str(path))
    assert code == 2 and "nvidia-smi was not found on PATH" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_cli_user_error_has_no_traceback_from_the_real_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "offload_fsm", "demo", "--threshold", "lots"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--threshold='lots'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()


# --- fuzz ------------------------------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_decoder_answers_or_refuses_any_bytes(data: bytes) -> None:
    try:
        event = codec.decode(data)
    except EventDecodeError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(event, Event)
        assert codec.decode(codec.encode(event)) == event


def _valid_lines() -> list[bytes]:
    path_events = [
        RunStarted(
            seq=1, ts=1.0, run_id="r", tool_version="0", threshold_bytes=GIB,
            settle_samples=3, fail_open=False, backend="fake",
        ),
        Transition(seq=2, ts=2.0, run_id="r", engine_id="e", gpus=("g",), src="active",
                   dst="releasing", trigger="release"),
    ]  # fmt: skip
    return [codec.encode(e) for e in path_events]


@FUZZ
@given(st.sampled_from(_valid_lines()), st.data())
def test_decoder_on_damaged_valid_lines(line: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(line)))
    pos = data.draw(st.integers(0, len(line) - 1))
    byte = data.draw(st.integers(0, 255))
    for damaged in (line[:cut], line[:pos] + bytes([byte]) + line[pos + 1 :]):
        try:
            event = codec.decode(damaged)
        except EventDecodeError:
            continue
        assert isinstance(event, Event)


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(_valid_lines()), st.binary(max_size=60)), max_size=6))
def test_log_reader_and_replay_answer_or_refuse_any_file(tmp_path_factory: Any, lines: Any) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "f.jsonl"
    path.write_bytes(b"\n".join(lines))
    report = ReadReport(str(path))
    try:
        events = list(read_events(path, report=report))
    except EventDecodeError as exc:
        assert exc.line is not None and exc.line >= 1
    else:
        assert report.events == len(events) and report.finished
    try:
        result = replay_path(path)
    except (EventDecodeError, ConfigError):
        pass
    else:
        assert result.events >= 0


@FUZZ
@given(st.text(max_size=20))
def test_threshold_env_parser(text: str) -> None:
    try:
        nbytes, source = threshold_from_env({THRESHOLD_ENV: text})
    except ConfigError as exc:
        assert exc.name == THRESHOLD_ENV and "\n" not in str(exc)
    else:
        assert source == THRESHOLD_ENV and 0 < nbytes <= (1 << 20) * GIB


_ids = st.lists(st.integers(-2, 9), max_size=5).map(lambda xs: ",".join(map(str, xs)))
_env_value = st.one_of(_ids, st.text(max_size=8))


@FUZZ
@given(st.integers(2, 8), st.dictionaries(st.sampled_from(DUAL_ENV), _env_value), st.integers(1, 3))
def test_topology_env_parser(count: int, env: dict[str, str], per_engine: int) -> None:
    try:
        topologies = dual_topology(count, env, per_engine)
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        for topo in topologies:
            assert set(topo.train) <= set(topo.infer)
            assert all(0 <= g < count for g in topo.infer)
            assert len(set(topo.infer)) == len(topo.infer)
            assert len(topo.infer) % topo.gpus_per_engine == 0


_toml_value = st.one_of(
    st.integers(-5, 100),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=6),
    st.lists(st.integers(-1, 5), max_size=4),
)
_run_keys = st.one_of(
    st.sampled_from(["threshold_gib", "settle", "gate_timeout_s", "steps", "backend"]),
    st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
)
_engine_keys = st.one_of(
    st.sampled_from(["id", "pipeline", "role", "adapter", "gpus", "url", "root_pid", "offload"]),
    st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


@FUZZ
@given(
    st.dictionaries(_run_keys, _toml_value, max_size=4),
    st.lists(st.dictionaries(_engine_keys, _toml_value, max_size=7), max_size=3),
)
def test_config_file_parser(tmp_path_factory: Any, run: dict[str, object], engines: Any) -> None:
    text = "[run]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in run.items())
    for table in engines:
        text += "[[engine]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items())
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(text)
    try:
        config = load_run_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
    else:
        assert config.engines and set(config.run) <= {
            "threshold_gib", "settle", "gate_timeout_s", "steps", "backend",
        }  # fmt: skip


@FUZZ
@given(st.binary(max_size=200), st.sampled_from(["c.toml", "c.json"]))
def test_config_file_parser_on_any_bytes(tmp_path_factory: Any, data: bytes, name: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / name
    path.write_bytes(data)
    try:
        load_run_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc)


class _Idle:
    """An adapter that does nothing (registration-only tests)."""

    name = "idle"
    engine_id = "tiny"
    process_root = None

    async def prepare_release(self, drain_timeout_s: float) -> None:
        return None

    async def release(self, tags: object) -> None:
        return None

    async def resume(self, tags: object) -> None:
        return None

    async def finish_wake(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def test_gate_policy_refuses_nonsense() -> None:
    for kwargs in ({"settle_samples": 0}, {"deadline_s": float("nan")}, {"backoff": 0.5}):
        with pytest.raises(ConfigError):
            GatePolicy(**kwargs)  # type: ignore[arg-type]


def test_library_errors_are_offload_fsm_errors() -> None:
    """Bad input from Python is a typed error too, never a bare ValueError/KeyError."""
    with pytest.raises(OffloadFsmError):
        load_run_config("/nonexistent/x.toml")
    with pytest.raises(OffloadFsmError, match="nested too deeply"):
        codec.decode(b'{"kind":"run_started","command":' + b"[" * 100_000)

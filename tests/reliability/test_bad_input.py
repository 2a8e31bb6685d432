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

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offload_fsm import cli, codec
from offload_fsm.adapters.sglang import SGLangAdapter
from offload_fsm.adapters.vllm import VLLMAdapter
from offload_fsm.clock import RealClock
from offload_fsm.config import (
    THRESHOLD_ENV,
    GatePolicy,
    check_threshold_fits,
    threshold_from_env,
)
from offload_fsm.config_file import load_run_config
from offload_fsm.errors import (
    ConfigError,
    DeviceIdError,
    EngineUnreachable,
    EventDecodeError,
    OffloadFsmError,
)
from offload_fsm.eventlog import EventLogWriter, ReadReport, read_events
from offload_fsm.events import AdapterCallFailed, Event, RunFinished, RunStarted, Transition
from offload_fsm.lifecycle import State
from offload_fsm.orchestrator import EngineSpec, OrchestratorConfig
from offload_fsm.probe.base import GIB
from offload_fsm.probe.devices import resolve_devices
from offload_fsm.probe.fake import FakeDeviceSpec, FakeGpus, make_devices
from offload_fsm.replay import replay_path
from offload_fsm.topology import DUAL_ENV, dual_topology
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
        # a corrupted byte inside a string (found by the fuzz: it escaped as UnicodeDecodeError)
        (b'{"kind":"run_started","v":1,"seq":1,"ts":1,"run_id":"\x80"}\n', "not valid UTF-8"),
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


# --- config files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("thresold = 8\n", ["key='thresold'", "one of threshold"]),  # a typo
        ("threshold = '8'\n", ["threshold", "a number"]),
        ("threshold = true\n", ["threshold", "a number"]),
        ("threshold = 0\n", ["threshold", "positive"]),
        ("threshold = nan\n", ["threshold", "positive"]),
        ("threshold = 1e30\n", ["threshold", "not a GPU size"]),
        ("threshold = 100\n", ["threshold", "turns the wake gate off"]),
        ("steps = 2.5\n", ["steps", "an integer"]),
        ("steps = true\n", ["steps", "an integer"]),
        ("steps = 0\n", ["steps", "an integer >= 1"]),
        ("seed = -1\n", ["seed", ">= 0"]),
        ("cotenant = 1\n", ["cotenant", "true or false"]),
        ("late_release_share = 2\n", ["late_release_share", "[0, 1]"]),
        ("out = ''\n", ["out", "non-empty string"]),
        ("out = 3\n", ["out", "non-empty string"]),
        ("gate_timeout = [1]\n", ["gate_timeout", "a number"]),
        ("this is not toml\n", ["--config", "valid TOML", "line 1"]),
        ("[topology]\np1_train = [0]\n", ["[topology]", "missing"]),
        ("[topology]\nextra = [0]\n", ["[topology] key", "extra"]),
        ("topology = 3\n", ["[topology]", "a table"]),
        (
            "[topology]\np1_train=[0]\np1_infer=[0,1,2]\np2_train=['3']\np2_infer=[1,2,3]\n",
            ["p2_train", "integers"],
        ),
        (
            "[topology]\np1_train=[0]\np1_infer=[0,1,9]\np2_train=[3]\np2_infer=[1,2,3]\n",
            ["[topology] p1_infer", "out of range"],
        ),
        (
            "[topology]\np1_train=[3]\np1_infer=[0,1,2]\np2_train=[3]\np2_infer=[1,2,3]\n",
            ["p1.train", "subset of infer"],
        ),
    ],
)
def test_bad_config_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, names: list[str]
) -> None:
    path = tmp_path / "run.toml"
    path.write_text(text)
    code, _, err = run_cli(capsys, *demo(tmp_path, "--config", str(path)))
    assert_user_error(code, err, *names)
    assert str(path) in err  # the file is named
    assert not (tmp_path / "runs").exists()


def test_unreadable_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for target in (tmp_path / "missing.toml", tmp_path):
        code, _, err = run_cli(capsys, *demo(tmp_path, "--config", str(target)))
        assert_user_error(code, err, "--config", str(target))
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    code, _, err = run_cli(capsys, *demo(tmp_path, "--config", str(binary)))
    assert_user_error(code, err, "valid TOML")


def test_a_good_config_file_runs_and_flags_win(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(THRESHOLD_ENV, "9")  # the file wins over the environment
    path = tmp_path / "run.toml"
    out = tmp_path / "from-file"
    path.write_text(
        f"threshold = 7.5\nsteps = 2\nseed = 4\nout = '{out}'\nrun_id = 'cfg'\nquiet = true\n"
        "cotenant = false\n[topology]\np1_train = [0]\np1_infer = [0, 1]\n"
        "p2_train = [3]\np2_infer = [2, 3]\n"
    )
    code, _, _ = run_cli(capsys, "demo", "--config", str(path), "--steps", "1")  # flag wins
    assert code == 0
    log = out / "cfg.jsonl"
    result = replay_path(log)
    assert result.ok and result.run.threshold_bytes == int(7.5 * GIB)
    assert {e: t.gpus for e, t in result.engines.items()}.keys() >= {"p1.engine1", "p2.engine0"}
    phases = [e for e in read_events(log) if getattr(e, "phase", None) == "train"]
    assert {getattr(e, "step", 0) for e in phases} == {1}  # one step: the flag won


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
_keys = st.one_of(
    st.sampled_from(["threshold", "steps", "settle", "gate_timeout", "seed", "gpus", "gpu_gib",
                     "rollout", "train", "cotenant", "late_release_share", "out", "run_id",
                     "fail", "quiet"]),
    st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
)  # fmt: skip


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
@given(st.dictionaries(_keys, _toml_value, max_size=5), st.booleans())
def test_config_file_parser(tmp_path_factory: Any, table: dict[str, object], topo: bool) -> None:
    text = "".join(f"{k} = {_toml(v)}\n" for k, v in table.items())
    if topo:
        text += "[topology]\np1_train = [0]\np1_infer = [0, 1]\np2_train = [3]\np2_infer = [2, 3]\n"
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(text)
    try:
        config = load_run_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
    else:
        assert set(config.values) <= {
            "threshold", "steps", "settle", "gate_timeout", "seed", "gpus", "gpu_gib",
            "rollout", "train", "no_cotenant", "late_release_share", "out", "run_id", "fail",
            "quiet",
        }  # fmt: skip
        assert (config.topology is not None) == topo


@FUZZ
@given(st.binary(max_size=200))
def test_config_file_parser_on_any_bytes(tmp_path_factory: Any, data: bytes) -> None:
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
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


async def test_library_errors_are_offload_fsm_errors() -> None:
    """Bad input from Python is a typed error too, never a bare ValueError/KeyError."""
    with pytest.raises(OffloadFsmError):
        await anyio.to_thread.run_sync(load_run_config, "/nonexistent/x.toml")

"""Secrets never leak: a run configured with credentials (a password in an engine URL, an API
key sent as ``Authorization: Bearer``) is run through the real driver
(``drivers/run_miles_rlix.py --config``) against engines that fail, and every artefact is
scanned for the secret: the event log, the driver's stdout (live progress lines, summary,
report) and stderr, the timeline PNG where drawn, the structlog output (file and console),
``offload-fsm replay`` (text, ``--json``, ``--engine``) and the ``offload-fsm trace`` JSON.

The engines fail in the ways that quote a URL or an answer: a closed port (the URL lands in
``EngineUnreachable``), and a server that answers 401 echoing the request's
``Authorization`` header in its body (what a misconfigured proxy does)."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import structlog

from offload_fsm.commands import cli
from offload_fsm.core.redact import MASK, redact, register_secret
from offload_fsm.events.eventlog import EventLogWriter, read_events
from offload_fsm.events.kinds import (
    AdapterCallFailed,
    EngineRegistered,
    RunFinished,
    RunStarted,
    Transition,
)
from offload_fsm.events.logs import configure_logging, get_logger, log_event, reset_logging
from offload_fsm.probe.base import GIB
from offload_fsm.replay import replay_path
from tests.reliability.test_probe_faults import SmiGpu

ROOT = Path(__file__).resolve().parents[2]
SECRET = "pw-7Hq2-zX9k"  # distinctive: it can only come from the configuration


class _EchoAuth(BaseHTTPRequestHandler):
    """Answers every request 401 with the request's Authorization header in the body."""

    def _answer(self) -> None:
        body = f"unauthorized: got Authorization: {self.headers.get('Authorization')}".encode()
        self.send_response(401)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:  # keep the test's output quiet
        return None


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoAuth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:  # a loopback port that is certainly closed afterwards
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


CONFIG = """
[run]
steps = 1
backend = "smi"
threshold_gib = 8
gate_timeout_s = 5

[[pipeline]]
name = "p1"
train = [0]
infer = [0]

[[engine]]
id = "p1.engine0"
pipeline = "p1"
role = "engine"
adapter = "ADAPTER"
url = "URL"
gpus = [0]
EXTRA

[[engine]]
id = "p1.trainer"
pipeline = "p1"
role = "trainer"
adapter = "trainer"
offload = "tests.config_hooks:offload"
onload = "tests.config_hooks:onload"
gpus = [0]
"""


def _artefacts(
    tmp_path: Path, env: dict[str, str], config: Path, capsys: pytest.CaptureFixture[bytes]
) -> dict[str, bytes]:
    """Run the driver, then every command that reads its log; every output by name."""
    proc = subprocess.run(
        [
            *(sys.executable, "drivers/run_miles_rlix.py", "--config", str(config)),
            *("--rollout", "0.1", "--train", "0.1", "--out", str(tmp_path / "runs")),
            *("--run-id", "sec"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])  # the run failed
    log = tmp_path / "runs" / "sec.jsonl"
    out = {
        "driver stdout": proc.stdout,
        "driver stderr": proc.stderr,
        "event log": log.read_bytes(),
    }
    png = log.with_suffix(".png")
    if png.exists():
        out["timeline png"] = png.read_bytes()
    for name, argv in [
        ("replay", ["replay", str(log)]),
        ("replay --json", ["replay", "--json", str(log)]),
        ("replay --engine", ["replay", str(log), "--engine", "p1.engine0"]),
        ("trace", ["trace", str(log), "-o", str(tmp_path / "t.json")]),
    ]:
        cli.main(argv)
        captured = capsys.readouterr()
        out[f"{name} stdout"], out[f"{name} stderr"] = captured.out, captured.err
    out["trace json"] = (tmp_path / "t.json").read_bytes()
    json.loads(out["trace json"])  # still valid JSON after redaction
    json.loads(out["replay --json stdout"])
    out.update(_structlog_of(log, tmp_path / "structlog.jsonl"))
    return out


def _structlog_of(log: Path, path: Path) -> dict[str, bytes]:
    """The run's events through offload_fsm's structlog set-up (file and console), and an
    application's own line naming the configuration's secrets."""
    console = io.StringIO()
    configure_logging(json_file=path, console_stream=console, level="debug")
    try:
        for event in read_events(log):
            log_event(event)
        get_logger("app").error(
            "engine config",
            url=f"http://user:{SECRET}@127.0.0.1:1",
            headers={"Authorization": f"Bearer {SECRET}"},
            note=f"retrying with api_key={SECRET}",
        )
    finally:
        reset_logging()
        structlog.reset_defaults()
    return {"structlog file": path.read_bytes(), "structlog console": console.getvalue().encode()}


@pytest.mark.parametrize(
    ("adapter", "how"),
    [("sglang", "password in a URL to a closed port"), ("vllm", "api_key echoed back")],
)
def test_no_artefact_of_a_configured_run_holds_a_secret(
    tmp_path: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
    echo_port: int,
    adapter: str,
    how: str,
) -> None:
    if how.startswith("password"):
        url, extra = f"http://user:{SECRET}@127.0.0.1:{_closed_port()}", ""
    else:
        url, extra = f"http://127.0.0.1:{echo_port}", f'api_key = "{SECRET}"'
    config = tmp_path / "run.toml"
    text = CONFIG.replace("ADAPTER", adapter).replace("URL", url).replace("EXTRA", extra)
    config.write_text(text)
    gpu = SmiGpu(tmp_path / "smi")
    env = {**os.environ, **gpu.env(), "PYTHONPATH": str(ROOT)}
    env["PATH"] = f"{env['PATH']}:{os.path.dirname(sys.executable)}"
    artefacts = _artefacts(tmp_path, env, config, capsysbinary)

    leaks = [name for name, data in artefacts.items() if SECRET.encode() in data]
    assert not leaks, leaks
    log = artefacts["event log"].decode()
    # Not vacuous: the failure is in the log, naming the engine's host and the masked secret.
    assert "adapter_call_failed" in log and MASK in log, log[-3000:]
    if how.startswith("password"):
        assert "http://user:***@127.0.0.1:" in log and "EngineUnreachable" in log, log[-3000:]
    result = replay_path(tmp_path / "runs" / "sec.jsonl")
    assert result.ok and result.finished is not None and result.finished.status == "failed"
    assert result.finished.reason is not None and MASK in result.finished.reason
    assert result.engines["p1.engine0"].state == "failed"
    assert MASK.encode() in artefacts["structlog file"]


def test_basic_auth_from_a_urls_user_info_is_not_echoed_either(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], echo_port: int
) -> None:
    """httpx sends a URL's user-info as ``Authorization: Basic base64(user:password)``: a
    server that echoes it must not put the encoded password into the log either."""
    url = f"http://user:{SECRET}@127.0.0.1:{echo_port}"
    encoded = base64.b64encode(f"user:{SECRET}".encode()).decode()
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.replace("ADAPTER", "sglang").replace("URL", url).replace("EXTRA", ""))
    gpu = SmiGpu(tmp_path / "smi")
    env = {**os.environ, **gpu.env(), "PYTHONPATH": str(ROOT)}
    env["PATH"] = f"{env['PATH']}:{os.path.dirname(sys.executable)}"
    artefacts = _artefacts(tmp_path, env, config, capsysbinary)
    for secret in (SECRET, encoded):
        leaks = [name for name, data in artefacts.items() if secret.encode() in data]
        assert not leaks, (secret, leaks)
    assert "Authorization: Basic ***" in artefacts["event log"].decode()


@pytest.mark.parametrize(
    ("text", "hidden", "kept"),
    [
        ("GET http://user:SECRET@h:9/x: unreachable", "SECRET", "http://user:***@h:9/x"),
        ("https://SECRET@github.com/o/r", "SECRET", "https://***@github.com/o/r"),
        ("http://u:p@SECRET@h/x", "SECRET", "http://u:***@h/x"),  # an unencoded "@" in it
        ("{'Authorization': 'Bearer SECRET'}", "SECRET", "'Authorization': 'Bearer ***'"),
        ("401: bad token Bearer SECRET", "SECRET", "Bearer ***"),
        ("Proxy-Authorization: Basic SECRET", "SECRET", "Proxy-Authorization: Basic ***"),
        ('{"api_key": "SECRET", "n": 1}', "SECRET", '{"api_key": "***", "n": 1}'),
        ("engine[0].api_key='SECRET' is invalid", "SECRET", "api_key='***'"),
        ("GET /x?token=SECRET&a=1", "SECRET", "token=***&a=1"),
        ("x-api-key: SECRET", "SECRET", "x-api-key: ***"),
        ("password=SECRET", "SECRET", "password=***"),
    ],
)
def test_redact_hides_each_shape_of_secret(text: str, hidden: str, kept: str) -> None:
    secret = "Zq8-" + hidden.lower()  # not registered: the patterns alone must find it
    text, kept = text.replace(hidden, secret), kept.replace(hidden, secret)
    once = redact(text)
    assert secret not in once and kept in once, once
    assert redact(once) == once  # idempotent: an outer boundary may clean it again


def test_redact_leaves_ordinary_text_alone_and_hides_registered_values_anywhere() -> None:
    ordinary = (
        "release failed: EngineUnreachable: POST http://127.0.0.1:9/release_memory_occupation: "
        "engine unreachable; max_tokens=5 kv_cache basic usage"
    )
    assert redact(ordinary) == ordinary
    register_secret("Kq3-registered-value")
    assert redact("the server said: Kq3-registered-value is wrong") == (
        f"the server said: {MASK} is wrong"
    )
    register_secret("ab")  # too short to register: it would garble every message
    assert redact("a table") == "a table"


def test_reports_of_a_log_written_before_redaction_hide_its_secrets(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """A log from before redaction existed holds the password in its reasons: replay (text,
    ``--json``, ``--engine``), trace and structlog still print none of it."""
    leaked = f"EngineUnreachable: POST http://user:{SECRET}@127.0.0.1:9/abort_request"
    ids = {"run_id": "old", "engine_id": "e", "gpus": ("GPU-0",)}
    events = [
        RunStarted(seq=1, ts=1.0, run_id="old", tool_version="0", threshold_bytes=GIB,
                   settle_samples=1, fail_open=False, backend="fake"),
        EngineRegistered(seq=2, ts=1.0, role="engine", adapter="sglang",
                         initial_state="active", **ids),
        Transition(seq=3, ts=1.1, src="active", dst="releasing", trigger="release", **ids),
        AdapterCallFailed(seq=4, ts=1.2, call="prepare_release", elapsed_s=0.1,
                          error_type="EngineUnreachable", error=leaked, **ids),
        Transition(seq=5, ts=1.2, src="releasing", dst="failed", trigger="fail",
                   reason=f"release failed: {leaked}", **ids),
        RunFinished(seq=6, ts=1.3, run_id="old", status="failed", reason=leaked),
    ]  # fmt: skip
    log = tmp_path / "old.jsonl"
    with EventLogWriter(log) as writer:
        writer.write_many(events)
    assert SECRET.encode() in log.read_bytes()  # the old log does hold it
    out: dict[str, bytes] = {}
    for name, argv in [
        ("replay", ["replay", str(log)]),
        ("replay --json", ["replay", "--json", str(log)]),
        ("replay --engine", ["replay", str(log), "--engine", "e"]),
        ("trace", ["trace", str(log), "-o", str(tmp_path / "t.json")]),
    ]:
        cli.main(argv)
        captured = capsysbinary.readouterr()
        out[name] = captured.out + captured.err
    out["trace json"] = (tmp_path / "t.json").read_bytes()
    out.update(_structlog_of(log, tmp_path / "structlog.jsonl"))
    leaks = [name for name, data in out.items() if SECRET.encode() in data]
    assert not leaks, leaks
    assert b"http://user:***@127.0.0.1:9" in out["replay --engine"], out["replay --engine"]
    assert b"http://user:***@127.0.0.1:9" in out["trace json"]

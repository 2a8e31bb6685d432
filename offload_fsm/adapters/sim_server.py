"""A simulated SGLang (and vLLM sleep-mode) HTTP server on loopback, as a real process tree.

    python -m offload_fsm.adapters.sim_server --ledger-dir DIR --gpu KEY [--gpu KEY ...] \
        [--port 0] [--footprint-gib weights=2,kv_cache=4,cuda_graph=0.5,context=0.6] \
        [--faults '[{"call": "release", "kind": "late_release", "delay_s": 0.5, "nth": 1}]']

The launcher (this process) serves HTTP with the stdlib ThreadingHTTPServer and spawns (via
multiprocessing "spawn", as SGLang does) a child that holds the simulated GPU memory and writes
it, keyed by its real pid, into the ledger directory (see :mod:`.sim_proc`). Once ready the
launcher prints one JSON line on stdout: ``{"url", "port", "pid", "scheduler_pid"}``.

SGLang routes: /health, /server_info (+ /get_server_info), /abort_request, /flush_cache,
/pause_generation, /continue_generation, /release_memory_occupation, /resume_memory_occupation.
vLLM routes: /sleep?level=1|2, /wake_up[?tags=..], /is_sleeping. Control: GET /_sim/state,
GET|POST /_sim/faults (a FaultPlan as JSON), POST /_sim/reset.

Faults (see :class:`~offload_fsm.adapters.sim_model.FaultKind`), per call number:
error -> HTTP 500; hang -> no answer for delay_s (or until stopped), then the connection
drops; unreachable -> the connection drops without an answer; crash -> the connection drops,
the child dies delay_s later (its memory with it) and the launcher closes its port (later calls:
connection refused) and exits; late/partial/no release and no-op resume act on the memory;
busy (on "abort") keeps /flush_cache answering 400 for delay_s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psutil

from offload_fsm.adapters.sim_model import (
    TAGS,
    Fault,
    FaultKind,
    FaultPlan,
    Footprint,
)
from offload_fsm.adapters.sim_proc import scheduler_main
from offload_fsm.errors import ConfigError, EngineError, OffloadFsmError
from offload_fsm.probe.base import GIB

_CHILD_REPLY_TIMEOUT_S = 10.0
_PAUSE_MODES = ("abort", "retract", "in_place")
_VLLM_SLEEP_MODES = ("abort", "wait", "keep")


class _Drop(Exception):
    """Close the connection without an answer (a dropped or hung engine)."""


class _Reply(Exception):
    def __init__(self, status: int, body: object, content_type: str = "application/json") -> None:
        self.status = status
        self.body = body
        self.content_type = content_type


class SimServerState:
    """What the launcher knows: the child, the fault plan, call counts, the drain state."""

    def __init__(
        self, conn: Connection, scheduler_pid: int, footprint: Footprint, plan: FaultPlan
    ) -> None:
        self.conn = conn
        self.scheduler_pid = scheduler_pid
        self.footprint = footprint
        self.plan = plan
        self.calls: dict[str, int] = {}
        self.busy_until = 0.0
        self.crashed = False
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.on_crash: Any = None  # set by main(): shuts the server down

    def child(self, op: str, *args: object) -> object:
        with self.lock:
            try:
                self.conn.send((op, *args))
                if not self.conn.poll(_CHILD_REPLY_TIMEOUT_S):
                    raise _Reply(500, {"error": {"message": f"scheduler did not answer {op!r}"}})
                status, value = self.conn.recv()
            except (EOFError, OSError, BrokenPipeError) as exc:
                raise _Drop from exc  # the child is gone: the engine is unreachable
        if status == "refused":
            raise _Reply(400, {"error": {"message": str(value)}})
        return value

    def enter(self, call: str) -> Fault | None:
        """Count the call and apply call-level faults; memory faults are returned."""
        if self.crashed:
            raise _Drop
        with self.lock:
            n = self.calls[call] = self.calls.get(call, 0) + 1
            fault = self.plan.fault_for(call, n)
        kind = fault.kind if fault is not None else None
        if fault is None:
            return None
        if kind is FaultKind.ERROR:
            raise _Reply(500, {"error": {"message": "internal server error (simulated fault)"}})
        if kind is FaultKind.UNREACHABLE:
            raise _Drop
        if kind is FaultKind.HANG:
            self.stopping.wait(fault.delay_s)
            raise _Drop
        if kind is FaultKind.CRASH:
            self.crashed = True
            with contextlib.suppress(_Drop, _Reply):
                self.child("die", fault.delay_s or 0.0)
            if self.on_crash is not None:
                self.on_crash()
            raise _Drop
        return fault


def _tags_from_body(body: object) -> list[str] | None:
    if body is None:
        return None
    if not isinstance(body, dict):
        raise _Reply(400, {"error": {"message": f"expected a JSON object, got {body!r:.100}"}})
    tags = body.get("tags")
    if tags is None:
        return None
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise _Reply(
            400, {"error": {"message": f"tags must be a list of strings, got {tags!r:.100}"}}
        )
    return list(tags)


class SimHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall
    server: SimHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: stdout/stderr stay clean
        return None

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _body(self) -> object:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise _Reply(400, {"error": {"message": "malformed JSON body"}}) from None

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            body = self._body()
            self._route(method, url.path, query, body)
            raise _Reply(404, {"detail": "Not Found"})
        except _Reply as reply:
            self._send(reply)
        except _Drop:
            self.close_connection = True
        except ConfigError as exc:
            self._send(_Reply(400, {"error": {"message": str(exc)}}))

    def _send(self, reply: _Reply) -> None:
        if reply.content_type == "application/json":
            data = json.dumps(reply.body).encode()
        else:
            data = str(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: object) -> None:
        st = self.server.state
        ok = _Reply(200, None)
        if path in ("/health", "/health_generate") and method == "GET":
            if st.crashed:
                raise _Drop
            raise _Reply(200, "", "text/plain")
        if path in ("/server_info", "/get_server_info") and method == "GET":
            st.enter("server_info")
            raise _Reply(200, self._server_info())
        if path == "/abort_request" and method == "POST":
            fault = st.enter("abort")
            if fault is not None and fault.kind is FaultKind.BUSY:
                st.busy_until = time.monotonic() + (fault.delay_s or 0.0)
            raise _Reply(200, "", "text/plain")
        if path == "/flush_cache":
            st.enter("flush_cache")
            if time.monotonic() < st.busy_until:
                raise _Reply(
                    400,
                    "Cache not flushed: there are running or waiting requests.\n",
                    "text/plain",
                )
            raise _Reply(200, "Cache flushed.\n", "text/plain")
        if path == "/pause_generation" and method == "POST":
            mode = body.get("mode", "abort") if isinstance(body, dict) else "abort"
            if mode not in _PAUSE_MODES:
                raise _Reply(400, {"error": {"message": f"Invalid mode: {mode!r}"}})
            st.enter("pause")
            st.child("pause", True)
            raise _Reply(200, {"message": "Generation paused successfully.", "status": "ok"})
        if path == "/continue_generation" and method == "POST":
            st.enter("continue")
            st.child("pause", False)
            raise _Reply(200, {"message": "Generation continued successfully.", "status": "ok"})
        if path in ("/release_memory_occupation", "/resume_memory_occupation"):
            op = "release" if path.startswith("/release") else "resume"
            tags = _tags_from_body(body)
            fault = st.enter(op)
            st.child(op, tags, None if fault is None else fault.to_json(), True)
            raise ok  # FastAPI answers a handler's None as the JSON ``null``
        if path == "/sleep" and method == "POST":
            level = query.get("level", ["1"])[-1]
            mode = query.get("mode", ["abort"])[-1]
            if level not in ("1", "2") or mode not in _VLLM_SLEEP_MODES:
                raise _Reply(400, {"error": f"bad level {level!r} or mode {mode!r}"})
            fault = st.enter("release")
            st.child("release", None, None if fault is None else fault.to_json(), False)
            raise _Reply(200, "", "text/plain")
        if path == "/wake_up" and method == "POST":
            wake = query.get("tags")
            if wake is not None and not set(wake) <= {"weights", "kv_cache"}:
                raise _Reply(400, {"error": f"unknown tags {wake}"})
            # The simulator keeps CUDA graphs with the KV cache under vLLM's two tags.
            tags = (
                None if wake is None else [*wake, *(["cuda_graph"] if "kv_cache" in wake else [])]
            )
            fault = st.enter("resume")
            st.child("resume", tags, None if fault is None else fault.to_json(), False)
            raise _Reply(200, "", "text/plain")
        if path == "/is_sleeping" and method == "GET":
            st.enter("is_sleeping")
            state = st.child("state")
            assert isinstance(state, dict)
            raise _Reply(200, {"is_sleeping": bool(state["released"])})
        if path == "/_sim/state" and method == "GET":
            state = st.child("state")
            assert isinstance(state, dict)
            raise _Reply(
                200,
                {
                    **state,
                    "pid": os.getpid(),
                    "scheduler_pid": st.scheduler_pid,
                    "calls": dict(st.calls),
                    "busy": time.monotonic() < st.busy_until,
                },
            )
        if path == "/_sim/faults":
            if method == "POST":
                st.plan = FaultPlan.from_json(body)
            raise _Reply(200, st.plan.to_json())
        if path == "/_sim/reset" and method == "POST":
            st.child("reset")
            with st.lock:
                st.calls.clear()
                st.plan = FaultPlan()
                st.busy_until = 0.0
            raise ok

    def _server_info(self) -> dict[str, Any]:
        st = self.server.state
        state = st.child("state")
        assert isinstance(state, dict)
        fp = st.footprint
        return {
            "version": "offload_fsm-sim",
            "internal_states": [
                {
                    # As SGLang: computed at load time, it does not drop after a release.
                    "memory_usage": {
                        "weight": round(fp.weights / GIB, 2),
                        "kvcache": round(fp.kv_cache / GIB, 2),
                        "graph": round(fp.cuda_graph / GIB, 2),
                        "token_capacity": 4096,
                    },
                    "engine_paused": state["paused"],
                    "running_batch_size": int(time.monotonic() < st.busy_until),
                    "waiting_queue_size": 0,
                }
            ],
        }


class SimHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler must not keep the launcher alive

    def __init__(self, address: tuple[str, int], state: SimServerState) -> None:
        self.state = state
        super().__init__(address, SimHandler)


def _parse_footprint(args: argparse.Namespace) -> Footprint:
    if args.footprint is not None:
        try:
            return Footprint.from_json(json.loads(args.footprint))
        except ValueError as exc:
            raise ConfigError("--footprint", args.footprint, "a JSON object of bytes") from exc
    fields: dict[str, float] = {}
    for part in args.footprint_gib.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in (*TAGS, "context"):
            raise ConfigError(
                "--footprint-gib", args.footprint_gib, "tag=GiB pairs, e.g. weights=2,kv_cache=4"
            )
        try:
            fields[key.strip()] = float(value)
        except ValueError as exc:
            raise ConfigError("--footprint-gib", args.footprint_gib, "numbers of GiB") from exc
    if "weights" not in fields or "kv_cache" not in fields:
        raise ConfigError("--footprint-gib", args.footprint_gib, "at least weights= and kv_cache=")
    return Footprint.gib(**fields)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m offload_fsm.adapters.sim_server", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--ledger-dir", required=True, help="directory of the fake GPU ledger files")
    p.add_argument("--gpu", action="append", required=True, help="fake GPU key (repeat per GPU)")
    p.add_argument("--footprint-gib", default="weights=2,kv_cache=4,cuda_graph=0.5,context=0.6")
    p.add_argument(
        "--footprint", default=None, help="JSON object of bytes (wins over --footprint-gib)"
    )
    p.add_argument("--faults", default="[]", help="a FaultPlan as JSON")
    p.add_argument("--no-require-pause", action="store_true", help="allow release without a pause")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        footprint = _parse_footprint(args)
        plan = FaultPlan.from_json(json.loads(args.faults))
        ledger = Path(args.ledger_dir)
        if not ledger.is_dir():
            raise ConfigError("--ledger-dir", args.ledger_dir, "an existing directory")
    except (OffloadFsmError, ValueError) as exc:
        print(f"sim_server: {exc}", file=sys.stderr)
        return 2
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    config = {
        "ledger_dir": str(ledger),
        "gpus": list(args.gpu),
        "footprint": footprint.to_json(),
        "require_pause": not args.no_require_pause,
    }
    proc = ctx.Process(
        target=scheduler_main, args=(child_conn, config), name="sim::scheduler", daemon=True
    )
    proc.start()
    if not conn.poll(60.0):
        proc.kill()
        print("sim_server: the scheduler child did not start", file=sys.stderr)
        return 1
    _, scheduler_pid = conn.recv()
    state = SimServerState(conn, scheduler_pid, footprint, plan)
    server = SimHTTPServer((args.host, args.port), state)
    state.on_crash = lambda: threading.Thread(target=server.shutdown, daemon=True).start()

    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    print(
        json.dumps(
            {
                "url": f"http://{host}:{port}",
                "port": port,
                "pid": os.getpid(),
                "scheduler_pid": scheduler_pid,
            }
        ),
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.02)
    except KeyboardInterrupt:
        pass
    finally:
        state.stopping.set()
        server.server_close()  # the port closes: later calls are refused
        if state.crashed:
            proc.join(timeout=30.0)  # the child exits when its simulated death is due
        else:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(("stop",))
            proc.join(timeout=5.0)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5.0)
    return 1 if state.crashed else 0


class SimServerProcess:
    """Start and stop the simulated server as a real process tree (tests, demos).

    ``stop()`` ends the whole tree (launcher and child), gracefully then by SIGKILL.
    """

    def __init__(self, popen: subprocess.Popen[bytes], info: dict[str, Any]) -> None:
        self._popen = popen
        self.url: str = info["url"]
        self.port: int = info["port"]
        self.pid: int = info["pid"]
        self.scheduler_pid: int = info["scheduler_pid"]

    @classmethod
    def start(
        cls,
        ledger_dir: str | os.PathLike[str],
        gpu_keys: Sequence[str],
        footprint: Footprint,
        *,
        faults: FaultPlan | None = None,
        require_pause: bool = True,
        startup_timeout_s: float = 60.0,
    ) -> SimServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "offload_fsm.adapters.sim_server",
            "--ledger-dir",
            os.fspath(ledger_dir),
            "--footprint",
            json.dumps(footprint.to_json()),
            "--faults",
            json.dumps((faults or FaultPlan()).to_json()),
        ]
        for key in gpu_keys:
            cmd += ["--gpu", key]
        if not require_pause:
            cmd.append("--no-require-pause")
        # The package may be used from a source tree (not installed): put it on the path.
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
        assert popen.stdout is not None
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(popen.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + startup_timeout_s
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    break
                chunk = os.read(popen.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
        try:
            info = json.loads(line)
        except ValueError:
            _kill_tree(popen.pid)
            popen.wait(timeout=10)
            raise EngineError(
                "sim-server",
                "start",
                f"no ready line in {startup_timeout_s:g} s (rc={popen.poll()}, got {line!r:.200})",
            ) from None
        return cls(popen, info)

    def alive(self) -> bool:
        return self._popen.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the launcher and its child: SIGTERM (clean), then SIGKILL what is left."""
        tree = _tree(self.pid)
        if self._popen.poll() is None:
            self._popen.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=timeout_s)
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        _wait_gone(tree, timeout_s)
        if self._popen.poll() is None:
            self._popen.kill()
        self._popen.wait(timeout=timeout_s)
        if self._popen.stdout is not None:
            self._popen.stdout.close()

    def kill(self) -> None:
        """SIGKILL the whole tree at once (no cleanup), like an OOM kill."""
        _kill_tree(self.pid)
        self._popen.wait(timeout=10)
        if self._popen.stdout is not None:
            self._popen.stdout.close()

    def __enter__(self) -> SimServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE  # dead; its reaper may be slow
    except psutil.Error:
        return True


def _wait_gone(procs: Sequence[psutil.Process], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(_gone(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.005)


def _kill_tree(pid: int) -> None:
    tree = _tree(pid)
    for proc in reversed(tree):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _wait_gone(tree, 10.0)


if __name__ == "__main__":
    sys.exit(main())

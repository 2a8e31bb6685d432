"""A simulated SGLang (and vLLM sleep-mode) HTTP server on loopback, as a real process tree.

    python -m offload_fsm.sim.sim_server --ledger-dir DIR --gpu KEY [--gpu KEY ...] \
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

Faults (see :class:`~offload_fsm.sim.sim_model.FaultKind`), per call number:
error -> HTTP 500; hang -> no answer for delay_s (or until stopped), then the connection
drops; unreachable -> the connection drops without an answer; crash -> the connection drops,
the child dies delay_s later (its memory with it) and the launcher closes its port (later calls:
connection refused) and exits; late/partial/no release and no-op resume act on the memory;
busy (on "abort") keeps /flush_cache answering 400 for delay_s.

Modules: sim_server_state.py (``SimServerState``: the child's pipe, faults, call counts; how
routes answer), sim_sglang_routes.py, sim_vllm_routes.py and sim_control_routes.py (the
routes), sim_http.py (``SimHandler``, ``SimHTTPServer``), sim_server_process.py
(``SimServerProcess``: start and stop this server from a test); this module is the process
entry point (``build_parser``, ``main``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from offload_fsm.core.errors import ConfigError, OffloadFsmError

# ``X as X``: the names this module defined before the split stay importable from it
# (re-exported for mypy's strict mode).
from offload_fsm.sim.sim_http import SimHandler as SimHandler
from offload_fsm.sim.sim_http import SimHTTPServer as SimHTTPServer
from offload_fsm.sim.sim_model import TAGS, FaultPlan, Footprint
from offload_fsm.sim.sim_proc import scheduler_main
from offload_fsm.sim.sim_server_process import SimServerProcess as SimServerProcess
from offload_fsm.sim.sim_server_state import SimServerState as SimServerState


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
        prog="python -m offload_fsm.sim.sim_server", description=__doc__.split("\n")[0]
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


if __name__ == "__main__":
    sys.exit(main())

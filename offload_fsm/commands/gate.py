"""``offload-fsm gate``: block until whole-GPU used memory is at or under the threshold.

    offload-fsm gate --gpus IDS [--threshold GIB] [--timeout S] [--settle K]
                     [--backend auto|nvml|smi|fake] [--engine-pid [NAME=]PID ...] [--fail-open]

For shell scripts, before launching a trainer: exit 0 once the gate opened (the condition held
for K rounds in a row), 3 when it timed out (the attribution report says who holds the
memory), 4 when memory could not be measured (failing closed: no probe backend works, a GPU
is lost, or the probe kept failing), 2 for bad input. A progress line on stderr shows the
current max residual against the threshold while it waits.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

import anyio

from offload_fsm.commands import add_command, add_engine_pid_argument
from offload_fsm.core.errors import (
    BackendUnavailable,
    DeviceUnhealthy,
    GateTimeout,
    GateUnmeasurable,
)
from offload_fsm.core.limits import MAX_SETTLE
from offload_fsm.gates.conditions import WakeCondition, gib
from offload_fsm.gates.gate import GateContext, Verdict, run_gate
from offload_fsm.probe.attribution import attribute
from offload_fsm.probe.base import ProbeBackend, ProbeRound
from offload_fsm.probe.devices import resolve_devices
from offload_fsm.probe.processes import ProcessTable, detect_pid_namespace
from offload_fsm.probe.retry import RetryingProbe
from offload_fsm.probe.select import BACKEND_NAMES, open_backend
from offload_fsm.settings import (
    DEFAULT_THRESHOLD_GIB,
    THRESHOLD_ENV,
    GatePolicy,
    check_threshold_fits,
    parse_positive_int,
    parse_positive_seconds,
    parse_threshold_gib,
    threshold_from_env,
)
from offload_fsm.timing.clock import RealClock

EXIT_OPEN, EXIT_TIMEOUT, EXIT_UNMEASURABLE = 0, 3, 4


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "gate",
        help="wait until used GPU memory is at or under the residual threshold",
        description=__doc__,
    )
    p.add_argument(
        "--gpus",
        metavar="IDS",
        required=True,
        help="comma-separated GPU ids (index, UUID or unique prefix, PCI bus id)",
    )
    p.add_argument(
        "--threshold",
        metavar="GIB",
        default=None,
        help=f"max whole-GPU used GiB (default ${THRESHOLD_ENV}, else {DEFAULT_THRESHOLD_GIB:g})",
    )
    p.add_argument("--timeout", metavar="S", default="60", help="deadline in seconds (60)")
    p.add_argument("--settle", metavar="K", default="3", help="rounds in a row that must pass (3)")
    p.add_argument("--backend", choices=BACKEND_NAMES, default="auto")
    add_engine_pid_argument(p, help="an engine's root pid, to name its processes in the report")
    p.add_argument(
        "--fail-open",
        action="store_true",
        help="DANGEROUS: open (loudly) when memory cannot be measured",
    )
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return anyio.run(_main, args)


async def _main(args: argparse.Namespace) -> int:
    try:
        backend = await open_backend(args.backend)
    except BackendUnavailable as exc:  # no way to measure: closed (4), not bad input (2)
        if args.fail_open:
            print(f"gate: OPENED WITHOUT A MEASUREMENT (--fail-open): {exc}")
            return EXIT_OPEN
        print(f"gate: CLOSED, memory could not be measured: {exc}")
        return EXIT_UNMEASURABLE
    try:
        return await gate_command(args, backend, sys.stdout, sys.stderr)
    finally:
        await backend.aclose()


async def gate_command(
    args: argparse.Namespace, backend: ProbeBackend, out: TextIO, err: TextIO
) -> int:
    """The command against a given backend (tests inject a fake one)."""
    from offload_fsm.commands.probe import parse_engine_pids

    if args.threshold is None:
        threshold, source = threshold_from_env(os.environ)
        name, raw = source, os.environ.get(source, f"{DEFAULT_THRESHOLD_GIB:g}")
    else:
        threshold, source = parse_threshold_gib("--threshold", args.threshold), "flag"
        name, raw = "--threshold", args.threshold
    policy = GatePolicy(
        settle_samples=parse_positive_int("--settle", args.settle, maximum=MAX_SETTLE),
        deadline_s=parse_positive_seconds("--timeout", args.timeout),
        fail_open=args.fail_open,
        poll_max_s=0.5 if backend.name == "smi" else GatePolicy().poll_max_s,
    )
    engines = parse_engine_pids(args.engine_pid)
    clock = RealClock()
    probe = RetryingProbe(backend, clock=clock)
    try:
        devices = resolve_devices(args.gpus, await probe.devices())
    except (BackendUnavailable, DeviceUnhealthy) as exc:
        out.write(f"gate on {args.gpus}: CLOSED, memory could not be measured: {exc}\n")
        return EXIT_UNMEASURABLE
    check_threshold_fits(name, raw, threshold, devices)
    namespace = detect_pid_namespace()
    progress = _Progress(err, enabled=not args.quiet)

    async def report(rnd: ProbeRound | None) -> object:
        if rnd is None:
            return None
        table = ProcessTable.snapshot()
        trees = {name: table.tree(pid) for name, pid in engines.items()}
        return attribute(rnd, trees, pid_namespace=namespace, table=table)

    ctx = GateContext(on_progress=progress.update, report=report)
    out_prefix = f"gate on {', '.join(d.label() for d in devices)} (threshold {gib(threshold)}"
    out_prefix += f" from {source})"
    try:
        result = await run_gate(
            WakeCondition(devices, threshold),
            devices=devices,
            probe=probe,
            policy=policy,
            clock=clock,
            ctx=ctx,
        )
    except GateTimeout as exc:
        progress.done()
        out.write(f"{out_prefix}: TIMED OUT after {policy.deadline_s:g} s\n{exc}\n")
        if exc.report is not None:
            out.write(exc.report.render() + "\n")
        return EXIT_TIMEOUT
    except (GateUnmeasurable, DeviceUnhealthy) as exc:
        progress.done()
        out.write(f"{out_prefix}: CLOSED, memory could not be measured: {exc}\n")
        return EXIT_UNMEASURABLE
    progress.done()
    if result.fail_open:
        out.write(f"{out_prefix}: OPENED WITHOUT A MEASUREMENT (--fail-open)\n")
    else:
        detail = result.verdict.detail if result.verdict else ""
        out.write(
            f"{out_prefix}: open after {result.elapsed_s * 1e3:.1f} ms "
            f"({result.attempts} rounds): {detail}\n"
        )
    return EXIT_OPEN


class _Progress:
    """One self-overwriting line on a terminal; a line per change (at most 1/s) otherwise."""

    def __init__(self, err: TextIO, *, enabled: bool) -> None:
        self.err = err
        self.enabled = enabled
        self.tty = hasattr(err, "isatty") and err.isatty()
        self._last = ""
        self._last_at = -1.0
        self._shown = False

    def update(self, verdict: Verdict, settle: int, elapsed: float) -> None:
        if not self.enabled:
            return
        text = f"waiting {elapsed:6.1f} s: {verdict.detail} (settled {settle})"
        if self.tty:
            self.err.write("\r" + text[:150].ljust(150))
            self.err.flush()
            self._shown = True
        elif text.split(" s: ", 1)[1] != self._last and elapsed - self._last_at >= 1.0:
            self.err.write(text + "\n")
            self._last, self._last_at = text.split(" s: ", 1)[1], elapsed

    def done(self) -> None:
        if self._shown:
            self.err.write("\n")

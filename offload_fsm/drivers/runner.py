"""Run pipelines end to end: world, orchestrator, event log, live progress, summary.

Used by ``offload-fsm demo`` and by drivers/run_miles_dual.py and drivers/run_miles_rlix.py.
On the embedded default (simulated GPUs and engines) the run is in virtual time: a 5-step
dual run takes a few seconds of wall time.

With ``RunOptions.stop_on_signals`` (the commands set it) SIGINT, SIGTERM and SIGHUP cancel the
run's work and the run ends ``cancelled`` with the signal named (:mod:`.stop_signals`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol, TextIO

import anyio

from offload_fsm.core.errors import OffloadFsmError
from offload_fsm.drivers.config_file import RunConfig
from offload_fsm.drivers.pipeline import Pipeline, shrink_gpus_for
from offload_fsm.drivers.progress import ProgressPrinter
from offload_fsm.drivers.sim_world import SimOptions, build_sim_world
from offload_fsm.drivers.stop_signals import StopSignals
from offload_fsm.drivers.topology import PipelineTopology
from offload_fsm.drivers.view import RunView
from offload_fsm.events.bus import EventBus, Recorder
from offload_fsm.events.eventlog import EventLogWriter
from offload_fsm.orchestrator.orchestrator import EngineSpec, Orchestrator, OrchestratorConfig
from offload_fsm.probe.base import ProbeBackend
from offload_fsm.settings import GatePolicy
from offload_fsm.timing.clock import Clock, RealClock, VirtualClock
from offload_fsm.timing.concurrency import all_or_first_error


@dataclass
class RunOptions:
    topologies: tuple[PipelineTopology, ...]
    threshold_bytes: int
    steps: int = 5
    out_dir: Path = Path("runs")
    run_id: str | None = None
    rollout_s: float = 2.0
    train_s: float = 3.0
    settle: int = 3
    gate_timeout_s: float = 60.0
    progress: bool = True
    command: str = ""
    sim: SimOptions = field(default_factory=SimOptions)
    stop_on_signals: bool = False  # SIGINT/SIGTERM/SIGHUP cancel the run (main thread only)


@dataclass
class RunOutcome:
    run_id: str
    log_path: Path
    status: str  # "ok" | "failed" | "cancelled"
    error: BaseException | None
    wall_s: float
    run_s: float  # on the run's clock (virtual on the simulator)
    events: int
    signal: int | None = None  # the stop signal that cancelled the run, if one did


async def run_simulated(opts: RunOptions, out: TextIO | None = None) -> RunOutcome:
    """Run the pipelines concurrently on the embedded simulator (virtual time)."""
    out = out or sys.stdout
    clock = VirtualClock()
    world = await build_sim_world(opts.topologies, clock, opts.sim)
    return await _run(opts, clock, world, out)


async def run_standin(
    opts: RunOptions,
    *,
    backend: str = "auto",
    engine_gib: float = 24.0,
    trainer_gib: float = 16.0,
    tms: bool = False,
    out: TextIO | None = None,
) -> RunOutcome:
    """Run the pipelines with stand-in processes holding real GPU memory (real time)."""
    from offload_fsm.drivers.standin_world import build_standin_world
    from offload_fsm.probe.select import open_backend

    out = out or sys.stdout
    clock = RealClock()
    probe = await open_backend(backend, clock=clock)
    try:
        world = await build_standin_world(
            opts.topologies, probe, engine_gib=engine_gib, trainer_gib=trainer_gib, tms=tms
        )
        try:
            return await _run(opts, clock, world, out)
        finally:
            await world.aclose()
    finally:
        await probe.aclose()


async def run_configured(
    opts: RunOptions,
    config: RunConfig,
    *,
    probe: ProbeBackend | None = None,
    pid_namespace: str | None = None,
    out: TextIO | None = None,
) -> RunOutcome:
    """Run the pipelines of a configuration file with its real engines (real time).

    ``probe`` defaults to the machine's (``[run] backend``, else auto: NVML, nvidia-smi)."""
    from offload_fsm.drivers.config_world import build_config_world
    from offload_fsm.probe.processes import detect_pid_namespace
    from offload_fsm.probe.select import open_backend

    out = out or sys.stdout
    clock = RealClock()
    own_probe = probe is None
    if probe is None:
        probe = await open_backend(str(config.run.get("backend", "auto")), clock=clock)
    try:
        world = await build_config_world(config, probe, pid_namespace or detect_pid_namespace())
        try:
            opts = dataclasses.replace(opts, topologies=world.topologies)  # not the caller's
            return await _run(opts, clock, world, out)
        finally:
            await world.aclose()
    finally:
        if own_probe:
            await probe.aclose()


class World(Protocol):
    """What a run needs from its world: engines, pipelines and how to measure them."""

    specs: list[EngineSpec]
    pipelines: dict[str, tuple[tuple[str, ...], str]]  # pipeline -> (engine ids, trainer id)

    @property
    def probe(self) -> ProbeBackend: ...

    @property
    def pid_namespace(self) -> str: ...


async def _run(opts: RunOptions, clock: Clock, world: World, out: TextIO) -> RunOutcome:
    run_id = opts.run_id or time.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    wall0 = time.perf_counter()
    bus = EventBus()
    recorder = Recorder(bus, run_id, clock)
    view = RunView()
    writer = EventLogWriter.for_run(opts.out_dir, run_id)
    log_sub = bus.subscribe("event-log", capacity=65536)
    view_sub = bus.subscribe("view", capacity=65536, filter=RunView.wants)
    printer = ProgressPrinter(view, clock.now, out) if opts.progress else None
    gate = GatePolicy(settle_samples=opts.settle, deadline_s=opts.gate_timeout_s)
    orch = Orchestrator(
        probe=world.probe,
        recorder=recorder,
        clock=clock,
        config=OrchestratorConfig(
            threshold_bytes=opts.threshold_bytes,
            wake_gate=gate,
            pid_namespace=world.pid_namespace,
        ),
    )
    status, error = "ok", None
    stop = StopSignals()
    t0 = clock.now()
    with writer:
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, log_sub)
            tg.start_soon(view.follow, view_sub, printer)
            work = anyio.CancelScope()  # what a stop signal cancels: the step in progress
            watcher = await tg.start(stop.watch, work) if opts.stop_on_signals else None
            try:
                with work:
                    await orch.start_run(command=opts.command, backend=world.probe.name)
                    for spec in world.specs:
                        await orch.register(spec)
                    pipelines = _pipelines(opts, world, orch, view, recorder, clock)
                    await all_or_first_error([partial(p.run, opts.steps) for p in pipelines])
                if work.cancelled_caught:
                    status = "signalled"  # finished below, with the signal named
            except OffloadFsmError as exc:
                status, error = "failed", exc
            except anyio.get_cancelled_exc_class():
                status = "cancelled"
                with anyio.CancelScope(shield=True):
                    await orch.finish_run(status, "cancelled")
                    bus.close()
                raise
            finally:
                if watcher is not None:
                    watcher.cancel()
                if status == "signalled":
                    status = "cancelled"
                    await orch.finish_run(status, stop.reason)
                    bus.close()
                elif status != "cancelled":
                    await orch.finish_run(
                        status, None if error is None else f"{type(error).__name__}: {error}"
                    )
                    bus.close()
    return RunOutcome(
        run_id,
        writer.path,
        status,
        error,
        time.perf_counter() - wall0,
        clock.now() - t0,
        recorder.last.seq if recorder.last else 0,
        None if status == "ok" else stop.received,  # a signal that cut the run short
    )


def _pipelines(
    opts: RunOptions,
    world: World,
    orch: Orchestrator,
    view: RunView,
    recorder: Recorder,
    clock: Clock,
) -> Sequence[Pipeline]:
    out = []
    for topo in opts.topologies:
        others = [t for t in opts.topologies if t is not topo]
        engine_ids, trainer_id = world.pipelines[topo.name]
        out.append(
            Pipeline(
                name=topo.name,
                topology=topo,
                engine_ids=engine_ids,
                trainer_id=trainer_id,
                shrink_gpus=shrink_gpus_for(topo, others),
                orch=orch,
                view=view,
                recorder=recorder,
                clock=clock,
                rollout_s=opts.rollout_s,
                train_s=opts.train_s,
            )
        )
    return out

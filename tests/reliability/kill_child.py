"""A driver process for the SIGKILL rows: ``python -m tests.reliability.kill_child OUT ...``.

Runs the dual pipelines on the simulator in virtual time and writes the event log at every
emit (synchronously, so the log holds exactly what the orchestrator has done), then SIGKILLs
itself when the n-th transition into ``--kill-dst`` is emitted:

- ``--mode after``: the line of that event is written whole, then the process dies;
- ``--mode mid``: only the first half of that line is written, then the process dies.

Just before dying it prints one JSON line to stdout: every engine's state in memory and the
kill event's seq, engine and transition, so the parent can compare replay with the truth.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, TypeVar

import anyio

from offload_fsm.drivers.pipeline import Pipeline, shrink_gpus_for
from offload_fsm.drivers.sim_world import SimOptions, build_sim_world
from offload_fsm.drivers.topology import dual_topology
from offload_fsm.drivers.view import RunView
from offload_fsm.events import codec
from offload_fsm.events.bus import EventBus, Recorder
from offload_fsm.events.eventlog import EventLogWriter
from offload_fsm.events.kinds import Event, Transition
from offload_fsm.orchestrator.orchestrator import Orchestrator, OrchestratorConfig
from offload_fsm.probe.base import GIB
from offload_fsm.settings import GatePolicy
from offload_fsm.timing.clock import Clock, VirtualClock
from offload_fsm.timing.concurrency import all_or_first_error
from offload_fsm.timing.idle import run as run_virtual

E = TypeVar("E", bound=Event)


class KillingRecorder(Recorder):
    def __init__(
        self, bus: EventBus, clock: Clock, writer: EventLogWriter, args: argparse.Namespace
    ) -> None:
        super().__init__(bus, "killed", clock)
        self.writer = writer
        self.args = args
        self.seen = 0
        self.orch: Orchestrator | None = None

    async def emit(self, kind: type[E], **fields: Any) -> E:
        event = await super().emit(kind, **fields)
        kill = (
            isinstance(event, Transition)
            and event.dst == self.args.kill_dst
            and (seen := self.seen + 1) is not None
        )
        if kill:
            self.seen = seen
            kill = seen == self.args.nth
        if not kill:
            self.writer.write(event)
            return event
        line = codec.encode(event) + b"\n"
        if self.args.mode == "after":
            self.writer.write(event)
        else:
            fd = os.open(self.writer.path, os.O_WRONLY | os.O_APPEND)
            os.write(fd, line[: len(line) // 2])  # the writer cut off mid-line
            os.close(fd)
        assert self.orch is not None and isinstance(event, Transition)
        truth = {
            "states": {e: eng.state.value for e, eng in self.orch.engines.items()},
            "seq": event.seq,
            "engine": event.engine_id,
            "src": event.src,
            "dst": event.dst,
        }
        print(json.dumps(truth), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable: SIGKILL does not return")


async def main(args: argparse.Namespace) -> None:
    clock = VirtualClock()
    topologies = dual_topology(4, env={})
    world = await build_sim_world(topologies, clock, SimOptions(seed=args.seed))
    bus = EventBus()
    view = RunView()
    view_sub = bus.subscribe("view", capacity=1 << 20, filter=RunView.wants)
    with EventLogWriter(Path(args.out) / "run.jsonl") as writer:
        recorder = KillingRecorder(bus, clock, writer, args)
        orch = Orchestrator(
            probe=world.probe,
            recorder=recorder,
            clock=clock,
            config=OrchestratorConfig(
                threshold_bytes=8 * GIB,
                wake_gate=GatePolicy(deadline_s=60.0),
                pid_namespace=world.pid_namespace,
            ),
        )
        recorder.orch = orch
        async with anyio.create_task_group() as tg:
            tg.start_soon(view.follow, view_sub)
            await orch.start_run(command="kill_child", backend=world.probe.name)
            for spec in world.specs:
                await orch.register(spec)
            pipelines = [
                Pipeline(
                    name=t.name,
                    topology=t,
                    engine_ids=world.pipelines[t.name][0],
                    trainer_id=world.pipelines[t.name][1],
                    shrink_gpus=shrink_gpus_for(t, [o for o in topologies if o is not t]),
                    orch=orch,
                    view=view,
                    recorder=recorder,
                    clock=clock,
                )
                for t in topologies
            ]
            await all_or_first_error([lambda p=p: p.run(args.steps) for p in pipelines])
            await orch.finish_run("ok")
            bus.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--kill-dst", default="gated")
    parser.add_argument("--nth", type=int, default=3)
    parser.add_argument("--mode", choices=["after", "mid"], default="after")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    run_virtual(main, parser.parse_args(sys.argv[1:]))

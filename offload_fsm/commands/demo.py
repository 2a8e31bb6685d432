"""``offload-fsm demo``: a simulated release/wake cycle on the embedded fake GPUs.

Placeholder until the dual-pipeline demo lands (issue 5): one engine, one GPU, one cycle,
each step gated on the fake GPU's memory, events printed as JSON lines.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio

from offload_fsm import codec
from offload_fsm.bus import EventBus, Recorder
from offload_fsm.events import MemorySample, Transition
from offload_fsm.lifecycle import Lifecycle, Trigger
from offload_fsm.probe.base import GIB
from offload_fsm.probe.fake import FakeBackend, FakeGpus, make_devices


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run a simulated release/wake cycle (no GPU needed)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return anyio.run(_demo)


async def _demo() -> int:
    gpus = FakeGpus(make_devices(1))
    backend = FakeBackend(gpus)
    dev = gpus.devices[0]
    bus = EventBus()
    sub = bus.subscribe("stdout")
    rec = Recorder(bus, "demo")
    engine = Lifecycle("engine0")
    gpus.set_usage(4242, 0, 40 * GIB)

    async def step(trigger: Trigger) -> None:
        s = engine.fire(trigger)
        await rec.emit(
            Transition,
            engine_id="engine0",
            gpus=(dev.key,),
            src=s.src.value,
            dst=s.dst.value,
            trigger=s.trigger.value,
        )

    async def sample() -> int:
        mem = (await backend.probe([dev])).memory[0]
        await rec.emit(
            MemorySample,
            gpus=(dev.key,),
            backend="fake",
            used_bytes=mem.used_bytes,
            free_bytes=mem.free_bytes,
            total_bytes=mem.total_bytes,
        )
        return mem.used_bytes or 0

    async def printer() -> None:
        async for event in sub:
            sys.stdout.write(codec.encode(event).decode() + "\n")

    async with anyio.create_task_group() as tg:
        tg.start_soon(printer)
        await step(Trigger.RELEASE)
        gpus.set_usage(4242, 0, int(0.6 * GIB))  # the CUDA context stays behind
        await sample()
        await step(Trigger.RELEASED)
        await step(Trigger.REQUEST_WAKE)
        if await sample() <= 2 * GIB:
            await step(Trigger.GATE_OPEN)
            gpus.set_usage(4242, 0, 40 * GIB)
            await step(Trigger.WOKEN)
        bus.close()
    return 0

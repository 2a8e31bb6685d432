"""Virtual-clock primitives on the hot path of every gate round and engine call, side by side
with what they replaced. Run: ``python -m tests.bench.bench_clock``.

1. a deadline around one await: ``deadline()`` and ``RoundDeadlines.run`` (a deadline per
   await of a series);
2. what a sleeper waits on: ``anyio.Event()``.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel

from offload_fsm.timing.clock import VirtualClock
from offload_fsm.timing.deadlines import RoundDeadlines, deadline
from offload_fsm.timing.idle import run as run_virtual

N = 20_000
ROUNDS = 5


async def _noop() -> None:
    return None


def _best_us(samples: list[float]) -> str:
    return f"{min(samples):7.2f} us (median {statistics.median(samples):.2f})"


async def _time_async(n: int, fn: Callable[[], Awaitable[object]]) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - t0) / n * 1e6


def _time_sync(n: int, fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


async def main() -> None:
    clock = VirtualClock()
    per_await: list[float] = []
    shared: list[float] = []
    bare: list[float] = []
    events: list[float] = []

    async def with_deadline() -> None:
        async with deadline(clock, 5.0):
            await _noop()

    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.sleep, 1e9)  # a watcher, as in a run
        await anyio.lowlevel.checkpoint()
        for _ in range(ROUNDS):
            bare.append(await _time_async(N, _noop))
            per_await.append(await _time_async(N, with_deadline))
            with RoundDeadlines(clock) as rounds:
                shared.append(await _time_async(N, lambda: rounds.run(5.0, _noop)))
            events.append(_time_sync(N, anyio.Event))
        tg.cancel_scope.cancel()
    print(f"virtual-clock primitives, asyncio, {N} each, best of {ROUNDS}")
    print(f"  bare await of a no-op coroutine                 {_best_us(bare)}")
    print(f"  1. deadline() around it (scope per await)       {_best_us(per_await)}")
    print(f"     RoundDeadlines.run                           {_best_us(shared)}")
    print(f"  2. anyio.Event()                                {_best_us(events)}")
    sys.stdout.flush()


if __name__ == "__main__":
    run_virtual(main)

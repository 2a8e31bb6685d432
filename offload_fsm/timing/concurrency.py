"""Structured-concurrency helpers shared by the orchestrator and the drivers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import anyio
import anyio.abc


async def all_or_first_error(jobs: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Run ``jobs`` in one task group; on the first failure cancel the rest and re-raise it
    (not wrapped in an ExceptionGroup, so callers catch the typed error they expect).
    A single job runs in the caller's task: the same outcome, without a task group."""
    if len(jobs) == 1:
        await jobs[0]()
        return
    first: list[BaseException] = []

    async def guarded(job: Callable[[], Awaitable[None]], tg: anyio.abc.TaskGroup) -> None:
        try:
            await job()
        except Exception as exc:
            if not first:
                first.append(exc)
            tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(guarded, job, tg)
    if first:
        raise first[0]

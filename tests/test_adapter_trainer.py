"""Trainer adapter: sync and async user callables behind the engine interface."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import anyio
import anyio.lowlevel
import pytest

from offload_fsm.core.errors import ConfigError, EngineError
from offload_fsm.engines.base import EngineAdapter
from offload_fsm.engines.trainer import TrainerAdapter


class SyncTrainer:
    """Stands in for a Megatron group driven through blocking calls (ray.get)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, object, int]] = []

    def offload(self, tags: Sequence[str] | None) -> None:
        self.log.append(("offload", tags, threading.get_ident()))

    def onload(self, tags: Sequence[str] | None) -> None:
        self.log.append(("onload", tags, threading.get_ident()))


async def test_sync_callables_run_in_a_worker_thread() -> None:
    t = SyncTrainer()
    a = TrainerAdapter("train0", offload=t.offload, onload=t.onload, process_root=1234)
    assert isinstance(a, EngineAdapter)
    loop_thread = threading.get_ident()
    await a.prepare_release(1.0)
    await a.release(("weights", "optimizer"))
    assert a.offloaded
    await a.resume(None)
    await a.finish_wake()
    await a.aclose()
    assert [(name, tags) for name, tags, _ in t.log] == [
        ("offload", ["weights", "optimizer"]),
        ("onload", None),
    ]
    assert all(tid != loop_thread for _, _, tid in t.log)
    assert a.process_root == 1234 and not a.offloaded


async def test_async_callables_and_hooks_are_awaited() -> None:
    log: list[str] = []

    async def offload(tags: Sequence[str] | None) -> None:
        await anyio.lowlevel.checkpoint()
        log.append(f"offload {tags}")

    async def onload(tags: Sequence[str] | None) -> None:
        log.append(f"onload {tags}")

    async def prepare() -> None:
        log.append("prepare")

    def finish() -> None:
        log.append("finish")

    a = TrainerAdapter("t", offload=offload, onload=onload, prepare=prepare, finish=finish)
    await a.prepare_release(1.0)
    await a.release(None)
    await a.resume(["weights"])
    await a.finish_wake()
    assert log == ["prepare", "offload None", "onload ['weights']", "finish"]


async def test_sync_callable_returning_an_awaitable_is_awaited() -> None:
    done: list[str] = []

    async def really_offload() -> None:
        done.append("offloaded")

    a = TrainerAdapter("t", offload=lambda tags: really_offload(), onload=lambda tags: None)
    await a.release(None)
    assert done == ["offloaded"]


async def test_double_onload_is_refused_without_calling_the_trainer() -> None:
    t = SyncTrainer()
    a = TrainerAdapter("t", offload=t.offload, onload=t.onload)
    with pytest.raises(EngineError, match="second onload is refused"):
        await a.resume(None)
    await a.release(None)
    with pytest.raises(EngineError, match="double offload"):
        await a.release(None)
    await a.resume(None)
    with pytest.raises(EngineError, match="not offloaded"):
        await a.resume(None)
    assert [name for name, _, _ in t.log] == ["offload", "onload"]


async def test_trainer_exception_becomes_engine_error_and_resume_is_not_retried() -> None:
    calls: list[str] = []

    def onload(tags: Sequence[str] | None) -> None:
        calls.append("onload")
        raise RuntimeError("Cannot resume allocation that is not paused")

    a = TrainerAdapter("t", offload=lambda tags: None, onload=onload, initially_offloaded=True)
    with pytest.raises(EngineError) as info:
        await a.resume(None)
    assert info.value.call == "resume" and info.value.engine_id == "t"
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(EngineError, match="not offloaded"):
        await a.resume(None)  # the failed resume may have half-happened: not again
    assert calls == ["onload"]


async def test_cancellation_passes_through_untranslated() -> None:
    started = anyio.Event()

    async def slow_offload(tags: Sequence[str] | None) -> None:
        started.set()
        await anyio.sleep_forever()

    a = TrainerAdapter("t", offload=slow_offload, onload=lambda tags: None)
    with anyio.move_on_after(0.05) as scope:
        await a.release(None)
    assert scope.cancelled_caught and started.is_set()
    assert not a.offloaded


def test_constructor_validates() -> None:
    with pytest.raises(ConfigError, match="offload"):
        TrainerAdapter("t", offload="sleep", onload=lambda tags: None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="engine_id"):
        TrainerAdapter("", offload=lambda tags: None, onload=lambda tags: None)
    with pytest.raises(ConfigError, match="process_root"):
        TrainerAdapter("t", offload=lambda t: None, onload=lambda t: None, process_root=0)

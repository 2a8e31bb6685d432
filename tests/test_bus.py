"""The fan-out bus, on asyncio and trio (conftest parametrizes every async test)."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest

from offload_fsm.events.bus import EventBus, Recorder, SlowPolicy, Subscription
from offload_fsm.events.kinds import Event, PhaseChanged, Transition
from offload_fsm.timing.clock import VirtualClock


def ev(seq: int, engine: str = "e0") -> Transition:
    return Transition(seq=seq, ts=0.0, run_id="r", engine_id=engine, src="a", dst="b", trigger="t")


async def wait_until(cond: Callable[[], bool], passes: int = 10_000) -> None:
    """Let other tasks run until ``cond`` holds (fails instead of hanging)."""
    for _ in range(passes):
        if cond():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition never held")


async def settle(passes: int = 50) -> None:
    for _ in range(passes):
        await anyio.lowlevel.checkpoint()


async def collect(sub: Subscription, into: list[Event]) -> None:
    async for event in sub:
        into.append(event)


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


async def test_fan_out_every_subscriber_gets_every_event_in_order() -> None:
    bus = EventBus()
    subs = [bus.subscribe(f"s{i}", capacity=8) for i in range(3)]
    got: list[list[Event]] = [[], [], []]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for sub, into in zip(subs, got, strict=True):
                tg.start_soon(collect, sub, into)
            for i in range(1, 51):
                await bus.publish(ev(i))
            bus.close()
    for sub, into in zip(subs, got, strict=True):
        assert seqs(into) == list(range(1, 51))
        assert (sub.delivered, sub.dropped) == (50, 0)


async def test_per_engine_order_holds_with_concurrent_publishers_and_backpressure() -> None:
    bus = EventBus()
    rec = Recorder(bus, "r")
    slow = bus.subscribe("slow", capacity=1)  # forces publishers onto the blocking path
    fast = bus.subscribe("fast", capacity=1000)
    got_slow: list[Event] = []
    got_fast: list[Event] = []
    engines = ("a", "b", "c")

    async def engine(name: str) -> None:
        for step in range(40):
            await rec.emit(PhaseChanged, engine_id=name, step=step, phase="p")
            await anyio.lowlevel.checkpoint()

    async def slow_reader() -> None:
        async for event in slow:
            got_slow.append(event)
            await settle(3)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_reader)
            tg.start_soon(collect, fast, got_fast)
            async with anyio.create_task_group() as publishers:
                for name in engines:
                    publishers.start_soon(engine, name)
            bus.close()
    for got in (got_slow, got_fast):
        assert len(got) == 120
        assert seqs(got) == list(range(1, 121))  # seq is stamped at publication
        for name in engines:
            steps = [e.step for e in got if isinstance(e, PhaseChanged) and e.engine_id == name]
            assert steps == list(range(40))
    assert got_slow == got_fast


async def test_block_policy_makes_the_publisher_wait_and_loses_nothing() -> None:
    bus = EventBus()
    sub = bus.subscribe("slow", capacity=2)
    assert sub.policy is SlowPolicy.BLOCK
    published: list[int] = []

    async def publisher() -> None:
        for i in range(1, 6):
            await bus.publish(ev(i))
            published.append(i)

    with anyio.fail_after(5), sub:
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher)
            await wait_until(lambda: len(published) == 2)
            await settle()
            assert published == [1, 2]  # the third waits for room
            got = [await sub.receive() for _ in range(5)]
        bus.close()
    assert seqs(got) == [1, 2, 3, 4, 5]
    assert (sub.delivered, sub.dropped) == (5, 0)


async def test_drop_policy_drops_and_counts_and_never_slows_the_others() -> None:
    bus = EventBus()
    keep = bus.subscribe("keep", capacity=100)
    lossy = bus.subscribe("lossy", policy="drop", capacity=2)
    assert lossy.policy is SlowPolicy.DROP
    with anyio.fail_after(5):
        for i in range(1, 6):
            await bus.publish(ev(i))  # never waits for the lossy subscriber
        assert (lossy.delivered, lossy.dropped) == (2, 3)
        assert (keep.delivered, keep.dropped) == (5, 0)
        bus.close()
        got_lossy: list[Event] = []
        got_keep: list[Event] = []
        await collect(lossy, got_lossy)
        await collect(keep, got_keep)
    assert seqs(got_lossy) == [1, 2]  # the oldest are kept; the newest were dropped
    assert seqs(got_keep) == [1, 2, 3, 4, 5]
    assert {(s.name, s.policy.value) for s in bus.subscriptions} == {
        ("keep", "block"),
        ("lossy", "drop"),
    }


async def test_close_ends_every_subscriber_after_it_drained() -> None:
    bus = EventBus()
    subs = [bus.subscribe(f"s{i}") for i in range(3)]
    got: list[list[Event]] = [[], [], []]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for sub, into in zip(subs, got, strict=True):
                tg.start_soon(collect, sub, into)
            await settle()  # every subscriber parked in receive
            for i in range(1, 4):
                await bus.publish(ev(i))
            bus.close()
    assert got == [[ev(1), ev(2), ev(3)]] * 3
    assert bus.closed
    with pytest.raises(RuntimeError, match="closed"):
        await bus.publish(ev(4))
    with pytest.raises(RuntimeError, match="closed"):
        bus.subscribe("late")


async def test_close_releases_a_publisher_blocked_on_a_full_subscriber() -> None:
    bus = EventBus()
    sub = bus.subscribe("full", capacity=1)
    await bus.publish(ev(1))
    done = anyio.Event()

    async def publisher() -> None:
        await bus.publish(ev(2))
        done.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher)
            await settle()
            assert not done.is_set()
            bus.close()
            await done.wait()
        got: list[Event] = []
        await collect(sub, got)
    assert seqs(got) == [1]  # what was buffered before the close still arrives


async def test_cancelled_blocked_publisher_leaves_the_bus_usable() -> None:
    bus = EventBus()
    other = bus.subscribe("other", capacity=100)
    slow = bus.subscribe("slow", capacity=1)
    await bus.publish(ev(1))  # slow is now full
    scopes = [anyio.CancelScope(), anyio.CancelScope()]
    finished: list[int] = []

    async def blocked(i: int, seq: int) -> None:
        with scopes[i]:
            await bus.publish(ev(seq))
            finished.append(seq)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked, 0, 2)
            await wait_until(lambda: other.delivered == 2)
            tg.start_soon(blocked, 1, 3)  # queues behind the first
            await settle()
            assert finished == []
            scopes[0].cancel()  # the one waiting on the full stream
            scopes[1].cancel()  # the one waiting for its turn
        assert finished == []
        # Drained, the bus takes the fast path again: nobody holds the lock or the count.
        assert (await slow.receive()).seq == 1
        await bus.publish(ev(4))
        assert (await slow.receive()).seq == 4
        bus.close()
        got: list[Event] = []
        await collect(other, got)
        slow.close()
    # A cancelled publish may already have reached the subscribers before the one it
    # waited on (ev 2 reached "other"); the one queued behind it reached nobody.
    assert seqs(got) == [1, 2, 4]


async def test_cancelled_subscriber_releases_a_blocked_publisher() -> None:
    bus = EventBus()
    stuck = bus.subscribe("stuck", capacity=1)
    keep = bus.subscribe("keep", capacity=100)
    received: list[Event] = []
    published: list[int] = []

    async def stuck_reader() -> None:
        async for event in stuck:
            received.append(event)
            await anyio.sleep_forever()

    async def publisher() -> None:
        for i in range(1, 6):
            await bus.publish(ev(i))
            published.append(i)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            async with anyio.create_task_group() as readers:
                readers.start_soon(stuck_reader)
                await settle()
                tg.start_soon(publisher)
                await wait_until(lambda: len(published) == 2)
                await settle()
                assert published == [1, 2]  # 1 taken, 2 buffered, 3 waits
                readers.cancel_scope.cancel()
            await wait_until(lambda: published == [1, 2, 3, 4, 5])
        bus.close()
        got: list[Event] = []
        await collect(keep, got)
    assert seqs(received) == [1]
    assert seqs(got) == [1, 2, 3, 4, 5]
    assert stuck not in bus.subscriptions  # forgotten, not failed


async def test_subscriber_closing_itself_stops_receiving_and_never_blocks() -> None:
    bus = EventBus()
    quitter = bus.subscribe("quitter", capacity=1)
    keep = bus.subscribe("keep", capacity=100)
    got: list[Event] = []

    async def reader() -> None:
        async for event in quitter:
            got.append(event)
            if len(got) == 2:
                quitter.close()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            for i in range(1, 11):
                await bus.publish(ev(i))
                await settle(5)
            bus.close()
        rest: list[Event] = []
        await collect(keep, rest)
    assert seqs(got) == [1, 2]
    assert seqs(rest) == list(range(1, 11))
    assert quitter not in bus.subscriptions


async def test_filter_delivers_only_matching_events_and_counts_no_drops() -> None:
    bus = EventBus()
    only_a = bus.subscribe("a", capacity=1, filter=lambda e: e.engine_id == "a")
    with anyio.fail_after(5):
        await bus.publish(ev(1, "b"))
        await bus.publish(ev(2, "a"))
        await bus.publish(ev(3, "b"))  # a full subscriber is not even asked: no wait
        bus.close()
        got: list[Event] = []
        await collect(only_a, got)
    assert seqs(got) == [2]
    assert (only_a.delivered, only_a.dropped) == (1, 0)


async def test_recorder_stamps_seq_time_and_run_id_in_publication_order() -> None:
    bus = EventBus()
    clock = VirtualClock(wall_start=1_000.0)
    rec = Recorder(bus, "run-7", clock)
    with bus.subscribe("all") as sub:
        first = await rec.emit(Transition, engine_id="e0", src="a", dst="b", trigger="t")
        clock.advance(2.5)
        second = await rec.emit(PhaseChanged, step=1, phase="train")
        bus.close()
        got: list[Event] = []
        await collect(sub, got)
    assert got == [first, second]
    assert (first.seq, first.ts, first.run_id) == (1, 1_000.0, "run-7")
    assert (second.seq, second.ts) == (2, 1_002.5)
    assert rec.last is second


def test_subscribe_checks_its_arguments() -> None:
    bus = EventBus()
    with pytest.raises(ValueError, match="capacity"):
        bus.subscribe("x", capacity=0)
    with pytest.raises(ValueError, match="sometimes"):
        bus.subscribe("x", policy="sometimes")
    assert bus.subscriptions == ()


def test_emit_now_delivers_at_once_or_does_nothing_when_it_would_wait() -> None:
    bus = EventBus()
    recorder = Recorder(bus, "r", VirtualClock())
    sub = bus.subscribe("slow", capacity=2)  # BLOCK
    dropper = bus.subscribe("lossy", capacity=1, policy=SlowPolicy.DROP)
    first = recorder.emit_now(PhaseChanged, pipeline_id="p", step=1, phase="train")
    second = recorder.emit_now(PhaseChanged, pipeline_id="p", step=2, phase="train")
    assert first is not None and second is not None
    assert (first.seq, second.seq) == (1, 2) and recorder.last is second
    assert dropper.dropped == 1  # a full DROP subscriber never makes it wait
    # The BLOCK subscriber is full: nothing is numbered, nothing delivered.
    assert recorder.emit_now(PhaseChanged, pipeline_id="p", step=3, phase="train") is None
    assert sub.pending == 2 and recorder.last is second
    sub.close()  # a closed subscriber does not hold it back
    third = recorder.emit_now(PhaseChanged, pipeline_id="p", step=3, phase="train")
    assert third is not None and third.seq == 3


def test_emit_now_defers_to_a_subclass_that_watches_emit() -> None:
    class Watching(Recorder):
        async def emit(self, kind, **fields):  # type: ignore[no-untyped-def]
            return await super().emit(kind, **fields)

    bus = EventBus()
    watching = Watching(bus, "r", VirtualClock())
    assert watching.emit_now(PhaseChanged, pipeline_id="p", step=1, phase="train") is None
    assert watching.last is None


async def test_take_queued_drains_what_is_queued_up_to_the_yield_budget() -> None:
    bus = EventBus()
    sub = bus.subscribe("s", capacity=100)
    assert sub.take_queued() == []  # nothing queued: nothing, without waiting
    for i in range(1, 41):
        await bus.publish(ev(i))
    first = await sub.receive()
    rest = sub.take_queued()
    # receive() counted one; the batch fills the budget before the next forced yield.
    assert [first.seq, *seqs(rest)] == list(range(1, 32))
    assert sub.take_queued() == []  # budget spent: the next receive() yields first
    assert (await sub.receive()).seq == 32
    assert seqs(sub.take_queued()) == list(range(33, 41))
    sub.close()
    await bus.publish(ev(41))
    assert sub.take_queued() == []


async def test_take_queued_lets_a_publisher_waiting_for_room_go_on() -> None:
    bus = EventBus()
    sub = bus.subscribe("s", capacity=2)
    published: list[int] = []

    async def publish_three() -> None:
        for i in (1, 2, 3):
            await bus.publish(ev(i))
            published.append(i)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_three)
            await wait_until(lambda: published == [1, 2])  # blocked on the third
            assert seqs(sub.take_queued()) == [1, 2]
            await wait_until(lambda: published == [1, 2, 3])
    assert seqs(sub.take_queued()) == [3]

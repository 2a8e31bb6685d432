"""Fan-out event bus on anyio memory streams, and the recorder that stamps events.

Each subscriber gets its *own* bounded stream (clones of one stream would compete for items,
not broadcast). Publishing is serialised by one lock, so every subscriber sees events in
``seq`` order (per-engine order follows). A subscriber that falls behind gets the policy it
chose: ``BLOCK`` (the publisher waits: nothing is lost) or ``DROP`` (the event is dropped for
that subscriber and counted in ``dropped``; never silent). ``close()`` ends every
subscriber's iteration cleanly.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from offload_fsm.clock import Clock, RealClock
from offload_fsm.events import Event

E = TypeVar("E", bound=Event)


class SlowPolicy(str, enum.Enum):
    BLOCK = "block"  # back-pressure: the publisher waits for this subscriber
    DROP = "drop"  # lossy: drop this subscriber's copy and count it


@dataclass(eq=False)
class Subscription:
    """One subscriber's end of the bus. Iterate it with ``async for``.

    Leaving the ``async for`` early (break, error, cancellation) closes the subscription, so
    a publisher blocked on it is released at once. Wrap it in ``with subscription:`` where
    it is consumed some other way (``receive()``) to close it on the way out.
    """

    name: str
    policy: SlowPolicy
    capacity: int
    _send: MemoryObjectSendStream[Event]
    _receive: MemoryObjectReceiveStream[Event]
    dropped: int = 0
    delivered: int = 0
    filter: Callable[[Event], bool] | None = None
    _closed: bool = field(default=False)

    def __aiter__(self) -> AsyncIterator[Event]:
        return _Iterator(self)

    async def receive(self) -> Event:
        """The next event; raises ``anyio.EndOfStream`` once the bus is closed and drained."""
        return await self._receive.receive()

    def close(self) -> None:
        """Stop receiving (the bus forgets this subscriber on its next publish)."""
        self._closed = True
        self._send.close()
        self._receive.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Iterator:
    """``async for`` over a subscription. A class, not an async generator: an abandoned
    generator is only closed by the event loop's finalizer hook (trio warns about it),
    while this closes the subscription as soon as the loop lets go of it."""

    __slots__ = ("_done", "_sub")

    def __init__(self, sub: Subscription) -> None:
        self._sub = sub
        self._done = False

    def __aiter__(self) -> _Iterator:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._sub._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._finish()
            raise StopAsyncIteration from None

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._sub.close()

    def __del__(self) -> None:
        self._finish()


class EventBus:
    """Fan-out of events to subscribers, each with its own bounded stream and policy.

    Fast path: while no publisher is waiting on a full ``BLOCK`` subscriber, an event is
    handed to every stream without awaiting (atomic on the event loop, no lock). The first
    full ``BLOCK`` stream switches that publisher to the slow path, which holds a fair lock
    until it has delivered to the rest; publishers arriving meanwhile queue on the lock, so
    every subscriber still sees events in publication order.
    """

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._lock = anyio.Lock()
        self._slow = 0  # publishers in (or queued for) the slow path
        self._closed = False

    def subscribe(
        self,
        name: str,
        *,
        policy: SlowPolicy | str = SlowPolicy.BLOCK,
        capacity: int = 1024,
        filter: Callable[[Event], bool] | None = None,
    ) -> Subscription:
        if self._closed:
            raise RuntimeError("the event bus is closed")
        if capacity < 1:
            raise ValueError(f"subscriber {name!r}: capacity must be >= 1, got {capacity}")
        policy = SlowPolicy(policy)  # checked before any stream exists (nothing to leak)
        send, receive = anyio.create_memory_object_stream[Event](capacity)
        sub = Subscription(name, policy, capacity, send, receive, filter=filter)
        self._subs.append(sub)
        return sub

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(self._subs)

    @property
    def closed(self) -> bool:
        return self._closed

    async def publish(self, event: Event) -> None:
        await self._publish(lambda: event)

    async def _publish(self, make: Callable[[], E]) -> E:
        if self._closed:
            raise RuntimeError("the event bus is closed")
        if self._slow:
            return await self._publish_slow(make, None, 0)
        event = make()
        start = self._deliver_nowait(event, 0)
        if start is not None:
            await self._publish_slow(None, event, start)
        return event

    async def _publish_slow(self, make: Callable[[], E] | None, event: E | None, start: int) -> E:
        self._slow += 1
        try:
            async with self._lock:
                if event is None:
                    assert make is not None
                    event = make()
                i: int | None = start
                while i is not None:
                    await self._send_blocking(self._subs[i], event)
                    i = self._deliver_nowait(event, i + 1)
        finally:
            self._slow -= 1
        return event

    def _deliver_nowait(self, event: Event, start: int) -> int | None:
        """Deliver from ``start`` on; the index of the first full BLOCK subscriber, or None."""
        subs = self._subs
        gone = False
        for i in range(start, len(subs)):
            sub = subs[i]
            if sub._closed:
                gone = True
                continue
            if sub.filter is not None and not sub.filter(event):
                continue
            try:
                sub._send.send_nowait(event)
            except anyio.WouldBlock:
                if sub.policy is SlowPolicy.BLOCK:
                    return i
                sub.dropped += 1
                continue
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                sub._closed = gone = True  # the subscriber went away: forget it, not fail
                continue
            sub.delivered += 1
        if gone and not self._slow:
            self._subs = [s for s in subs if not s._closed]
        return None

    @staticmethod
    async def _send_blocking(sub: Subscription, event: Event) -> None:
        try:
            await sub._send.send(event)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            sub._closed = True
        else:
            sub.delivered += 1

    def close(self) -> None:
        """End every subscriber's iteration once it has drained what it was sent."""
        self._closed = True
        for sub in self._subs:
            sub._send.close()


class Recorder:
    """Stamps events with the run's envelope (seq, ts, run id) and publishes them.

    ``emit(Transition, engine_id=..., src=...)`` numbers the event at the moment it is handed
    to the bus, so ``seq`` order is publication order.
    """

    def __init__(self, bus: EventBus, run_id: str, clock: Clock | None = None) -> None:
        self.bus = bus
        self.run_id = run_id
        self.clock: Clock = clock or RealClock()
        self._seq = itertools.count(1)
        self.last: Event | None = None

    async def emit(self, kind: type[E], **fields: Any) -> E:
        def make() -> E:
            return kind(seq=next(self._seq), ts=self.clock.wall(), run_id=self.run_id, **fields)

        event = await self.bus._publish(make)
        self.last = event
        return event

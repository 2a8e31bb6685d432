"""Fan-out event bus, and the recorder that stamps events.

Each subscriber gets its *own* bounded queue (clones of one stream would compete for items,
not broadcast). Every subscriber sees events in publication (``seq``) order, so per-engine
order follows. A subscriber that falls behind gets the policy it chose: ``BLOCK`` (the
publisher waits: nothing is lost) or ``DROP`` (the event is dropped for that subscriber and
counted in ``dropped``; never silent). ``close()`` ends every subscriber's iteration cleanly
once it has drained what it was sent.

The queues are a deque plus an ``anyio.Event`` per parked waiter rather than anyio memory
object streams: handing an event to a parked subscriber is then one ``Event.set()``, which
made publishing to 4 idle subscribers about 3 times cheaper (docs/performance.md). Nothing
is handed over directly, so a cancelled receiver never loses an item: it stays queued.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from offload_fsm.clock import Clock, RealClock
from offload_fsm.events import Event
from offload_fsm.oneshot import checkpoint

E = TypeVar("E", bound=Event)


class SlowPolicy(str, enum.Enum):
    BLOCK = "block"  # back-pressure: the publisher waits for this subscriber
    DROP = "drop"  # lossy: drop this subscriber's copy and count it


_YIELD_EVERY = 32


class Subscription:
    """One subscriber's end of the bus. Iterate it with ``async for``.

    Leaving the ``async for`` early (break, error, cancellation) closes the subscription, so
    a publisher blocked on it is released at once. Wrap it in ``with subscription:`` where
    it is consumed some other way (``receive()``) to close it on the way out.
    """

    __slots__ = (
        "_buffer",
        "_closed",
        "_ended",
        "_reader",
        "_space",
        "_streak",
        "capacity",
        "delivered",
        "dropped",
        "filter",
        "name",
        "policy",
    )

    def __init__(
        self,
        name: str,
        policy: SlowPolicy,
        capacity: int,
        filter: Callable[[Event], bool] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self.capacity = capacity
        self.filter = filter
        self.dropped = 0  # events dropped because the queue was full (DROP only)
        self.delivered = 0  # events queued for this subscriber
        self._buffer: deque[Event] = deque()
        self._reader: anyio.Event | None = None  # set when an event arrives or the bus ends
        self._space: anyio.Event | None = None  # set when a full queue gets room
        self._ended = False  # the bus closed: nothing more will arrive
        self._closed = False  # the subscriber let go
        self._streak = 0  # events received without yielding to other tasks

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        """Events queued and not yet received."""
        return len(self._buffer)

    def __aiter__(self) -> AsyncIterator[Event]:
        return _Iterator(self)

    async def receive(self) -> Event:
        """The next event; raises ``anyio.EndOfStream`` once the bus is closed and drained
        (``anyio.ClosedResourceError`` once this subscription was closed).

        It yields to other tasks (a cancellation point) when it has to wait, and once every
        ``_YIELD_EVERY`` queued events otherwise: a loop pass per event was a fifth of the
        loop's passes in the scale benchmark, and a backlog still cannot hog the loop. The
        wait is its own yield: no extra pass before it."""
        self._streak += 1
        if self._streak >= _YIELD_EVERY:
            self._streak = 0
            await checkpoint()
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._buffer:
                return self._pop()
            self._streak = 0
            if self._ended:
                await checkpoint()  # still a cancellation point at the end
                if self._buffer or self._closed:
                    continue
                raise anyio.EndOfStream
            reader = self._reader
            if reader is None:
                reader = self._reader = anyio.Event()
            await reader.wait()

    def take_queued(self) -> list[Event]:
        """Up to ``_YIELD_EVERY`` events already queued, without waiting (empty when none):
        a subscriber that has just received one drains the rest in a loop, not a step of
        ``async for`` each. It counts towards the next forced yield, as ``receive`` does."""
        buffer = self._buffer
        if self._closed or not buffer:
            return []
        room = _YIELD_EVERY - 1 - self._streak
        if room <= 0:
            return []
        taken = [buffer.popleft() for _ in range(min(room, len(buffer)))]
        self._streak += len(taken)
        self._made_room()
        return taken

    def _pop(self) -> Event:
        """The oldest queued event (there is one)."""
        event = self._buffer.popleft()
        self._made_room()
        return event

    def _made_room(self) -> None:
        """Events were taken off the queue: a publisher waiting for room may go on."""
        space = self._space
        if space is not None:
            self._space = None
            space.set()

    def close(self) -> None:
        """Stop receiving (the bus forgets this subscriber on its next publish)."""
        self._closed = True
        self._buffer.clear()
        self._wake()

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        for waiter in (self._reader, self._space):
            if waiter is not None:
                waiter.set()
        self._reader = self._space = None

    async def _wait_for_space(self) -> bool:
        """Publisher side: wait for room. False when the subscriber or the bus went away."""
        while len(self._buffer) >= self.capacity:
            if self._closed or self._ended:
                return False
            space = self._space
            if space is None:
                space = self._space = anyio.Event()
            await space.wait()
        return not (self._closed or self._ended)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Subscription({self.name!r}, policy={self.policy.value}, capacity={self.capacity}, "
            f"pending={self.pending}, delivered={self.delivered}, dropped={self.dropped})"
        )


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
        sub = self._sub
        # receive() without its coroutine when it would not wait nor yield: the common case
        # of a subscriber draining what was queued since it last ran.
        if sub._buffer and sub._streak < _YIELD_EVERY - 1 and not sub._closed:
            sub._streak += 1
            return sub._pop()
        try:
            return await sub.receive()
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
    """Fan-out of events to subscribers, each with its own bounded queue and policy.

    Fast path: while no publisher is waiting on a full ``BLOCK`` subscriber, an event is
    queued for every subscriber without awaiting (atomic on the event loop, no lock). The
    first full ``BLOCK`` queue switches that publisher to the slow path, which holds a fair
    lock until it has delivered to the rest; publishers arriving meanwhile queue on the
    lock, so every subscriber still sees events in publication order.
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
        sub = Subscription(name, SlowPolicy(policy), capacity, filter)
        self._subs.append(sub)
        return sub

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(self._subs)

    @property
    def closed(self) -> bool:
        return self._closed

    async def publish(self, event: Event) -> None:
        if self._closed:
            raise RuntimeError("the event bus is closed")
        if self._slow:
            await self._publish_slow(None, event, 0)
            return
        start = self._deliver_nowait(event, 0)
        if start is not None:
            await self._publish_slow(None, event, start)

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
                    sub = self._subs[i]
                    if await sub._wait_for_space():
                        i = self._deliver_nowait(event, i)
                    else:
                        i = self._deliver_nowait(event, i + 1)
        finally:
            self._slow -= 1
        return event

    def _has_room(self) -> bool:
        """No blocking subscriber is full: a delivery now cannot wait."""
        for s in self._subs:  # a loop, not any(): no generator on every emit
            if len(s._buffer) >= s.capacity and s.policy is SlowPolicy.BLOCK and not s._closed:
                return False
        return True

    def _deliver_nowait(self, event: Event, start: int) -> int | None:
        """Deliver from ``start`` on; the index of the first full BLOCK subscriber, or None."""
        subs = self._subs
        gone = False
        for sub in subs[start:] if start else subs:  # no index kept: a full queue is rare
            if sub._closed:
                gone = True
                continue
            if sub.filter is not None and not sub.filter(event):
                continue
            buffer = sub._buffer
            if len(buffer) >= sub.capacity:
                if sub.policy is SlowPolicy.BLOCK:
                    return subs.index(sub, start)
                sub.dropped += 1
                continue
            # Subscription._offer, inlined: this loop is the publish hot path.
            buffer.append(event)
            sub.delivered += 1
            reader = sub._reader
            if reader is not None:
                sub._reader = None
                reader.set()
        if gone and not self._slow:
            self._subs = [s for s in subs if not s._closed]
        return None

    def close(self) -> None:
        """End every subscriber's iteration once it has drained what it was sent."""
        self._closed = True
        for sub in self._subs:
            sub._end()


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
        self._emit_overridden = type(self).emit is not Recorder.emit

    def emit_now(self, kind: type[E], **fields: Any) -> E | None:
        """Emit without awaiting, or do nothing and return None when the emit would have to
        wait (a full blocking subscriber, a slow publish in progress, a closed bus): then
        ``await emit(...)`` it. Lets a caller skip the shield an emit that must not be
        cancelled midway needs, in the common case where nothing can wait. A subclass that
        overrides ``emit`` sees every event there: for it this always returns None."""
        bus = self.bus
        if self._emit_overridden or bus._closed or bus._slow or not bus._has_room():
            return None
        event = kind(seq=next(self._seq), ts=self.clock.wall(), run_id=self.run_id, **fields)
        start = bus._deliver_nowait(event, 0)
        assert start is None, "a subscriber filled up during a synchronous delivery"
        self.last = event
        return event

    async def emit(self, kind: type[E], **fields: Any) -> E:
        bus = self.bus
        if bus._closed or bus._slow:

            def make() -> E:
                return kind(seq=next(self._seq), ts=self.clock.wall(), run_id=self.run_id, **fields)

            event = await bus._publish(make)  # numbered when its turn comes (or refused)
        else:
            # EventBus._publish's fast path, inlined (this is the hot path of every step):
            # numbered and queued with no await in between.
            event = kind(seq=next(self._seq), ts=self.clock.wall(), run_id=self.run_id, **fields)
            start = bus._deliver_nowait(event, 0)
            if start is not None:
                await bus._publish_slow(None, event, start)
        self.last = event
        return event

"""Fan-out event bus, and the recorder that stamps events.

Each subscriber gets its *own* bounded queue (clones of one stream would compete for items,
not broadcast). Every subscriber sees events in publication (``seq``) order, so per-engine
order follows. A subscriber that falls behind gets the policy it chose: ``BLOCK`` (the
publisher waits: nothing is lost) or ``DROP`` (the event is dropped for that subscriber and
counted in ``dropped``; never silent). ``close()`` ends every subscriber's iteration cleanly
once it has drained what it was sent.

The queues are a deque plus an ``anyio.Event`` per parked waiter rather than anyio memory
object streams: a publish queues the event for every subscriber without awaiting (so the
orchestrator can record a transition in the same step as it makes it), and the policy per
subscriber (block or drop) is the bus's own. Nothing is handed over directly, so a cancelled
receiver never loses an item: it stays queued. The bus also numbers the events it is asked
to make (``publish_new``): ``seq`` order is publication order.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from offload_fsm.events.kinds import Event
from offload_fsm.timing.clock import Clock, RealClock

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
        ``_YIELD_EVERY`` queued events otherwise: a subscriber drains a burst of events
        together, and a backlog still cannot starve the publishers. The wait is its own
        yield."""
        self._streak += 1
        if self._streak >= _YIELD_EVERY:
            self._streak = 0
            await anyio.lowlevel.checkpoint()
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._buffer:
                return self._pop()
            self._streak = 0
            if self._ended:
                await anyio.lowlevel.checkpoint()  # still a cancellation point at the end
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
        try:
            return await self._sub.receive()
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
        self._seq = itertools.count(1)  # the next event's number (publish_new)

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

    def publish_new_nowait(self, make: Callable[[int], E]) -> E | None:
        """Number a new event (``make(seq)``) and publish it at once, or do nothing and return
        None when publishing would have to wait (a full ``BLOCK`` subscriber, a publisher
        already waiting, a closed bus): then ``await publish_new(make)``. Nothing is
        numbered unless it is published, so ``seq`` has no gaps."""
        if self._closed or self._slow or not self._has_room():
            return None
        event = make(next(self._seq))
        start = self._deliver_nowait(event, 0)
        assert start is None, "a subscriber filled up during a synchronous delivery"
        return event

    async def publish_new(self, make: Callable[[int], E]) -> E:
        """Number a new event (``make(seq)``) when its turn to be published comes, and publish
        it: ``seq`` order is publication order, for every subscriber."""
        if self._closed:
            raise RuntimeError("the event bus is closed")
        if self._slow:
            return await self._publish_slow(make, None, 0)
        event = make(next(self._seq))  # numbered and queued with no await in between
        start = self._deliver_nowait(event, 0)
        if start is not None:
            await self._publish_slow(None, event, start)
        return event

    async def _publish_slow(
        self, make: Callable[[int], E] | None, event: E | None, start: int
    ) -> E:
        self._slow += 1
        try:
            async with self._lock:
                if event is None:
                    assert make is not None
                    event = make(next(self._seq))
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
        for s in self._subs:
            if len(s._buffer) >= s.capacity and s.policy is SlowPolicy.BLOCK and not s._closed:
                return False
        return True

    def _deliver_nowait(self, event: Event, start: int) -> int | None:
        """Deliver from ``start`` on; the index of the first full BLOCK subscriber, or None."""
        subs = self._subs
        gone = False
        for sub in subs[start:] if start else subs:
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
    """Stamps events with the run's envelope (ts, run id) and publishes them; the bus numbers
    them (``seq``) as it publishes them, so ``seq`` order is publication order.

    ``emit(Transition, engine_id=..., src=...)`` builds the event when the bus publishes it.
    """

    def __init__(self, bus: EventBus, run_id: str, clock: Clock | None = None) -> None:
        self.bus = bus
        self.run_id = run_id
        self.clock: Clock = clock or RealClock()
        self.last: Event | None = None
        self._emit_overridden = type(self).emit is not Recorder.emit

    def _maker(self, kind: type[E], fields: dict[str, Any]) -> Callable[[int], E]:
        def make(seq: int) -> E:
            return kind(seq=seq, ts=self.clock.wall(), run_id=self.run_id, **fields)

        return make

    def emit_now(self, kind: type[E], **fields: Any) -> E | None:
        """Emit without awaiting, or do nothing and return None when the emit would have to
        wait (a full blocking subscriber, a slow publish in progress, a closed bus): then
        ``await emit(...)`` it. Lets a caller skip the shield an emit that must not be
        cancelled midway needs, in the common case where nothing can wait. A subclass that
        overrides ``emit`` sees every event there: for it this always returns None."""
        if self._emit_overridden:
            return None
        event = self.bus.publish_new_nowait(self._maker(kind, fields))
        if event is not None:
            self.last = event
        return event

    async def emit(self, kind: type[E], **fields: Any) -> E:
        event = await self.bus.publish_new(self._maker(kind, fields))
        self.last = event
        return event

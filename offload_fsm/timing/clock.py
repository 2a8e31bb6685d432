"""Injected clocks. Real time for production, virtual time for tests and the simulator.

``now()`` is monotonic seconds (deadlines, elapsed), ``wall()`` is the event timestamp,
``sleep()`` waits. :class:`VirtualClock` makes backoff, settle windows and deadlines run in
virtual time: fast and exact. Use :func:`offload_fsm.timing.deadlines.deadline` instead of
``anyio.fail_after`` wherever the wait must follow the injected clock.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import Protocol

import anyio
import anyio.lowlevel

from offload_fsm.timing.backend import running_asyncio_loop
from offload_fsm.timing.idle import wait_all_tasks_blocked


class Clock(Protocol):
    def now(self) -> float: ...
    def wall(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    """The machine's clocks; ``now`` is ``time.monotonic``."""

    virtual = False

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


class _Sleeper:
    """A pending deadline: a sleeping task's, or a timer's (``callback`` set, no task)."""

    __slots__ = (
        "callback",
        "deadline",
        "due",
        "event",
        "gone",
        "idle_scope",
        "on_cancel",
        "seq",
        "woken",
    )

    def __init__(
        self,
        deadline: float,
        seq: int,
        callback: Callable[[], None] | None = None,
        on_cancel: Callable[[_Sleeper], None] | None = None,
    ):
        self.deadline = deadline
        self.seq = seq
        self.callback = callback
        self.on_cancel = on_cancel  # a timer's: tells the clock's keeper to look again
        self.event: anyio.Event | None = None  # made only when it has to wait its turn
        self.gone = False  # cancelled: left in the heap, dropped when it reaches the top
        self.idle_scope: anyio.CancelScope | None = None  # set while waiting for idleness
        self.woken = False  # woken early through a WakeToken
        self.due = False  # released by the watcher that moved time to this deadline

    def cancel(self) -> None:
        if self.gone:  # fired or cancelled already
            return
        self.gone = True
        self.callback = None  # must not keep its deadline's scope (and that task) alive
        if self.on_cancel is not None:
            self.on_cancel(self)


class WakeToken:
    """Lets another task end a :meth:`VirtualClock.sleep` early (a nudge)."""

    __slots__ = ("_sleeper",)

    def __init__(self) -> None:
        self._sleeper: _Sleeper | None = None

    def wake(self) -> None:
        me = self._sleeper
        if me is None or me.gone:
            return
        me.woken = True
        if me.event is not None:
            me.event.set()
        if me.idle_scope is not None:
            me.idle_scope.cancel()


class VirtualClock:
    """Virtual time that jumps to the earliest pending deadline once every task is blocked.

    Only the earliest sleeping task is awake (the watcher): it waits until no other task
    can run (trio's ``wait_all_tasks_blocked``; on asyncio, the moment the loop would wait
    for I/O, seen by the loop :mod:`offload_fsm.timing.idle` makes: start the run with
    ``idle.run(fn)``), then fires the timers due before its own deadline
    (``deadline()`` scopes), moves time on, and hands the watch to the next earliest
    sleeper. The others wait on events: a jump wakes only the sleepers that are due. Only
    for code that does no real I/O while virtual time runs.
    """

    virtual = True

    def __init__(self, start: float = 0.0, *, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        # Heaps of (deadline, seq, sleeper): equal deadlines wake in the order they slept.
        self._heap: list[_Entry] = []  # sleeping tasks
        self._timers: list[_Entry] = []  # callbacks (no task)
        self._timers_live = 0  # timers in the heap not cancelled
        self._counter = itertools.count()
        self._live = 0  # sleeping tasks not cancelled
        self._due: collections.deque[_Sleeper] = collections.deque()  # to wake, in order (trio)
        self._keeper: object | None = None  # the task that fires orphaned timers, if any
        self._keeper_token: WakeToken | None = None
        self.jumps = 0

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by hand (for synchronous tests)."""
        if seconds < 0 or not math.isfinite(seconds):
            raise ValueError(f"cannot advance a clock by {seconds!r}")
        self._now += seconds

    @property
    def has_watcher(self) -> bool:
        """Whether some task sleeps on this clock (and so will move time on)."""
        return self._live > 0

    def call_later(self, seconds: float, callback: Callable[[], None]) -> _Sleeper:
        """Run ``callback`` when virtual time reaches now + ``seconds`` (``.cancel()`` it).
        Fired by the watcher: it needs some task sleeping on this clock."""
        timer = _Sleeper(
            self._now + max(0.0, seconds), next(self._counter), callback, self._timer_cancelled
        )
        heapq.heappush(self._timers, (timer.deadline, timer.seq, timer))
        self._timers_live += 1
        if not self._live and self._keeper is None:
            self._keep_orphaned_timers()
        return timer

    async def sleep(self, seconds: float) -> None:
        await self.sleep_or_wake(seconds, None)

    async def sleep_or_wake(self, seconds: float, token: WakeToken | None) -> bool:
        """Sleep ``seconds`` of virtual time; True when ``token`` woke it earlier."""
        if not seconds > 0:
            await anyio.lowlevel.checkpoint()
            return False
        # A sleep too small to move a float still moves time: a loop sleeping "deadline
        # minus elapsed" must not spin at one instant forever.
        when = max(self._now + seconds, math.nextafter(self._now, math.inf))
        me = _Sleeper(when, next(self._counter))
        if token is not None:
            token._sleeper = me
        before = self._head()
        heapq.heappush(self._heap, (me.deadline, me.seq, me))
        self._live += 1
        if (
            before is not None
            and (me.deadline, me.seq) < (before.deadline, before.seq)
            and before.idle_scope is not None
        ):
            before.idle_scope.cancel()  # we are the watcher now
        try:
            while True:
                if me.due:
                    self._wake_next_due()
                    return False
                if me.woken:
                    self._leave(me)
                    await anyio.lowlevel.checkpoint()
                    return True
                if self._head() is me:
                    idle = await _all_tasks_blocked(me)
                    # A wait can complete in the same pass that cancelled us: honour that
                    # before moving time, or a cancelled sleeper would jump the clock.
                    await anyio.lowlevel.checkpoint_if_cancelled()
                    if self._head() is not me or me.woken:  # someone else moves on first
                        continue
                    if not idle:  # interrupted by a head that has left again: wait anew
                        continue
                    timer = _top(self._timers)
                    if timer is not None and timer.deadline <= me.deadline:
                        heapq.heappop(self._timers)
                        self._timers_live -= 1
                        self._move_to(timer.deadline)
                        callback, timer.callback, timer.gone = timer.callback, None, True
                        assert callback is not None
                        callback()  # e.g. cancels a deadline scope: let it run first
                        continue
                    heapq.heappop(self._heap)
                    self._leave(me)
                    self._move_to(me.deadline)
                    self._release_due()
                    self._wake_head()
                    return False
                # Not the head (checked above, nothing ran since): wait for our turn.
                me.event = anyio.Event()
                await me.event.wait()
                me.event = None
        except BaseException:  # cancelled: drop our deadline (lazily: O(1)), pass the watch on
            self._leave(me)
            if me.due:  # a link of the due chain: the rest must still wake
                self._wake_next_due()
            raise
        finally:
            if token is not None:
                token._sleeper = None
            if not self._live and self._keeper is None:  # its first test, saving a call
                self._keep_orphaned_timers()

    def _keep_orphaned_timers(self) -> None:
        """Timers are fired by a sleeping task. When the last one stops sleeping while a
        timer is pending (a deadline around a body that waits on something other than the
        clock: an event, ``sleep_forever``), start a keeper task that sleeps until the
        timer, or the deadline would never pass and the run would hang."""
        if self._live or self._keeper is not None or _top(self._timers) is None:
            return
        loop = running_asyncio_loop()
        if loop is None:  # trio: a system task (cancelled when the run ends)
            import trio.lowlevel

            self._keeper = trio.lowlevel.spawn_system_task(self._keep_timers)
        else:
            self._keeper = loop.create_task(self._keep_timers())

    async def _keep_timers(self) -> None:
        token = self._keeper_token = WakeToken()
        try:
            # Only while nobody else sleeps: a sleeper that leaves last starts a new keeper.
            while (timer := _top(self._timers)) is not None and not self._live:
                # At least a hair: a timer due now is fired by the sleeper that moves time.
                # The clock's own sleep, not an override's: the keeper is clock machinery,
                # not a task whose sleeps a subclass instruments (e.g. counts as await points).
                await VirtualClock.sleep_or_wake(self, max(timer.deadline - self._now, 1e-9), token)
        finally:
            self._keeper = self._keeper_token = None

    def _timer_cancelled(self, timer: _Sleeper) -> None:
        """A cancelled timer must not keep the keeper (nor time) going: it looks again, if
        this was the timer it sleeps towards (the others are dropped when they reach it)."""
        if self._keeper_token is not None and self._timers and self._timers[0][2] is timer:
            self._keeper_token.wake()
        self._timers_live -= 1
        # Cancelled timers wait in the heap until they reach its top: a 120 s call deadline
        # cancelled after 1 ms would sit there for 120 s of virtual time. Past half the heap,
        # drop them all at once (amortised O(1) per timer), or a large run's heap, memory
        # and garbage-collection passes would grow with every call made in that window.
        if len(self._timers) > 64 and len(self._timers) > 2 * self._timers_live:
            self._timers = [entry for entry in self._timers if not entry[2].gone]
            heapq.heapify(self._timers)

    def _release_due(self) -> None:
        """Every other sleeper whose deadline has now come goes without an idle check of its
        own (time does not move for them), woken in deadline order. On asyncio all at once:
        its run queue keeps that order, and they run in one pass of the loop. Trio may run
        a batch of woken tasks in reverse, so there each wakes the next (a pass each)."""
        chain = not _on_asyncio()
        while (head := self._head()) is not None and head.deadline <= self._now:
            heapq.heappop(self._heap)
            head.due = head.gone = True
            self._live -= 1
            if chain:
                self._due.append(head)
            elif head.event is not None:
                head.event.set()
        self._wake_next_due()

    def _wake_next_due(self) -> None:
        while self._due:
            nxt = self._due.popleft()
            if nxt.event is not None:
                nxt.event.set()
                return

    def _leave(self, me: _Sleeper) -> None:
        """``me`` no longer sleeps (it stays in the heap until it reaches the top)."""
        if not me.gone:
            me.gone = True
            self._live -= 1
        self._wake_head()  # never ``me``: the heap drops gone entries from its top

    def _move_to(self, when: float) -> None:
        if when > self._now:
            self._now = when
            self.jumps += 1

    def _head(self) -> _Sleeper | None:
        return _top(self._heap)

    def _wake_head(self) -> None:
        head = self._head()
        if head is not None and head.event is not None:
            head.event.set()


_Entry = tuple[float, int, _Sleeper]


def _on_asyncio() -> bool:
    """Whether the running backend is asyncio (else trio, anyio's other backend)."""
    return running_asyncio_loop() is not None


def _top(heap: list[_Entry]) -> _Sleeper | None:
    while heap and heap[0][2].gone:
        heapq.heappop(heap)
    return heap[0][2] if heap else None


async def _all_tasks_blocked(me: _Sleeper) -> bool:
    """Return True once no other task of this event loop can run, or False early when an
    earlier sleeper took over or a token woke ``me`` (either cancels ``me.idle_scope``).
    Exactly one watcher is ever waiting (a new head cancels the old one's wait)."""
    with anyio.CancelScope() as scope:
        me.idle_scope = scope
        try:
            await wait_all_tasks_blocked()
        finally:
            me.idle_scope = None
    return not scope.cancel_called

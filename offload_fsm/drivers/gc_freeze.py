"""Keep the run's long-lived set-up out of the cyclic garbage collector while it runs."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Allocations between young-generation collections while a run is on (CPython's default is
# 700). A run allocates events, futures and probe rounds by the hundred thousand, nearly all
# freed by reference counting; at 700 the collector runs every few hundred microseconds and
# promotes them to older generations, whose collections then walk them again.
# ``python -m tests.bench.bench_scale`` prints the collector's time per generation with this
# setting and with CPython's default, side by side.
RUN_YOUNG_THRESHOLD = 50_000


@contextmanager
def frozen_setup(young_threshold: int | None = RUN_YOUNG_THRESHOLD) -> Iterator[None]:
    """Everything built so far (engines, state machines, adapters, topology) lives for the
    whole run: moved to the collector's permanent generation, collections during the run do
    not walk it again. The young generation is collected every ``young_threshold``
    allocations (None: leave the thresholds alone). Both are undone when the run ends: the
    set-up goes back to the oldest generation, so it can be collected, and the thresholds
    are restored."""
    if young_threshold is not None and young_threshold < 1:
        raise ValueError(
            f"young_threshold must be >= 1 (0 turns the collector off), got {young_threshold!r}"
        )
    before = gc.get_threshold()
    gc.freeze()
    if young_threshold is not None:
        gc.set_threshold(young_threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()

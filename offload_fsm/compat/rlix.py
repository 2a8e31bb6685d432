"""Drop-in for the RLix side of the residual gate, and offload_fsm's gate behind its call shape.

A RLix call site swaps imports and keeps its calls::

    from offload_fsm.compat.rlix import (
        parse_env_positive_float,             # was rlix.utils.env
        probe_max_used_gpu_mem_gb,            # was MilesPipeline._probe_max_used_gpu_mem_gb
        wait_for_overlap_engines_offloaded,   # replaces MilesPipeline's method of that name
    )

Upstream: rlops/rlix ``refs/pull/11/head`` (f73bfafb06712b2501a658ca91caa609f0d0361a):
``rlix/utils/env.py`` and ``rlix/pipeline/miles_pipeline.py``; the 7.0 GiB default is from
PR #17 (``tests/test_miles_residual_threshold_wiring.py`` at
d18231d77dbbbd0a4a81e9e04dc029d48ecdc268).

- :func:`parse_env_positive_float` raises :class:`EnvValueError` with RLix's messages; it is a
  ``RuntimeError`` (what RLix raises and its callers catch) and a
  :class:`~offload_fsm.core.errors.ConfigError` naming the variable. One difference: ``nan`` and
  ``inf`` are refused ("must be a finite number"); RLix returns them, and a NaN threshold makes
  every comparison false while an infinite one opens the gate onto anything.
- :func:`probe_max_used_gpu_mem_gb` keeps RLix's contract: whole-GPU ``memory.used`` of exactly
  the asked physical ids (``nvidia-smi --id``), max across them, in GiB; ``[N/A]`` GPUs are
  skipped; None when nothing was asked, nvidia-smi is missing, fails or passes 5 s, or no GPU
  had a figure. An id that is not a non-negative int raises :class:`ConfigError`.
- :func:`wait_for_overlap_engines_offloaded` is in :mod:`offload_fsm.compat.rlix_gate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from offload_fsm.compat._smi import CSV, check_timeout, run_smi
from offload_fsm.compat.rlix_env import EnvValueError, parse_env_positive_float, physical_ids
from offload_fsm.compat.rlix_gate import (
    RLIX_BEHAVIOUR,
    RLIX_DEFAULT_THRESHOLD_GB,
    OverlapGateOptions,
    make_overlap_wait,
    wait_for_overlap_engines_offloaded,
)

PROBE_TIMEOUT_S = 5.0  # RLix's nvidia-smi timeout in _probe_max_used_gpu_mem_gb


def probe_max_used_gpu_mem_gb(
    gpu_ids: Sequence[int], *, timeout_s: float = PROBE_TIMEOUT_S
) -> float | None:
    """Max whole-GPU used GiB over ``gpu_ids`` (physical, as nvidia-smi numbers them), or None
    when it cannot be measured (see the module doc). Every process counts, co-tenants too."""
    ids = physical_ids("gpu_ids", gpu_ids)
    timeout = check_timeout(timeout_s)
    if not ids:
        return None
    query = [f"--id={','.join(str(g) for g in ids)}", "--query-gpu=memory.used", CSV]
    out = run_smi(query, timeout)
    if out is None:
        return None
    used_mib: list[float] = []
    for line in out.splitlines():
        text = line.strip()
        try:
            value = float(text)
        except ValueError:
            continue  # blank, "[N/A]", "[Insufficient Permissions]": this GPU has no figure
        if math.isfinite(value) and value >= 0:
            used_mib.append(value)
    if not used_mib:
        return None
    return max(used_mib) / 1024.0


__all__ = [
    "RLIX_BEHAVIOUR",
    "RLIX_DEFAULT_THRESHOLD_GB",
    "EnvValueError",
    "OverlapGateOptions",
    "make_overlap_wait",
    "parse_env_positive_float",
    "probe_max_used_gpu_mem_gb",
    "wait_for_overlap_engines_offloaded",
]

"""Pick a probe backend: NVML, else nvidia-smi, else a clear error naming both failures.

A named backend (``nvml`` / ``smi`` / ``fake``) is used as asked, with no fallback: a user who
asked for NVML and cannot have it is told so. Every backend returned has answered
``devices()`` once, so a backend that cannot work fails here, not at the first gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from offload_fsm.core.errors import BackendUnavailable, ConfigError
from offload_fsm.probe.base import ProbeBackend
from offload_fsm.probe.nvml import NvmlBackend
from offload_fsm.probe.smi import SmiBackend
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.timing.clock import Clock

BACKEND_NAMES = ("auto", "nvml", "smi", "fake")


async def _checked(backend: ProbeBackend) -> ProbeBackend:
    try:
        await backend.devices()
    except BaseException:
        await backend.aclose()
        raise
    return backend


async def open_backend(
    name: str = "auto",
    *,
    clock: Clock | None = None,
    nvml_module: Any = None,
    smi_executable: str = "nvidia-smi",
    smi_env: Mapping[str, str] | None = None,
    smi_timeout_s: float = 10.0,
    fake: FakeGpus | None = None,
) -> ProbeBackend:
    """A working backend by name (``auto`` tries NVML, then nvidia-smi).

    ``fake`` is the ledger for the fake backend (default: one empty simulated GPU).
    Raises :class:`BackendUnavailable` naming every failure, or :class:`ConfigError` for an
    unknown name.
    """
    if name not in BACKEND_NAMES:
        raise ConfigError("backend", name, " | ".join(BACKEND_NAMES))
    if name == "fake":
        return FakeBackend(fake or FakeGpus(make_devices(1), clock))
    if name == "nvml":
        return await _checked(NvmlBackend(nvml_module, clock=clock))
    smi = SmiBackend(smi_executable, timeout_s=smi_timeout_s, env=smi_env, clock=clock)
    if name == "smi":
        return await _checked(smi)
    try:
        return await _checked(NvmlBackend(nvml_module, clock=clock))
    except BackendUnavailable as nvml_error:
        try:
            return await _checked(smi)
        except BackendUnavailable as smi_error:
            raise BackendUnavailable(
                f"no GPU probe backend works here: NVML: {nvml_error}; nvidia-smi: {smi_error}"
            ) from smi_error

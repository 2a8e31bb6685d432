"""The engine adapter interface the orchestrator drives.

The orchestrator calls these in order and wraps every call in a timeout and events; adapters
only talk to their engine and raise :class:`offload_fsm.core.errors.EngineError` subclasses (mapping
httpx / OS errors at this boundary). Nothing here retries a call that is not idempotent
(``resume`` above all: resuming a tag that is not released raises in SGLang).

Release:  prepare_release() -> release(tags)          (then the orchestrator's release gate)
Wake:     (the orchestrator's wake gate) -> resume(tags) -> finish_wake()

Errors: ``EngineCallTimeout`` (no answer in time), ``EngineUnreachable`` (refused, dropped,
process dead), plain ``EngineError`` (the engine answered with a failure, e.g. HTTP 4xx/5xx,
with the status and a body excerpt); bad arguments (malformed tags) are ``ConfigError`` raised
before any engine call. Every adapter also has an ``engine_id`` attribute, the id its errors
carry. Implementations: ``sglang.SGLangAdapter``, ``vllm.VLLMAdapter``,
``trainer.TrainerAdapter``, ``sim.SimEngine`` (in-process, memory in a FakeGpus ledger) and
``sim_server`` (a simulated SGLang/vLLM server as a real process tree).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from offload_fsm.core.errors import ConfigError


def check_process_root(value: object) -> int | None:
    """An adapter's ``process_root`` argument: a positive pid, or None (unknown)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ConfigError("process_root", value, "a positive pid or None")
    return value


@runtime_checkable
class EngineAdapter(Protocol):
    name: str  # "sglang" | "vllm" | "trainer" | "sim" | ...

    @property
    def process_root(self) -> int | None:
        """PID of the engine's process tree root (spawn parent) for attribution, or None."""
        ...

    async def prepare_release(self, drain_timeout_s: float) -> None:
        """Stop admission, abort/drain running requests (bounded by ``drain_timeout_s``),
        pause generation."""
        ...

    async def release(self, tags: Sequence[str] | None) -> None:
        """Ask the engine to release GPU memory (None = everything). Returning is no proof
        that memory was freed: the orchestrator's release gate measures it."""
        ...

    async def resume(self, tags: Sequence[str] | None) -> None:
        """Ask the engine to re-acquire GPU memory. Not idempotent: called once per wake."""
        ...

    async def finish_wake(self) -> None:
        """After a resume: continue generation, re-open admission (sync weights hook)."""
        ...

    async def aclose(self) -> None: ...

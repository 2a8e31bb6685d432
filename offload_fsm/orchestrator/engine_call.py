"""One adapter call as the orchestrator makes it: events around it, a deadline, typed errors.

Every call is logged as ``adapter_call_started`` then ``adapter_call_finished`` or
``adapter_call_failed``. Whatever the adapter raises comes out as an :class:`EngineError`
(a timeout as :class:`EngineCallTimeout`), except the library's own errors, which pass as
they are.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from offload_fsm.core.errors import EngineCallTimeout, EngineError, OffloadFsmError
from offload_fsm.core.redact import redact
from offload_fsm.engines.spec import Engine
from offload_fsm.events.bus import Recorder
from offload_fsm.events.kinds import AdapterCallFailed, AdapterCallFinished, AdapterCallStarted
from offload_fsm.timing.clock import Clock
from offload_fsm.timing.deadlines import RoundDeadlines


async def call_engine(
    eng: Engine,
    name: str,
    fn: Callable[..., Awaitable[None]],
    *args: Any,
    recorder: Recorder,
    clock: Clock,
    deadlines: RoundDeadlines,
    timeout_s: float,
    detail: str = "",
) -> None:
    """Await ``fn(*args)`` for ``eng`` within ``timeout_s`` (armed on ``deadlines``, entered
    by the calling task), logged as the call ``name``."""
    ids = {
        "engine_id": eng.id,
        "pipeline_id": eng.spec.pipeline_id,
        "gpus": eng.gpus,
    }
    await recorder.emit(AdapterCallStarted, call=name, detail=detail, **ids)
    t0 = clock.now()
    error: EngineError | None = None
    try:
        await deadlines.run(timeout_s, fn, *args)
    except TimeoutError as exc:
        error = EngineCallTimeout(eng.id, name, f"no answer within {timeout_s:g} s")
        error.__cause__ = exc
    except EngineError as exc:
        error = exc
    except OffloadFsmError:
        raise
    except Exception as exc:  # an adapter bug or an unmapped error: still the engine's
        error = EngineError(eng.id, name, redact(f"{type(exc).__name__}: {exc}"))
        error.__cause__ = exc
    elapsed = clock.now() - t0
    if error is not None:
        with anyio.CancelScope(shield=True):
            await recorder.emit(
                AdapterCallFailed,
                call=name,
                elapsed_s=elapsed,
                error_type=type(error).__name__,
                error=redact(str(error)),  # an adapter outside this package may not have
                **ids,
            )
        raise error
    await recorder.emit(AdapterCallFinished, call=name, elapsed_s=elapsed, detail=detail, **ids)


def tag_list(tags: Sequence[str] | None) -> list[str] | None:
    """The ``tags`` argument of a release or resume call (None: all of the engine's memory)."""
    return None if tags is None else list(tags)


def tag_text(tags: Sequence[str] | None) -> str:
    """The tags as the call's ``detail`` in its events."""
    return "tags=all" if tags is None else f"tags={','.join(tags)}"


__all__ = ["call_engine", "tag_list", "tag_text"]

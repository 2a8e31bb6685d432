"""timing/backend.py: the one place that asks which event loop runs, on asyncio and trio."""

from __future__ import annotations

import threading

from offload_fsm.timing.backend import in_event_loop, running_asyncio_loop


async def test_inside_a_loop_on_either_backend(anyio_backend_name: str) -> None:
    assert in_event_loop()
    assert (running_asyncio_loop() is not None) == (anyio_backend_name == "asyncio")


def test_outside_any_loop() -> None:
    assert not in_event_loop()
    assert running_asyncio_loop() is None


async def test_another_thread_of_a_running_loop_is_outside_it(anyio_backend: str) -> None:
    seen: list[tuple[bool, bool]] = []
    thread = threading.Thread(
        target=lambda: seen.append((in_event_loop(), running_asyncio_loop() is None))
    )
    thread.start()
    thread.join()
    assert seen == [(False, True)]

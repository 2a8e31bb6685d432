"""The pytest plugin (entry point ``pytest11: offload_fsm``): virtual-time world fixtures.

Fixtures (async ones run on the test's anyio backend, asyncio or trio):

- ``fsm_world``: a fresh :class:`offload_fsm.testing.World`; configure it with the marker
  ``@pytest.mark.fsm_world(gpus=4, gpu_gib=80, threshold_gib=8, settle=3,
  gate_timeout_s=60)`` or by overriding the ``fsm_world_options`` fixture. Its run is
  finished when the test ends (if the test did not finish it).
- ``fsm_clock``, ``fsm_gpus``, ``fsm_orchestrator``: the world's virtual clock, fake GPUs
  and orchestrator; ``fsm_log``: its recorded event log (a live view).

This module imports nothing heavy at collection: installing offload-fsm must not slow down
or change anyone else's test runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from offload_fsm.orchestrator.orchestrator import Orchestrator
    from offload_fsm.sim.fake_gpus import FakeGpus
    from offload_fsm.testing.log import EventLog
    from offload_fsm.testing.world import World
    from offload_fsm.timing.clock import VirtualClock

MARKER = "fsm_world"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**options): options of the offload_fsm.testing World the fsm_world "
        "fixture builds (gpus, gpu_gib, threshold_gib, settle, gate_timeout_s, run_id)",
    )


@pytest.fixture
def fsm_world_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Keyword arguments for the World: the ``fsm_world`` marker's (closest wins)."""
    marker = request.node.get_closest_marker(MARKER)
    if marker is None:
        return {}
    if marker.args:
        raise pytest.UsageError(f"@pytest.mark.{MARKER} takes keyword options only")
    return dict(marker.kwargs)


@pytest.fixture
async def fsm_world(fsm_world_options: dict[str, Any], anyio_backend: Any) -> AsyncIterator[World]:
    """A virtual-time world (fake GPUs, orchestrator, event log) for this test."""
    from offload_fsm.testing.world import World

    world = World(**fsm_world_options)
    await world.start()
    yield world
    await world.finish()


@pytest.fixture
def fsm_clock(fsm_world: World) -> VirtualClock:
    return fsm_world.clock


@pytest.fixture
def fsm_gpus(fsm_world: World) -> FakeGpus:
    return fsm_world.gpus


@pytest.fixture
def fsm_orchestrator(fsm_world: World) -> Orchestrator:
    return fsm_world.orchestrator


@pytest.fixture
def fsm_log(fsm_world: World) -> EventLog:
    return fsm_world.log

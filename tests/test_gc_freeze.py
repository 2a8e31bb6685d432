"""frozen_setup: set-up objects leave the collector during the run and come back after."""

from __future__ import annotations

import gc

from offload_fsm.drivers.gc_freeze import frozen_setup


def test_setup_is_frozen_during_the_run_and_collectable_after() -> None:
    class World:
        pass

    world = World()
    world.me = world  # type: ignore[attr-defined]  # a cycle: only the collector frees it
    with frozen_setup():
        assert gc.get_freeze_count() > 0
        assert not any(o is world for o in gc.get_objects())  # out of every generation
    assert gc.get_freeze_count() == 0
    assert any(o is world for o in gc.get_objects())

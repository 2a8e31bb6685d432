"""frozen_setup: set-up objects leave the collector during the run and come back after."""

from __future__ import annotations

import gc

import pytest

from offload_fsm.drivers.gc_freeze import RUN_YOUNG_THRESHOLD, frozen_setup


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


def test_young_generation_threshold_is_raised_during_the_run_and_restored() -> None:
    before = gc.get_threshold()
    with frozen_setup():
        assert gc.get_threshold() == (RUN_YOUNG_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before
    with frozen_setup(1234):
        assert gc.get_threshold()[0] == 1234
    with frozen_setup(None):
        assert gc.get_threshold() == before
    assert gc.get_threshold() == before


def test_thresholds_come_back_when_the_run_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError, match="boom"), frozen_setup():
        raise RuntimeError("boom")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_threshold_that_would_stop_the_collector_is_refused() -> None:
    before = gc.get_threshold()
    with pytest.raises(ValueError, match="young_threshold must be >= 1"), frozen_setup(0):
        pass
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0

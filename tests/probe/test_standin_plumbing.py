"""The GPU checks' stand-in engine, in host-memory mode: spawn parent -> grandchild that
holds the memory, found from the parent's pid by one walk of the real /proc."""

from __future__ import annotations

import os

import pytest

from offload_fsm.probe.processes import ProcessTable
from offload_fsm.sim.standin_proc import StandIn


def test_standin_tree_and_commands() -> None:
    engine = StandIn(host=True)
    try:
        table = ProcessTable.snapshot()
        tree = table.tree(engine.parent_pid)
        assert engine.child_pid in tree and engine.parent_pid in tree
        child = table.get(engine.child_pid)
        assert child is not None and child.ppid == engine.parent_pid
        assert engine.parent_pid in table.tree(os.getpid())  # spawned from this test
        assert engine.command("alloc 0.01") >= 0
        assert engine.command("free") >= 0
        with pytest.raises(RuntimeError, match="unknown command"):
            engine.command("explode")
    finally:
        engine.close()
    assert engine.proc.returncode == 0
    assert engine.child_pid not in ProcessTable.snapshot()

"""kill_tree_and_verify on a real process tree of ``sleep`` processes; their GPU memory lives
in the fake ledger for exactly as long as each process runs."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable, Iterator

import anyio
import pytest

from offload_fsm.compat import miles
from offload_fsm.core.errors import ConfigError, GateTimeout
from offload_fsm.orchestrator.teardown import _leaves_first, kill_tree_and_verify
from offload_fsm.probe.base import GIB
from offload_fsm.probe.processes import ProcessTable, ProcInfo
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus

# root bash -> sleep, and bash -> sleep (a grandchild, as sglang::scheduler under its launcher)
TREE = "sleep 60 & bash -c 'sleep 60 & wait' & wait"
# Everything ignores SIGTERM (an ignored signal stays ignored across exec): needs SIGKILL.
STUBBORN = "trap '' TERM; sleep 60 & bash -c 'sleep 60 & wait' & wait"


def _alive(pid: int) -> bool:
    info = ProcessTable.snapshot().get(pid)
    return info is not None and info.state != "Z"


class Tree:
    def __init__(self, script: str) -> None:
        self.proc = subprocess.Popen(["bash", "-c", script])
        deadline = time.monotonic() + 10
        while len(self.pids()) < 4:  # root, sleep, bash, its sleep
            assert time.monotonic() < deadline, "the tree did not start"
            time.sleep(0.01)
        self.started = self.pids()

    def pids(self) -> frozenset[int]:
        return ProcessTable.snapshot().tree(self.proc.pid)

    def holders(self) -> list[int]:
        """The processes that "hold GPU memory": every sleep of the tree."""
        table = ProcessTable.snapshot()
        return sorted(p for p in self.started if (i := table.get(p)) and i.comm == "sleep")

    def close(self) -> None:
        for pid in self.started:
            if _alive(pid):
                subprocess.run(["kill", "-9", str(pid)], check=False)
        self.proc.wait(5)


@pytest.fixture
def make_tree() -> Iterator[type[Tree]]:
    made: list[Tree] = []

    class Tracked(Tree):
        def __init__(self, script: str) -> None:
            super().__init__(script)
            made.append(self)

    yield Tracked
    for tree in made:
        tree.close()


def ledger_for(pids: Iterable[int], nbytes: int) -> FakeGpus:
    """Two GPUs; each live pid holds ``nbytes`` on gpu0."""
    gpus = FakeGpus(make_devices(2))
    key = gpus.devices[0].key
    pids = tuple(pids)
    gpus.add_source(lambda: [(p, key, nbytes) for p in pids if _alive(p)])
    return gpus


async def test_whole_tree_is_killed_children_first_and_memory_verified(
    make_tree: type[Tree],
) -> None:
    tree = make_tree(TREE)
    holders = tree.holders()
    assert len(holders) == 2
    gpus = ledger_for(holders, 20 * GIB)
    backend = FakeBackend(gpus)
    t0 = time.monotonic()
    result = await kill_tree_and_verify(
        tree.proc.pid, gpus.devices[:1], backend, 5.0, threshold_bytes=1 * GIB
    )
    assert time.monotonic() - t0 < 3.0
    assert result.pids == tree.started
    assert sorted(result.exited_on_term) == sorted(tree.started) and result.killed == ()
    assert not any(_alive(p) for p in tree.started)
    assert result.gate.opened and result.gate.verdict is not None
    assert result.gate.verdict.observed == (0,)


async def test_processes_that_ignore_sigterm_are_killed(make_tree: type[Tree]) -> None:
    tree = make_tree(STUBBORN)
    gpus = ledger_for(tree.holders(), 20 * GIB)
    result = await kill_tree_and_verify(
        tree.proc.pid,
        gpus.devices[:1],
        FakeBackend(gpus),
        5.0,
        threshold_bytes=1 * GIB,
        term_grace_s=0.2,
    )
    assert sorted(result.killed) == sorted(tree.started)
    assert result.exited_on_term == ()
    assert not any(_alive(p) for p in tree.started)


async def test_memory_that_does_not_come_back_times_out_with_readings(
    make_tree: type[Tree],
) -> None:
    tree = make_tree(TREE)
    gpus = ledger_for(tree.holders(), 20 * GIB)
    gpus.set_usage(2**22 + 5, 0, 9 * GIB)  # an orphan from an earlier run still holds memory
    with pytest.raises(GateTimeout) as info:
        await kill_tree_and_verify(
            tree.proc.pid, gpus.devices[:1], FakeBackend(gpus), 0.3, threshold_bytes=8 * GIB
        )
    assert info.value.readings == {gpus.devices[0].key: 9 * GIB}
    assert not any(_alive(p) for p in tree.started)  # killed all the same


def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


async def test_a_root_already_gone_still_gets_the_memory_check() -> None:
    gpus = FakeGpus(make_devices(1))
    result = await kill_tree_and_verify(_dead_pid(), gpus.devices, FakeBackend(gpus), 1.0)
    assert result.pids == frozenset() and result.gate.opened


async def test_bad_input_is_refused() -> None:
    gpus = FakeGpus(make_devices(1))
    backend = FakeBackend(gpus)
    for bad in (0, -1, True, os.getpid()):
        with pytest.raises(ConfigError, match="root_pid"):
            await kill_tree_and_verify(bad, gpus.devices, backend)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="gpus"):
        await kill_tree_and_verify(12345, (), backend)
    with pytest.raises(ConfigError, match="term_grace_s"):
        await kill_tree_and_verify(12345, gpus.devices, backend, term_grace_s=0)


def test_sync_compat_form_for_shutdown_hard(make_tree: type[Tree]) -> None:
    tree = make_tree(TREE)
    gpus = ledger_for(tree.holders(), 20 * GIB)
    result = miles.kill_tree_and_verify(
        tree.proc.pid, [0], threshold_gib=1.0, timeout_s=5.0, backend=FakeBackend(gpus)
    )
    assert result.pids == tree.started and result.gate.opened
    assert not any(_alive(p) for p in tree.started)


async def test_a_cancelled_teardown_stops_before_sigkill(make_tree: type[Tree]) -> None:
    tree = make_tree(STUBBORN)
    gpus = ledger_for(tree.holders(), 20 * GIB)
    with anyio.move_on_after(0.1):
        await kill_tree_and_verify(
            tree.proc.pid, gpus.devices[:1], FakeBackend(gpus), 5.0, term_grace_s=5.0
        )
    assert all(_alive(p) for p in tree.started)  # SIGTERM was ignored; no SIGKILL yet


def test_signal_order_is_every_child_before_its_parent() -> None:
    links = {10: 1, 11: 10, 12: 10, 13: 11, 14: 13, 99: 1}  # pid -> parent
    table = ProcessTable({p: ProcInfo(p, pp, "x", "S") for p, pp in links.items()})
    order = _leaves_first(table, 10)
    assert sorted(order) == [10, 11, 12, 13, 14]
    for pid in order:
        parent = links[pid]
        if parent in order:
            assert order.index(pid) < order.index(parent)
    assert _leaves_first(table, 55) == []

"""The soak (``python -m tests.soak``, 10,000 cycles) in short: 200 cycles on each backend,
with the same checks: no deadlock, no task leak, bounded memory, every cycle in the log."""

from __future__ import annotations

from pathlib import Path

from tests.soak import report, soak


async def test_short_soak(tmp_path: Path) -> None:
    result = await soak(200, seed=3, out=tmp_path, wall_limit_s=40.0)
    assert not result.problems(), report(result) + "\n" + "\n".join(result.problems())
    assert result.injected and result.errors and result.recoveries  # faults did happen
    assert result.replay_cycles == result.cycles >= 200

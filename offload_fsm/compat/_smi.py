"""One synchronous ``nvidia-smi`` call for the MILES and RLix drop-ins.

Both upstream probes shell out to ``nvidia-smi`` from sync code and read "no answer" as
"cannot measure" (None), never as an error: a missing binary, a non-zero exit, a call past its
timeout and a binary that cannot be executed all give None here. Only stdout is parsed (the
upstream probes merge stderr into the output; a warning line there could never parse as a
figure row, so the answers are the same).
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Sequence

from offload_fsm.core.errors import ConfigError

SMI = "nvidia-smi"
CSV = "--format=csv,noheader,nounits"


def check_timeout(timeout_s: float) -> float:
    """``timeout_s`` as a positive, finite number of seconds (upstream passes it straight to
    ``subprocess``, where 0 or a negative value fails every call and None waits forever)."""
    ok = isinstance(timeout_s, (int, float)) and not isinstance(timeout_s, bool)
    if not ok or not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ConfigError("timeout_s", timeout_s, "a positive, finite number of seconds")
    return float(timeout_s)


def smi_available() -> bool:
    return shutil.which(SMI) is not None


def run_smi(args: Sequence[str], timeout_s: float) -> str | None:
    """stdout of ``nvidia-smi ARGS``, or None when there is no answer (see the module doc).
    A call past ``timeout_s`` is killed (``subprocess.run`` does so before it returns)."""
    exe = shutil.which(SMI)
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "replace")

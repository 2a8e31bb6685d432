"""offload_fsm: safe, fast, observable GPU time-sharing for RL post-training.

Each engine gets an explicit lifecycle (active -> releasing -> slept -> gated -> waking ->
active, plus failed); wakes are gated on measured GPU memory; every step is an event.
"""

from offload_fsm.core.errors import OffloadFsmError
from offload_fsm.core.lifecycle import Lifecycle, State, Trigger

__version__ = "0.1.0"

__all__ = ["Lifecycle", "OffloadFsmError", "State", "Trigger", "__version__"]

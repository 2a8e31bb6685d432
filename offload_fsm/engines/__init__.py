"""Engine adapters: one interface over SGLang, vLLM, trainers and simulated engines."""

from offload_fsm.engines.base import EngineAdapter

__all__ = ["EngineAdapter"]

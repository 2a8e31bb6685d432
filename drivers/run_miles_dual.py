#!/usr/bin/env python3
"""Two RL pipelines on partly overlapping GPUs, every wake gated on measured memory.

Topology from MILES_DUAL_P1_TRAIN, MILES_DUAL_P1_INFER, MILES_DUAL_P2_TRAIN,
MILES_DUAL_P2_INFER (all four or none; default on 4 GPUs: P1 train=[0] infer=[0,1,2],
P2 train=[3] infer=[1,2,3]). Runs on the embedded simulator; see --help.
"""

from offload_fsm.drivers.scripts import dual_main

if __name__ == "__main__":
    raise SystemExit(dual_main())

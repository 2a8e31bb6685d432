#!/usr/bin/env python3
"""One RL pipeline (rlix style): shrink the engines on the trainer's GPUs, train, expand.

Runs on the embedded simulator; see --help.
"""

from offload_fsm.drivers.scripts import rlix_main

if __name__ == "__main__":
    raise SystemExit(rlix_main())

"""One module per ``offload-fsm`` subcommand (see :mod:`offload_fsm.cli`)."""

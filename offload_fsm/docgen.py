"""``python -m offload_fsm.docgen``: forwards to :mod:`offload_fsm.commands.docgen`."""

from offload_fsm.commands.docgen import main

if __name__ == "__main__":
    raise SystemExit(main())

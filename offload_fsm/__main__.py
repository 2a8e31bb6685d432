from offload_fsm.commands.cli import main

raise SystemExit(main())

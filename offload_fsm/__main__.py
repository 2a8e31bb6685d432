from offload_fsm.cli import main

raise SystemExit(main())

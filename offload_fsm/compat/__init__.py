"""Drop-ins for MILES (:mod:`.miles`) and RLix (:mod:`.rlix`), and offload_fsm's own gates in
their vocabulary (:mod:`.gates`); see docs/integration.md and docs/migrating.md."""

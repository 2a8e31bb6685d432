"""Drop-in helpers for existing RL frameworks (swap one import; see docs/integration.md)."""

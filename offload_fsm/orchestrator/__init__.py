"""Async release and wake of registered engines over the gates."""

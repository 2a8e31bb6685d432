"""Drivers in the style of MILES' run_miles_rlix.py and run_miles_dual.py.

They ask the orchestrator for releases and wakes and *subscribe to events* for everything
they need to know (engine states, gate progress); they never poll engines or nvidia-smi.
"""

"""Injected time: real and virtual clocks, deadlines, structured-concurrency helpers."""

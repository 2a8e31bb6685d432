"""Every simulator: fake GPUs, simulated and stand-in engines and servers."""

"""The pure core: the lifecycle table, where an interruption leaves an engine, the errors."""

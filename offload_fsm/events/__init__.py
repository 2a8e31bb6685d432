"""Event records, their codec, the bus and recorder, the JSONL log."""

"""Processor: the streaming path. Kafka snapshots -> mergeable window aggregates and layout events
-> TimescaleDB, exactly once. The read side of what it writes is :mod:`warehouse`."""

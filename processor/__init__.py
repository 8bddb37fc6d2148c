"""Processor: Kafka snapshots -> mergeable window aggregates and layout events -> TimescaleDB."""

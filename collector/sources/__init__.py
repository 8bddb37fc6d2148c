"""Collector sources: each turns what a site already runs into :class:`collector.snapshot.Snapshot`."""

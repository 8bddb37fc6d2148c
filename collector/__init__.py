"""Collector: sources (dcgm, nvml, prometheus, simulate) -> snapshots -> Kafka.

Owns the wire contract (:mod:`collector.snapshot`) and the slice logic (:mod:`collector.slices`);
the processor imports nothing else from here.
"""

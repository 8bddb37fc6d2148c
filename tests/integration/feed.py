"""Feed snapshots into a warehouse through the processor's own library path (fold + sink).

Integration tests of reports must exercise the pipeline, not insert aggregates by hand:
this is exactly what ``migmeter process`` does per micro-batch, minus Kafka.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal

import psycopg

from collector.snapshot import Snapshot
from warehouse import prices
from processor.fold import BatchFold
from processor.sink import Sink

__all__ = ["feed", "feed_priced"]


def feed(url: str, snapshots: Sequence[Snapshot], topic: str = "test.feed", group: str = "test") -> dict[str, int]:
    """Fold ``snapshots`` as one batch of records on partition 0 and write it; returns rows per table."""
    sink = Sink(url, group)
    try:
        start = sink.read_offsets(topic, [0])[0]
        states = sink.load_states({s.gpu_uuid for s in snapshots})
        fold = BatchFold(states=states, stored_offsets={(topic, 0): start})
        for i, snap in enumerate(snapshots):
            fold.add(topic, 0, (start or 0) + i, snap.key, snap.to_json(), snap)
        return sink.write(fold.finish())
    finally:
        sink.close()


def feed_priced(url: str, snapshots: Sequence[Snapshot], gpu_prices: Sequence[tuple[str, str, date]]) -> str:
    """Set GPU-hour prices ``(model, price, from day)`` in USD, then :func:`feed` the snapshots; returns ``url``."""
    with psycopg.connect(url) as conn:
        for model, price, day in gpu_prices:
            prices.set_price(conn, prices.Price(model, Decimal(price), "USD", day))
    feed(url, snapshots)
    return url

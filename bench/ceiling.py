"""The machine's limits (part 5): what the processor's figures are a fraction of.

- Consume-only: kafka-python reading the same pre-loaded topic with no processing at all
  (records are counted, values not even decoded; batches are decompressed), with the
  processor's fetch size, in a child process. The clock starts once the consumer is
  connected and positioned (first fetch included), so start-up is not in it.
- COPY: psycopg ``COPY ... FROM STDIN`` of instance-usage rows (the processor's widest table)
  into an empty hypertable with its primary key and indexes; once with rows formatted by
  psycopg (``write_row``, what a Python writer pays) and once from pre-encoded text (the
  server's own limit).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from typing import Any

import psycopg
from psycopg import sql

from bench.common import DENSE_MODEL, DenseFleet, coarsen, fresh_database, load_average, median
from processor.aggregate import tenant_rows
from processor.fold import BatchFold
from processor.grains import FOLD_GRAIN, GRAINS
from processor.sink import USAGE_TABLES

__all__ = ["CONSUME_MODES", "consume_only", "copy_ceiling", "usage_rows"]

_CONSUMER = r"""
import json, sys, time
from kafka import KafkaConsumer, TopicPartition
bootstrap, topic, ends, mode = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
if mode == "json":
    decode = json.loads
elif mode == "msgspec":
    import msgspec
    decode = msgspec.json.decode
elif mode == "from_json":
    from collector.snapshot import from_json as decode
else:
    decode = None
c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                  max_partition_fetch_bytes=8 * 1024 * 1024, client_id="migmeter-bench-consume-only")
tps = [TopicPartition(topic, int(p)) for p in ends]
c.assign(tps)
c.seek_to_beginning(*tps)
for tp in tps:
    c.position(tp)  # connect and resolve the start offsets before the clock starts
target = sum(ends.values())
n = nbytes = 0
t0 = time.perf_counter()
while n < target:
    for tp, recs in c.poll(timeout_ms=500, max_records=10000).items():
        n += len(recs)
        nbytes += sum(len(r.value) for r in recs)
        if decode is not None:
            for r in recs:
                decode(r.value)
t = time.perf_counter() - t0
print(json.dumps({"records": n, "bytes": nbytes, "seconds": t}))
"""


# The reference loops: kafka-python iterating the records only, then also parsing every value
# with json, with msgspec (untyped, to dicts: the processor's parser without its typed schema),
# and with the processor's whole decoder.
CONSUME_MODES = ("count", "json", "msgspec", "from_json")


def consume_only(bootstrap: str, topic: str, ends: dict[int, int], repeats: int, mode: str = "count") -> dict[str, Any]:
    """Records/s of a bare kafka-python consumer over the whole topic (median of ``repeats``);
    ``mode`` (CONSUME_MODES) says what it does with each value."""
    if mode not in CONSUME_MODES:
        raise ValueError(f"mode {mode!r} is not one of {CONSUME_MODES}")
    rates, load = [], []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _CONSUMER, bootstrap, topic, json.dumps(ends), mode],
                             capture_output=True, text=True, timeout=600, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rates.append(r["records"] / r["seconds"])
        load.append(load_average())
    return {"records_per_s": median(rates), "runs": rates, "load": load}


def usage_rows(snapshots: int = 20_000, gpus: int = 1000, seed: int = 11) -> dict[str, list[tuple[Any, ...]]]:
    """Rows per usage table from folding ``snapshots`` dense-fleet snapshots with the processor's fold."""
    from datetime import datetime, timezone

    fleet = DenseFleet(seed=seed, hosts=max(1, gpus // 8), gpus_per_host=8, models=(DENSE_MODEL,), cluster="bench")
    fold = BatchFold({}, {})
    n = 0
    rounds = max(1, snapshots // (max(1, gpus // 8) * 8))
    for rnd in fleet.rounds(rounds):
        for s in rnd:
            fold.add("t", 0, n, s.key, None, s)
            n += 1
    batch = fold.finish()
    out: dict[str, list[tuple[Any, ...]]] = {}
    cache: dict[int, datetime] = {}
    by_grain = {grain: coarsen(batch.aggregates, width) if grain != FOLD_GRAIN else batch.aggregates
                for grain, width in GRAINS.items()}  # 1h/1d: what the sink's rollups make of them
    for grain, spec, attr in USAGE_TABLES:
        value_cols = spec.columns[len(spec.keys):]
        rows = []
        agg = by_grain[grain]
        parts = tenant_rows(agg) if attr == "tenants" else getattr(agg, attr)  # as the sink derives them
        for key, sums in parts.items():
            ts = cache.get(key[0]) or cache.setdefault(key[0], datetime.fromtimestamp(key[0], tz=timezone.utc))
            rows.append((ts, *key[1:], *(getattr(sums, c) for c in value_cols)))
        out[spec.name] = rows
    return out


def _spec(name: str) -> Any:
    return next(spec for _, spec, _ in USAGE_TABLES if spec.name == name)


def copy_ceiling(rows: list[tuple[Any, ...]], repeats: int, table: str = "instance_usage_1m") -> dict[str, Any]:
    """COPY rate into the empty hypertable ``table`` (fresh database, truncated between runs)."""
    spec = _spec(table)
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table),
                                                     sql.SQL(", ").join(map(sql.Identifier, spec.columns)))
    formatted: list[float] = []
    pre_encoded: list[float] = []
    with fresh_database() as url, psycopg.connect(url) as conn:
        # Pre-encode the same rows as COPY text once (outside the timing), for the server-only
        # figure. The values are uuids, names, numbers and times: nothing that needs escaping.
        buf = io.StringIO()
        for r in rows:
            buf.write("\t".join("\\N" if v is None else (v.isoformat() if hasattr(v, "isoformat") else str(v))
                                for v in r) + "\n")
        text = buf.getvalue().encode()
        for _ in range(repeats):
            for mode, sink in (("formatted", formatted), ("pre_encoded", pre_encoded)):
                conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
                conn.commit()
                t0 = time.perf_counter()
                with conn.cursor() as cur, cur.copy(stmt) as cp:
                    if mode == "formatted":
                        for r in rows:
                            cp.write_row(r)
                    else:
                        for i in range(0, len(text), 1 << 20):
                            cp.write(text[i:i + (1 << 20)])
                conn.commit()
                sink.append(len(rows) / (time.perf_counter() - t0))
        load = load_average()
    return {"table": table, "rows": len(rows), "rows_per_s_formatted": median(formatted),
            "rows_per_s_pre_encoded": median(pre_encoded), "runs_formatted": formatted,
            "runs_pre_encoded": pre_encoded, "load": load}

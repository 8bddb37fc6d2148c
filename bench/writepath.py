"""Write path (part 3): the sink's COPY + additive merge vs row-by-row upserts vs executemany.

Same data for every method: the usage rows (1m/1h/1d of instance, tenant and GPU usage) of
one batch folded by the processor's own fold. Each method writes the batch twice into
freshly truncated tables, each pass in one transaction: the first pass inserts, the second
conflicts on every row and merges (``x = t.x + EXCLUDED.x``), so both halves of an upsert
are paid. Every method runs the same merge expressions:

- ``copy_merge``: what ``processor.sink`` does: COPY into a temporary staging table, then one
  ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` per table (the sink's ``upsert_sql``).
- ``row_by_row``: ``INSERT ... VALUES (...) ON CONFLICT DO UPDATE`` executed once per row
  (what a naive writer, or Kafka Connect's JDBC sink in upsert mode without batching, does).
- ``executemany``: the same statement through psycopg's ``executemany`` (pipelined in psycopg 3).

After the runs the three methods' table contents are compared, so a fast but wrong writer
would show.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

from bench.common import fresh_database, load_average, median
from processor.sink import USAGE_TABLES, TableSpec

__all__ = ["METHODS", "values_upsert_sql", "write_path"]

METHODS = ("copy_merge", "executemany", "row_by_row")


def values_upsert_sql(spec: TableSpec) -> sql.Composed:
    """The sink's merge, fed by VALUES instead of a staging table (same SET expressions)."""
    t, ex = sql.Identifier("t"), sql.Identifier("excluded")
    sets: list[sql.Composable] = []
    for c in spec.attrs:
        sets.append(sql.SQL("{} = {}.{}").format(sql.Identifier(c), ex, sql.Identifier(c)))
    for c in spec.sums:
        sets.append(sql.SQL("{c} = {t}.{c} + {ex}.{c}").format(c=sql.Identifier(c), t=t, ex=ex))
    for c in spec.mins:
        sets.append(sql.SQL("{c} = LEAST({t}.{c}, {ex}.{c})").format(c=sql.Identifier(c), t=t, ex=ex))
    for c in spec.maxs:
        sets.append(sql.SQL("{c} = GREATEST({t}.{c}, {ex}.{c})").format(c=sql.Identifier(c), t=t, ex=ex))
    return sql.SQL("INSERT INTO {table} AS t ({cols}) VALUES ({ph}) ON CONFLICT ({keys}) DO UPDATE SET {sets}").format(
        table=sql.Identifier(spec.name), cols=sql.SQL(", ").join(map(sql.Identifier, spec.columns)),
        ph=sql.SQL(", ").join(sql.Placeholder() * len(spec.columns)),
        keys=sql.SQL(", ").join(map(sql.Identifier, spec.keys)), sets=sql.SQL(", ").join(sets))


def _specs() -> dict[str, TableSpec]:
    return {spec.name: spec for _, spec, _ in USAGE_TABLES}


def _write(conn: psycopg.Connection[Any], method: str, data: dict[str, list[tuple[Any, ...]]]) -> None:
    specs = _specs()
    with conn.transaction(), conn.cursor() as cur:
        for name, rows in data.items():
            spec = specs[name]
            if method == "copy_merge":
                stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
                    sql.Identifier(spec.stage), sql.SQL(", ").join(map(sql.Identifier, spec.columns)))
                with cur.copy(stmt) as cp:
                    for r in rows:
                        cp.write_row(r)
                cur.execute(spec.upsert_sql())
            elif method == "executemany":
                cur.executemany(values_upsert_sql(spec), rows)
            else:
                q = values_upsert_sql(spec)
                for r in rows:
                    cur.execute(q, r)


def _truncate(conn: psycopg.Connection[Any], names: list[str]) -> None:
    with conn.transaction():
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, names))))


def _fingerprint(conn: psycopg.Connection[Any], names: list[str]) -> list[Any]:
    """Row count and a few sums per table, rounded: equal contents give equal fingerprints."""
    out = []
    for name in names:
        spec = _specs()[name]
        col = spec.sums[0]
        row = conn.execute(sql.SQL("SELECT count(*), round(sum({})::numeric, 6) FROM {}").format(
            sql.Identifier(col), sql.Identifier(name))).fetchone()
        out.append((name, *(row or ())))
    return out


def write_path(data: dict[str, list[tuple[Any, ...]]], repeats: int,
               methods: tuple[str, ...] = METHODS) -> dict[str, Any]:
    """Rows/s of each method over two passes (insert, then merge), median of ``repeats``."""
    names = list(data)
    n_rows = sum(len(r) for r in data.values())
    rates: dict[str, list[float]] = {m: [] for m in methods}
    fingerprints: dict[str, list[Any]] = {}
    # autocommit: every transaction() block below is a real transaction (not a savepoint in an
    # implicit one), so the staging tables' ON COMMIT DELETE ROWS empties them after each pass.
    with fresh_database() as url, psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            for name in names:
                spec = _specs()[name]
                conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS").format(
                    sql.Identifier(spec.stage), sql.Identifier(spec.name)))
        for _ in range(repeats):
            for m in methods:  # interleaved, so load drift hits every method alike
                _truncate(conn, names)
                t0 = time.perf_counter()
                _write(conn, m, data)  # pass 1: inserts
                _write(conn, m, data)  # pass 2: every row conflicts and merges
                rates[m].append(2 * n_rows / (time.perf_counter() - t0))
                fingerprints[m] = _fingerprint(conn, names)
        load = load_average()
    base = median(rates["copy_merge"]) if "copy_merge" in rates else float("nan")
    same = len({repr(f) for f in fingerprints.values()}) == 1
    return {
        "rows_per_pass": n_rows,
        "tables": {n: len(r) for n, r in data.items()},
        "methods": {m: {"rows_per_s": median(r), "runs": r,
                        "copy_merge_speedup": base / median(r) if median(r) else float("nan")}
                    for m, r in rates.items()},
        "results_identical": same,
        "load": load,
    }

"""Database outages: the processor stops consuming, backs off, resumes, and loses or doubles nothing."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from collector.sources.simulate import SimulatedFleet
from warehouse.migrate import migrate
from tests.fix_faults import (
    DEADLINE_S,
    assert_billed_once,
    config,
    produce,
    start_in_thread,
    stored_offsets_total,
    wait_until,
)

pytestmark = pytest.mark.integration


def _backends(admin_url: str, dbname: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                           "AND application_name = 'migmeter-process'", (dbname,)).fetchone()
    return int(row[0]) if row else 0


def _snaps(rounds: int, seed: int = 5):  # type: ignore[no-untyped-def]
    fleet = SimulatedFleet(seed=seed, hosts=2, gpus_per_host=3, reconfigure_every_s=1200.0)
    return [s for r in fleet.rounds(rounds) for s in r]


def test_database_missing_at_start_then_appearing(kafka_bootstrap, new_topic, admin_url):  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=2)
    name = f"migmeter_test_{uuid.uuid4().hex[:10]}"
    url = urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    snaps = _snaps(120)
    produce(kafka_bootstrap, topic, snaps[: len(snaps) // 2])
    proc, metrics, thread, errors = start_in_thread(config(kafka_bootstrap, url, topic, retry_max_s=1.0))
    try:
        # The database does not exist: the processor retries and consumes nothing meanwhile.
        wait_until(lambda: metrics.db_retries._value.get() >= 3, "retries while the database is missing")
        produce(kafka_bootstrap, topic, snaps[len(snaps) // 2:])
        assert metrics.records._value.get() == 0
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        migrate(url)
        thread.join(DEADLINE_S)
        assert not thread.is_alive() and not errors
        assert metrics.registry.get_sample_value("migmeter_processor_database_up") == 1
        assert_billed_once(url, snaps)
    finally:
        proc.stop()
        thread.join(30)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_connections_killed_mid_stream(kafka_bootstrap, new_topic, fresh_db, admin_url):  # type: ignore[no-untyped-def]
    """The processor's connection is terminated again and again (also inside transactions and
    commits): every batch either committed or is re-consumed, never both."""
    topic = new_topic(partitions=2)
    snaps = _snaps(200, seed=9)
    dbname = urlsplit(fresh_db).path.lstrip("/")
    proc, metrics, thread, errors = start_in_thread(config(kafka_bootstrap, fresh_db, topic, retry_max_s=0.5,
                                                  batch_records=50, batch_ms=50))
    killed = 0
    try:
        step = len(snaps) // 6
        for i in range(6):
            produce(kafka_bootstrap, topic, snaps[i * step:(i + 1) * step] if i < 5 else snaps[i * step:])
            # Kill the processor's connection while it works through this part.
            before = stored_offsets_total(fresh_db)[0]
            wait_until(lambda: _backends(admin_url, dbname), "the processor's connection")
            with psycopg.connect(admin_url, autocommit=True) as conn:
                killed += sum(1 for (ok,) in conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND application_name = 'migmeter-process'", (dbname,)) if ok)
            wait_until(lambda: stored_offsets_total(fresh_db)[0] > before, "progress after the kill")
        thread.join(DEADLINE_S)
        assert not thread.is_alive() and not errors
    finally:
        proc.stop()
        thread.join(30)
    assert killed >= 6 and metrics.db_retries._value.get() >= 1
    assert_billed_once(fresh_db, snaps)

"""A real `migmeter process` answers /readyz from real probes: ready against the real Kafka and
a migrated TimescaleDB; not ready (database named as the reason) while its private database is
stopped, yet still live; ready again once the database is back. The Helm chart's probes use
exactly these endpoints."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from migmeter import stack
from tests.fix_faults import Proc, start_processor, wait_until
from tests.processor.health_kit import http_get

pytestmark = pytest.mark.integration

# Probe rounds every 0.5 s: the state flips within a second or two; the waits allow minutes.
HEALTH_INTERVAL = "0.5"


def _readyz_when(port: int, status: int, what: str, proc: Proc, must_contain: str = "") -> str:
    """The /readyz body once it answers ``status`` (and holds ``must_contain``)."""
    def check() -> str | None:
        code, body = http_get(port, "/readyz")
        return body if code == status and must_contain in body else None

    return str(wait_until(check, what, alive=[proc]))


def test_readiness_follows_the_database(kafka_bootstrap: str, new_topic, private_pg, tmp_path: Path) -> None:
    cluster, url = private_pg
    assert isinstance(cluster, stack.PostgresCluster)
    topic = new_topic(partitions=2)
    proc = start_processor(kafka_bootstrap, url, topic, "health-" + topic, tmp_path, "--health-interval",
                           HEALTH_INTERVAL, name="processor", metrics=True)
    port = proc.metrics_port
    try:
        body = _readyz_when(port, 200, "processor ready", proc)
        assert body.startswith("ready (probed ")
        assert "kafka: ok\ndatabase: ok\n" in body

        cluster.stop()
        body = _readyz_when(port, 503, "not ready while the database is down", proc)
        assert "kafka: ok" in body
        assert "database: failed: " in body
        password = urlsplit(url).password
        assert password and password not in body
        assert http_get(port, "/healthz") == (200, "live\n")  # the database being down is no reason to restart

        cluster.start()
        _readyz_when(port, 200, "ready again after the database is back", proc)
    finally:
        rc = proc.terminate()
    assert rc == 0, proc.tail()


def test_a_database_without_the_schema_is_not_ready(kafka_bootstrap: str, new_topic, admin_url: str,
                                                    tmp_path: Path) -> None:
    """The probe reads sink_offsets: a server that answers but was never migrated is not ready."""
    name = f"migmeter_unmigrated_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    topic = new_topic(partitions=1)
    proc = start_processor(kafka_bootstrap, urlunsplit(urlsplit(admin_url)._replace(path='/' + name)), topic,
                           "health-" + topic, tmp_path, "--health-interval", HEALTH_INTERVAL, name="processor",
                           metrics=True)
    port = proc.metrics_port
    try:
        body = _readyz_when(port, 503, "not ready on an unmigrated database", proc, "database: failed")
        assert 'UndefinedTable: relation "sink_offsets" does not exist' in body
        assert "kafka: ok" in body
    finally:
        proc.kill()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

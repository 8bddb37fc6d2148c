"""A real `migmeter process` answers /readyz from real probes: ready against the real Kafka and
a migrated TimescaleDB; not ready (database named as the reason) while its private database is
stopped, yet still live; ready again once the database is back. The Helm chart's probes use
exactly these endpoints."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from migmeter import stack
from tests.fix_faults import free_port, processor_args, spawn, wait_until

pytestmark = pytest.mark.integration

# Probe rounds every 0.5 s: the state flips within a second or two; the waits allow minutes.
HEALTH_INTERVAL = "0.5"


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:  # noqa: S310
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""  # not listening yet


def test_readiness_follows_the_database(kafka_bootstrap: str, new_topic, private_pg, tmp_path: Path) -> None:
    cluster, url = private_pg
    assert isinstance(cluster, stack.PostgresCluster)
    topic = new_topic(partitions=2)
    port = free_port()
    proc = spawn("processor", processor_args(kafka_bootstrap, url, topic, "health-" + topic, port,
                                             "--health-interval", HEALTH_INTERVAL), tmp_path)
    try:
        status, body = wait_until(lambda: (r := _get(port, "/readyz"))[0] == 200 and r, "processor ready",
                                  alive=[proc])  # type: ignore[misc]
        assert body.startswith("ready (probed ")
        assert "kafka: ok\ndatabase: ok\n" in body

        cluster.stop()
        status, body = wait_until(lambda: (r := _get(port, "/readyz"))[0] == 503 and r,
                                  "not ready while the database is down", alive=[proc])  # type: ignore[misc]
        assert "kafka: ok" in body
        assert "database: failed: " in body
        password = urlsplit(url).password
        assert password and password not in body
        assert _get(port, "/healthz") == (200, "live\n")  # the database being down is no reason to restart

        cluster.start()
        wait_until(lambda: _get(port, "/readyz")[0] == 200, "ready again after the database is back", alive=[proc])
    finally:
        rc = proc.terminate()
    assert rc == 0, proc.tail()


def test_a_database_without_the_schema_is_not_ready(kafka_bootstrap: str, new_topic, admin_url: str,
                                                    tmp_path: Path) -> None:
    """The probe reads sink_offsets: a server that answers but was never migrated is not ready."""
    import uuid

    import psycopg
    from psycopg import sql

    from tests.fix_stack import _with_database

    name = f"migmeter_unmigrated_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    port = free_port()
    topic = new_topic(partitions=1)
    proc = spawn("processor", processor_args(kafka_bootstrap, _with_database(admin_url, name), topic,
                                             "health-" + topic, port, "--health-interval", HEALTH_INTERVAL), tmp_path)
    try:
        status, body = wait_until(lambda: (r := _get(port, "/readyz"))[0] == 503 and "database: failed" in r[1] and r,
                                  "not ready on an unmigrated database", alive=[proc])  # type: ignore[misc]
        assert 'UndefinedTable: relation "sink_offsets" does not exist' in body
        assert "kafka: ok" in body
    finally:
        proc.kill()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

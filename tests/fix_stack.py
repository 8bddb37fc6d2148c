"""Fixtures for tests that talk to the real local stack (Kafka broker, PostgreSQL + TimescaleDB).

Outside CI a test whose service is down is skipped with the command that starts it; with
CI=true a missing broker or database is a failure, never a skip, so CI cannot go green by
testing nothing. Every test gets its own topic and its own database, so several test runs
and developers can share one stack.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from migmeter import settings, stack

__all__ = ["kafka_bootstrap", "new_topic", "admin_url", "fresh_db", "unavailable", "missing_tool"]

_IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(what: str) -> None:
    """Skip (developer machine) or fail (CI) a test whose service is not reachable."""
    message = f"{what} is not reachable; start it with `migmeter stack up`"
    if _IN_CI:
        pytest.fail(message + " (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(message)


def missing_tool(message: str) -> None:
    """Skip (developer machine) or fail (CI) a test whose external tool is not installed."""
    if _IN_CI:
        pytest.fail(message + " (CI=true: a missing tool is a failure)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = settings.kafka_bootstrap()
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, client_id="migmeter-tests")
        admin.list_topics()
        admin.close()
    except (KafkaError, OSError) as exc:
        unavailable(f"Kafka at {bootstrap} ({exc.__class__.__name__})")
    return bootstrap


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory: ``new_topic(partitions=4)`` creates a uniquely named topic, deleted afterwards."""
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="migmeter-tests")
    created: list[str] = []

    def make(partitions: int = 4, prefix: str = "test") -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        stack.create_topic(admin, name, partitions)  # returns once every partition has a leader
        created.append(name)
        return name

    yield make
    if created:
        try:
            admin.delete_topics(created)
        except KafkaError:
            pass
    admin.close()


@pytest.fixture(scope="session")
def admin_url() -> str:
    """URL of the stack's owner role, able to create databases (the local stack's default)."""
    url = settings.database_url()
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL at {settings.redact_url(url)} ({exc.__class__.__name__})")
    return url


def _with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


@pytest.fixture
def fresh_db(admin_url: str) -> Iterator[str]:
    """A new, fully migrated database for one test; dropped afterwards. Yields its URL."""
    from warehouse.migrate import migrate

    name = f"migmeter_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    url = _with_database(admin_url, name)
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name))
            )

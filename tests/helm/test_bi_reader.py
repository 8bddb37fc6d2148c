"""The chart's BI-login job script (files/bi_reader.py), run as the Job runs it, against a real
migrated TimescaleDB: the login it creates can log in with the Secret's password (SCRAM
verifier computed client-side), reads the BI views and nothing else; a second run rotates the
password; bad input is a clear exit 2."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from tests.helm.chart_kit import CHART

pytestmark = pytest.mark.integration

SCRIPT = CHART / "files" / "bi_reader.py"


def _run(url: str, name: str, password: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGMETER_")}
    env.update(MIGMETER_DATABASE_URL=url, MIGMETER_BI_USERNAME=name, MIGMETER_BI_PASSWORD=password)
    return subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def _as(url: str, name: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    return urlunsplit(parts._replace(netloc=f"{name}:{quote(password, safe='')}@{host}:{parts.port}"))


@pytest.fixture
def login_name(admin_url: str) -> Iterator[str]:
    """A cluster-wide role name of this test's own, dropped afterwards."""
    name = f"bi_helm_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(admin_url, autocommit=True) as conn:
        # The role owns nothing (the script only grants membership), so it drops cleanly.
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def test_the_login_reads_views_only_and_rotates(fresh_db: str, login_name: str) -> None:
    first = secrets.token_urlsafe(18)
    proc = _run(fresh_db, login_name, first)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"BI login {login_name} created: member of migmeter_reader\n"
    assert first not in proc.stdout + proc.stderr

    with psycopg.connect(_as(fresh_db, login_name, first)) as conn:
        assert conn.execute("SELECT count(*) FROM chargeback_reconciliation_daily").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM sink_offsets")
    with psycopg.connect(fresh_db) as conn:
        stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (login_name,)).fetchone()
    assert stored is not None and stored[0].startswith("SCRAM-SHA-256$4096:")

    second = secrets.token_urlsafe(18)
    proc = _run(fresh_db, login_name, second)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"BI login {login_name} updated: member of migmeter_reader\n"
    with psycopg.connect(_as(fresh_db, login_name, second)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(_as(fresh_db, login_name, first)).close()


@pytest.mark.parametrize(("name", "password", "message"), [
    ("BI; DROP ROLE x", "a-long-enough-password", "must match"),
    ("bi_short", "short", "at least 12 characters"),
    ("", "a-long-enough-password", "need MIGMETER_DATABASE_URL"),
])
def test_bad_input_is_a_usage_error(fresh_db: str, name: str, password: str, message: str) -> None:
    proc = _run(fresh_db, name, password)
    assert proc.returncode == 2
    assert message in proc.stderr

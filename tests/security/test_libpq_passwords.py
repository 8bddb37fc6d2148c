"""Passwords that real libpq accepts, in every form libpq accepts them, are never printed.

Issue 18: ``redact_url`` trusted ``urlsplit``, which ends a password at ``#``, ``?`` or ``/``
where libpq does not, so it found no password and printed the URL whole, while libpq logged
in with it; ``migmeter process`` then logged the URL at INFO on every start, and libpq's own
messages quoted a password back (``unexpected spaces found in "..."``). Here real login roles
with such passwords exist in a real PostgreSQL; every command runs as a subprocess (what an
operator or a log shipper sees) and its whole output must not hold the password, nor the
marker inside it (a fragment of a password is a leak too).
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg
import pytest
from psycopg import sql

from collector.sources.simulate import SimulatedFleet
from migmeter import settings
from processor.sink import Sink
from tests.fix_faults import produce

pytestmark = pytest.mark.integration

MARKER = "S3CRET"
# libpq takes this one raw in a URL (``#``, ``?`` and ``:`` are password characters to it).
RAW_OK = f"Hx#q?z:k-{MARKER}-a"
# ... and this one only percent-encoded, or quoted in key=value form (space, ``/``, ``@``, quote).
AWKWARD = f"sp ace/{MARKER}#?@'x-{MARKER}-b"
_TIMEOUT_S = 120  # a guard against a hang, not a timing assertion
_PROCESS_S = 60  # then SIGTERM: the start line is all this test reads


def _run(*args: str, url: str, timeout: float = _TIMEOUT_S) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGMETER_")}
    env[settings.ENV_DATABASE_URL] = url
    proc = subprocess.run([sys.executable, "-m", "migmeter.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _assert_secret_free(out: str, what: str) -> None:
    for secret in (RAW_OK, AWKWARD, MARKER, quote(AWKWARD, safe="")):
        assert secret not in out, f"{what} printed {secret!r}:\n{out}"
    assert "Traceback" not in out, out


@pytest.fixture
def logins(fresh_db: str) -> Iterator[dict[str, tuple[str, str]]]:
    """Two login roles, readers of the views and writers of the processor's tables: name -> (role, password)."""
    made: dict[str, tuple[str, str]] = {}
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for key, password in (("raw", RAW_OK), ("awkward", AWKWARD)):
            role = f"migmeter_it_pw_{secrets.token_hex(4)}"
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE migmeter_reader, migmeter_writer").format(
                sql.Identifier(role), sql.Literal(password)))
            made[key] = (role, password)
    try:
        yield made
    finally:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            for role, _ in made.values():
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _forms(fresh_db: str, logins: dict[str, tuple[str, str]]) -> dict[str, tuple[str, bool]]:
    """Connection strings -> (string, whether libpq logs in with it)."""
    p = urlsplit(fresh_db)
    where, db = f"{p.hostname}:{p.port}", p.path.lstrip("/")
    raw_role, _ = logins["raw"]
    awk_role, _ = logins["awkward"]
    escaped = AWKWARD.replace("\\", "\\\\").replace("'", "\\'")
    return {
        "raw #?: in a URL": (f"postgresql://{raw_role}:{RAW_OK}@{where}/{db}", True),
        "percent-encoded URL": (f"postgresql://{awk_role}:{quote(AWKWARD, safe='')}@{where}/{db}", True),
        "key=value, quoted": (f"host={p.hostname} port={p.port} dbname={db} user={awk_role} password='{escaped}'", True),
        "URL with raw space / @": (f"postgresql://{awk_role}:{AWKWARD}@{where}/{db}", False),
        "key=value, unquoted": (f"host={p.hostname} port={p.port} dbname={db} user={awk_role} password={AWKWARD}", False),
        "URL, password in query": (f"postgresql://{where}/{db}?user={awk_role}&password={quote(AWKWARD, safe='')}",
                                   True),
    }


def test_libpq_logs_in_with_these_passwords_and_no_command_prints_them(fresh_db: str, logins) -> None:  # type: ignore[no-untyped-def]
    forms = _forms(fresh_db, logins)
    for name, (url, logs_in) in forms.items():
        # The premise: libpq itself logs in exactly with the forms marked so.
        try:
            with psycopg.connect(url, connect_timeout=10) as conn:
                conn.execute("SELECT 1")
            connected = True
        except psycopg.Error:
            connected = False
        assert connected == logs_in, f"{name}: libpq {'refused' if logs_in else 'accepted'} it"
        shown = settings.redact_url(url)
        _assert_secret_free(shown, f"redact_url({name})")
        for argv in (("report", "chargeback", "--month", "2026-11"), ("price", "list"), ("db", "migrate", "--dry-run")):
            rc, out = _run(*argv, url=url)
            _assert_secret_free(out, f"{' '.join(argv[:2])} with {name}")
            if not logs_in:
                assert rc in (1, 2), f"{name}: {argv} rc {rc}\n{out}"
            elif argv[0] == "db":  # readers may not read schema_migrations: connected, then refused
                assert rc == 1 and "permission denied" in out and ":***@" in out, out
            else:
                assert rc == 0, f"{name}: {argv} rc {rc}\n{out}"

def test_libpq_messages_are_scrubbed(fresh_db: str) -> None:
    """What libpq says about a connection string it refuses quotes the password, or part of it."""
    p = urlsplit(fresh_db)
    for url in (f"postgresql://u:{AWKWARD}@{p.hostname}:{p.port}/x",  # unexpected spaces found in "..."
                f"postgresql://u:a/{MARKER}@{p.hostname}:{p.port}/x",  # '/' ends libpq's userinfo: port "a"...
                f"postgresql://u:{MARKER}%zz@{p.hostname}:{p.port}/x",  # invalid percent-encoded token: "..."
                f"host={p.hostname} password=a {MARKER}-b"):  # missing "=" after "..."
        try:
            psycopg.connect(url, connect_timeout=5).close()
        except psycopg.Error as exc:
            assert MARKER in str(exc) or "/" in url, f"premise: libpq quotes it for {url!r}: {exc}"
            _assert_secret_free(settings.database_error(exc, url), f"database_error for {url!r}")
        else:
            raise AssertionError(f"libpq accepted {url!r}")


def test_the_processor_logs_no_password_at_info(kafka_bootstrap: str, new_topic, fresh_db: str,  # type: ignore[no-untyped-def]
                                                logins, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A healthy processor logs where it writes (``Sink(...)``, ``connected to ...``) on every start."""
    topic = new_topic(partitions=1)
    produce(kafka_bootstrap, topic, SimulatedFleet(seed=9, hosts=1, gpus_per_host=2).read())
    forms = _forms(fresh_db, logins)
    for name in ("raw #?: in a URL", "key=value, quoted"):
        url, _ = forms[name]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIGMETER_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "migmeter.cli", "--log-level", "INFO", "process", "--bootstrap", kafka_bootstrap,
             "--topic", topic, "--dead-letter-topic", topic + ".dlq", "--group", f"pw-{uuid.uuid4().hex[:8]}",
             "--metrics-port", "0", "--batch-ms", "200", "--stop-when-idle", "2"],
            env={**env, settings.ENV_DATABASE_URL: url}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=_PROCESS_S)
        except subprocess.TimeoutExpired:  # not idle yet (slow group join on a loaded machine): SIGTERM, exit 0
            proc.terminate()
            out, _ = proc.communicate(timeout=_TIMEOUT_S)
        assert proc.returncode == 0, out
        assert "into Sink('postgresql://" in out and ":***@" in out, out  # it did log where, masked
        _assert_secret_free(out, f"process with {name}")
        # The sink's own INFO line on connecting, in-process (the subprocess only connects once
        # partitions are assigned, which a loaded broker may take its time over).
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="migmeter.processor.sink"):
            sink = Sink(url, "pw")
            try:
                sink.read_offsets(topic, [0])
            finally:
                sink.close()
        lines = [r.getMessage() for r in caplog.records]
        assert any(line.startswith("connected to postgresql://") and ":***@" in line for line in lines), lines
        _assert_secret_free("\n".join(lines) + repr(sink), f"the sink with {name}")

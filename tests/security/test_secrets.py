"""Secrets never leave the process: not in logs, not in ``--help``, not in error messages.

Each command runs as a real subprocess (what an operator or a log shipper sees) with a
database URL or SASL password that contains a known marker, aimed at places that fail:
an unparsable URL, a host that does not resolve, a port nobody listens on. Whatever the
command prints, on stdout or stderr, must not contain the marker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from migmeter import settings
from migmeter.cli import COMMANDS

PASSWORD = "Tr0ub4dor-s3cret-7731"
SASL_PASSWORD = "sasl-S3cret-pw-4412"
# Guards against a hang, not timing assertions.
_RUN_TIMEOUT_S = 90


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _migmeter(*args: str, env: dict[str, str] | None = None, timeout: float = _RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MIGMETER_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "migmeter.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, stdin=subprocess.DEVNULL, check=False)


def _bad_urls() -> list[str]:
    port = _closed_port()
    return [
        f"postgresql://migmeter:{PASSWORD}@127.0.0.1:{port}/migmeter",  # refused
        f"postgresql://migmeter:{PASSWORD}@no-such-host.invalid:5432/migmeter",  # does not resolve
        f"postgresql://migmeter:{PASSWORD}%zz@127.0.0.1:{port}/migmeter",  # libpq: bad percent-encoding
        f"postgresql://migmeter:{PASSWORD}@[::1/migmeter",  # libpq: unclosed IPv6 bracket
        f"postgresql://migmeter:{PASSWORD}@127.0.0.1:{port}/migmeter?bogus=1",  # libpq: unknown parameter
        f"host=127.0.0.1 port={port} user=migmeter password={PASSWORD} dbname=migmeter",  # key/value form
    ]


# Every command that connects to the database, with arguments that get it that far.
_DB_COMMANDS = [
    ("report", "chargeback", "--month", "2025-01"),
    ("db", "migrate"),
    ("db", "retention", "--dry-run"),
    ("price", "list"),
]


@pytest.mark.parametrize("command", _DB_COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("how", ["env", "flag"])
def test_database_password_never_printed(command: tuple[str, ...], how: str) -> None:
    # The flag and the environment share one code path after parsing: two URLs suffice for the flag.
    for url in _bad_urls() if how == "env" else _bad_urls()[2:4]:
        if how == "env":
            proc = _migmeter(*command, env={settings.ENV_DATABASE_URL: url})
        else:
            proc = _migmeter(*command, f"--database-url={url}")
        out = proc.stdout + proc.stderr
        assert proc.returncode in (1, 2), f"{command} with {settings.redact_url(url)}: rc {proc.returncode}\n{out}"
        assert PASSWORD not in out, f"{command} printed the password for {settings.redact_url(url)}:\n{out}"
        assert "Traceback" not in out, out


def test_a_mistyped_flag_does_not_echo_the_password() -> None:
    """argparse repeats unrecognized arguments verbatim in its usage error."""
    url = f"postgresql://migmeter:{PASSWORD}@127.0.0.1:{_closed_port()}/migmeter"
    for argv in (["report", "chargeback", "--month", "2025-01", f"--databse-url={url}"],
                 ["db", "migrate", "--database-url"],  # missing value: no echo needed
                 ["process", "--databaseurl", url],
                 ["--log-level", f"password={PASSWORD}"]):
        proc = _migmeter(*argv)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, out
        assert PASSWORD not in out, f"{argv[:2]} echoed the password:\n{out}"


@pytest.mark.integration
def test_processor_does_not_print_the_database_password(kafka_bootstrap: str, new_topic) -> None:
    """The processor retries an unreachable database forever (by design): run it a few seconds
    per URL, then SIGTERM it, and read everything it printed."""
    topic = new_topic(partitions=1)  # with no partition assigned the processor never opens the database
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGMETER_")}
    for url in _bad_urls():
        proc = subprocess.Popen(
            [sys.executable, "-m", "migmeter.cli", "--log-level", "DEBUG", "process", "--bootstrap", kafka_bootstrap,
             "--topic", topic, "--group", f"secrets-{uuid.uuid4().hex[:8]}", "--metrics-port", "0", "--retry-max", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
            env={**env, settings.ENV_DATABASE_URL: url})
        try:
            out, _ = proc.communicate(timeout=6)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                out, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
        assert PASSWORD not in out, f"process printed the password for {settings.redact_url(url)}:\n{out}"
        assert "postgresql" in out or "database" in out, f"the processor never tried the database:\n{out}"


def test_collector_does_not_print_the_sasl_password(tmp_path: Path) -> None:
    """SASL credentials from the environment and from a file, a broker that is not there."""
    pw_file = tmp_path / "sasl-password"
    pw_file.write_text(SASL_PASSWORD + "\n")
    for extra_env, extra_args in (
        ({"MIGMETER_KAFKA_SASL_PASSWORD": SASL_PASSWORD}, []),
        ({}, ["--sasl-password-file", str(pw_file)]),
    ):
        proc = _migmeter(
            "--log-level", "DEBUG", "collect", "--source", "simulate", "--rounds", "2", "--speed", "0",
            "--bootstrap", f"127.0.0.1:{_closed_port()}", "--flush-timeout", "1", "--metrics-port", "0",
            "--spool-dir", str(tmp_path / "spool"), "--security-protocol", "SASL_PLAINTEXT",
            "--sasl-mechanism", "SCRAM-SHA-512", *extra_args,
            env={"MIGMETER_KAFKA_SASL_USERNAME": "meter", **extra_env},
        )
        out = proc.stdout + proc.stderr
        assert "SASL_PLAINTEXT" in out, out  # the security settings are logged, by name
        assert SASL_PASSWORD not in out, out


def _available_commands() -> list[str]:
    """Every command of the CLI table; one missing from `migmeter --help` fails the test."""
    proc = _migmeter("--help")
    missing = [name for name in COMMANDS if name not in proc.stdout]
    assert not missing, f"commands missing from `migmeter --help`: {missing}"
    return list(COMMANDS)


def test_help_never_shows_secrets_from_the_environment() -> None:
    env = {
        settings.ENV_DATABASE_URL: f"postgresql://migmeter:{PASSWORD}@db.example:5432/migmeter",
        "MIGMETER_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
        "MIGMETER_KAFKA_SASL_USERNAME": "meter",
    }
    helps = [("--help",)] + [(name, "--help") for name in _available_commands()]
    for sub in (("db", "migrate"), ("db", "retention"), ("report", "chargeback"), ("price", "set"),
                ("promql", "rules")):
        helps.append((*sub, "--help"))
    assert len(helps) > 5
    for args in helps:
        proc = _migmeter(*args, env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{args}: {out}"
        assert PASSWORD not in out and SASL_PASSWORD not in out, f"{' '.join(args)} shows a secret:\n{out}"


@pytest.mark.parametrize("url", [
    "postgresql://u:pw-1@h:5/d", "postgresql://u:pw-1@h/d?sslmode=require", "postgres://u:pw-1@[::1/d",
    "host=h password=pw-1 user=u", "host=h password='pw-1 with space' user=u", "postgresql://h/d?password=pw-1&x=y",
])
def test_redact_url_masks_every_form(url: str) -> None:
    assert "pw-1" not in settings.redact_url(url)


@pytest.mark.integration
def test_database_password_from_a_file_not_the_url(fresh_db: str, tmp_path: Path) -> None:
    """libpq's password file: the URL carries no secret at all (what the README recommends)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(fresh_db)
    assert parts.password
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{parts.hostname}:{parts.port}:*:{parts.username}:{parts.password}\n")
    passfile.chmod(0o600)
    bare = urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}"))
    proc = _migmeter("db", "migrate", env={settings.ENV_DATABASE_URL: bare, "PGPASSFILE": str(passfile)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout
    assert parts.password not in proc.stdout + proc.stderr

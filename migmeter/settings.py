"""Configuration shared by every command: names of environment variables and their defaults.

The same variable names are used by every subcommand, the tests and CI, so a platform
engineer sets them once. Flags override the environment; the environment overrides defaults.
Credentials are only ever read from the environment (or a file it names), never logged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from migmeter.errors import ConfigError

__all__ = [
    "ENV_KAFKA_BOOTSTRAP",
    "ENV_DATABASE_URL",
    "ENV_STATE_DIR",
    "DEFAULT_KAFKA_BOOTSTRAP",
    "SNAPSHOT_TOPIC",
    "DEAD_LETTER_TOPIC",
    "PROJECT_ROOT",
    "SQL_DIR",
    "kafka_bootstrap",
    "database_url",
    "state_dir",
    "redact_url",
    "redact_text",
]

ENV_KAFKA_BOOTSTRAP = "MIGMETER_KAFKA_BOOTSTRAP"
ENV_DATABASE_URL = "MIGMETER_DATABASE_URL"
ENV_STATE_DIR = "MIGMETER_STATE_DIR"

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
# The local stack's PostgreSQL listens here: a private port so it never collides with the
# machine's own cluster on 5432.
LOCAL_PG_PORT = 55432
LOCAL_PG_DATABASE = "migmeter"
LOCAL_PG_USER = "migmeter"

SNAPSHOT_TOPIC = "migmeter.snapshots.v1"
DEAD_LETTER_TOPIC = "migmeter.snapshots.dlq.v1"

# The checkout this package runs from (installed editable, as the README says).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
SQL_DIR = PROJECT_ROOT / "sql"


def kafka_bootstrap(flag: str | None = None) -> str:
    """Bootstrap servers: flag, else $MIGMETER_KAFKA_BOOTSTRAP, else the local stack's broker."""
    return flag or os.environ.get(ENV_KAFKA_BOOTSTRAP) or DEFAULT_KAFKA_BOOTSTRAP


def state_dir() -> Path:
    """Where the local stack keeps everything (jars, data, logs): one git-ignored folder."""
    return Path(os.environ.get(ENV_STATE_DIR) or PROJECT_ROOT / ".stack")


def database_url(flag: str | None = None) -> str:
    """PostgreSQL URL: flag, else $MIGMETER_DATABASE_URL, else the local stack's.

    The local stack's password lives in a 0600 file under the state folder, written by
    ``migmeter stack up``; it is read here rather than hard-coded so it never sits in code.
    """
    if flag:
        return _parsable(flag)
    env = os.environ.get(ENV_DATABASE_URL)
    if env:
        return _parsable(env)
    password_file = state_dir() / "postgres" / "password"
    password = password_file.read_text().strip() if password_file.exists() else ""
    auth = f"{LOCAL_PG_USER}:{password}" if password else LOCAL_PG_USER
    return f"postgresql://{auth}@127.0.0.1:{LOCAL_PG_PORT}/{LOCAL_PG_DATABASE}"


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and error messages.

    Also masks a malformed URL (which urlsplit refuses) and the ``password=...`` of a
    key/value conninfo or URL query, over-masking rather than ever showing a password.
    """
    from urllib.parse import urlsplit, urlunsplit

    text = url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # e.g. an unclosed "[" in the host: fall back to the pattern below
        text = re.sub(r"(://[^:/@\s]*:)\S*@", r"\1***@", text)
    else:
        if password is not None:
            text = urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{password}@", ":***@", 1)))
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&]+)", r"\1***", text, flags=re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` with the password of every URL (``scheme://user:PASSWORD@``) and every
    ``password=...`` masked: for messages that may quote a command line."""
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&]+)", r"\1***", text, flags=re.IGNORECASE)


def _parsable(url: str) -> str:
    """``url`` if libpq can parse it, else ConfigError with the password masked.

    libpq's parse errors quote the offending token or the whole URL verbatim (``invalid
    percent-encoded token: "<password>"``); raised from ``connect()`` they reached logs and
    tracebacks with the password in them.
    """
    from psycopg import ProgrammingError, conninfo

    try:
        conninfo.conninfo_to_dict(url)
    except ProgrammingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unparsable"
        reason = reason.replace(url, redact_url(url))
        for secret in _password_candidates(url):
            reason = reason.replace(secret, "***")
        raise ConfigError(f"database URL {redact_url(url)} is not valid: {reason[:200]}") from None
    return url


def _password_candidates(url: str) -> list[str]:
    """Every substring of ``url`` that may be (or contain) its password, longest first."""
    found = re.findall(r"://[^:/@\s]*:(\S*)@", url) + re.findall(r"password\s*=\s*('[^']*'|[^\s&]+)", url, re.I)
    return sorted({f for f in found if f}, key=len, reverse=True)

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
    "scrub",
    "database_error",
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
    """``url`` for logs and error messages: never its password.

    A database URL or ``key=value`` string is shown as libpq parses it (``conninfo_to_dict``
    calls libpq's own parser), rebuilt without the password: ``postgresql://user:***@host:port/db``.
    Parsing it any other way is how passwords leaked: ``urlsplit`` ends the password at ``#``,
    ``?`` or ``/`` where libpq does not, so it found none and printed the URL whole. When libpq
    cannot parse the string, or parses it differently from its face (a ``/`` or ``@`` inside the
    password moves part of it into the host, port or database name), nothing between the scheme
    and the last ``@`` is shown. Other URLs (the dcgm and Prometheus endpoints) never show their
    userinfo.
    """
    if _SCHEME.match(url) and not url.startswith(_LIBPQ_SCHEMES):
        head, _, rest = url.partition("://")
        return redact_text(f"{head}://***@{rest.rpartition('@')[2]}" if "@" in rest else url)
    params = _libpq_params(url)
    if params is None or _misparsed(url, params):
        return _opaque(url)
    return _describe(params)


def redact_text(text: str) -> str:
    """``text`` with the password of every URL (``scheme://user:PASSWORD@``, up to the line's last
    ``@``: a password may hold spaces and ``@``) and every ``password=...`` masked: for messages
    that may quote a command line or a flag's value. A URL given where a path was expected shows
    as ``scheme:/user:PASSWORD@`` (a path folds ``//``), and is masked the same."""
    text = re.sub(r"(:/+[^:/@\s]*:).*@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&]+)", r"\1***", text, flags=re.IGNORECASE)


def scrub(text: str, url: str) -> str:
    """``text`` (typically libpq's or the server's error message about ``url``) without any form
    of ``url``'s password.

    libpq quotes what it could not use: ``unexpected spaces found in "<password>"``, ``invalid
    percent-encoded token: "<password>"``, ``invalid integer value "<part of it>" for connection
    option "port"``. Every string that may be (part of) the password is masked, and so is every
    quoted token of the message that overlaps one, or, when libpq cannot parse ``url`` as
    written, every quoted token but an option name.
    """
    if len(url.strip()) >= _WHOLE_WORD_BELOW:  # " " is a valid conninfo (all defaults): not a word to replace
        text = text.replace(url, redact_url(url))
    secrets = _password_candidates(url)
    for secret in secrets:
        # A short one only as a whole word: "a" must not turn "after" into "***fter".
        text = text.replace(secret, "***") if len(secret) >= _WHOLE_WORD_BELOW else re.sub(
            rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    params = _libpq_params(url)
    blind = params is None or _misparsed(url, params)

    def quoted(m: re.Match[str]) -> str:
        quote, token = m.group(1), m.group(2)
        if token not in _KEYWORDS and (blind or any(token in s or s in token for s in secrets)):
            return f"{quote}***{quote}"
        return m.group(0)

    text = re.sub(r'(")([^"]*)"', quoted, text)  # libpq's quotes
    return redact_text(re.sub(r"(')([^']*)'", quoted, text))  # psycopg's


def database_error(exc: BaseException, url: str, limit: int = 300) -> str:
    """The first line of a psycopg error about ``url``, scrubbed of its password, for one log line."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else exc.__class__.__name__
    return scrub(line, url)[:limit]


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# libpq's URI prefixes (it compares them case-sensitively); anything else with "://" is not its.
_LIBPQ_SCHEMES = ("postgresql://", "postgres://")
# Shown from a parsed connection string besides user, host, port and database: nothing secret.
_SHOWN_PARAMS = ("sslmode", "connect_timeout", "target_session_attrs")
# Password candidates shorter than this are masked only as whole words.
_WHOLE_WORD_BELOW = 6
# Option names libpq quotes in its messages ("for connection option \"port\""): never secret.
_KEYWORDS = frozenset({"host", "hostaddr", "port", "dbname", "user", "password", "sslmode", "=", "options"})


def _libpq_params(url: str) -> dict[str, str] | None:
    """What libpq makes of ``url`` (its own parser), or None when it refuses it."""
    from psycopg import Error, conninfo

    try:
        return {k: str(v) for k, v in conninfo.conninfo_to_dict(url).items()}
    except (Error, UnicodeError, ValueError, TypeError):
        return None


def _raw_password(url: str) -> str | None:
    """The password as written in a URI: between the user's ``:`` and the last ``@``."""
    if not url.startswith(_LIBPQ_SCHEMES):
        return None
    userinfo, at, _ = url.partition("://")[2].rpartition("@")
    return userinfo.partition(":")[2] if at and ":" in userinfo else None


def _misparsed(url: str, params: dict[str, str]) -> bool:
    """True when libpq reads a URI's userinfo other than as written: its password then sits,
    whole or in parts, in the host, port or database name libpq saw."""
    raw = _raw_password(url)
    if raw is None:
        return False
    from urllib.parse import unquote

    return params.get("password") != unquote(raw)


def _opaque(url: str) -> str:
    """An unparsable (or misparsed) string: its scheme and what follows the last ``@``, or only
    the option names of a key/value string."""
    if url.startswith(_LIBPQ_SCHEMES):
        scheme, _, rest = url.partition("://")
        host_and_path = rest.rpartition("@")[2].partition("?")[0]  # the query may hold password=
        return f"{scheme}://***@{host_and_path}" if "@" in rest else f"{scheme}://***"
    keys = re.findall(r"([A-Za-z_]+)\s*=", url)
    return " ".join(f"{k}=***" for k in keys) or "***"


def _describe(params: dict[str, str]) -> str:
    """A parsed connection string as a URI without its password."""
    from urllib.parse import quote

    auth = quote(params.get("user", ""), safe="")
    if "password" in params:
        auth = f"{auth}:***" if auth else "***"
    hosts = (params.get("host") or params.get("hostaddr") or "").split(",")
    ports = (params.get("port") or "").split(",")
    netloc = []
    for i, host in enumerate(hosts):
        shown = f"[{host}]" if ":" in host else quote(host, safe="")
        port = ports[i] if i < len(ports) else ports[-1]
        netloc.append(f"{shown}:{quote(port, safe='')}" if port else shown)
    text = f"postgresql://{auth + '@' if auth else ''}{','.join(netloc)}"
    if params.get("dbname"):
        text += "/" + quote(params["dbname"], safe="")
    query = [f"{k}={quote(params[k], safe='')}" for k in _SHOWN_PARAMS if k in params]
    return text + ("?" + "&".join(query) if query else "")


def _parsable(url: str) -> str:
    """``url`` if libpq can parse it, else ConfigError with the password masked.

    libpq's parse errors quote the offending token or the whole URL verbatim (``invalid
    percent-encoded token: "<password>"``); raised from ``connect()`` they reached logs and
    tracebacks with the password in them.
    """
    from psycopg import ProgrammingError, conninfo

    try:
        conninfo.conninfo_to_dict(url)
    except (ProgrammingError, UnicodeError, ValueError) as exc:
        reason = (database_error(exc, url, limit=200) if isinstance(exc, ProgrammingError)
                  else "not text libpq accepts (undecodable bytes or a NUL)")
        raise ConfigError(f"database URL {redact_url(url)} is not valid: {reason}") from None
    return url


def _password_candidates(url: str) -> list[str]:
    """Every substring of ``url`` that may be (or contain) its password, longest first: as libpq
    parsed it, as written (percent-encoded or not), and any ``password=`` value."""
    from urllib.parse import unquote

    params = _libpq_params(url) or {}
    raw = _raw_password(url)
    found = [params.get("password", ""), raw or "", unquote(raw or "")]
    found += re.findall(r"://[^:/@\s]*:(\S*)@", url)
    for value in re.findall(r"password\s*=\s*('(?:[^'\\]|\\.)*'?|[^\s&]+)", url, re.I):
        found += [value, value.strip("'")]
    return sorted({f for f in found if f}, key=len, reverse=True)

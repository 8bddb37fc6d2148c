"""Create or update the BI login: a member of migmeter_reader (SELECT on the views only).

Run by the chart's biReader Job as the schema owner (MIGMETER_DATABASE_URL, or PGPASSFILE
with a password-less URL). The login's name and password come from the environment, set
from a Secret. The password is sent as a SCRAM-SHA-256 verifier computed here, so the
plaintext never reaches the server (nor its statement log). Idempotent: a second run
updates the password (rotation), membership stays.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import sys

import psycopg
from psycopg import sql

__all__ = ["scram_verifier", "ensure_login", "main"]

# PostgreSQL's own default for scram_iterations.
SCRAM_ITERATIONS = 4096
READER_ROLE = "migmeter_reader"
# A login name that needs no quoting anywhere a BI tool may type it.
_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def scram_verifier(password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> str:
    """The ``SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`` string PostgreSQL stores (RFC 5802/7677)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def ensure_login(url: str, name: str, password: str) -> str:
    """Create the login (or set its password) and make it a member of migmeter_reader."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"BI login name {name!r} must match {_NAME_RE.pattern}")
    if len(password) < 12:
        raise ValueError("the BI login's password must have at least 12 characters")
    verifier = scram_verifier(password, secrets.token_bytes(16))
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None
        verb = "ALTER" if exists else "CREATE"
        conn.execute(sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(verifier)))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(READER_ROLE), sql.Identifier(name)))
    return "updated" if exists else "created"


def main() -> int:
    url = os.environ.get("MIGMETER_DATABASE_URL", "")
    name = os.environ.get("MIGMETER_BI_USERNAME", "")
    password = os.environ.get("MIGMETER_BI_PASSWORD", "")
    if not (url and name and password):
        print("need MIGMETER_DATABASE_URL, MIGMETER_BI_USERNAME and MIGMETER_BI_PASSWORD", file=sys.stderr)
        return 2
    try:
        outcome = ensure_login(url, name, password)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"cannot create the BI login: {exc.__class__.__name__}: {exc.diag.message_primary}", file=sys.stderr)
        return 1
    print(f"BI login {name} {outcome}: member of {READER_ROLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

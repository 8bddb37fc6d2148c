"""Why the database refused a batch: the data (bisect, dead-letter the refused records) or the
system (retry with backoff, dead-letter nothing).

The decoder checks what the wire contract says; a DBA can still add a rule the contract does
not know (a CHECK constraint, a domain, a foreign key), and some values pass every check yet
exceed a limit of the server (a btree row of 256 four-byte characters). Such a refusal is tied
to a few records: retrying the batch forever would stall metering for every GPU of the
partition. Other refusals say nothing about the records (a revoked privilege, a dropped table,
a full disk, a lost connection): dead-lettering would throw good data away, so those batches
wait until an operator fixes the cause.

The PostgreSQL SQLSTATE tells the two apart (rules applied in order):

1. No SQLSTATE (the connection broke, the server is gone): system.
2. Class ``22`` (data exception: out of range, invalid text, a domain's type check) and class
   ``23`` (integrity constraint violation: CHECK, NOT NULL, foreign key, unique, exclusion):
   data.
3. ``54000`` program_limit_exceeded (``index row size ... exceeds maximum``, a row too big):
   data. The rest of class ``54`` (too many columns, arguments, a statement too complex) is
   about the SQL we send, not the records: system.
4. Everything else is system: ``08`` connection, ``28`` authorization, ``40`` deadlock or
   serialization (transient), ``42`` privilege revoked or table/column missing, ``53``
   insufficient resources (disk full, out of memory, too many connections), ``55`` lock not
   available, ``57`` cancelled/shutdown, ``58`` I/O error, ``P0`` a trigger's RAISE (its
   author did not say whether the data is at fault), ``XX`` internal error.

A data refusal is retried a few times first (``REFUSED_RETRIES``) in case it came from a
concurrent change rather than from the records themselves.
"""

from __future__ import annotations

from migmeter.errors import SinkError

__all__ = [
    "DATA_CLASSES",
    "DATA_CODES",
    "REFUSED_RETRIES",
    "DatabaseRefused",
    "DataRefused",
    "SystemRefused",
    "is_data_refusal",
    "refusal",
]

# SQLSTATE classes whose refusals are about the values of the rows written.
DATA_CLASSES = frozenset({"22", "23"})
# Single codes outside those classes that are about the rows: 54000 is "index row size
# exceeds maximum" / "row is too big" (issue 18 item 2).
DATA_CODES = frozenset({"54000"})
# Retries of a batch refused for a data reason before it is bisected: a unique violation can
# come from a race with another writer, not from the data; twice more is enough to tell.
REFUSED_RETRIES = 2


class DatabaseRefused(SinkError):
    """The server refused a statement of the batch; ``sqlstate`` says why (see module rules)."""

    def __init__(self, context: str, server_message: str, sqlstate: str) -> None:
        self.reason = f"{server_message} (SQLSTATE {sqlstate})"
        super().__init__(f"{context}: {self.reason}")
        self.sqlstate = sqlstate

    @property
    def cause(self) -> str:
        """``data`` or ``system``: a small set, usable as a metric label."""
        return "data" if isinstance(self, DataRefused) else "system"


class DataRefused(DatabaseRefused):
    """Refused for a reason tied to the records (rules 2-3): bisect, dead-letter what is refused."""


class SystemRefused(DatabaseRefused):
    """Refused for a lasting system reason (rule 4): retry with backoff, dead-letter nothing."""


def is_data_refusal(sqlstate: str | None) -> bool:
    """True when a refusal with this SQLSTATE is caused by the rows written (rules 1-4)."""
    if not sqlstate:
        return False
    return sqlstate[:2] in DATA_CLASSES or sqlstate in DATA_CODES


def refusal(context: str, server_message: str, sqlstate: str) -> DatabaseRefused:
    """The error for a refusal. Its ``reason`` (the server's message and the SQLSTATE) is what a
    record found by bisection is dead-lettered with; ``context`` says what was being done."""
    cls = DataRefused if is_data_refusal(sqlstate) else SystemRefused
    return cls(context, server_message, sqlstate)

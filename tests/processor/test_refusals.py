"""SQLSTATE -> data or system refusal: the table of ``processor.refusals`` (no database)."""

from __future__ import annotations

import pytest

from migmeter.errors import SinkError
from processor.refusals import DataRefused, SystemRefused, is_data_refusal, refusal


@pytest.mark.parametrize("sqlstate, data", [
    ("23514", True),   # check_violation: a CHECK constraint a DBA added
    ("23502", True),   # not_null_violation
    ("23503", True),   # foreign_key_violation
    ("23505", True),   # unique_violation
    ("22003", True),   # numeric_value_out_of_range
    ("22P02", True),   # invalid_text_representation (a domain's cast)
    ("22021", True),   # character_not_in_repertoire
    ("54000", True),   # program_limit_exceeded: index row size exceeds maximum
    ("54001", False),  # statement_too_complex: our SQL, not the records
    ("42501", False),  # insufficient_privilege: a REVOKE
    ("42P01", False),  # undefined_table
    ("42703", False),  # undefined_column
    ("53100", False),  # disk_full
    ("53200", False),  # out_of_memory
    ("08006", False),  # connection_failure
    ("40P01", False),  # deadlock_detected: transient
    ("57014", False),  # query_canceled (statement timeout)
    ("P0001", False),  # a trigger's RAISE
    ("XX000", False),  # internal_error
    (None, False),     # no SQLSTATE: the connection broke
    ("", False),
])
def test_classification(sqlstate: str | None, data: bool) -> None:
    assert is_data_refusal(sqlstate) is data


def test_refusal_carries_reason_and_sqlstate() -> None:
    exc = refusal("database refused the batch", 'new row violates check constraint "dba_rule"', "23514")
    assert isinstance(exc, DataRefused) and isinstance(exc, SinkError)
    assert exc.sqlstate == "23514" and exc.cause == "data"
    assert exc.reason == 'new row violates check constraint "dba_rule" (SQLSTATE 23514)'
    assert str(exc) == 'database refused the batch: new row violates check constraint "dba_rule" (SQLSTATE 23514)'
    system = refusal("database refused the batch", "permission denied for table gpu_usage_1m", "42501")
    assert isinstance(system, SystemRefused) and system.cause == "system"

"""``migmeter.settings``: where the Kafka and database addresses come from, in which order.

(Password masking, ``redact_url`` and ``scrub``, is tested hard in tests/security/.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from migmeter import settings


def test_kafka_bootstrap_flag_then_environment_then_the_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.ENV_KAFKA_BOOTSTRAP, raising=False)
    assert settings.kafka_bootstrap() == "127.0.0.1:9092"
    monkeypatch.setenv(settings.ENV_KAFKA_BOOTSTRAP, "env:9092")
    assert settings.kafka_bootstrap() == "env:9092"
    assert settings.kafka_bootstrap("flag:9092") == "flag:9092"


def test_database_url_flag_then_environment_then_the_local_stack(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.delenv(settings.ENV_DATABASE_URL, raising=False)
    monkeypatch.setenv(settings.ENV_STATE_DIR, str(tmp_path))
    # No stack password file yet: the local stack's URL without a password.
    assert settings.database_url() == "postgresql://migmeter@127.0.0.1:55432/migmeter"
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "password").write_text("s3cret\n")
    assert settings.database_url() == "postgresql://migmeter:s3cret@127.0.0.1:55432/migmeter"
    monkeypatch.setenv(settings.ENV_DATABASE_URL, "postgresql://env@db:5432/x")
    assert settings.database_url() == "postgresql://env@db:5432/x"
    assert settings.database_url("postgresql://flag@db:5432/y") == "postgresql://flag@db:5432/y"


def test_a_url_in_a_log_line_shows_no_password() -> None:
    assert settings.redact_url("postgresql://meter:hunter2@db:5432/x") == "postgresql://meter:***@db:5432/x"


def test_a_url_folded_into_a_path_shows_no_password() -> None:
    # `--sql-dir http://u:pw@host/x` comes back from pathlib as http:/u:pw@host/x (found by the CLI fuzz).
    assert settings.redact_text("migrations folder http:/u:hunter2@db:5432/x does not exist") == (
        "migrations folder http:/u:***@db:5432/x does not exist")
    assert settings.redact_text("see postgresql://meter:hunter2@db/x") == "see postgresql://meter:***@db/x"

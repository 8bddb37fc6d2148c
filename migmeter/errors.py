"""One error root for migmeter; each area derives its own leaves.

Every raise carries a message a person can act on. Callers that must keep running
(the collector loop, the processor) catch the specific leaf, count it and move on.
"""

from __future__ import annotations

__all__ = [
    "MigmeterError",
    "ConfigError",
    "BadSnapshot",
    "SourceUnavailable",
    "SinkError",
    "StackError",
    "MigrationError",
]


class MigmeterError(Exception):
    """Root of every error migmeter raises on purpose."""


class ConfigError(MigmeterError):
    """A flag, environment variable or file has a value migmeter cannot use."""


class BadSnapshot(MigmeterError):
    """A wire message that is not a valid v1 snapshot; ``reason`` goes to the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SourceUnavailable(MigmeterError):
    """A collector source could not be read this round (endpoint down, NVML missing...)."""


class SinkError(MigmeterError):
    """Writing a batch into the warehouse failed; the batch is not committed."""


class StackError(MigmeterError):
    """The local stack (Kafka, PostgreSQL/TimescaleDB) could not be set up or reached."""


class MigrationError(MigmeterError):
    """A schema migration failed or a migration file changed after it was applied."""

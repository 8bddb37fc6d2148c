"""The Docker-free local stack: real Apache Kafka (KRaft) and PostgreSQL + TimescaleDB on loopback.

Why not mocks: the processor's exactly-once design rests on real consumer-group rebalances,
committed offsets and database transactions, so tests, CI and the README run against the
real services. Why not Docker: the machines this runs on have none, and a developer needs
only Java, Maven and the distribution's PostgreSQL.

One module per job, this package re-exporting their public names:

- ``processes`` — spawn a setup step, pid files, stop-and-reap, ports, log tails (internal).
- ``kafka`` — :class:`KafkaNode`, one combined broker+controller KRaft node from Maven
  Central jars; :class:`KafkaCluster` of several; :class:`KafkaTls`.
- ``postgres`` — :class:`PostgresCluster`, a private ``initdb`` cluster with TimescaleDB
  preloaded, run as an unprivileged user (PostgreSQL refuses root); :class:`PostgresTls`.
- ``timescaledb`` — builds the extension from Debian's source package when it is missing.
- ``orchestration`` — :func:`up`, :func:`down`, :func:`status` and :func:`env_lines` of the
  default stack under ``settings.state_dir()``.

Each building block runs on its own ports, so a test can run a PRIVATE broker or database
(outage tests stop and restart their own, never the shared stack).
"""

from __future__ import annotations

from migmeter.stack.kafka import (
    KAFKA_CONTROLLER_PORT,
    KAFKA_DEFAULT_PARTITIONS,
    KAFKA_LOG4J_VERSION,
    KAFKA_PORT,
    KAFKA_START_TIMEOUT_S,
    KAFKA_VERSION,
    KafkaCluster,
    KafkaNode,
    KafkaTls,
    create_topic,
)
from migmeter.stack.orchestration import (
    ServiceStatus,
    StackStatus,
    default_kafka,
    default_postgres,
    down,
    env_lines,
    status,
    up,
)
from migmeter.stack.postgres import (
    PG_BIN,
    PG_IDENT_MAP,
    PG_MAJOR,
    PG_START_TIMEOUT_S,
    SOCKET_DIR_MODE,
    PostgresCluster,
    PostgresTls,
    pg_hba,
    pg_ident,
)
from migmeter.stack.processes import STOP_TIMEOUT_S, free_port

__all__ = [
    "KAFKA_VERSION",
    "KAFKA_LOG4J_VERSION",
    "KAFKA_PORT",
    "KAFKA_CONTROLLER_PORT",
    "KAFKA_DEFAULT_PARTITIONS",
    "KAFKA_START_TIMEOUT_S",
    "PG_MAJOR",
    "PG_BIN",
    "PG_IDENT_MAP",
    "PG_START_TIMEOUT_S",
    "SOCKET_DIR_MODE",
    "STOP_TIMEOUT_S",
    "free_port",
    "pg_hba",
    "pg_ident",
    "KafkaNode",
    "KafkaCluster",
    "KafkaTls",
    "create_topic",
    "PostgresTls",
    "PostgresCluster",
    "ServiceStatus",
    "StackStatus",
    "default_kafka",
    "default_postgres",
    "up",
    "down",
    "status",
    "env_lines",
]

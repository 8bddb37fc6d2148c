"""``migmeter process``: consume snapshots and keep the warehouse exact.

Only argument parsing and wiring live here; the loop is :class:`processor.consumer.Processor`.
Run several in one ``--group`` to share the partitions. SIGTERM/SIGINT commit the in-flight
batch and exit 0.
"""

from __future__ import annotations

import argparse
import logging
import os

from migmeter import kafka_security, preflight, settings
from migmeter.cli_support import (
    add_database_url,
    non_negative_float,
    positive_float,
    positive_int,
    port,
    quiet_loggers,
    stop_on_signals,
)
from migmeter.errors import ConfigError
from migmeter.kafka_security import describe_security
from processor.consumer import (
    DEFAULT_BATCH_MS,
    DEFAULT_BATCH_RECORDS,
    DEFAULT_GROUP,
    DEFAULT_METADATA_MAX_AGE_MS,
    DEFAULT_SESSION_TIMEOUT_MS,
    DEFAULT_SUMMARY_EVERY_S,
    DEFAULT_WRITERS,
    MAX_WRITERS,
    RETRY_MAX_S,
    Processor,
    ProcessorConfig,
)
from processor.fold import DEFAULT_MAX_AGE_S, DEFAULT_MAX_BACKWARD_SKEW_S, DEFAULT_MAX_FUTURE_SKEW_S
from processor.health import DEFAULT_INTERVAL_S, STALE_ROUNDS, Check, HealthState, Prober, probe_database, probe_kafka
from processor.metrics import DEFAULT_METRICS_ADDR, DEFAULT_METRICS_PORT, DatabaseUp, ProcessorMetrics, serve

# --max-gap from the environment (seconds; 0 = 3 x each snapshot's interval_s).
ENV_MAX_GAP = "MIGMETER_MAX_GAP"
# --metadata-max-age above a day would leave added partitions unread for days: surely a typo.
MAX_METADATA_MAX_AGE_S = 86_400

__all__ = ["configure", "run"]

log = logging.getLogger("migmeter.processor")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  migmeter process                                  # local stack, default topic and group\n"
        "  migmeter process --group site-a --metrics-port 9402\n"
        "exactly-once: offsets live in the database (table sink_offsets) and advance in the same\n"
        "transaction as the data; Kafka's committed offsets are only a convenience.\n"
        f"Kafka TLS/SASL settings come from the environment as for 'migmeter collect'; the database\n"
        f"URL from --database-url or ${settings.ENV_DATABASE_URL}."
    )
    parser.add_argument("--bootstrap", help=f"Kafka bootstrap servers (default ${settings.ENV_KAFKA_BOOTSTRAP} "
                                            f"or {settings.DEFAULT_KAFKA_BOOTSTRAP})")
    add_database_url(parser)
    quiet_loggers(parser, "kafka")
    parser.add_argument("--topic", default=settings.SNAPSHOT_TOPIC, help="snapshot topic (default %(default)s)")
    parser.add_argument("--dead-letter-topic", default=settings.DEAD_LETTER_TOPIC,
                        help="where rejected records are announced (default %(default)s)")
    parser.add_argument("--group", default=DEFAULT_GROUP, help="consumer group (default %(default)s); "
                        "processors in one group share partitions, offsets are stored per group")
    parser.add_argument("--session-timeout-ms", type=positive_int, default=DEFAULT_SESSION_TIMEOUT_MS,
                        help="a processor silent this long loses its partitions to the others in the group "
                             "(default %(default)s; the broker allows 6000 and up by default)")
    parser.add_argument("--instance-id", help="static group membership (e.g. a StatefulSet pod name): a "
                        "restarted processor gets its partitions back without waiting for a rebalance")
    parser.add_argument("--metadata-max-age", type=_metadata_max_age, default=DEFAULT_METADATA_MAX_AGE_MS / 1000,
                        metavar="SECONDS", help="refresh the topic's metadata this often: partitions added to the "
                        "topic are consumed at most this long after, plus a rebalance (default %(default)g)")
    parser.add_argument("--batch-records", type=positive_int, default=DEFAULT_BATCH_RECORDS,
                        help="commit a batch at this many records (default %(default)s)")
    parser.add_argument("--batch-ms", type=positive_int, default=DEFAULT_BATCH_MS,
                        help="... or this long after its first record (default %(default)s)")
    parser.add_argument("--writers", type=positive_int, default=DEFAULT_WRITERS, metavar="N",
                        help="database connections writing each batch at once, split by partition into N "
                             f"transactions, each exactly-once by itself (default %(default)s, at most {MAX_WRITERS}; "
                             "more use more of the database's cores)")
    parser.add_argument("--max-future-skew", type=positive_float, default=DEFAULT_MAX_FUTURE_SKEW_S,
                        metavar="SECONDS", help="dead-letter snapshots whose ts is further ahead of this "
                        "processor's clock (default %(default)g)")
    parser.add_argument("--max-backward-skew", type=positive_float, default=DEFAULT_MAX_BACKWARD_SKEW_S,
                        metavar="SECONDS", help="dead-letter snapshots further behind their GPU's last ts "
                        "(default %(default)g); closer ones are duplicates")
    parser.add_argument("--max-age", type=non_negative_float, default=DEFAULT_MAX_AGE_S / 86400, metavar="DAYS",
                        help="dead-letter snapshots older than this many days by the processor's clock: a reset "
                        "clock, e.g. 1970 (default %(default)g; 0 = no limit, for deep backfills)")
    parser.add_argument("--max-gap", type=non_negative_float, default=None, metavar="SECONDS",
                        help="a snapshot this soon after its GPU's previous one covers all the time since; after a "
                             f"longer silence only its own interval_s, the rest is unmetered (default ${ENV_MAX_GAP} "
                             "or 0 = 3 x the snapshot's interval_s)")
    parser.add_argument("--retry-max", type=positive_float, default=RETRY_MAX_S, metavar="SECONDS",
                        help="cap of the exponential backoff while the database is down (default %(default)g)")
    parser.add_argument("--summary-every", type=non_negative_float, default=DEFAULT_SUMMARY_EVERY_S, metavar="SECONDS",
                        help="INFO summary line interval, 0 = only at exit (default %(default)g)")
    parser.add_argument("--stop-when-idle", type=non_negative_float, default=0.0, metavar="SECONDS",
                        help="exit 0 once caught up and nothing new arrived for this long "
                             "(backfills, benchmarks; default 0 = run until signalled)")
    parser.add_argument("--metrics-addr", default=DEFAULT_METRICS_ADDR, help="/metrics address (default %(default)s)")
    kafka_security.add_arguments(parser)
    parser.add_argument("--metrics-port", type=port, default=DEFAULT_METRICS_PORT,
                        help="/metrics port (default %(default)s; 0 disables); also serves /healthz (the "
                             "process is not wedged) and /readyz (Kafka and the database answered a recent probe)")
    parser.add_argument("--health-interval", type=positive_float, default=DEFAULT_INTERVAL_S, metavar="SECONDS",
                        help="seconds between probes of Kafka and the database for /readyz (default %(default)g); "
                             f"an answer older than {STALE_ROUNDS} intervals counts as not ready")


def run(args: argparse.Namespace) -> int:
    security = kafka_security.from_args(args)
    config = ProcessorConfig(
        bootstrap=settings.kafka_bootstrap(args.bootstrap),
        database_url=settings.database_url(args.database_url),
        topic=args.topic,
        dead_letter_topic=args.dead_letter_topic,
        group=args.group,
        batch_records=args.batch_records,
        batch_ms=args.batch_ms,
        writers=args.writers,
        max_future_skew_s=args.max_future_skew,
        max_backward_skew_s=args.max_backward_skew,
        max_age_s=args.max_age * 86400,
        max_gap_s=_max_gap(args.max_gap),
        retry_max_s=args.retry_max,
        summary_every_s=args.summary_every,
        stop_when_idle_s=args.stop_when_idle,
        session_timeout_ms=args.session_timeout_ms,
        instance_id=args.instance_id,
        metadata_max_age_ms=max(1, round(args.metadata_max_age * 1000)),
        kafka_options=tuple(sorted(security.items())),
    )
    if security:
        log.info("kafka security: %s", describe_security(security))
    # TLS that can never verify is a configuration error: one line, exit 2, nothing consumed.
    preflight.kafka_tls(config.bootstrap, security)
    preflight.database_tls(config.database_url)
    metrics = ProcessorMetrics()
    health = HealthState(stale_after_s=STALE_ROUNDS * args.health_interval)
    stop_http = serve(metrics.registry, args.metrics_port, args.metrics_addr, health)
    def database_check() -> Check:
        check = probe_database(config.database_url)
        metrics.database_up.mark(DatabaseUp.PROBE, check.ok)  # an idle processor still sees an outage
        return check

    prober = Prober(health, (lambda: probe_kafka(config.bootstrap, security), database_check), args.health_interval)
    processor = Processor(config, metrics)
    if stop_http is not None:
        prober.start()
    try:
        with stop_on_signals(processor.stop, "committing the in-flight batch, then exiting"):
            processor.run()
    finally:
        health.loop_ended()
        prober.stop()
        if stop_http is not None:
            stop_http()
    return 0


def _max_gap(flag: float | None) -> float:
    if flag is not None:
        return flag
    raw = os.environ.get(ENV_MAX_GAP, "").strip()
    if not raw:
        return 0.0
    try:
        return non_negative_float(raw)
    except argparse.ArgumentTypeError:
        raise ConfigError(f"${ENV_MAX_GAP}={raw[:40]!r} is not a number of seconds >= 0") from None


def _metadata_max_age(text: str) -> float:
    value = positive_float(text)
    if value > MAX_METADATA_MAX_AGE_S:
        raise argparse.ArgumentTypeError(f"{text} is more than {MAX_METADATA_MAX_AGE_S} seconds")
    return value

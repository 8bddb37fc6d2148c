"""``migmeter collect``: read GPUs from one source and publish snapshots to Kafka (or stdout).

Only argument parsing and wiring live here; the loop is :func:`collector.run.run_loop`,
publishing is :mod:`collector.publish`. Sources are imported when chosen, so a source whose
module (or optional dependency) is missing only breaks that source.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import threading
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

from collector.metrics import (
    DEFAULT_METRICS_ADDR,
    DEFAULT_METRICS_PORT,
    GPU_TOTAL_SLICES_METRIC,
    INSTANCE_SLICES_METRIC,
    CollectorMetrics,
    serve,
)
from collector.publish import DEFAULT_FLUSH_TIMEOUT_S, KafkaPublisher, Publisher, StdoutPublisher
from collector.run import DEFAULT_LOG_EVERY_S, RunSummary, run_loop
from collector.snapshot import MAX_TEXT_BYTES, MAX_TEXT_CHARS, TS_MAX, TS_MIN
from collector.sources.base import Source
from collector.sources.fetch import stoppable
from collector.spool import DEFAULT_MAX_BYTES, FULL_POLICIES, Spool
from migmeter import cli_support, kafka_security, preflight, settings
from migmeter.kafka_security import describe_security
from migmeter.cli_support import non_negative_float, port, positive_float, positive_int, stop_on_signals
from migmeter.errors import ConfigError

__all__ = ["configure", "run", "ENV_CLUSTER", "ENV_SPOOL_DIR", "SOURCES", "default_spool_dir"]

log = logging.getLogger("migmeter.collector")

ENV_CLUSTER = "MIGMETER_CLUSTER"
ENV_SPOOL_DIR = "MIGMETER_SPOOL_DIR"
ENV_EXPORTER_POD = "MIGMETER_EXPORTER_POD"
SOURCES = ("dcgm", "nvml", "prometheus", "simulate")
# dcgm-exporter refreshes its fields every 30 s by default and Prometheus commonly scrapes
# every 15-30 s; 15 s matches a typical scrape so the warehouse sees what Prometheus sees.
DEFAULT_INTERVAL_S = 15.0
# Failed reads in a row after which a Prometheus backfill gives up (with back-off between
# them: 1+2+4+8 s, enough to ride out a Prometheus restart).
_BACKFILL_MAX_ERRORS = 5
# A simulated fleet lives in memory and is read every round; far beyond any real site.
_MAX_SIMULATED_GPUS = 100_000


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Read GPUs from one source every --interval seconds and publish one snapshot per GPU\n"
        "to Kafka (key = GPU UUID). When Kafka is down, snapshots wait in an on-disk spool and\n"
        "are sent in order when it is back. Serves its own /metrics (health, and the MIG\n"
        f"weights {INSTANCE_SLICES_METRIC} / {GPU_TOTAL_SLICES_METRIC} for PromQL)."
    )
    parser.epilog = (
        "examples:\n"
        "  migmeter collect --source simulate --once --stdout\n"
        "  migmeter collect --source dcgm --url http://gpu-node-1:9400/metrics --cluster prod\n"
        "  migmeter collect --source prometheus --url http://prometheus:9090 --start now-7d --step 60\n"
        "exit codes: 0 ok, 1 failed (nothing could be read, or snapshots were lost without a\n"
        "spool), 2 usage or configuration error."
    )
    cli_support.quiet_loggers(parser, "kafka")  # its INFO lines (connects, closes) are noise here
    _source_arguments(parser)
    _run_arguments(parser)
    _publishing_arguments(parser)
    kafka_security.add_arguments(parser)
    _spool_arguments(parser)
    _metrics_arguments(parser)
    _prometheus_arguments(parser)
    _simulate_arguments(parser)


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    """Which source, where it is, and what it labels."""
    g = parser.add_argument_group("source")
    g.add_argument("--source", required=True, choices=SOURCES, help="where GPU data comes from (required)")
    g.add_argument(
        "--url", action="append", default=[], metavar="URL",
        help="dcgm: an exporter endpoint (http(s)://HOST:9400/metrics or file:PATH of a saved scrape), "
        "repeatable; prometheus: the server's base URL (exactly one)",
    )
    g.add_argument(
        "--cluster", default=os.environ.get(ENV_CLUSTER) or "default",
        help=f"site name written into every snapshot (env {ENV_CLUSTER}; default 'default')",
    )
    g.add_argument(
        "--interval", type=positive_float, default=DEFAULT_INTERVAL_S, metavar="S",
        help=f"seconds between rounds, and the interval each snapshot stands for (default {DEFAULT_INTERVAL_S:g})",
    )
    g.add_argument(
        "--total-slices", action="append", default=[], metavar="MODEL=N",
        help="compute slices of a GPU model the built-in table lacks (MODEL matches as a substring "
        "of the model name, N in 1..8), repeatable; e.g. --total-slices 'RTX PRO 6000=4'",
    )
    g.add_argument(
        "--exporter-pod", default=os.environ.get(ENV_EXPORTER_POD) or None, metavar="REGEX",
        help="dcgm/prometheus: pod names (full match) that are the exporter's own, never a tenant, e.g. "
        f"'nvidia-dcgm-exporter-.*' (env {ENV_EXPORTER_POD}). Not needed behind a Prometheus whose `up` "
        "series carry the target labels (kube-prometheus): those are recognised without it",
    )
    g.add_argument(
        "--scrape-timeout", type=positive_float, default=None, metavar="S",
        help="overall deadline of one dcgm endpoint per round, connect to last byte (default 5), "
        "or HTTP timeout of one Prometheus query (default 30)",
    )


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    """How long and how often."""
    g = parser.add_argument_group("run")
    g.add_argument("--once", action="store_true", help="run one round, then exit (no /metrics server)")
    g.add_argument("--rounds", type=positive_int, default=None, metavar="N", help="run N rounds, then exit")
    g.add_argument(
        "--log-every", type=positive_float, default=DEFAULT_LOG_EVERY_S, metavar="S",
        help=f"seconds between progress lines on stderr (default {DEFAULT_LOG_EVERY_S:g}); a summary is logged at exit",
    )


def _publishing_arguments(parser: argparse.ArgumentParser) -> None:
    """Kafka: where snapshots go."""
    g = parser.add_argument_group("publishing")
    g.add_argument(
        "--stdout", action="store_true",
        help="print snapshots as JSON lines (the wire format) on stdout instead of publishing to Kafka",
    )
    g.add_argument(
        "--bootstrap", default=None, metavar="HOST:PORT[,...]",
        help=f"Kafka bootstrap servers (env {settings.ENV_KAFKA_BOOTSTRAP}; default {settings.DEFAULT_KAFKA_BOOTSTRAP})",
    )
    g.add_argument("--topic", default=settings.SNAPSHOT_TOPIC, help=f"Kafka topic (default {settings.SNAPSHOT_TOPIC})")
    g.add_argument(
        "--flush-timeout", type=positive_float, default=DEFAULT_FLUSH_TIMEOUT_S, metavar="S",
        help="seconds a round waits for Kafka acknowledgements before spooling its snapshots "
        f"(default {DEFAULT_FLUSH_TIMEOUT_S:g})",
    )


def _spool_arguments(parser: argparse.ArgumentParser) -> None:
    """The on-disk spool for snapshots Kafka could not take yet."""
    g = parser.add_argument_group("spool (snapshots Kafka could not take yet)")
    g.add_argument(
        "--spool-dir", default=None, metavar="DIR",
        help=f"on-disk spool folder, one per collector (env {ENV_SPOOL_DIR}; default "
        "$XDG_STATE_HOME/migmeter/spool-CLUSTER, i.e. ~/.local/state/migmeter/spool-CLUSTER)",
    )
    g.add_argument("--no-spool", action="store_true", help="no spool: snapshots Kafka cannot take are dropped and counted")
    g.add_argument(
        "--spool-max-mb", type=positive_float, default=DEFAULT_MAX_BYTES / 2**20, metavar="MB",
        help=f"bound on the spool's contents in MiB (default {DEFAULT_MAX_BYTES // 2**20})",
    )
    g.add_argument(
        "--spool-full", choices=FULL_POLICIES, default="block",
        help="when the spool is full: 'block' stops reading GPUs until Kafka takes some (default), "
        "'drop-oldest' discards the oldest snapshots (counted and logged)",
    )


def _metrics_arguments(parser: argparse.ArgumentParser) -> None:
    """The collector's own /metrics."""
    g = parser.add_argument_group("/metrics")
    g.add_argument(
        "--metrics-addr", default=DEFAULT_METRICS_ADDR,
        help=f"address to serve /metrics on (default {DEFAULT_METRICS_ADDR}; 0.0.0.0 for remote Prometheus)",
    )
    g.add_argument(
        "--metrics-port", type=port, default=DEFAULT_METRICS_PORT,
        help=f"port to serve /metrics on (default {DEFAULT_METRICS_PORT}, next to dcgm-exporter's 9400; 0 disables)",
    )


def _prometheus_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the prometheus (backfill) source."""
    g = parser.add_argument_group("prometheus source (backfill from a Prometheus that scrapes dcgm-exporter)")
    g.add_argument(
        "--start", default=None, metavar="TIME",
        help="prometheus: first step (required); simulate: simulated start (default 2025-01-06T00:00Z). "
        f"{cli_support.TIME_FORMS}",
    )
    g.add_argument("--end", default="now", metavar="TIME", help="prometheus: last step (default now)")
    g.add_argument(
        "--step", type=positive_float, default=None, metavar="S",
        help="prometheus: seconds between evaluation steps (default --interval)",
    )


def _simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the simulated fleet."""
    g = parser.add_argument_group("simulate source (a deterministic fleet, no GPU needed)")
    g.add_argument("--seed", type=int, default=1, help="fleet seed: same seed, same fleet and readings (default 1)")
    g.add_argument("--hosts", type=positive_int, default=2, help="simulated hosts (default 2)")
    g.add_argument("--gpus-per-host", type=positive_int, default=4, help="GPUs per simulated host (default 4)")
    g.add_argument(
        "--models", default=None, metavar="M1,M2",
        help="comma-separated GPU models, assigned round-robin (default A100-SXM4-80GB,H100-80GB-HBM3,A30)",
    )
    g.add_argument(
        "--speed", type=non_negative_float, default=1.0,
        help="simulated seconds per wall second: rounds come every interval/speed (default 1; 0 = no waiting)",
    )

def run(args: argparse.Namespace) -> int:
    _check_cluster(args.cluster)
    overrides = _total_slices(args.total_slices)
    stop = threading.Event()
    metrics = CollectorMetrics()
    with ExitStack() as cleanup:
        # Each part is closed if a later one cannot start (a taken port, a locked spool).
        source, pace = _make_source(args, overrides, stop)
        cleanup.callback(source.close)
        if not args.once:
            stop_server = serve(metrics, args.metrics_port, args.metrics_addr)
            if stop_server is not None:
                cleanup.callback(stop_server)
                log.info("serving /metrics on http://%s:%d/metrics", args.metrics_addr, args.metrics_port)
        publisher = _make_publisher(args, stop, metrics)
        with stop_on_signals(stop.set, "finishing the round, flushing, then exiting"):
            # run_loop closes the publisher and the source itself (source.close is idempotent).
            summary = run_loop(
                source, publisher,
                interval_s=args.step if args.source == "prometheus" and args.step else args.interval,
                speed=pace, max_rounds=1 if args.once else args.rounds, metrics=metrics, stop=stop,
                flush_timeout_s=args.flush_timeout, log_every_s=args.log_every,
                # A backfill is a job: give up (exit 1) rather than retry a dead server forever.
                max_consecutive_errors=_BACKFILL_MAX_ERRORS if args.source == "prometheus" else None,
            )
    return _exit_code(summary, spooled=getattr(publisher, "spool", None) is not None)


# ---------------------------------------------------------------------------- wiring


def _make_source(args: argparse.Namespace, overrides: dict[str, int] | None,
                 stop: threading.Event | None = None) -> tuple[Source, float]:
    """The chosen source and the loop's speed (0 = do not wait between rounds). ``stop`` (set
    by SIGTERM) also cuts the dcgm endpoints' fetches short, so a shutdown never waits a round out."""
    name = args.source
    if args.start is not None and name not in ("prometheus", "simulate"):
        raise ConfigError("--start applies to the prometheus and simulate sources only")
    module = _import_source(name)
    common: dict[str, Any] = {"cluster": args.cluster, "total_slices_overrides": overrides}
    exporter_pod = _exporter_pod(args.exporter_pod)
    if name in ("dcgm", "prometheus"):
        if exporter_pod is not None:
            common["exporter_pod"] = exporter_pod
    elif args.exporter_pod and args.exporter_pod != os.environ.get(ENV_EXPORTER_POD):
        # Given on the command line (the site-wide env variable is fine for every source).
        raise ConfigError("--exporter-pod applies to the dcgm and prometheus sources only")
    if name == "dcgm":
        if not args.url:
            raise ConfigError("--source dcgm needs at least one --url (http(s)://HOST:9400/metrics or file:PATH)")
        kw: dict[str, Any] = {"timeout_s": args.scrape_timeout} if args.scrape_timeout else {}
        if stop is not None:
            kw["http_get"] = stoppable(stop)
        return module.DcgmSource(args.url, interval_s=args.interval, **common, **kw), 1.0
    if name == "nvml":
        if args.url:
            raise ConfigError("--source nvml reads the local GPUs; it takes no --url")
        return module.NvmlSource(interval_s=args.interval, **common), 1.0
    if name == "prometheus":
        if len(args.url) != 1:
            raise ConfigError("--source prometheus needs exactly one --url (the server's base URL)")
        if args.start is None:
            raise ConfigError("--source prometheus needs --start (e.g. --start now-1d)")
        kw = {"timeout_s": args.scrape_timeout} if args.scrape_timeout else {}
        source = module.PrometheusSource(
            args.url[0], start=_time(args.start, "--start"), end=_time(args.end, "--end"),
            step_s=args.step or args.interval, **common, **kw,
        )
        return source, 0.0  # a backfill of the past: read chunk after chunk without waiting
    if args.url:
        raise ConfigError("--source simulate takes no --url")
    kw = {"start": _time(args.start, "--start")} if args.start is not None else {}
    if args.hosts * args.gpus_per_host > _MAX_SIMULATED_GPUS:
        raise ConfigError(f"--hosts x --gpus-per-host is over {_MAX_SIMULATED_GPUS:,} simulated GPUs")
    if args.models:
        kw["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
    return module.SimulatedFleet(
        seed=args.seed, hosts=args.hosts, gpus_per_host=args.gpus_per_host, cluster=args.cluster,
        interval_s=args.interval, **kw,
    ), args.speed


def _exporter_pod(pattern: str | None) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--exporter-pod {pattern!r} is not a valid regular expression: {exc}") from None


def _import_source(name: str) -> Any:
    module_name = f"collector.sources.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or "?"
        raise ConfigError(f"the {name} source is not available: module {missing} is not installed") from None


def _make_publisher(args: argparse.Namespace, stop: threading.Event, metrics: CollectorMetrics) -> Publisher:
    if args.stdout:
        return StdoutPublisher(stop=stop)
    security = kafka_security.from_args(args)
    bootstrap = settings.kafka_bootstrap(args.bootstrap)
    preflight.kafka_tls(bootstrap, security)  # TLS that can never verify: exit 2 before anything is spooled
    spool = None
    if not args.no_spool:
        directory = Path(args.spool_dir or os.environ.get(ENV_SPOOL_DIR) or default_spool_dir(args.cluster))
        spool = Spool(directory, max_bytes=int(args.spool_max_mb * 2**20), full_policy=args.spool_full)
    log.info(
        "publishing to Kafka %s topic %s%s; spool %s",
        bootstrap, args.topic, f" security {describe_security(security)}" if security else "",
        spool.directory if spool is not None else "off",
    )
    try:
        return KafkaPublisher(
            bootstrap, args.topic, spool=spool, security=security, stop=stop, on_latency=metrics.observe_latency
        )
    except BaseException:
        if spool is not None:
            spool.close()
        raise


def default_spool_dir(cluster: str) -> Path:
    """$XDG_STATE_HOME/migmeter/spool-CLUSTER: per-user state that survives reboots (not /tmp)."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", cluster) or "default"
    return base / "migmeter" / f"spool-{safe}"


def _exit_code(summary: RunSummary, *, spooled: bool) -> int:
    if summary.gave_up:
        log.error("gave up: %s", summary.stopped_by)
        return 1
    if summary.snapshots_read == 0 and summary.scrape_errors > 0:
        log.error("the source could not be read (%d failed rounds)", summary.scrape_errors)
        return 1
    if summary.publish.dropped and not spooled:
        log.error("%d snapshots could not be delivered and there is no spool to keep them", summary.publish.dropped)
        return 1
    return 0


# ---------------------------------------------------------------------------- parsing


def _time(value: str, flag: str) -> datetime:
    return cli_support.parse_time(value, flag, (TS_MIN, TS_MAX))  # the times snapshots can carry


def _check_cluster(cluster: str) -> None:
    """The cluster goes into every snapshot: one the contract refuses would make the collector
    read GPUs every round and publish none of them."""
    try:
        size = len(cluster.encode())
    except UnicodeEncodeError:  # undecodable bytes in $MIGMETER_CLUSTER (argv is checked by main)
        size = None
    if size is None or not cluster or "\x00" in cluster or len(cluster) > MAX_TEXT_CHARS or size > MAX_TEXT_BYTES:
        raise ConfigError(f"--cluster (or ${ENV_CLUSTER}) must be 1..{MAX_TEXT_CHARS} characters and at most "
                          f"{MAX_TEXT_BYTES} bytes of UTF-8 text, without NUL")


def _total_slices(pairs: list[str]) -> dict[str, int] | None:
    out: dict[str, int] = {}
    for pair in pairs:
        model, sep, n = pair.rpartition("=")
        if not sep or not model.strip() or not n.strip().isdigit() or not 1 <= int(n) <= 8:
            raise ConfigError(f"--total-slices {pair!r}: expected MODEL=N with N in 1..8")
        out[model.strip()] = int(n)
    return out or None

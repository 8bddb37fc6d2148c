"""``migmeter demo``: the whole system on the local stack, end to end, in a few minutes.

A simulated fleet (a few hosts, several GPU models including a 4-slice A30, MIG
re-partitionings, tenants coming and going) is replayed faster than real time through the
REAL pieces: the collector's poll loop and Kafka publisher, a Kafka topic, the processor's
consumer loop and exactly-once sink, TimescaleDB. Then the demo prints what finance and
platform teams would read (chargeback, utilization, reconciliation) and writes plots.

Choices, so a re-run never trips over an earlier one:
- It uses the stack's default database (where a newcomer's ``migmeter report`` looks), but
  every run simulates a fresh cluster, ``demo-<timestamp>``: GPU UUIDs derive from the
  cluster's host names, so runs never collide in ``gpu_state``, and every report of the
  demo is filtered by ``--cluster``. Old demo runs stay queryable side by side.
- Each run publishes to its own topic, ``migmeter.demo.<cluster>``, deleted at the end
  (``--keep-topic`` keeps it), so the production topic and consumer group are untouched.
- Simulated time starts at a fixed past Monday (the simulator's default), so figures are
  reproducible for a given seed and the processor's clock-skew rules never fire.
- Demo prices are set only for simulated models that have no price yet (one mid-run price
  change on the H100 shows a month split across prices); your own prices are left alone.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from collector.publish import KafkaPublisher
from collector.run import run_loop
from collector.sources.simulate import DEFAULT_MODELS, SimulatedFleet
from migmeter import cli_support, settings, stack
from migmeter.errors import ConfigError, MigmeterError, StackError
from processor.consumer import Processor, ProcessorConfig
from warehouse import focus, plot, prices, reports, rightsize, statement, stranded, trend
from warehouse.migrate import migrate
from warehouse.render import Report, render

__all__ = ["DemoConfig", "DemoResult", "SHORT", "run_demo", "configure", "run"]

log = logging.getLogger("migmeter.demo")

# Consumer group prefix; each run gets its own group (`migmeter-demo.<cluster>`), so a run
# never waits for a rebalance with a member of an earlier, killed run.
DEMO_GROUP = "migmeter-demo"
# Partitions of the demo topic: several, so the processor works as in production (a GPU's
# snapshots share one partition), few enough to create instantly on a 2-core machine.
DEMO_PARTITIONS = 4
# Demo price list per GPU-hour (USD), for simulated models without a price. The H100 gets a
# second, lower price from the second simulated day on.
DEMO_PRICES = {"A100-SXM4-80GB": Decimal("2.50"), "H100-80GB-HBM3": Decimal("4.00"), "A30": Decimal("1.00")}
DEMO_PRICE_CHANGE = ("H100-80GB-HBM3", Decimal("3.50"), 1)  # model, new price, from day N of the run
# If the processor makes no progress for this long while records are waiting, something is
# broken: stop with an error instead of hanging.
STALL_TIMEOUT_S = 120.0
PROGRESS_EVERY_S = 3.0


@dataclass(frozen=True)
class DemoConfig:
    """What to simulate and where. Defaults: 3 hosts x 4 GPUs (A100, H100, A30), 2 days, 60 s scrapes."""

    hosts: int = 3
    gpus_per_host: int = 4
    days: float = 2.0
    interval_s: float = 60.0
    reconfigure_every_s: float = 6 * 3600.0
    seed: int = 1
    cluster: str = ""
    out_dir: Path = Path("demo-output")
    bootstrap: str | None = None
    database_url: str | None = None
    topic: str | None = None
    keep_topic: bool = False

    @property
    def rounds(self) -> int:
        return max(1, int(self.days * 86400 / self.interval_s))

    @property
    def gpus(self) -> int:
        return self.hosts * self.gpus_per_host


# A CI-sized run: 4 GPUs (all three models), two days at 5-minute scrapes: ~2,300 snapshots.
SHORT = dict(hosts=2, gpus_per_host=2, days=2.0, interval_s=300.0)


@dataclass
class DemoResult:
    cluster: str
    topic: str
    start: datetime
    end: datetime
    published: int
    processed: int
    dead_letters: int
    reconciled: bool
    elapsed_s: float
    outputs: list[Path] = field(default_factory=list)
    months: list[date] = field(default_factory=list)


def _default_cluster() -> str:
    return f"demo-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def _ensure_stack(cfg: DemoConfig, echo: Callable[[str], None]) -> None:
    """Bring the local stack up when the demo targets it (no URL/bootstrap given anywhere)."""
    targets_local = not (cfg.bootstrap or cfg.database_url or os.environ.get(settings.ENV_KAFKA_BOOTSTRAP)
                         or os.environ.get(settings.ENV_DATABASE_URL))
    if not targets_local:
        return
    if stack.status().all_ready:
        return
    echo("[demo] local stack not running: `migmeter stack up` (the first time downloads Kafka and builds "
         "TimescaleDB: a few minutes)")
    st = stack.up()
    for s in st:
        echo(f"[demo]   {s.line()}")
    if not st.all_ready:
        raise StackError("the local stack did not become ready; see `migmeter stack status`")


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="migmeter-demo", request_timeout_ms=15000)
    try:
        # returns once every partition has a leader: a processor subscribing earlier may idle for minutes
        stack.create_topic(admin, topic, DEMO_PARTITIONS)
    finally:
        admin.close()


def _delete_topic(bootstrap: str, topic: str) -> None:
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="migmeter-demo", request_timeout_ms=15000)
        try:
            admin.delete_topics([topic])
        finally:
            admin.close()
    except KafkaError as exc:
        log.warning("could not delete demo topic %s: %s", topic, exc)


def _set_demo_prices(url: str, models: tuple[str, ...], start: datetime, echo: Callable[[str], None]) -> None:
    with psycopg.connect(url) as conn:
        priced = {p.gpu_model for p in prices.list_prices(conn)}
        day0 = start.date().replace(day=1)
        for model in models:
            if model in priced or model not in DEMO_PRICES:
                continue
            prices.set_price(conn, prices.Price(model, DEMO_PRICES[model], "USD", day0))
            echo(f"[demo] price {model}: {DEMO_PRICES[model]} USD per GPU-hour from {day0}")
            change_model, new_price, day_n = DEMO_PRICE_CHANGE
            if model == change_model:
                when = start.date() + timedelta(days=day_n)
                prices.set_price(conn, prices.Price(model, new_price, "USD", when))
                echo(f"[demo] price {model}: {new_price} USD per GPU-hour from {when} (a mid-month change)")


def _processed(url: str, group: str, topic: str) -> tuple[int, int]:
    """Records the processor has committed for the demo topic (and how many were dead letters)."""
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(snapshots + duplicates + dead_letters), 0), coalesce(sum(dead_letters), 0) "
                "FROM sink_offsets WHERE consumer_group = %s AND topic = %s", (group, topic)).fetchone()
    except psycopg.OperationalError as exc:
        raise StackError(f"database {settings.redact_url(url)} went away during the demo: "
                         f"{settings.database_error(exc, url, limit=200)}") from None
    assert row is not None
    return int(row[0]), int(row[1])


def run_demo(cfg: DemoConfig, echo: Callable[[str], None] = print) -> DemoResult:
    """Run the whole pipeline on ``cfg``; prints progress and reports through ``echo``."""
    began = time.monotonic()
    cluster = cfg.cluster or _default_cluster()
    topic = cfg.topic or f"migmeter.demo.{cluster}"
    group = f"{DEMO_GROUP}.{cluster}"
    _ensure_stack(cfg, echo)
    bootstrap = settings.kafka_bootstrap(cfg.bootstrap)
    url = settings.database_url(cfg.database_url)
    applied = migrate(url)
    if applied:
        echo(f"[demo] applied {len(applied)} migration(s) to {settings.redact_url(url)}")
    fleet = SimulatedFleet(seed=cfg.seed, hosts=cfg.hosts, gpus_per_host=cfg.gpus_per_host, cluster=cluster,
                           interval_s=cfg.interval_s, reconfigure_every_s=cfg.reconfigure_every_s)
    start = fleet.now
    end = start + timedelta(seconds=cfg.rounds * cfg.interval_s)
    total = cfg.rounds * cfg.gpus
    _set_demo_prices(url, DEFAULT_MODELS, start, echo)
    try:
        _create_topic(bootstrap, topic)
    except KafkaError as exc:
        raise StackError(f"cannot create topic {topic} on {bootstrap}: {exc}") from None
    echo(f"[demo] cluster {cluster}: {cfg.hosts} hosts x {cfg.gpus_per_host} GPUs ({', '.join(DEFAULT_MODELS)}), "
         f"{cfg.days:g} simulated days from {start:%Y-%m-%d %H:%M} UTC at {cfg.interval_s:g} s scrapes "
         f"= {total:,} snapshots")
    echo(f"[demo] collector -> Kafka {bootstrap} topic {topic} -> processor (group {group}) -> "
         f"{settings.redact_url(url)}")

    publisher = KafkaPublisher(bootstrap, topic, client_id="migmeter-demo-collector")
    processor = Processor(ProcessorConfig(bootstrap=bootstrap, database_url=url, topic=topic,
                                          dead_letter_topic=f"{topic}.dlq", group=group, summary_every_s=0))
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], object]) -> Callable[[], None]:
        def body() -> None:
            try:
                fn()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
        return body

    collector = threading.Thread(target=guarded(lambda: run_loop(
        fleet, publisher, interval_s=cfg.interval_s, speed=0, max_rounds=cfg.rounds, log_every_s=3600.0)),
        name="demo-collector", daemon=True)
    consumer = threading.Thread(target=guarded(processor.run), name="demo-processor", daemon=True)
    collector.start()
    consumer.start()
    processed = dead = 0
    last_progress, last_change = -1, time.monotonic()
    try:
        while True:
            time.sleep(PROGRESS_EVERY_S)
            if errors:
                raise MigmeterError(f"demo pipeline failed: {errors[0]}") from errors[0]
            processed, dead = _processed(url, group, topic)
            stats = publisher.stats
            echo(f"[demo] simulated {min(fleet.now, end):%Y-%m-%d %H:%M} | published {stats.delivered:,}/{total:,}"
                 f" | processed {processed:,}" + (f" ({dead} dead letters)" if dead else ""))
            if not collector.is_alive() and processed >= stats.delivered:
                break
            if processed != last_progress:
                last_progress, last_change = processed, time.monotonic()
            elif time.monotonic() - last_change > STALL_TIMEOUT_S:
                raise MigmeterError(f"the processor made no progress for {STALL_TIMEOUT_S:.0f} s")
            if not consumer.is_alive():
                raise MigmeterError("the processor stopped before catching up")
    finally:
        processor.stop()
        consumer.join(timeout=60)
        collector.join(timeout=60)
        if not cfg.keep_topic:
            _delete_topic(bootstrap, topic)
    if publisher.stats.dropped:
        echo(f"[demo] warning: the publisher dropped {publisher.stats.dropped} snapshots")

    result = DemoResult(cluster, topic, start, end, publisher.stats.delivered, processed, dead, False,
                        0.0, months=reports.months_overlapping(start, end))
    _report(url, cfg, result, echo)
    result.elapsed_s = time.monotonic() - began
    echo(f"[demo] done in {result.elapsed_s:.0f} s; reports again: migmeter report chargeback --month "
         f"{result.months[0]:%Y-%m} --cluster {cluster}")
    return result


def _report(url: str, cfg: DemoConfig, result: DemoResult, echo: Callable[[str], None]) -> None:
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    with psycopg.connect(url) as conn:
        conn.read_only = True
        for month in result.months:
            cb = reports.chargeback(conn, month, by="namespace", cluster=result.cluster)
            echo("")
            echo(render(cb, "table").rstrip())
            path = out / f"chargeback-{month:%Y-%m}.csv"
            path.write_text(render(cb, "csv"))
            result.outputs.append(path)
            daily = reports.chargeback_daily(conn, month, cluster=result.cluster)
            result.outputs += _try_plot(functools.partial(
                plot.plot_chargeback, daily.column("day"), daily.column("namespace"), daily.column("alloc_gpu_hours"),
                out / f"chargeback-{month:%Y-%m}.png", f"Allocated GPU-hours per day, {month:%Y-%m}, {result.cluster}"),
                echo)
        util_day = reports.utilization(conn, _day_floor(result.start), result.end, by="day", cluster=result.cluster)
        echo("")
        echo(render(util_day, "table").rstrip())
        util_hour = reports.utilization(conn, result.start, result.end, by="hour", cluster=result.cluster)
        path = out / "utilization-hourly.csv"
        path.write_text(render(util_hour, "csv"))
        result.outputs.append(path)
        rows = [r for r in util_hour.as_dicts() if r["bucket"] != "total"]
        result.outputs += _try_plot(lambda: plot.plot_utilization(
            [r["bucket"] for r in rows],
            {"simple mean": [r["simple_util_pct"] for r in rows],
             "weighted (allocated)": [r["weighted_util_pct"] for r in rows],
             "whole GPU": [r["whole_util_pct"] for r in rows],
             "allocation": [r["allocation_pct"] for r in rows],
             "coverage (metered / capacity)": [r["coverage_pct"] for r in rows]},
            out / "utilization-hourly.png", f"Fleet utilization per hour, {result.cluster}"), echo)
        events = conn.execute("SELECT event, count(*) FROM layout_changes WHERE cluster = %s GROUP BY event "
                              "ORDER BY event", (result.cluster,)).fetchall()
        echo("")
        echo("[demo] MIG layout changes: " + (", ".join(f"{e} {n}" for e, n in events) or "none"))
        rec = reports.reconciliation(conn, _day_floor(result.start), result.end, cluster=result.cluster)
    result.reconciled = rec.ok
    echo(f"[demo] {rec.describe()}")
    echo(f"[demo] published {result.published:,}, processed {result.processed:,} records"
         f" ({result.dead_letters} dead letters)")
    _finops(url, cfg, result, echo)
    echo("[demo] wrote " + ", ".join(str(p) for p in result.outputs))


def _finops(url: str, cfg: DemoConfig, result: DemoResult, echo: Callable[[str], None]) -> None:
    """FinOps outputs (issue 14): per month FOCUS (written, first charge shown), right-sizing, stranded capacity,
    the HTML statement (written); then the weekly trend."""
    with psycopg.connect(url) as conn:
        conn.read_only = True
        for month in result.months:
            dataset = focus.export(conn, month, cluster=result.cluster)
            path = cfg.out_dir / f"focus-{month:%Y-%m}.csv"
            path.write_text(focus.csv_text(dataset))
            result.outputs.append(path)
            echo(f"[demo] FOCUS {focus.FOCUS_VERSION} {month:%Y-%m}: {len(dataset.rows)} rows; " + "; ".join(dataset.notes))
            if dataset.rows:
                first = dataset.rows[0]
                echo(f"[demo]   e.g. {first['ChargeDescription']}: {first['PricingQuantity']:.3f} GPU-Hours,"
                     f" BilledCost {first['BilledCost']:.2f} {first['BillingCurrency']}")
            sizing = rightsize.rightsize(conn, month, cluster=result.cluster)
            path = cfg.out_dir / f"rightsize-{month:%Y-%m}.csv"
            path.write_text(render(sizing, "csv"))
            result.outputs.append(path)
            keep = ("namespace", "pod", "profile", "p95_util_pct", "peak_fb_mib", "recommended", "saving_per_month")
            idx = [i for i, c in enumerate(sizing.columns) if c.name in keep]
            excerpt = Report(sizing.title + " (excerpt)", tuple(sizing.columns[i] for i in idx),
                             tuple(tuple(r[i] for i in idx) for r in sizing.rows[:5]), sizing.notes[:1])
            echo("")
            echo(render(excerpt, "table").rstrip())
            strand = stranded.stranded(conn, month, cluster=result.cluster)
            echo("")
            echo(render(strand, "table").rstrip())
            path = cfg.out_dir / f"statement-{month:%Y-%m}.html"
            path.write_text(statement.statement(conn, month, cluster=result.cluster), encoding="utf-8")
            result.outputs.append(path)
        if result.months:
            weekly = trend.trend(conn, result.months[0], result.months[-1], unit="week", cluster=result.cluster)
            echo("")
            echo(render(weekly, "table").rstrip())


def _day_floor(ts: datetime) -> datetime:
    """Daily buckets start at UTC midnight; a range must include the first day's bucket."""
    return ts.replace(hour=0, minute=0, second=0, microsecond=0)


def _try_plot(draw: Callable[[], Path], echo: Callable[[str], None]) -> list[Path]:
    """Plots are optional: without matplotlib the demo still reports, and says how to get them."""
    try:
        return [draw()]
    except ConfigError as exc:
        echo(f"[demo] no plot: {exc}")
        return []


# ----------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    parser.add_argument("--short", action="store_true",
                        help="CI-sized run: 2 hosts x 2 GPUs, 2 days at 5-minute scrapes (~2,300 snapshots)")
    parser.add_argument("--hosts", type=cli_support.positive_int, help=f"simulated hosts (default {d.hosts})")
    parser.add_argument("--gpus-per-host", type=cli_support.positive_int, help=f"GPUs per host (default {d.gpus_per_host})")
    parser.add_argument("--days", type=cli_support.positive_float, help=f"simulated days (default {d.days:g})")
    parser.add_argument("--interval", type=cli_support.positive_float, help=f"simulated scrape interval, seconds (default {d.interval_s:g})")
    parser.add_argument("--reconfigure-every", type=cli_support.positive_float, default=d.reconfigure_every_s, metavar="SECONDS",
                        help="mean time between MIG re-partitionings of a GPU (default %(default)g)")
    parser.add_argument("--seed", type=int, default=d.seed, help="simulation seed (default %(default)s)")
    parser.add_argument("--cluster", help="cluster name of this run (default demo-<UTC timestamp>: a fresh one)")
    parser.add_argument("--out", type=Path, default=d.out_dir, help="folder for CSVs and plots (default %(default)s)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap (default: $MIGMETER_KAFKA_BOOTSTRAP or the local stack)")
    cli_support.add_database_url(parser)
    # The clients' connection chatter is not what a demo user wants to read; warnings still show.
    cli_support.quiet_loggers(parser, "kafka", "migmeter.collector", "migmeter.processor", "matplotlib")
    parser.add_argument("--topic", help="Kafka topic (default migmeter.demo.<cluster>, created and deleted)")
    parser.add_argument("--keep-topic", action="store_true", help="do not delete the demo topic at the end")


def run(args: argparse.Namespace) -> int:
    base = dict(SHORT) if args.short else {}
    for flag, name in (("hosts", "hosts"), ("gpus_per_host", "gpus_per_host"), ("days", "days"),
                       ("interval", "interval_s")):
        value = getattr(args, flag)
        if value is not None:
            base[name] = value
    cfg = DemoConfig(reconfigure_every_s=args.reconfigure_every, seed=args.seed, cluster=args.cluster or "",
                     out_dir=args.out, bootstrap=args.bootstrap, database_url=args.database_url, topic=args.topic,
                     keep_topic=args.keep_topic, **base)  # type: ignore[arg-type]
    if cfg.days <= 0 or cfg.days > 62:
        raise ConfigError(f"--days {cfg.days:g} outside (0, 62]")
    result = run_demo(cfg, echo=lambda line: print(line, flush=True))
    if not result.reconciled:
        print("[demo] the report does NOT reconcile", file=sys.stderr)
        return 1
    return 0

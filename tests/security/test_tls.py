"""TLS with a real certificate authority (issue 16 item 2).

A CA made in the test signs the certificates of a private Kafka node whose client listener is
TLS with client certificates required (mutual TLS), of a private PostgreSQL cluster with
``ssl = on``, and of the clients. The collector publishes and the processor consumes and
writes over TLS (the database URL at ``sslmode=verify-full``): the warehouse equals the oracle.
A wrong CA, a wrong host name and an expired certificate each stop the collector or the
processor at once with one ERROR line (exit 2), nothing published, spooled or written, and no
key or password in any output.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from collector.sources.simulate import SimulatedFleet
from migmeter import stack
from warehouse.migrate import migrate
from tests.fix_faults import assert_same_totals, free_port, oracle, spawn
from tests.security.certs import Authority, Issued

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOPIC, FAIL_TOPIC = "tls.snapshots", "tls.refused"
ROUNDS, GPUS = 3, 4


@dataclass
class Pki:
    ca: Authority
    other_ca: Authority  # a CA nobody here trusts
    kafka: Issued  # the broker (127.0.0.1 only)
    pg: Issued  # the database server (127.0.0.1 only)
    pg_expired: Issued
    client: Issued
    client_expired: Issued
    client_other_ca: Issued


@dataclass
class TlsStack:
    pki: Pki
    kafka: stack.KafkaNode
    pg: stack.PostgresCluster
    home: Path

    def db_url(self, rootcert: Path | None = None, host: str = "127.0.0.1") -> str:
        """The owner's URL at sslmode=verify-full; ``host`` is what the certificate is checked against."""
        base = self.pg.url().replace("@127.0.0.1:", f"@{host}:")
        return f"{base}?sslmode=verify-full&sslrootcert={rootcert or self.pki.ca.cert}&hostaddr=127.0.0.1"

    def kafka_env(self, client: Issued | None = None, cafile: Path | None = None) -> dict[str, str]:
        client = client or self.pki.client
        return {"MIGMETER_KAFKA_SECURITY_PROTOCOL": "SSL", "MIGMETER_KAFKA_SSL_CAFILE": str(cafile or self.pki.ca.cert),
                "MIGMETER_KAFKA_SSL_CERTFILE": str(client.cert), "MIGMETER_KAFKA_SSL_KEYFILE": str(client.key)}

    def secrets(self) -> list[str]:
        """What must never appear in any output: the database password and every private key."""
        keys = [p.key.read_text() for p in (self.pki.kafka, self.pki.pg, self.pki.client)]
        return [self.pg.password(), *(k.splitlines()[1] for k in keys)]


@pytest.fixture(scope="module")
def tls_stack(kafka_bootstrap: str) -> Iterator[TlsStack]:
    home = Path(tempfile.mkdtemp(prefix="migmeter-tls-"))
    home.chmod(0o755)  # the PostgreSQL server user must enter it
    ca, other = Authority(home / "pki", "migmeter-test"), Authority(home / "pki", "someone-else")
    pki = Pki(ca, other, ca.issue("kafka"), ca.issue("pg"), ca.issue("pg-expired", expired=True),
              ca.issue("client"), ca.issue("client-expired", expired=True), other.issue("client-other"))
    for path in (pki.pg.cert, pki.pg.key, pki.pg_expired.cert, pki.pg_expired.key):
        path.chmod(0o644)  # copied in by PostgresCluster; readable by the server user for the copy
    node = stack.KafkaNode(stack.default_kafka().jars_dir, home / "kafka", port=free_port(),
                           controller_port=free_port(), partitions=2,
                           tls=stack.KafkaTls(pki.kafka.bundle, ca.cert, client_auth=True))
    pg = stack.PostgresCluster(home / "pg", port=free_port(), tls=stack.PostgresTls(pki.pg.cert, pki.pg.key))
    try:
        node.start()
        pg.start()
        migrate(pg.url())
        admin = KafkaAdminClient(bootstrap_servers=node.bootstrap, client_id="migmeter-tests", **node.client_options())
        try:
            for t in (TOPIC, FAIL_TOPIC):
                stack.create_topic(admin, t, 2)
        finally:
            admin.close()
        yield TlsStack(pki, node, pg, home)
    finally:
        node.stop()
        pg.stop()
        shutil.rmtree(home, ignore_errors=True)


def _run(name: str, args: list[str], tmp_path: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = spawn(name, args, tmp_path, env=env)
    try:
        rc = proc.popen.wait(120)
    finally:
        proc.kill()
    return rc, proc.log.read_text()


def _collect(ts: TlsStack, tmp_path: Path, name: str, topic: str, *, bootstrap: str | None = None,
             client: Issued | None = None, cafile: Path | None = None) -> tuple[int, str]:
    client = client or ts.pki.client
    return _run(name, ["collect", "--source", "simulate", "--hosts", "1", "--gpus-per-host", str(GPUS),
                       "--rounds", str(ROUNDS), "--speed", "0", "--bootstrap", bootstrap or ts.kafka.bootstrap,
                       "--topic", topic, "--security-protocol", "SSL",
                       "--ssl-cafile", str(cafile or ts.pki.ca.cert), "--ssl-certfile", str(client.cert),
                       "--ssl-keyfile", str(client.key), "--spool-dir", str(tmp_path / f"spool-{name}"),
                       "--flush-timeout", "10", "--metrics-port", "0"], tmp_path, env={})


def _process(ts: TlsStack, tmp_path: Path, name: str, db_url: str, *, bootstrap: str | None = None,
             env: dict[str, str] | None = None) -> tuple[int, str]:
    return _run(name, ["process", "--bootstrap", bootstrap or ts.kafka.bootstrap, "--database-url", db_url,
                       "--topic", TOPIC, "--group", name, "--metrics-port", "0", "--stop-when-idle", "2"],
                tmp_path, env=env if env is not None else ts.kafka_env())


def _assert_one_tls_error(rc: int, out: str, ts: TlsStack, *words: str) -> None:
    errors = [line for line in out.splitlines() if " ERROR " in line]
    assert rc == 2, out[-3000:]
    assert len(errors) == 1 and "TLS" in errors[0], out[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    assert "Traceback" not in out
    for secret in ts.secrets():
        assert secret not in out


def _published(ts: TlsStack, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=ts.kafka.bootstrap, **ts.kafka.client_options())
    try:
        return sum(consumer.end_offsets([TopicPartition(topic, p) for p in (0, 1)]).values())
    finally:
        consumer.close()


def _written(ts: TlsStack, group: str) -> int:
    with psycopg.connect(ts.pg.url()) as conn:
        row = conn.execute("SELECT count(*) FROM sink_offsets WHERE consumer_group = %s", (group,)).fetchone()
    assert row is not None
    return int(row[0])


def test_pipeline_end_to_end_over_tls(tls_stack: TlsStack, tmp_path: Path) -> None:
    ts = tls_stack
    rc, out = _collect(ts, tmp_path, "collect", TOPIC)
    assert rc == 0 and f"delivered={ROUNDS * GPUS}" in out, out[-3000:]
    rc, log = _process(ts, tmp_path, "process", ts.db_url())
    assert rc == 0, log[-3000:]
    for secret in ts.secrets():
        assert secret not in out and secret not in log
    fleet = SimulatedFleet(hosts=1, gpus_per_host=GPUS, cluster="default")  # the CLI's defaults
    assert_same_totals(oracle([s for _ in range(ROUNDS) for s in fleet.read()]), ts.pg.url())
    with psycopg.connect(ts.db_url()) as conn:  # what the processor's URL gets: TLS, verified
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)


@pytest.mark.parametrize("case", ["wrong_ca", "wrong_host", "expired_client_cert"])
def test_kafka_tls_failure_is_one_line_and_writes_nothing(tls_stack: TlsStack, tmp_path: Path, case: str) -> None:
    ts = tls_stack
    kw: dict[str, object] = {}
    words: tuple[str, ...] = ()
    if case == "wrong_ca":  # the clients trust another CA (and present its certificate)
        kw = {"client": ts.pki.client_other_ca, "cafile": ts.pki.other_ca.cert}
        words = ("does not verify",)
    elif case == "wrong_host":  # the broker's certificate names 127.0.0.1, not localhost
        kw = {"bootstrap": f"localhost:{ts.kafka.port}"}
        words = ("localhost",)
    else:  # the broker refuses a client certificate that expired yesterday
        kw = {"client": ts.pki.client_expired}
        words = ("rejected the client certificate",)
    rc, out = _collect(ts, tmp_path, f"collect-{case}", FAIL_TOPIC, **kw)  # type: ignore[arg-type]
    _assert_one_tls_error(rc, out, ts, *words)
    assert _published(ts, FAIL_TOPIC) == 0
    assert not (tmp_path / f"spool-collect-{case}").exists() or not any((tmp_path / f"spool-collect-{case}").iterdir())

    env = ts.kafka_env(kw.get("client"), kw.get("cafile"))  # type: ignore[arg-type]
    rc, log = _process(ts, tmp_path, f"process-{case}", ts.db_url(), bootstrap=kw.get("bootstrap"), env=env)  # type: ignore[arg-type]
    _assert_one_tls_error(rc, log, ts, *words)
    assert _written(ts, f"process-{case}") == 0


def test_database_tls_failure_is_one_line_and_writes_nothing(tls_stack: TlsStack, tmp_path: Path) -> None:
    ts = tls_stack
    cases = [("wrong-ca", ts.db_url(rootcert=ts.pki.other_ca.cert), "certificate verify failed"),
             ("wrong-host", ts.db_url(host="db.example.com"), "db.example.com")]
    for name, url, word in cases:
        rc, log = _process(ts, tmp_path, f"process-{name}", url)
        _assert_one_tls_error(rc, log, ts, word)
        assert _written(ts, f"process-{name}") == 0
    # The server's certificate expired yesterday: restart it with that one, then with the good one.
    ts.pg.stop()
    ts.pg.tls = stack.PostgresTls(ts.pki.pg_expired.cert, ts.pki.pg_expired.key)
    try:
        ts.pg.start()
        rc, log = _process(ts, tmp_path, "process-expired", ts.db_url())
        _assert_one_tls_error(rc, log, ts, "certificate verify failed")
        assert _written(ts, "process-expired") == 0
    finally:
        ts.pg.stop()
        ts.pg.tls = stack.PostgresTls(ts.pki.pg.cert, ts.pki.pg.key)
        ts.pg.start()

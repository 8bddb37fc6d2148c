"""The local stack is real: a broker that keeps committed offsets, a database with
TimescaleDB, a status command that says so, and private nodes that stop without a trace."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from migmeter import settings, stack
from migmeter.errors import StackError

pytestmark = pytest.mark.integration

# A guard against hanging forever, not a timing assertion.
_POLL_DEADLINE_S = 60.0


def _consume(consumer: KafkaConsumer, count: int) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + _POLL_DEADLINE_S
    while len(got) < count and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(r.value for r in records)
    return got


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if text.encode() in (proc / "cmdline").read_bytes():
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _process_group_members(pgid: int) -> list[int]:
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(proc.name))
    return members


# ------------------------------------------------------------------------- shared stack


def test_consumer_group_resumes_after_committed_offset(kafka_bootstrap: str, new_topic) -> None:
    topic = new_topic(partitions=4)
    group = f"test-group-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    first = [f"first-{i}".encode() for i in range(8)]
    for i, value in enumerate(first):
        producer.send(topic, key=f"gpu-{i}".encode(), value=value)
    producer.flush()

    c1 = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=group,
                       auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        got1 = _consume(c1, len(first))
        c1.commit()
    finally:
        c1.close()
    assert sorted(got1) == sorted(first)

    second = [f"second-{i}".encode() for i in range(8)]
    for i, value in enumerate(second):
        producer.send(topic, key=f"gpu-{i}".encode(), value=value)
    producer.flush()
    producer.close()

    c2 = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=group,
                       auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        got2 = _consume(c2, len(second))
        # One more poll: nothing before the committed offsets may come back.
        got2 += [r.value for rs in c2.poll(timeout_ms=1000).values() for r in rs]
    finally:
        c2.close()
    assert sorted(got2) == sorted(second)


def test_database_has_timescaledb(admin_url: str) -> None:
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    assert row is not None and re.match(r"^2\.\d+", row[0])


def test_stack_status_reports_both_services(kafka_bootstrap: str, admin_url: str) -> None:
    if kafka_bootstrap != settings.DEFAULT_KAFKA_BOOTSTRAP or os.environ.get(settings.ENV_DATABASE_URL):
        pytest.skip("services come from the environment, not from `migmeter stack up`")
    proc = subprocess.run([sys.executable, "-m", "migmeter.cli", "stack", "status"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    kafka = next(line for line in lines if line.startswith("kafka"))
    pg = next(line for line in lines if line.startswith("postgresql"))
    assert "127.0.0.1:9092" in kafka and "ready" in kafka and stack.KAFKA_VERSION in kafka
    assert f"127.0.0.1:{settings.LOCAL_PG_PORT}" in pg and "ready" in pg
    assert "timescaledb 2." in pg and "license" in pg
    # never a password in what status prints
    password = (settings.state_dir() / "postgres" / "password").read_text().strip()
    assert password not in proc.stdout + proc.stderr


def test_stack_env_prints_exports() -> None:
    lines = stack.env_lines()
    assert lines[0] == f"export {settings.ENV_KAFKA_BOOTSTRAP}=127.0.0.1:9092"
    assert lines[1].startswith(f"export {settings.ENV_DATABASE_URL}=")


def test_create_topic_returns_with_every_partition_led(kafka_bootstrap: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="migmeter-tests")
    name = f"test.create.{uuid.uuid4().hex[:8]}"
    try:
        stack.create_topic(admin, name, 3)
        (desc,) = admin.describe_topics([name])
        assert sorted(p["partition_index"] for p in desc["partitions"]) == [0, 1, 2]
        assert all(p["leader_id"] == 1 for p in desc["partitions"])  # the one broker leads all three
        stack.create_topic(admin, name, 3)  # already there: fine, nothing changes
    finally:
        admin.delete_topics([name])
        admin.close()


# ------------------------------------------------------------------------- private nodes


@pytest.mark.slow
def test_private_kafka_node_starts_and_stops_without_a_trace(kafka_bootstrap: str, private_home: Path) -> None:
    node = stack.KafkaNode(stack.default_kafka().jars_dir, private_home / "kafka",
                           port=stack.free_port(), controller_port=stack.free_port())
    try:
        node.start()
        assert node.is_ready()
        pid = node.pid()
        assert pid is not None
        producer = KafkaProducer(bootstrap_servers=node.bootstrap)
        producer.send("private.smoke", b"x").get(timeout=30)
        producer.close()
    finally:
        node.stop()
    assert node.pid() is None
    assert not node.is_ready(timeout_s=1)
    assert _processes_mentioning(str(node.home)) == []
    assert _process_group_members(pid) == []
    # the shared broker was not touched
    assert stack.default_kafka().is_ready()


@pytest.mark.slow
def test_private_postgres_cluster_starts_and_stops_without_a_trace(admin_url: str, private_home: Path) -> None:
    cluster = stack.PostgresCluster(private_home / "pg", port=stack.free_port())
    try:
        cluster.start()
        assert cluster.is_ready()
        pid = cluster.pid()
        assert pid is not None
        versions = cluster.versions()
        assert versions["timescaledb"].startswith("2.") and versions["license"]
        assert (cluster.password_file.stat().st_mode & 0o777) == 0o600
        # a client connection open during stop must not keep the server alive
        conn = psycopg.connect(cluster.url())
    finally:
        cluster.stop()
    conn.close()
    assert cluster.pid() is None
    assert not cluster.is_ready(timeout_s=1)
    assert _processes_mentioning(str(cluster.data_dir)) == []
    assert _process_group_members(pid) == []
    # restart keeps the data (outage tests rely on it), then stop again
    try:
        cluster.start()
        assert cluster.is_ready()
    finally:
        cluster.stop()
    assert cluster.pid() is None


# ------------------------------------------------------------------------- pins (no services)


def test_kafka_version_is_pinned_consistently() -> None:
    pom = (settings.PROJECT_ROOT / "compose" / "local" / "kafka-pom.xml").read_text()
    assert f"<kafka.version>{stack.KAFKA_VERSION}</kafka.version>" in pom
    assert f"<log4j.version>{stack.KAFKA_LOG4J_VERSION}</log4j.version>" in pom
    compose = (settings.PROJECT_ROOT / "compose" / "docker-compose.yml").read_text()
    assert f"apache/kafka:{stack.KAFKA_VERSION}" in compose


def test_missing_maven_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(shutil.which("java") or "/bin/false")
    monkeypatch.setenv("PATH", str(bin_dir))
    node = stack.KafkaNode(tmp_path / "jars", tmp_path / "home", port=stack.free_port(), controller_port=stack.free_port())
    with pytest.raises(StackError, match=r"'mvn' is required.*apt-get install -y maven"):
        node.ensure_installed()


def test_port_taken_by_a_stranger_is_refused(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        node = stack.KafkaNode(tmp_path / "jars", tmp_path / "home", port=port, controller_port=stack.free_port())
        with pytest.raises(StackError, match=f"port {port}"):
            node.start()


def test_a_jvm_that_exits_fails_fast_with_its_log(tmp_path: Path) -> None:
    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / "kafka_2.13-0.0.0.jar").write_bytes(b"not a jar")
    (jars / ".complete").write_text("0.0.0\n")
    node = stack.KafkaNode(jars, tmp_path / "home", port=stack.free_port(), controller_port=stack.free_port())
    (node.data_dir).mkdir(parents=True)
    (node.data_dir / "meta.properties").write_text("formatted=pretend\n")
    # the exit code and the JVM's own words, not "not ready after": the exit was noticed, no timeout waited out
    with pytest.raises(StackError, match=r"(?s)exited with code 1;.*kafka\.Kafka"):
        node.start(timeout_s=300)
    node.stop()
    assert node.pid() is None

"""End to end through a broker that requires SASL: the collector publishes and the processor
consumes with credentials from the environment only; wrong credentials deliver nothing and
never show up in any output.

The broker is a private KRaft node (``migmeter.stack.KafkaNode``) whose client listener is
SASL_PLAINTEXT with the PLAIN mechanism. TLS uses the same pass-through (``ssl_*`` settings,
checked at unit level in ``test_kafka_security.py``); a certificate authority is not set up here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient

from collector.sources.simulate import SimulatedFleet
from migmeter import stack
from tests.fix_faults import assert_same_totals, free_port, oracle, spawn

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN_PW, METER_PW, WRONG_PW = "admin-S3cret-1", "meter-S3cret-2", "wrong-S3cret-3"
_SASL = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}
TOPIC = "sasl.snapshots"
ROUNDS, HOSTS, GPUS = 4, 1, 4


class SaslKafkaNode(stack.KafkaNode):
    """A KafkaNode whose client listener wants SASL/PLAIN (users admin and meter)."""

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config_path.read_text()
        text = text.replace(f"PLAINTEXT://127.0.0.1:{self.port}", f"SASL_PLAINTEXT://127.0.0.1:{self.port}")
        text = text.replace("inter.broker.listener.name=PLAINTEXT", "inter.broker.listener.name=SASL_PLAINTEXT")
        text = text.replace("CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT")
        text += (
            "sasl.enabled.mechanisms=PLAIN\n"
            "sasl.mechanism.inter.broker.protocol=PLAIN\n"
            "listener.name.sasl_plaintext.plain.sasl.jaas.config="
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="admin" password="{ADMIN_PW}" user_admin="{ADMIN_PW}" user_meter="{METER_PW}";\n'
        )
        self.config_path.write_text(text)

    def client_options(self) -> dict[str, Any]:
        return {"sasl_plain_username": "admin", "sasl_plain_password": ADMIN_PW, **_SASL}

    def admin(self) -> KafkaAdminClient:
        return KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="migmeter-tests", request_timeout_ms=5000,
                                **self.client_options())


@pytest.fixture
def sasl_kafka(kafka_bootstrap: str, private_home: Path) -> Iterator[SaslKafkaNode]:
    node = SaslKafkaNode(stack.default_kafka().jars_dir, private_home / "sasl-kafka", port=free_port(),
                         controller_port=free_port())
    try:
        node.start()
        admin = node.admin()
        try:
            stack.create_topic(admin, TOPIC, 2)
        finally:
            admin.close()
        yield node
    finally:
        node.stop()


def _env(password: str) -> dict[str, str]:
    return {"MIGMETER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "MIGMETER_KAFKA_SASL_MECHANISM": "PLAIN",
            "MIGMETER_KAFKA_SASL_USERNAME": "meter", "MIGMETER_KAFKA_SASL_PASSWORD": password}


def _collect(node: SaslKafkaNode, tmp_path: Path, name: str, password: str) -> tuple[int, str]:
    proc = spawn(name, ["collect", "--source", "simulate", "--hosts", str(HOSTS), "--gpus-per-host", str(GPUS),
                        "--rounds", str(ROUNDS), "--speed", "0", "--bootstrap", node.bootstrap, "--topic", TOPIC,
                        "--no-spool", "--flush-timeout", "5", "--metrics-port", "0"], tmp_path, env=_env(password))
    try:
        rc = proc.popen.wait(120)
    finally:
        proc.kill()
    return rc, proc.log.read_text()


def test_collector_and_processor_through_a_sasl_broker(sasl_kafka: SaslKafkaNode, fresh_db: str,
                                                       tmp_path: Path) -> None:
    # Wrong password: nothing delivered (no spool: counted as dropped, exit 1), the password never printed.
    rc, out = _collect(sasl_kafka, tmp_path, "collect-wrong", WRONG_PW)
    assert rc == 1 and "delivered=0" in out, out[-3000:]
    assert WRONG_PW not in out

    rc, out = _collect(sasl_kafka, tmp_path, "collect", METER_PW)
    assert rc == 0 and f"delivered={ROUNDS * HOSTS * GPUS}" in out, out[-3000:]
    assert "SASL_PLAINTEXT" in out and METER_PW not in out

    proc = spawn("process", ["process", "--bootstrap", sasl_kafka.bootstrap, "--database-url", fresh_db, "--topic",
                             TOPIC, "--group", "sasl", "--metrics-port", "0", "--stop-when-idle", "2"],
                 tmp_path, env=_env(METER_PW))
    try:
        rc = proc.popen.wait(120)
    finally:
        proc.kill()
    log = proc.log.read_text()
    assert rc == 0, log[-3000:]
    assert METER_PW not in log
    fleet = SimulatedFleet(hosts=HOSTS, gpus_per_host=GPUS, cluster="default")  # the CLI's defaults
    assert_same_totals(oracle([s for _ in range(ROUNDS) for s in fleet.read()]), fresh_db)

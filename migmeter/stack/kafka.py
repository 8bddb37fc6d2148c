"""Apache Kafka for the local stack: the broker's jars from Maven Central, one KRaft node, a cluster.

- :class:`KafkaNode` — one combined broker+controller KRaft node on loopback, on its own
  ports and home folder, so a test can run a PRIVATE broker to stop and restart.
- :class:`KafkaCluster` — several such nodes forming one quorum (replication tests, soak).
- :class:`KafkaTls` — the client listener as TLS.
"""

from __future__ import annotations

import base64
import shutil
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaConfigurationError, KafkaError, TopicAlreadyExistsError

from migmeter import settings
from migmeter.errors import StackError
from migmeter.stack.processes import (
    STOP_TIMEOUT_S,
    ServiceProcess,
    free_port,
    log_tail,
    port_open,
    progress,
    quiet_logger,
    require_tool,
    run_step,
)

__all__ = [
    "KAFKA_VERSION",
    "KAFKA_LOG4J_VERSION",
    "KAFKA_PORT",
    "KAFKA_CONTROLLER_PORT",
    "KAFKA_DEFAULT_PARTITIONS",
    "KAFKA_START_TIMEOUT_S",
    "KafkaTls",
    "KafkaNode",
    "KafkaCluster",
    "create_topic",
]

# Pinned broker. kafka-python 3.0.x (our client) is tested against 4.x brokers. The same pin
# is the default in compose/local/kafka-pom.xml and compose/docker-compose.yml.
KAFKA_VERSION = "4.1.1"
# log4j-core version that kafka-server 4.1.x depends on; the SLF4J binding must match it.
KAFKA_LOG4J_VERSION = "2.24.3"
KAFKA_PORT = 9092
KAFKA_CONTROLLER_PORT = 9093
# Default partitions of auto-created topics: more than one so consumer-group tests see a
# real assignment split, few enough that a 2-core machine creates topics instantly.
KAFKA_DEFAULT_PARTITIONS = 4
# A broker needs little memory for tests and demos; keep it small on 2-core CI machines.
KAFKA_HEAP = "-Xmx512m"
# Maven's default dependency plugin on 3.8 is old; pin one that behaves.
_MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
# How long a new topic's partitions may take to get leaders (milliseconds on a healthy broker).
TOPIC_READY_TIMEOUT_S = 60.0
# How long a broker may take to become ready. A cold JVM on a 2-core machine needs ~10 s.
KAFKA_START_TIMEOUT_S = 90.0

KAFKA_POM = settings.PROJECT_ROOT / "compose" / "local" / "kafka-pom.xml"


def _kafka_jars_complete(jars_dir: Path) -> bool:
    return (jars_dir / ".complete").exists() and any(jars_dir.glob("kafka_2.13-*.jar"))


@dataclass(frozen=True)
class KafkaTls:
    """The client listener of a :class:`KafkaNode` speaks TLS (security protocol ``SSL``).

    ``keystore`` is one PEM file with the node's unencrypted PKCS#8 key and its certificate
    chain, ``truststore`` the PEM of the CA that signs client certificates (and the node's own,
    for inter-broker traffic on the same listener). ``client_auth`` requires a client
    certificate (mutual TLS). Paths only: nothing secret is copied into ``server.properties``.
    """

    keystore: Path
    truststore: Path
    client_auth: bool = False


class KafkaNode:
    """One Apache Kafka KRaft node (broker + controller in one JVM) on 127.0.0.1.

    ``jars_dir`` holds the broker's jars (resolved once from Maven Central, shared by every
    node of the same version); ``home`` holds this node's config, data, log and pid file.

    Alone by default. For a cluster, give each node its ``node_id``, the same ``voters``
    (``id@127.0.0.1:controller_port`` of every node, comma-separated) and ``cluster_id``, and a
    ``replication`` factor and ``min_insync`` replicas for every topic, the internal ones too.
    ``tls`` turns the client listener into TLS (see :class:`KafkaTls`).
    """

    def __init__(
        self,
        jars_dir: Path,
        home: Path,
        port: int = KAFKA_PORT,
        controller_port: int = KAFKA_CONTROLLER_PORT,
        *,
        partitions: int = KAFKA_DEFAULT_PARTITIONS,
        version: str = KAFKA_VERSION,
        node_id: int = 1,
        voters: str | None = None,
        cluster_id: str | None = None,
        replication: int = 1,
        min_insync: int = 1,
        tls: KafkaTls | None = None,
    ) -> None:
        self.jars_dir = Path(jars_dir)
        self.home = Path(home)
        self.port = port
        self.controller_port = controller_port
        self.partitions = partitions
        self.version = version
        self.node_id = node_id
        self.voters = voters or f"{node_id}@127.0.0.1:{controller_port}"
        self.cluster_id = cluster_id
        self.replication = replication
        self.min_insync = min_insync
        self.tls = tls
        self._service = ServiceProcess(f"Kafka {version} on {self.bootstrap}", self.pid_file, self.log_path,
                                       "kafka.Kafka")

    def __repr__(self) -> str:
        return f"KafkaNode({self.bootstrap!r}, home={str(self.home)!r})"

    # paths
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_path(self) -> Path:
        return self.home / "kafka.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def config_path(self) -> Path:
        return self.home / "server.properties"

    # install
    def ensure_installed(self) -> None:
        """Resolve the broker's jars from Maven Central into ``jars_dir`` unless already there."""
        if _kafka_jars_complete(self.jars_dir):
            return
        require_tool("java", "apt-get install -y openjdk-17-jre-headless")
        mvn = require_tool("mvn", "apt-get install -y maven")
        self.jars_dir.mkdir(parents=True, exist_ok=True)
        for old in self.jars_dir.glob("*.jar"):
            old.unlink()  # never mix versions in one jars dir
        pom = self.jars_dir / "pom.xml"
        shutil.copyfile(KAFKA_POM, pom)
        # Keep Maven's download cache with the rest of the stack, so removing the state dir
        # is a full reset and CI can cache one folder.
        repo = self.jars_dir.parent / "m2"
        progress(f"resolving Apache Kafka {self.version} jars from Maven Central (first run only) ...")
        run_step(
            [
                mvn, "-B", "-q", f"-Dmaven.repo.local={repo}", "-f", str(pom),
                f"{_MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime", f"-DoutputDirectory={self.jars_dir}",
                f"-Dkafka.version={self.version}", f"-Dlog4j.version={KAFKA_LOG4J_VERSION}",
            ],
            "resolving Kafka jars with Maven",
            cwd=self.jars_dir,
        )
        found = run_step(
            ["java", "-cp", f"{self.jars_dir}/*", "kafka.Kafka", "--version"],
            "Kafka smoke test (kafka.Kafka --version)",
        )
        if self.version not in found.stdout + found.stderr:
            raise StackError(f"Kafka jars report {found.stdout.strip()!r}, expected {self.version}")
        (self.jars_dir / ".complete").write_text(self.version + "\n")
        progress(f"Kafka {self.version}: {len(list(self.jars_dir.glob('*.jar')))} jars in {self.jars_dir}")

    # config
    def _write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        rf, isr = str(self.replication), str(self.min_insync)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": str(self.partitions),
            "auto.create.topics.enable": "true",
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "share.coordinator.state.topic.num.partitions": "1",
            # Tests start consumers one after another; don't wait 3 s for more to join.
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "log.retention.hours": "168",
        }
        props.update(self._tls_props())
        self.config_path.write_text(
            "# written by migmeter/stack/kafka.py on every start; edit the code, not this file\n"
            + "".join(f"{k}={v}\n" for k, v in props.items())
        )
        (self.home / "log4j2.properties").write_text(_KAFKA_LOG4J2)

    def _tls_props(self) -> dict[str, str]:
        """The client listener as TLS (named SSL; inter-broker traffic uses it too)."""
        if self.tls is None:
            return {}
        return {
            "listeners": f"SSL://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"SSL://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "SSL",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SSL:SSL",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.tls.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.tls.truststore),
            "ssl.client.auth": "required" if self.tls.client_auth else "none",
        }

    def _format_storage(self) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cp = f"{self.jars_dir}/*"
        cluster_id = self.cluster_id or run_step(["java", "-cp", cp, "kafka.tools.StorageTool", "random-uuid"],
                                                 "Kafka cluster id").stdout.strip().splitlines()[-1]
        progress(f"formatting Kafka storage in {self.data_dir}")
        run_step(["java", "-cp", cp, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                  "-c", str(self.config_path), "-g"], "formatting Kafka storage")

    # lifecycle
    def pid(self) -> int | None:
        """The broker's pid while it runs, else None (see :class:`ServiceProcess`)."""
        return self._service.pid()

    def is_running(self) -> bool:
        return self.pid() is not None

    def is_ready(self, timeout_s: float = 3.0) -> bool:
        """True when the broker answers a metadata request (an open port is not enough)."""
        if not port_open(self.port):
            return False
        ms = int(timeout_s * 1000)
        with quiet_logger("kafka"):
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap, request_timeout_ms=ms,
                    bootstrap_timeout_ms=ms, client_id="migmeter-stack-probe",
                    **self.client_options(),
                )
            except KafkaConfigurationError:
                raise  # our bug, not a broker that is down
            except (KafkaError, OSError, ValueError):
                return False
            try:
                admin.list_topics()
                return True
            except (KafkaError, OSError, ValueError):
                return False
            finally:
                admin.close()

    def client_options(self) -> dict[str, Any]:
        """Extra kafka-python settings clients need to reach this node (none: plaintext).

        A node configured for SASL overrides this, and the readiness probe follows. A TLS node
        is probed with its own certificate (a client certificate when ``client_auth``).
        """
        if self.tls is None:
            return {}
        opts: dict[str, Any] = {"security_protocol": "SSL", "ssl_cafile": str(self.tls.truststore)}
        if self.tls.client_auth:
            opts["ssl_certfile"] = str(self.tls.keystore)
        return opts

    def start(self, wait: bool = True, timeout_s: float = KAFKA_START_TIMEOUT_S) -> None:
        """Start the node (idempotent); with ``wait``, return once it is ready."""
        if self.is_running():
            if wait:
                self.wait_ready(timeout_s)
            return
        if port_open(self.port) or port_open(self.controller_port):
            raise StackError(
                f"port {self.port} or {self.controller_port} on 127.0.0.1 is taken by another "
                f"process; stop it or pick other ports (home {self.home})"
            )
        self.ensure_installed()
        self._write_config()
        self._format_storage()
        cmd = [
            "java", "-Xms128m", KAFKA_HEAP, "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            f"-Dmigmeter.home={self.home}",  # lets pid checks tell our brokers apart
            "-cp", f"{self.jars_dir}/*", "kafka.Kafka", str(self.config_path),
        ]
        pid = self._service.spawn(cmd, cwd=self.home)
        progress(f"Kafka {self.version} starting on {self.bootstrap} (pid {pid}, log {self.log_path})")
        if wait:
            self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = KAFKA_START_TIMEOUT_S) -> None:
        """Wait until a metadata request answers; fail at once, with the JVM's exit code and the
        tail of its output, if it exits."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.is_running():
                raise StackError(self._service.exit_report())
            if self.is_ready(timeout_s=2.0):
                progress(f"Kafka ready on {self.bootstrap}")
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"Kafka on {self.bootstrap} not ready after {timeout_s:.0f} s; last lines of "
                    f"{self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL, no controlled shutdown (a crashed broker); a later :meth:`start` recovers its log."""
        self._halt(signal.SIGKILL, STOP_TIMEOUT_S, "killing")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (controlled shutdown), wait, then SIGKILL. Idempotent."""
        self._halt(signal.SIGTERM, timeout_s, "stopping")

    def _halt(self, sig: signal.Signals, timeout_s: float, verb: str) -> None:
        """Returns once the JVM has exited (every thread) and both ports are closed, so a
        :meth:`start` right after finds the data dir's lock and the ports free."""
        pid = self.pid()
        if pid is not None:
            progress(f"{verb} Kafka on {self.bootstrap} (pid {pid})")
        self._service.halt(sig, timeout_s, (self.port, self.controller_port))


def create_topic(admin: KafkaAdminClient, name: str, partitions: int, *, replication: int = 1,
                 timeout_s: float = TOPIC_READY_TIMEOUT_S) -> None:
    """Create ``name`` (an existing topic is fine) and return once every partition has a leader.

    The controller acknowledges a new topic before the broker's metadata shows it; a client
    that asks in between is told the topic has no partitions. Callers that start consumers or
    count partitions right after creating a topic get a topic that is really there.
    """
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=replication)])
    except TopicAlreadyExistsError:
        pass
    deadline = time.monotonic() + timeout_s
    while not _topic_has_leaders(admin, name, partitions):
        if time.monotonic() > deadline:
            raise StackError(f"topic {name}: not every one of its {partitions} partitions has a leader "
                             f"after {timeout_s:.0f} s")
        time.sleep(0.1)


def _topic_has_leaders(admin: KafkaAdminClient, name: str, partitions: int) -> bool:
    try:
        (desc,) = admin.describe_topics([name])
    except KafkaError:
        return False
    parts = desc.get("partitions") or []
    return (desc.get("error_code", 0) == 0 and len(parts) >= partitions
            and all(p.get("error_code", 0) == 0 and p.get("leader_id", -1) >= 0 for p in parts))


class KafkaCluster:
    """``size`` KRaft nodes on loopback from the same jars, each broker and controller, one quorum.

    Every topic (the internal ones too) gets ``replication`` replicas and needs ``min_insync``
    of them to accept a write with ``acks=all``. Ports are free ones picked now; node ids are
    1..size. Test and release-soak kit: nodes are killed, stopped and restarted one by one.
    """

    def __init__(self, jars_dir: Path, home: Path, size: int = 3, *, replication: int = 3, min_insync: int = 2,
                 partitions: int = KAFKA_DEFAULT_PARTITIONS) -> None:
        ports = [(free_port(), free_port()) for _ in range(size)]
        voters = ",".join(f"{i}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports, 1))
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.nodes = {i: KafkaNode(jars_dir, home / f"node{i}", p, c, partitions=partitions, node_id=i, voters=voters,
                                   cluster_id=cluster_id, replication=replication, min_insync=min_insync)
                      for i, (p, c) in enumerate(ports, 1)}

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes.values())

    def start(self, timeout_s: float = KAFKA_START_TIMEOUT_S) -> None:
        """Start every node that is not running (in parallel: a quorum needs a majority up)."""
        for node in self.nodes.values():
            node.start(wait=False)
        for node in self.nodes.values():
            node.wait_ready(timeout_s)

    def kill(self) -> None:
        """Tear down: SIGKILL every node (a controlled shutdown of the last nodes would wait for
        a quorum that is already gone)."""
        for node in self.nodes.values():
            node.kill()

    def admin(self) -> KafkaAdminClient:
        return KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="migmeter-cluster", request_timeout_ms=10000)

    def leaders(self, topic: str) -> dict[int, tuple[int, tuple[int, ...]]]:
        """partition -> (leader node id, -1 while none; in-sync replicas)."""
        with quiet_logger("kafka"):
            admin = self.admin()
            try:
                (desc,) = admin.describe_topics([topic])
            finally:
                admin.close()
        return {p["partition_index"]: (p["leader_id"], tuple(sorted(p["isr_nodes"]))) for p in desc["partitions"]}

    def quorum_leader(self) -> int:
        """The node id of the active controller (the KRaft quorum's leader)."""
        with quiet_logger("kafka"):
            admin = self.admin()
            try:
                quorum = admin.describe_metadata_quorum()
            finally:
                admin.close()
        return int(quorum["topics"][0]["partitions"][0]["leader_id"])


_KAFKA_LOG4J2 = """\
# written by migmeter/stack/kafka.py: broker logs go to stdout, which the stack sends to kafka.log
name = migmeter-kafka
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
logger.requestlog.name = kafka.request.logger
logger.requestlog.level = WARN
logger.controller.name = kafka.controller
logger.controller.level = INFO
"""



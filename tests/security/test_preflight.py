"""``migmeter.preflight``: the start-up TLS check against an in-process TLS server (no broker).

Each broken certificate gives one ConfigError naming the server and the reason; a server that
is down is an outage, not an error; plaintext settings are not checked at all.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from migmeter.errors import ConfigError
from migmeter.preflight import database_tls, kafka_tls
from tests.security.certs import Authority, Issued


class _TlsServer(threading.Thread):
    """Accepts connections on 127.0.0.1 and completes TLS handshakes with ``cert``; with
    ``ca``, requires a client certificate signed by it."""

    def __init__(self, cert: Issued, ca: Path | None = None) -> None:
        super().__init__(daemon=True)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert.cert, cert.key)
        if ca is not None:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(ca)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(3)
                    tls.recv(1)  # hold the connection until the client closes it
            except (OSError, ssl.SSLError):
                pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = Authority(folder, "ca"), Authority(folder, "other")
    return {"ca": ca, "other": other, "server": ca.issue("server"), "expired": ca.issue("expired", expired=True),
            "client": ca.issue("client"), "client_expired": ca.issue("client-expired", expired=True)}


@pytest.fixture
def server(request: pytest.FixtureRequest, pki: dict[str, object]) -> Iterator[_TlsServer]:
    cert, mutual = request.param
    srv = _TlsServer(pki[cert], pki["ca"].cert if mutual else None)  # type: ignore[arg-type, attr-defined]
    srv.start()
    yield srv
    srv.sock.close()


def _ssl(pki: dict[str, object], ca: str = "ca", client: str | None = None) -> dict[str, str]:
    opts = {"security_protocol": "SSL", "ssl_cafile": str(pki[ca].cert)}  # type: ignore[attr-defined]
    if client is not None:
        opts["ssl_certfile"] = str(pki[client].cert)  # type: ignore[attr-defined]
        opts["ssl_keyfile"] = str(pki[client].key)  # type: ignore[attr-defined]
    return opts


@pytest.mark.parametrize("server", [("server", False)], indirect=True)
def test_a_certificate_that_verifies_passes(server: _TlsServer, pki: dict[str, object]) -> None:
    kafka_tls(f"127.0.0.1:{server.port}", _ssl(pki))


@pytest.mark.parametrize("server", [("server", False)], indirect=True)
def test_another_ca(server: _TlsServer, pki: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=rf"127.0.0.1:{server.port} does not verify: unable to get local issuer"):
        kafka_tls(f"127.0.0.1:{server.port}", _ssl(pki, ca="other"))


@pytest.mark.parametrize("server", [("server", False)], indirect=True)
def test_another_host_name(server: _TlsServer, pki: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="Hostname mismatch, certificate is not valid for 'localhost'"):
        kafka_tls(f"localhost:{server.port}", _ssl(pki))


@pytest.mark.parametrize("server", [("expired", False)], indirect=True)
def test_an_expired_server_certificate(server: _TlsServer, pki: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="does not verify: certificate has expired"):
        kafka_tls(f"127.0.0.1:{server.port}", _ssl(pki))


@pytest.mark.parametrize("server", [("server", True)], indirect=True)
def test_client_certificates(server: _TlsServer, pki: dict[str, object]) -> None:
    kafka_tls(f"127.0.0.1:{server.port}", _ssl(pki, client="client"))
    with pytest.raises(ConfigError, match="rejected the client certificate"):
        kafka_tls(f"127.0.0.1:{server.port}", _ssl(pki, client="client_expired"))


def test_plaintext_and_outages_are_not_errors(pki: dict[str, object]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    kafka_tls(f"127.0.0.1:{closed}", {"security_protocol": "PLAINTEXT"})
    kafka_tls(f"127.0.0.1:{closed}", _ssl(pki))  # down: the client's retries handle it
    database_tls(f"postgresql://u:pw@127.0.0.1:{closed}/db")  # no verify-* sslmode: not checked
    database_tls(f"postgresql://u:pw@127.0.0.1:{closed}/db?sslmode=verify-full")  # down: not a TLS failure


def test_an_unreadable_client_key_names_the_file_not_the_key(pki: dict[str, object], tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as err:
        kafka_tls("127.0.0.1:1", {"security_protocol": "SSL", "ssl_certfile": str(bad)})
    assert str(bad) in str(err.value) and "not a key" not in str(err.value)

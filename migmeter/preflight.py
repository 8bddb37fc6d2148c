"""Fail fast on TLS that can never work, before anything is consumed, spooled or written.

A broker or database that is down is an outage: the collector spools, the processor waits
and retries. A certificate that does not verify (signed by another CA, issued for another
host name, expired) or a client certificate the server rejects is not going to heal by
itself: retrying it would look like a long outage while nothing is metered. So at start the
collector and the processor make one TLS handshake with the same settings they will use, and
a verification failure is a :class:`~migmeter.errors.ConfigError` with one line that says
which server and why (never a key, a password or a URL's credentials). Anything else
(connection refused, a timeout) is left to the normal retries.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Mapping
from typing import Any

import psycopg

from migmeter import settings
from migmeter.errors import ConfigError

__all__ = ["HANDSHAKE_TIMEOUT_S", "kafka_tls", "database_tls"]

# Long enough for a loaded machine's handshake, short enough that a start is not held up.
HANDSHAKE_TIMEOUT_S = 10.0
# After a handshake with a client certificate, how long to wait for the server's verdict on it:
# with TLS 1.3 a rejected client certificate is only reported (an alert) after the handshake.
CLIENT_CERT_VERDICT_S = 1.0
# libpq's words for a server certificate that does not verify (OpenSSL's, and its own host check).
_LIBPQ_TLS_FAILURES = ("certificate verify failed", "does not match host name", "certificate has expired",
                       "root certificate file", "certificate is not yet valid", "SSL error")
_LIBPQ_PREFIX = re.compile(r"^.*?port \d+ failed: ")


def kafka_tls(bootstrap: str, security: Mapping[str, Any], timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
    """One handshake with the first reachable bootstrap server, as kafka-python would make it.

    Raises ConfigError if the server's certificate does not verify or the server rejects ours;
    returns quietly for plaintext settings or when no server is reachable (an outage).
    """
    if str(security.get("security_protocol", "")).upper() not in ("SSL", "SASL_SSL"):
        return
    ctx = ssl.create_default_context(cafile=security.get("ssl_cafile"))
    ctx.check_hostname = bool(security.get("ssl_check_hostname", True))
    certfile = security.get("ssl_certfile")
    if certfile:
        try:
            ctx.load_cert_chain(certfile, security.get("ssl_keyfile"), password=security.get("ssl_password"))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"Kafka TLS: cannot load the client certificate {certfile}: "
                              f"{getattr(exc, 'reason', None) or exc.__class__.__name__}") from None
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.strip("[]")
        try:
            sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        except (OSError, ValueError):
            continue  # down or unreachable: the client's own retries deal with outages
        try:
            with ctx.wrap_socket(sock, server_hostname=host) as tls:
                if certfile:
                    _client_cert_verdict(tls, f"{host}:{port}", certfile)
            return
        except ssl.SSLCertVerificationError as exc:
            raise ConfigError(f"Kafka TLS: the certificate of {host}:{port} does not verify: "
                              f"{exc.verify_message}") from None
        except ssl.SSLError as exc:
            raise ConfigError(f"Kafka TLS: handshake with {host}:{port} failed: "
                              f"{exc.reason or exc.__class__.__name__}") from None
        except ConnectionError as exc:
            if certfile:  # reset during the handshake: how a server may refuse our certificate
                raise ConfigError(f"Kafka TLS: {host}:{port} reset the handshake with the client certificate "
                                  f"{certfile} (expired, or not signed by a CA it trusts): "
                                  f"{exc.strerror or exc.__class__.__name__}") from None
            continue
        except OSError:
            continue
        finally:
            sock.close()


def _client_cert_verdict(tls: ssl.SSLSocket, server: str, certfile: str) -> None:
    """Wait briefly for an alert: a server that accepted our certificate just waits for a request."""
    tls.settimeout(CLIENT_CERT_VERDICT_S)
    try:
        data = tls.recv(1)
    except TimeoutError:
        return
    except ssl.SSLError as exc:
        reason = exc.reason or exc.__class__.__name__
    except OSError as exc:  # reset or gone instead of an alert
        reason = exc.strerror or exc.__class__.__name__
    else:
        if data:
            return  # a server that talks first is not refusing us
        reason = "it closed the connection right after the handshake"
    raise ConfigError(f"Kafka TLS: {server} rejected the client certificate {certfile} (expired, or not "
                      f"signed by a CA it trusts): {reason}")


def database_tls(url: str, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
    """One connection with the URL's own ``sslmode``; raises ConfigError if its certificate
    checks fail (only asked for with ``sslmode=verify-ca`` or ``verify-full``)."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return  # not ours to judge here; the connection itself will say
    if params.get("sslmode") not in ("verify-ca", "verify-full"):
        return
    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout_s))):
            return
    except psycopg.OperationalError as exc:
        text = " ".join(str(exc).split())
        if any(word in text for word in _LIBPQ_TLS_FAILURES):
            raise ConfigError(f"database TLS: {settings.redact_url(url)}: {_tls_reason(text)}") from None
    except psycopg.Error:
        return


def _tls_reason(text: str) -> str:
    """libpq's reason without the address prefix it starts with (``connection to server at ... failed:``)."""
    match = _LIBPQ_PREFIX.search(text)
    return (text[match.end():] if match else text).strip()[:300]

"""Kafka connection security (TLS, SASL) shared by the collector's producer and the processor.

Plaintext on loopback is only the local stack's default; a real site passes its broker's
security settings here. Secrets come only from the environment or a file, never from a flag
(flags show in ``ps``), and :func:`describe_security` is the only form that may be logged.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from migmeter.errors import ConfigError

__all__ = [
    "ENV_SECURITY_PROTOCOL",
    "ENV_SASL_MECHANISM",
    "ENV_SASL_USERNAME",
    "ENV_SASL_PASSWORD",
    "ENV_SASL_PASSWORD_FILE",
    "ENV_SSL_CAFILE",
    "ENV_SSL_CERTFILE",
    "ENV_SSL_KEYFILE",
    "SECURITY_KEYS",
    "kafka_security",
    "describe_security",
    "add_arguments",
    "from_args",
]

ENV_SECURITY_PROTOCOL = "MIGMETER_KAFKA_SECURITY_PROTOCOL"
ENV_SASL_MECHANISM = "MIGMETER_KAFKA_SASL_MECHANISM"
ENV_SASL_USERNAME = "MIGMETER_KAFKA_SASL_USERNAME"
ENV_SASL_PASSWORD = "MIGMETER_KAFKA_SASL_PASSWORD"
ENV_SASL_PASSWORD_FILE = "MIGMETER_KAFKA_SASL_PASSWORD_FILE"
ENV_SSL_CAFILE = "MIGMETER_KAFKA_SSL_CAFILE"
# Mutual TLS: the client certificate and its (unencrypted) key, as paths.
ENV_SSL_CERTFILE = "MIGMETER_KAFKA_SSL_CERTFILE"
ENV_SSL_KEYFILE = "MIGMETER_KAFKA_SSL_KEYFILE"

# What may be passed through to KafkaProducer as ``security``: connection security only, so a
# typo or a stray setting cannot silently change delivery semantics (acks, idempotence).
SECURITY_KEYS = frozenset({
    "security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
    "sasl_kerberos_name", "sasl_kerberos_service_name", "sasl_kerberos_domain_name",
    "sasl_oauth_token_provider", "ssl_context", "ssl_check_hostname", "ssl_cafile",
    "ssl_certfile", "ssl_keyfile", "ssl_crlfile", "ssl_password", "ssl_ciphers",
})
_SECRET_KEYS = frozenset({"sasl_plain_password", "ssl_password", "sasl_oauth_token_provider"})


def kafka_security(
    *,
    security_protocol: str | None = None,
    sasl_mechanism: str | None = None,
    ssl_cafile: str | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    sasl_password_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """kafka-python security settings from flags, then the environment.

    The SASL user name and password only ever come from the environment
    (``MIGMETER_KAFKA_SASL_USERNAME`` / ``MIGMETER_KAFKA_SASL_PASSWORD``) or a file
    (``--sasl-password-file`` / ``MIGMETER_KAFKA_SASL_PASSWORD_FILE``), never from a flag
    (flags show in ``ps``). Returns {} for a plaintext broker.
    """
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    protocol = security_protocol or env.get(ENV_SECURITY_PROTOCOL)
    if protocol:
        protocol = protocol.upper()
        if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ConfigError(f"Kafka security protocol {protocol!r} is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
        out["security_protocol"] = protocol
    cafile = ssl_cafile or env.get(ENV_SSL_CAFILE)
    certfile = ssl_certfile or env.get(ENV_SSL_CERTFILE)
    keyfile = ssl_keyfile or env.get(ENV_SSL_KEYFILE)
    for name, path in (("ssl_cafile", cafile), ("ssl_certfile", certfile), ("ssl_keyfile", keyfile)):
        if path:
            if not Path(path).is_file():
                raise ConfigError(f"{name.replace('_', ' ')} {path} does not exist")
            out[name] = path
    mechanism = sasl_mechanism or env.get(ENV_SASL_MECHANISM)
    if mechanism:
        out["sasl_mechanism"] = mechanism.upper()
    username = env.get(ENV_SASL_USERNAME)
    password = env.get(ENV_SASL_PASSWORD)
    password_file = sasl_password_file or env.get(ENV_SASL_PASSWORD_FILE)
    if password_file:
        try:
            password = Path(password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the SASL password file {password_file}: {exc.strerror}") from None
    if username:
        out["sasl_plain_username"] = username
    if password:
        out["sasl_plain_password"] = password
    if (username or password) and "sasl_mechanism" not in out:
        out["sasl_mechanism"] = "PLAIN"
    if "sasl_mechanism" in out and out["sasl_mechanism"] in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        if not (username and password):
            raise ConfigError(
                f"SASL {out['sasl_mechanism']} needs {ENV_SASL_USERNAME} and {ENV_SASL_PASSWORD} "
                f"(or a password file)"
            )
    return out


def describe_security(security: Mapping[str, Any]) -> str:
    """A log-safe summary: the settings' names and non-secret values."""
    return json.dumps({k: ("***" if k in _SECRET_KEYS else v) for k, v in sorted(security.items())})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The Kafka security flags of every command that talks to Kafka (collect, process): one copy."""
    g = parser.add_argument_group("Kafka security (TLS/SASL; credentials only from the environment or a file)")
    g.add_argument(
        "--security-protocol", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"), default=None,
        help=f"(env {ENV_SECURITY_PROTOCOL}; default PLAINTEXT)",
    )
    g.add_argument(
        "--sasl-mechanism", default=None, metavar="NAME",
        help=f"PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, ... (env {ENV_SASL_MECHANISM}); user and password from "
        f"env {ENV_SASL_USERNAME} and {ENV_SASL_PASSWORD}",
    )
    g.add_argument(
        "--sasl-password-file", default=None, metavar="PATH",
        help=f"read the SASL password from this file instead (env {ENV_SASL_PASSWORD_FILE})",
    )
    g.add_argument("--ssl-cafile", default=None, metavar="PATH", help=f"CA bundle for TLS (env {ENV_SSL_CAFILE})")
    g.add_argument("--ssl-certfile", default=None, metavar="PATH",
                   help=f"client certificate for mutual TLS (env {ENV_SSL_CERTFILE})")
    g.add_argument("--ssl-keyfile", default=None, metavar="PATH",
                   help=f"client key for mutual TLS (env {ENV_SSL_KEYFILE})")


def from_args(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`kafka_security` from the flags of :func:`add_arguments`, then the environment."""
    return kafka_security(
        security_protocol=args.security_protocol, sasl_mechanism=args.sasl_mechanism,
        ssl_cafile=args.ssl_cafile, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
        sasl_password_file=args.sasl_password_file,
    )

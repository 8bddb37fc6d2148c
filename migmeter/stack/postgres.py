"""PostgreSQL + TimescaleDB for the local stack: a private ``initdb`` cluster on loopback.

:class:`PostgresCluster` runs as an unprivileged OS user (PostgreSQL refuses root), on its own
port and home folder, so a test can run a PRIVATE database to stop and restart. Its superuser
role is reachable only over a private unix socket by ``peer`` authentication (:func:`pg_hba`,
:func:`pg_ident`); every other login is scram-sha-256.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from migmeter import settings
from migmeter.errors import StackError
from migmeter.stack.processes import (
    STOP_TIMEOUT_S,
    apt_install,
    is_root,
    log_tail,
    ServiceProcess,
    pid_alive,
    port_open,
    progress,
    require_tool,
    run_step,
)
from migmeter.stack.timescaledb import ensure_timescaledb

__all__ = [
    "PG_MAJOR",
    "PG_BIN",
    "PG_IDENT_MAP",
    "PG_START_TIMEOUT_S",
    "SOCKET_DIR_MODE",
    "pg_hba",
    "pg_ident",
    "PostgresTls",
    "PostgresCluster",
]

PG_MAJOR = 15
PG_BIN = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
# The unix socket directory belongs to the server user alone: no other OS user can reach the
# socket at all (defence in depth on top of peer authentication in pg_hba.conf).
SOCKET_DIR_MODE = 0o700
# pg_ident.conf map naming the OS users allowed to log in as the server's superuser role.
PG_IDENT_MAP = "migmeter"
# How long the server may take to become ready.
PG_START_TIMEOUT_S = 60.0


def _server_user() -> str:
    """The OS user PostgreSQL runs as. Root (what CI runs as) is refused by PostgreSQL, so
    root uses the Debian ``postgres`` user, creating a ``migmeter`` system user if absent."""
    if not is_root():
        return pwd.getpwuid(os.geteuid()).pw_name
    for name in ("postgres", settings.LOCAL_PG_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    require_tool("useradd", "apt-get install -y passwd")
    progress(f"creating system user {settings.LOCAL_PG_USER!r} to run PostgreSQL (it refuses root)")
    run_step(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
              settings.LOCAL_PG_USER], "useradd")
    return settings.LOCAL_PG_USER


def _invoking_user() -> str:
    """The OS user running ``stack up`` (root in CI): it bootstraps roles over the socket."""
    return pwd.getpwuid(os.geteuid()).pw_name


def pg_hba(os_user: str) -> str:
    """``pg_hba.conf`` of a local-stack cluster (rewritten on every start).

    The server's own role (a superuser) is reachable over the unix socket only by ``peer``
    authentication through the ``migmeter`` ident map, never ``trust``: another OS user on the
    machine must not become database superuser. Every other login is scram-sha-256."""
    return (
        "# written by migmeter/stack/postgres.py on every start: the server role over the socket by peer\n"
        f"# (ident map {PG_IDENT_MAP!r}), everything else scram-sha-256; TCP on loopback only\n"
        f"local all {os_user} peer map={PG_IDENT_MAP}\n"
        "local all all scram-sha-256\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
        "host all all ::1/128 scram-sha-256\n"
    )


def pg_ident(os_user: str, invoker: str) -> str:
    """``pg_ident.conf``: the server user and the stack's invoker log in as the server role."""
    lines = [f"{PG_IDENT_MAP} {os_user} {os_user}\n"]
    if invoker != os_user:
        lines.append(f"{PG_IDENT_MAP} {invoker} {os_user}\n")
    return "# written by migmeter/stack/postgres.py on every start\n" + "".join(lines)


@dataclass(frozen=True)
class PostgresTls:
    """``ssl = on`` for a :class:`PostgresCluster`: the server's PEM certificate (chain) and
    unencrypted key. Copied into the data directory on every start (the server wants its key
    0600 and its own), so a restart picks up a replaced certificate."""

    certfile: Path
    keyfile: Path


class PostgresCluster:
    """A private PostgreSQL cluster with TimescaleDB: ``initdb`` into ``home/data``, served on
    127.0.0.1:``port`` only, with role and database ``migmeter`` (password in ``home/password``).

    The owner role is SUPERUSER: migrations ``CREATE EXTENSION timescaledb`` (not a trusted
    extension) and create roles, and tests create a database per module. Local stack only.
    """

    def __init__(
        self,
        home: Path,
        port: int = settings.LOCAL_PG_PORT,
        *,
        user: str = settings.LOCAL_PG_USER,
        database: str = settings.LOCAL_PG_DATABASE,
        tls: PostgresTls | None = None,
    ) -> None:
        self.home = Path(home)
        self.port = port
        self.user = user
        self.database = database
        self.tls = tls
        self._service = ServiceProcess(f"PostgreSQL {PG_MAJOR} on 127.0.0.1:{port}", self.pid_file, self.log_path,
                                       "postgres")

    def __repr__(self) -> str:
        return f"PostgresCluster(127.0.0.1:{self.port}, home={str(self.home)!r})"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_path(self) -> Path:
        return self.home / "postgresql.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "postgres.pid"

    @property
    def password_file(self) -> Path:
        return self.home / "password"

    def password(self) -> str:
        """This cluster's owner password, created (0600) on first use."""
        if not self.password_file.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24) + "\n")
        return self.password_file.read_text().strip()

    def url(self, database: str | None = None) -> str:
        """Connection URL of the owner role over TCP (contains the password: never log it)."""
        return (f"postgresql://{self.user}:{self.password()}@127.0.0.1:{self.port}/"
                f"{database or self.database}")

    # install
    def ensure_installed(self) -> None:
        """PostgreSQL 15 server binaries and the TimescaleDB extension, installed if missing."""
        if not (PG_BIN / "postgres").exists() or not (PG_BIN / "initdb").exists():
            apt_install([f"postgresql-{PG_MAJOR}"], f"PostgreSQL {PG_MAJOR} server")
        ensure_timescaledb(PG_BIN, PG_MAJOR, settings.state_dir() / "timescaledb")

    # lifecycle
    def pid(self) -> int | None:
        """The postmaster's pid while it runs, else None (see :class:`ServiceProcess`)."""
        return self._service.pid()

    def is_running(self) -> bool:
        return self.pid() is not None

    def _superuser_conninfo(self, dbname: str = "postgres") -> str:
        # Over the private unix socket (0700, server user), peer-authenticated: only the
        # server's OS user and the one running the stack (root in CI) map to this role.
        return psycopg.conninfo.make_conninfo(
            host=str(self.socket_dir), port=self.port, user=self._bootstrap_user(), dbname=dbname,
            connect_timeout=3,
        )

    def _bootstrap_user(self) -> str:
        with contextlib.suppress(OSError):
            return (self.home / "superuser").read_text().strip()
        return "postgres"

    def is_ready(self, timeout_s: float = 3.0) -> bool:
        """True when the owner role can log in over TCP and TimescaleDB is installed."""
        try:
            with psycopg.connect(self.url(), connect_timeout=max(1, int(timeout_s))) as conn:
                row = conn.execute(
                    "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
                ).fetchone()
                return row is not None
        except psycopg.Error:
            return False

    def _init(self, os_user: str) -> None:
        pw = pwd.getpwnam(os_user)
        for d in (self.home, self.data_dir, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
        if is_root():
            for d in (self.data_dir, self.socket_dir):
                os.chown(d, pw.pw_uid, pw.pw_gid)
            os.chmod(self.data_dir, 0o700)
            self._check_reachable(os_user)
        # Every start, so a state dir made by older code (world-writable socket dir) is fixed:
        # no other OS user may even reach the socket.
        os.chmod(self.socket_dir, SOCKET_DIR_MODE)
        if (self.data_dir / "PG_VERSION").exists():
            return
        progress(f"initdb: new PostgreSQL {PG_MAJOR} cluster in {self.data_dir} (server user {os_user})")
        run_step(
            [str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", os_user, "-E", "UTF8",
             "--locale=C.UTF-8", "--auth-local=peer", "--auth-host=scram-sha-256"],
            "initdb", user=os_user if is_root() else None,
            env=dict(os.environ, LC_ALL="C.UTF-8"),
        )
        (self.home / "superuser").write_text(os_user + "\n")
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write("\n# migmeter: local-stack settings, rewritten on every start\ninclude 'migmeter.conf'\n")

    def _check_reachable(self, os_user: str) -> None:
        """The server user must be able to reach its data dir through every parent folder."""
        pw = pwd.getpwnam(os_user)
        groups = {g.gr_gid for g in grp.getgrall() if os_user in g.gr_mem} | {pw.pw_gid}
        for parent in self.home.resolve().parents:
            st = parent.stat()
            if st.st_uid == pw.pw_uid:
                ok = bool(st.st_mode & stat.S_IXUSR)
            elif st.st_gid in groups:
                ok = bool(st.st_mode & stat.S_IXGRP)
            else:
                ok = bool(st.st_mode & stat.S_IXOTH)
            if not ok:
                raise StackError(
                    f"PostgreSQL runs as {os_user!r}, who cannot enter {parent}; put the state dir "
                    f"elsewhere (export {settings.ENV_STATE_DIR}=/var/tmp/migmeter-stack) or "
                    f"run: chmod o+x {parent}"
                )

    def _write_config(self, os_user: str) -> None:
        conf = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "unix_socket_permissions": f"0{SOCKET_DIR_MODE:o}",
            "shared_preload_libraries": "'timescaledb'",
            "timescaledb.telemetry_level": "off",
            "password_encryption": "'scram-sha-256'",
            # Tests create a database per module and many connections; small machines.
            "max_connections": "200",
            "shared_buffers": "128MB",
            "fsync": "on",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        conf.update(self._tls_conf(os_user))
        target = self.data_dir / "migmeter.conf"
        target.write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))
        (self.data_dir / "pg_hba.conf").write_text(pg_hba(os_user))
        (self.data_dir / "pg_ident.conf").write_text(pg_ident(os_user, _invoking_user()))
        if is_root():
            pw = pwd.getpwnam(os_user)
            for p in (target, self.data_dir / "pg_hba.conf", self.data_dir / "pg_ident.conf"):
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def _tls_conf(self, os_user: str) -> dict[str, str]:
        """``ssl = on`` with this start's certificate and key, copied in for the server user."""
        if self.tls is None:
            return {"ssl": "off"}
        for src, name, mode in ((self.tls.certfile, "server.crt", 0o644), (self.tls.keyfile, "server.key", 0o600)):
            dest = self.data_dir / name
            dest.unlink(missing_ok=True)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(Path(src).read_bytes())
            if is_root():
                pw = pwd.getpwnam(os_user)
                os.chown(dest, pw.pw_uid, pw.pw_gid)
        return {"ssl": "on", "ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'"}

    def start(self, wait: bool = True, timeout_s: float = PG_START_TIMEOUT_S) -> None:
        """Init (first time), configure and start the cluster; create role, database and
        extension. Idempotent."""
        if self.is_running():
            if wait:
                self.wait_ready(timeout_s)
            return
        stale = self.data_dir / "postmaster.pid"
        if port_open(self.port):
            raise StackError(f"port {self.port} on 127.0.0.1 is taken by another process; "
                             f"stop it or pick another port (home {self.home})")
        self.ensure_installed()
        os_user = _server_user()
        self._init(os_user)
        self._write_config(os_user)
        if stale.exists():
            with contextlib.suppress(ValueError, OSError, IndexError):
                if not pid_alive(int(stale.read_text().split()[0])):
                    stale.unlink()
        pid = self._service.spawn([str(PG_BIN / "postgres"), "-D", str(self.data_dir)], cwd=self.home,
                                  user=os_user if is_root() else None)
        progress(f"PostgreSQL {PG_MAJOR} starting on 127.0.0.1:{self.port} (pid {pid}, log {self.log_path})")
        if wait:
            self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = PG_START_TIMEOUT_S) -> None:
        """Wait for the server, then make sure role, database and extension exist."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.is_running():
                raise StackError(self._service.exit_report())
            try:
                with psycopg.connect(self._superuser_conninfo(), autocommit=True):
                    break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise StackError(f"PostgreSQL on port {self.port} not ready after {timeout_s:.0f} s; "
                                     f"last lines of {self.log_path}:\n{log_tail(self.log_path)}") from None
                time.sleep(0.2)
        self._bootstrap()
        if not self.is_ready():
            raise StackError(f"PostgreSQL on port {self.port} runs but the {self.user!r} role cannot "
                             f"log in or TimescaleDB is missing; see {self.log_path}")
        progress(f"PostgreSQL + TimescaleDB ready on 127.0.0.1:{self.port}")

    def _bootstrap(self) -> None:
        """Owner role (password from the 0600 file), database and extension; idempotent."""
        password = self.password()
        with psycopg.connect(self._superuser_conninfo(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.user,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            # Utility statements take no bind parameters: quote the password as a literal.
            conn.execute(
                sql.SQL("{} ROLE {} WITH LOGIN SUPERUSER PASSWORD {}").format(
                    sql.SQL(verb), sql.Identifier(self.user), sql.Literal(password)
                )
            )
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(self.database), sql.Identifier(self.user)))
        with psycopg.connect(self._superuser_conninfo(self.database), autocommit=True) as conn:
            conn.execute("SET client_min_messages = warning")
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Fast shutdown (SIGINT: disconnect clients, checkpoint), wait, then SIGKILL; returns once
        the server and its backends are gone and the port is closed."""
        pid = self.pid()
        if pid is not None:
            progress(f"stopping PostgreSQL on port {self.port} (pid {pid})")
        self._service.halt(signal.SIGINT, timeout_s, (self.port,))

    def versions(self) -> dict[str, str]:
        """Server version, TimescaleDB version and license (empty when unreachable)."""
        try:
            with psycopg.connect(self.url(), connect_timeout=3) as conn:
                server = conn.execute("SHOW server_version").fetchone()
                ext = conn.execute(
                    "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
                lic = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
        except psycopg.Error:
            return {}
        return {
            "postgresql": str(server[0]) if server else "?",
            "timescaledb": str(ext[0]) if ext else "missing",
            "license": str(lic[0]) if lic and lic[0] else "?",
        }

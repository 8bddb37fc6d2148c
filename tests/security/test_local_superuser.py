"""No OS user but the server's own (and the one running the stack) becomes database superuser.

Issue 18 item 5: the local stack's ``pg_hba.conf`` had ``local all postgres trust`` and the
socket directory was reachable by everyone, so ``su nobody -c 'psql -h <socket dir> -U
postgres'`` got ``usesuper = t``. These tests run a PRIVATE cluster on its own port (the
shared stack is never restarted) and try, as the unprivileged ``nobody``:

- the socket itself (its directory must be 0700, owned by the server user);
- the socket with the directory opened up (peer authentication must refuse ``nobody``);
- TCP without a password (scram-sha-256 must refuse).

A state folder written by the old code (``trust``, an open socket directory) is repaired by
the next start, which is how ``migmeter stack up`` fixes an existing ``.stack``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from migmeter import stack
from tests.fix_faults import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ATTACKER = "nobody"
# psql as another OS user: a bounded run (a hang would be a bug too, not a pass).
_PSQL_TIMEOUT_S = 60


def test_pg_hba_never_trusts_and_peer_maps_only_the_server_and_invoker() -> None:
    hba = stack.pg_hba("postgres")
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert all("trust" not in r for r in rules), hba
    assert ["local", "all", "postgres", "peer", f"map={stack.PG_IDENT_MAP}"] in rules
    ident = [line.split() for line in stack.pg_ident("postgres", "root").splitlines() if not line.startswith("#")]
    # Exactly two mappings: postgres -> postgres and root -> postgres; nobody is not mapped.
    assert ident == [[stack.PG_IDENT_MAP, "postgres", "postgres"], [stack.PG_IDENT_MAP, "root", "postgres"]]
    assert stack.pg_ident("alice", "alice").count("\n") == 2  # comment + one mapping


def _as_attacker(*psql_args: str) -> subprocess.CompletedProcess[str]:
    """``psql`` run by the unprivileged OS user, never prompting for a password."""
    psql = shutil.which("psql") or str(stack.PG_BIN / "psql")
    return subprocess.run(
        [shutil.which("runuser") or "/usr/sbin/runuser", "-u", ATTACKER, "--", psql, "-w", "-X", "-At", *psql_args,
         "-c", "SELECT usesuper FROM pg_user WHERE usename = current_user"],
        capture_output=True, text=True, timeout=_PSQL_TIMEOUT_S, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        cwd="/",
    )


def _assert_attacker_refused(cluster: stack.PostgresCluster, server_user: str) -> None:
    socket_dir = str(cluster.socket_dir)
    st = cluster.socket_dir.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700, oct(st.st_mode)
    assert st.st_uid == pwd.getpwnam(server_user).pw_uid

    # 1. The socket is out of reach: the directory is private to the server user.
    res = _as_attacker("-h", socket_dir, "-p", str(cluster.port), "-U", server_user, "-d", "postgres")
    assert res.returncode != 0 and "t" not in res.stdout.split(), res
    assert "Permission denied" in res.stderr, res.stderr

    # 2. Even with the directory opened up, peer authentication refuses another OS user.
    os.chmod(cluster.socket_dir, 0o711)
    sock = cluster.socket_dir / f".s.PGSQL.{cluster.port}"
    old_sock_mode = stat.S_IMODE(sock.stat().st_mode)
    os.chmod(sock, 0o777)
    try:
        res = _as_attacker("-h", socket_dir, "-p", str(cluster.port), "-U", server_user, "-d", "postgres")
    finally:
        os.chmod(sock, old_sock_mode)
        os.chmod(cluster.socket_dir, stack.SOCKET_DIR_MODE)
    assert res.returncode != 0 and res.stdout == "", res
    assert "Peer authentication failed" in res.stderr or "no pg_hba.conf entry" in res.stderr, res.stderr

    # 3. TCP without the password: scram-sha-256 asks for one, and there is none.
    res = _as_attacker("-h", "127.0.0.1", "-p", str(cluster.port), "-U", server_user, "-d", "postgres")
    assert res.returncode != 0 and res.stdout == "", res
    assert "password" in res.stderr, res.stderr

    # The stack itself still bootstraps over the socket (its invoker is mapped) and the
    # owner role still logs in over TCP with its password.
    with psycopg.connect(cluster._superuser_conninfo()) as conn:
        assert conn.execute("SELECT usesuper FROM pg_user WHERE usename = current_user").fetchone() == (True,)
    assert cluster.is_ready()


@pytest.fixture
def cluster(admin_url: str, private_home: Path) -> Iterator[stack.PostgresCluster]:
    if os.geteuid() != 0:
        pytest.fail("this test needs root: it runs psql as another OS user with runuser")
    c = stack.PostgresCluster(private_home / "pg", port=free_port())
    try:
        yield c
    finally:
        c.stop()


def test_another_os_user_cannot_become_superuser(cluster: stack.PostgresCluster) -> None:
    cluster.start()
    server_user = (cluster.home / "superuser").read_text().strip()
    assert server_user != ATTACKER
    _assert_attacker_refused(cluster, server_user)


def test_a_state_dir_from_the_old_code_is_repaired_on_start(cluster: stack.PostgresCluster) -> None:
    cluster.start()
    server_user = (cluster.home / "superuser").read_text().strip()
    cluster.stop()
    # What the old code left behind: trust for the server user, an open socket directory.
    hba = cluster.data_dir / "pg_hba.conf"
    hba.write_text(f"local all {server_user} trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
    (cluster.data_dir / "pg_ident.conf").write_text("")
    os.chmod(cluster.socket_dir, 0o777)

    cluster.start()
    assert "trust" not in hba.read_text()
    _assert_attacker_refused(cluster, server_user)

"""TimescaleDB for the local stack's PostgreSQL, built from Debian's source package when missing.

Debian 12 ships no TimescaleDB package; Debian 13 (trixie) ships its source (the Apache-only
build), which builds against PostgreSQL 15 in about a minute. The source is fetched through a
private apt configuration, so the machine's own apt sources and lists are left as they are.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from migmeter.errors import StackError
from migmeter.stack.processes import apt_install, is_root, progress, require_tool, run_step

__all__ = ["ensure_timescaledb"]

# Debian 13 ships TimescaleDB's source (Apache-only build); it builds against PG 15 in seconds.
_TIMESCALEDB_SUITE = "trixie"
_TIMESCALEDB_SOURCE_PACKAGE = "timescaledb"


def ensure_timescaledb(pg_bin: Path, pg_major: int, cache: Path) -> None:
    """The TimescaleDB extension for the PostgreSQL whose binaries are in ``pg_bin``, built and
    installed unless it is there already."""
    sharedir = Path(_pg_config(pg_bin, "--sharedir"))
    libdir = Path(_pg_config(pg_bin, "--pkglibdir"))
    if (sharedir / "extension" / "timescaledb.control").exists() and (libdir / "timescaledb.so").exists():
        return
    _build_and_install(pg_bin, pg_major, cache)


def _pg_config(pg_bin: Path, flag: str) -> str:
    return run_step([str(pg_bin / "pg_config"), flag], f"pg_config {flag}").stdout.strip()


def _build_and_install(pg_bin: Path, pg_major: int, cache: Path) -> None:
    """Build TimescaleDB (Apache-only) from Debian trixie's source package and install it
    into this machine's PostgreSQL; the unpacked, built tree is cached under ``cache`` so a
    reinstall is just ``make install``. See shared/notes/timescaledb-build.md."""
    if not is_root():
        raise StackError(
            f"TimescaleDB is not installed for PostgreSQL {pg_major} and installing it needs root; run "
            "'sudo migmeter stack up' once (it builds TimescaleDB from Debian's source package)")
    includedir = Path(_pg_config(pg_bin, "--includedir-server"))
    if not (includedir / "postgres.h").exists() or shutil.which("cmake") is None:
        apt_install([f"postgresql-server-dev-{pg_major}", "cmake", "gcc", "make", "libc6-dev"],
                    "building TimescaleDB")
    cache.mkdir(parents=True, exist_ok=True)
    built = sorted(cache.glob("timescaledb-*/build/Makefile"))
    if not built:
        tarballs = sorted(cache.glob("timescaledb_*.orig.tar.*"))
        if not tarballs:
            _download_timescaledb_source(cache)
            tarballs = sorted(cache.glob("timescaledb_*.orig.tar.*"))
            if not tarballs:
                raise StackError(f"apt-get source timescaledb left no orig tarball in {cache}")
        progress(f"unpacking {tarballs[-1].name}")
        run_step(["tar", "xf", str(tarballs[-1])], "unpacking TimescaleDB source", cwd=cache)
        srcs = sorted(p for p in cache.glob("timescaledb-*") if p.is_dir())
        if not srcs:
            raise StackError(f"no timescaledb-* folder after unpacking in {cache}")
        src = srcs[-1]
        progress(f"building TimescaleDB (Apache-only) in {src} (about a minute on 2 cores) ...")
        run_step(["./bootstrap", "-DAPACHE_ONLY=1", "-DREGRESS_CHECKS=OFF", "-DTAP_CHECKS=OFF",
                  "-DWARNINGS_AS_ERRORS=OFF", f"-DPG_CONFIG={pg_bin / 'pg_config'}"],
                 "TimescaleDB bootstrap (cmake)", cwd=src)
        run_step(["make", "-C", "build", f"-j{os.cpu_count() or 2}"], "building TimescaleDB", cwd=src)
        built = [src / "build" / "Makefile"]
    src = built[-1].parent.parent
    progress(f"installing TimescaleDB from {src}")
    run_step(["make", "-C", "build", "install"], "installing TimescaleDB", cwd=src)


def _download_timescaledb_source(cache: Path) -> None:
    """``apt-get source --download-only`` from trixie through a private apt config, so the
    machine's own sources and lists are left as they are."""
    require_tool("apt-get", "this step needs Debian's apt; install TimescaleDB for PostgreSQL 15 by hand")
    apt = cache / "apt"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = apt / "trixie-src.list"
    sources.write_text(
        "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        f"{_apt_debian_mirror()} {_TIMESCALEDB_SUITE} main\n"
    )
    opts = [f"-oDir::Etc::SourceList={sources}", "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={apt / 'lists'}", f"-oDir::Cache::Archives={apt / 'archives'}"]
    progress(f"downloading the {_TIMESCALEDB_SUITE} '{_TIMESCALEDB_SOURCE_PACKAGE}' source package with apt-get ...")
    run_step(["apt-get", *opts, "update"], "apt-get update (trixie deb-src)")
    run_step(["apt-get", *opts, "source", "--download-only", _TIMESCALEDB_SOURCE_PACKAGE],
             "apt-get source timescaledb", cwd=cache)


def _apt_debian_mirror() -> str:
    """The machine's own Debian mirror (from its apt sources), for the trixie deb-src line."""
    candidates: list[Path] = [Path("/etc/apt/sources.list")]
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    for path in candidates:
        with contextlib.suppress(OSError):
            for m in re.finditer(r"(https?://\S+?/debian)/?(?:\s|$)", path.read_text()):
                return m.group(1)
    return "http://deb.debian.org/debian"

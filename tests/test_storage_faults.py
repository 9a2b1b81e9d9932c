"""Storage faults: a full disk, a read-only store and a store locked by another process each end the run
with one clear error line and exit 2, and leave a store that opens and passes integrity_check."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from helpers import kodcode_command, kodcode_env, query
from kodcode.store.sqlite import Store
from test_soak import start_server

def run_as(args: list[str], preexec: Callable[[], None] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(kodcode_command("run", *args), capture_output=True, text=True, timeout=timeout,
                          env=kodcode_env(), preexec_fn=preexec)


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("kodcode: error:")]


def create_store(db: Path) -> None:
    async def create() -> None:
        store = await Store.open(db)
        await store.aclose()

    anyio.run(create)


def assert_store_sound(db: Path) -> None:
    async def check() -> str:
        store = await Store.open(db)
        try:
            return await store.integrity_check()
        finally:
            await store.aclose()

    assert anyio.run(check) == "ok"


@pytest.mark.parametrize("limit", [40_000, 300_000], ids=["while-migrating", "while-running"])
def test_full_disk_stops_with_one_line_and_a_sound_store(tmp_path: Path, limit: int) -> None:
    # RLIMIT_FSIZE makes every write past the limit fail with EFBIG, as ENOSPC would on a full disk; the
    # subprocess can set it without privileges. SIGXFSZ ignored: the write fails instead of killing it.
    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    _coder, server = start_server()
    db = tmp_path / "kc.db"
    try:
        result = run_as(["--base-url", server.base_url, "--db", str(db), "--target", "5", "--concurrency", "2"],
                        small_disk)
    finally:
        server.stop()
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result.stderr)
    assert str(db) in line and "disk full" in line.replace("disk is full", "disk full") and "resume" in line
    assert result.stderr.strip().splitlines()[-1] == line
    assert_store_sound(db)


_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def obey_file_modes() -> Callable[[], None] | None:
    """Root ignores file modes through CAP_DAC_OVERRIDE: drop it (and DAC_READ_SEARCH) from the bounding
    set before exec, so the kodcode process is root that read-only files stop. Needs no other user."""
    if os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    probe = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=lambda: _drop(libc))
    if probe.returncode != 0:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here, and root ignores read-only modes")
    return lambda: _drop(libc)


def _drop(libc: ctypes.CDLL) -> None:
    for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.parametrize("what", ["directory", "file"])
def test_read_only_store_is_refused_with_one_line(what: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    db = run_dir / "kc.db"
    create_store(db)
    read_only = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
    for path in run_dir.iterdir():
        path.chmod(read_only)
    run_dir.chmod(read_only | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | (0 if what == "directory" else 0o222))
    before = db.read_bytes()
    preexec = obey_file_modes()
    _coder, server = start_server()
    try:
        result = run_as(["--base-url", server.base_url, "--db", str(db)], preexec)
    finally:
        server.stop()
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert str(run_dir) in line and ("Permission denied" in line or "readonly" in line or "read-only" in line), line
    assert db.read_bytes() == before
    run_dir.chmod(0o755)
    for path in run_dir.iterdir():
        path.chmod(0o644)
    assert_store_sound(db)


HOLD_FLOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0); os.pwrite(fd, str(os.getpid()).encode(), 0)
print("held", flush=True)
time.sleep(120)
"""

HOLD_SQLITE = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("holder, lock_target, message", [
    ("kodcode lock file", ".lock", "is in use by another kodcode run (pid {pid})"),
    ("exclusive SQLite lock", "", "database is locked; another program holds a lock on the store"),
])
def test_locked_store_is_refused_with_one_line(holder: str, lock_target: str, message: str, tmp_path: Path) -> None:
    db = tmp_path / "kc.db"
    create_store(db)
    before = db.read_bytes()
    script = HOLD_FLOCK if lock_target else HOLD_SQLITE
    locker = subprocess.Popen([sys.executable, "-c", script, str(db) + lock_target], stdout=subprocess.PIPE, text=True)
    # A SQLite lock lets the store open (WAL readers never wait); the first write waits, then gives up.
    _coder, server = start_server()
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "held"
        result = run_as(["--base-url", server.base_url, "--db", str(db), "--target", "1"])
    finally:
        locker.kill()
        locker.wait()
        server.stop()
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result.stderr)
    assert result.stderr.strip().splitlines()[-1] == line
    assert message.format(pid=locker.pid) in line and str(db) in line, line
    assert db.read_bytes() == before
    assert query(db, "PRAGMA integrity_check")[0][0] == "ok"
    assert_store_sound(db)

"""Disjoint sandbox uid ranges for every kodcode process on one machine.

A fork server started as root drops to a uid of its own, so that RLIMIT_NPROC counts only that
server's processes. Two kodcode processes (two runs, a run and a `verify`) must therefore never hand
out the same uid: each claims a block of uids in a small table in the cache directory
(`$KODCODE_CACHE_DIR`, else `$XDG_CACHE_HOME/kodcode` or `~/.cache/kodcode`), under an fcntl lock,
and releases it at exit. A claim whose process is gone (killed -9, or its pid now belongs to another
process) is stale and taken over by the next claimant.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import structlog

from kodcode.errors import SandboxError

__all__ = ["UID_BASE", "UID_BLOCK", "UID_BLOCKS", "UidRange", "claim_uid_range", "process_uid_range",
           "release_uid_range", "uid_claims_dir"]

UID_BASE = 0x6B6F0000   # far above any distribution's regular and system uids
UID_BLOCK = 1024        # uids per process: servers recycle through them
UID_BLOCKS = 64         # concurrent kodcode processes per machine
_TABLE = "sandbox-uids.json"
_LOCK = "sandbox-uids.lock"
_log = structlog.get_logger("kodcode.sandbox")


@dataclass(frozen=True)
class UidRange:
    block: int
    start: int
    size: int
    claims_dir: Path | None    # None: not recorded anywhere (the cache directory was unusable)

    def uid(self, n: int) -> int:
        """The n-th uid of this range, wrapping around."""
        return self.start + n % self.size

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self.start <= uid < self.start + self.size


def uid_claims_dir() -> Path:
    override = os.environ.get("KODCODE_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative $XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "kodcode"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot; None if it does not exist. With the pid,
    this names one process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _alive(claim: object) -> bool:
    if not isinstance(claim, dict) or not isinstance(claim.get("pid"), int):
        return False
    started = _start_time(claim["pid"])
    return started is not None and started == claim.get("start")


class _Table:
    """The claims table, read and written only while the lock file is held."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __enter__(self) -> dict[str, dict]:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.directory / _LOCK, "a+")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            table = json.loads((self.directory / _TABLE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            table = {}
        self.table = table if isinstance(table, dict) else {}
        return self.table

    def __exit__(self, *exc_info: object) -> None:
        try:
            if exc_info[0] is None:
                tmp = self.directory / f"{_TABLE}.{os.getpid()}.tmp"
                tmp.write_text(json.dumps(self.table, sort_keys=True), encoding="utf-8")
                os.replace(tmp, self.directory / _TABLE)   # readers never see half a table
        finally:
            self._lock.close()   # closing releases the lock


def claim_uid_range(directory: Path | None = None, pid: int | None = None) -> UidRange:
    """Claim the lowest free block of uids for process `pid` (default: this one), reclaiming stale claims."""
    directory = directory or uid_claims_dir()
    pid = pid or os.getpid()
    with _Table(directory) as table:
        for key in [k for k, claim in table.items() if not _alive(claim)]:
            del table[key]
        free = [b for b in range(UID_BLOCKS) if str(b) not in table]
        if not free:
            raise SandboxError(f"all {UID_BLOCKS} sandbox uid blocks are claimed by live kodcode processes "
                               f"(see {directory / _TABLE})")
        block = free[0]
        table[str(block)] = {"pid": pid, "start": _start_time(pid)}
    return UidRange(block=block, start=UID_BASE + block * UID_BLOCK, size=UID_BLOCK, claims_dir=directory)


def release_uid_range(uids: UidRange, pid: int | None = None) -> None:
    """Give the block back, if this process still holds it."""
    if uids.claims_dir is None:
        return
    pid = pid or os.getpid()
    try:
        with _Table(uids.claims_dir) as table:
            claim = table.get(str(uids.block))
            if isinstance(claim, dict) and claim.get("pid") == pid:
                del table[str(uids.block)]
    except OSError:
        pass   # at exit; a claim left behind is reclaimed once this process is gone


_claimed: tuple[int, UidRange] | None = None
_claim_lock = threading.Lock()


def process_uid_range() -> UidRange:
    """This process's block, claimed on first use and released at exit (a forked child claims its own)."""
    global _claimed
    with _claim_lock:
        if _claimed is not None and _claimed[0] == os.getpid():
            return _claimed[1]
        try:
            uids = claim_uid_range()
        except OSError as exc:
            # Without a usable cache directory there is no table to claim in; a block derived from the
            # pid keeps concurrent processes apart in all but unlucky cases, and the log says so.
            block = os.getpid() % UID_BLOCKS
            uids = UidRange(block=block, start=UID_BASE + block * UID_BLOCK, size=UID_BLOCK, claims_dir=None)
            _log.warning("sandbox.uid_claim_failed", directory=str(uid_claims_dir()), error=str(exc),
                         detail=f"using uid block {block} unclaimed; concurrent kodcode processes may share uids")
        _claimed = (os.getpid(), uids)
        atexit.register(release_uid_range, uids, os.getpid())
        return uids

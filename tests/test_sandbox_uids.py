"""Concurrent kodcode processes get disjoint sandbox uids (real processes, real sandboxes, a real claims file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kodcode.sandbox import bwrap_available
from kodcode.sandbox.uids import UID_BASE, UID_BLOCK, _start_time, claim_uid_range, release_uid_range

needs_root_bwrap = pytest.mark.skipif(not bwrap_available() or os.geteuid() != 0,
                                      reason="servers drop to their own uids only when started as root with bwrap")

# One kodcode process: opens a pool, asks each server for its uid from inside the sandbox, reports
# them, and keeps the pool open until told to go, so that both processes hold their uids at once.
HOLDER = r'''
import json, sys, time
from pathlib import Path
import anyio
from kodcode.sandbox import open_sandbox

report, go = Path(sys.argv[1]), Path(sys.argv[2])
TESTS = "import os\n\ndef test_uid():\n    print('UID', os.getuid(), 'UID')\n"

async def main():
    async with open_sandbox(workers=3) as sb:
        uids = set()
        for _ in range(6):
            verdict = await sb.run("x = 1\n", TESTS)
            assert verdict.passed, verdict
            uids.add(int(verdict.output_tail.split("UID ")[1].split(" UID")[0]))
        report.write_text(json.dumps(sorted(uids)))
        while not go.exists():
            await anyio.sleep(0.05)

anyio.run(main)
'''


def _wait_for(paths: list[Path], procs: list[subprocess.Popen], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(p.exists() for p in paths):
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"holder exited early: {proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, "holders did not report"
        time.sleep(0.05)


@needs_root_bwrap
def test_two_concurrent_processes_get_disjoint_uids(tmp_path: Path) -> None:
    env = {**os.environ, "KODCODE_CACHE_DIR": str(tmp_path / "cache")}
    go = tmp_path / "go"
    reports = [tmp_path / "a.json", tmp_path / "b.json"]
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, str(r), str(go)], env=env, stderr=subprocess.PIPE,
                              text=True) for r in reports]
    try:
        _wait_for(reports, procs)
        claims = json.loads((tmp_path / "cache" / "sandbox-uids.json").read_text())
        assert sorted(c["pid"] for c in claims.values()) == sorted(p.pid for p in procs)
    finally:
        go.write_text("")
        for proc in procs:
            proc.wait(timeout=60)
    uids = [set(json.loads(r.read_text())) for r in reports]
    assert all(len(u) >= 2 for u in uids), uids          # several servers each, each with its own uid
    assert uids[0].isdisjoint(uids[1]), uids
    assert all(uid >= UID_BASE for u in uids for uid in u)
    assert [p.returncode for p in procs] == [0, 0]
    # Both released their blocks at exit.
    assert json.loads((tmp_path / "cache" / "sandbox-uids.json").read_text()) == {}


def test_a_claim_of_a_dead_process_is_reclaimed_and_a_live_one_is_not(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    table = tmp_path / "sandbox-uids.json"
    # Block 0 held by a process killed -9 (its claim stayed behind), block 1 by a live one.
    table.write_text(json.dumps({"0": {"pid": dead.pid, "start": "1"},
                                 "1": {"pid": os.getppid(), "start": _start_time(os.getppid())}}))
    mine = claim_uid_range(tmp_path)
    assert mine.block == 0 and mine.start == UID_BASE
    other = claim_uid_range(tmp_path)          # this process claiming again gets the next free block
    assert other.block == 2 and other.start == UID_BASE + 2 * UID_BLOCK
    claims = json.loads(table.read_text())
    assert claims["0"]["pid"] == os.getpid() and claims["1"]["pid"] == os.getppid()
    release_uid_range(mine)
    release_uid_range(other)
    assert set(json.loads(table.read_text())) == {"1"}

"""Resource hygiene: however a run ends (done, SIGKILL, SIGTERM, a fatal store error) it leaves no process
behind (sandbox fork servers: bwrap and their python) and nothing in its temporary directory.

kodcode runs under a small launcher that is a child subreaper (PR_SET_CHILD_SUBREAPER): whatever kodcode
started and orphaned is re-parented to the launcher, which reports the survivors, then kills them."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import kodcode_command, kodcode_env
from test_soak import RUN_ARGS, start_server

LAUNCHER = r"""
import ctypes, json, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER
child = subprocess.Popen(sys.argv[1:])
print(child.pid, flush=True)
rc = child.wait()

def descendants():
    me, found = os.getpid(), []
    parents = {}
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            parents[int(name)] = (int(fields[1]), fields[0])
        except (OSError, ValueError, IndexError):
            pass
    frontier = {me}
    while frontier:
        kids = {pid for pid, (ppid, state) in parents.items() if ppid in frontier and state != "Z"}
        found += kids
        frontier = kids
    return found

def reap():
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return

left = []
deadline = time.monotonic() + 5     # processes that are already dying get a moment to go
while time.monotonic() < deadline:
    reap()
    left = descendants()
    if not left:
        break
    time.sleep(0.1)
names = []
for pid in left:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            names.append(handle.read().replace(b"\0", b" ").decode(errors="replace")[:120])
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
time.sleep(0.2)
reap()
print(json.dumps({"rc": rc, "left": names}), flush=True)
"""


def small_disk() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))


@pytest.mark.parametrize("ending", ["completed", "sigkill", "sigterm", "store_error"])
def test_no_process_or_temp_file_outlives_a_run(ending: str, tmp_path: Path) -> None:
    coder, server = start_server()
    temp = tmp_path / "tmp"
    temp.mkdir()
    db = tmp_path / "run" / "kc.db"
    env = dict(kodcode_env(), TMPDIR=str(temp))
    args = ["--base-url", server.base_url, "--db", str(db), "--target", "2" if ending == "completed" else "5", *RUN_ARGS]
    coder.arm(4)
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, *kodcode_command("run", *args)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=small_disk if ending == "store_error" else None)
    try:
        assert launcher.stdout is not None
        kodcode_pid = int(launcher.stdout.readline())
        if ending in ("sigkill", "sigterm"):
            assert coder.reached.wait(120), "the run never reached its LLM calls"
            os.kill(kodcode_pid, signal.SIGKILL if ending == "sigkill" else signal.SIGTERM)
        out, err = launcher.communicate(timeout=180)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        server.stop()
    report = json.loads(out.strip().splitlines()[-1])
    # A run stopped by a signal exits 128 + its number after its graceful stop (kodcode.app.launch).
    expected_rc = {"completed": 0, "sigkill": -signal.SIGKILL, "sigterm": 128 + signal.SIGTERM, "store_error": 2}[ending]
    assert report["rc"] == expected_rc, err[-3000:]
    assert report["left"] == [], report["left"]
    assert sorted(path.name for path in temp.iterdir()) == []

"""The lifeline reaps helper processes that a library started, even when their parent is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import pid_alive, wait_gone
from kodcode.models.lifeline import Lifeline, descendants, start_time

# A parent that starts a "library" helper (with a grandchild of its own) it cannot give PDEATHSIG to, hands
# the helper to a lifeline, then waits to be killed. Prints the helper's and grandchild's pids.
_PARENT = r"""
import subprocess, sys, time
from kodcode.models.lifeline import Lifeline, descendants
before = descendants()
helper = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; g = subprocess.Popen(['sleep', '300']); print(g.pid, flush=True); time.sleep(300)"],
    stdout=subprocess.PIPE, text=True, start_new_session=True)
grandchild = int(helper.stdout.readline())
lifeline = Lifeline()
lifeline.watch(descendants() - before)
print(helper.pid, grandchild, flush=True)
if sys.argv[1] == "close":
    lifeline.close()
    print("closed", flush=True)
time.sleep(300)
"""


def _start_parent(mode: str) -> tuple[subprocess.Popen[str], list[int]]:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, mode], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    assert parent.stdout is not None
    pids = [int(part) for part in parent.stdout.readline().split()]
    assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
    return parent, pids


def test_a_sigkilled_parent_takes_its_library_helpers_with_it() -> None:
    parent, pids = _start_parent("keep")
    try:
        # The helper runs in its own session: without the lifeline nothing would end it.
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert wait_gone(pids) == []
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_closing_the_lifeline_reaps_what_is_left_and_the_parent_lives_on() -> None:
    parent, pids = _start_parent("close")
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "closed"
        left = wait_gone(pids)
        assert left == [], [(pid, Path(f"/proc/{pid}/stat").read_text(), pids) for pid in left]
        assert parent.poll() is None
    finally:
        parent.kill()
        parent.wait()


def test_a_recycled_pid_is_never_killed() -> None:
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        lifeline = Lifeline()
        assert lifeline._process.stdin is not None
        # The watchdog is told of this pid with another start time, as if the kernel had reused the pid.
        lifeline._process.stdin.write(f"{bystander.pid} 1\n".encode())
        lifeline._process.stdin.flush()
        lifeline.close()
        time.sleep(0.2)
        assert bystander.poll() is None
        assert start_time(bystander.pid) is not None and bystander.pid in descendants()
    finally:
        bystander.kill()
        bystander.wait()

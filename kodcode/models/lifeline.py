"""Reaping helper processes that a library started, even when this process is SIGKILLed.

A child we start ourselves gets PR_SET_PDEATHSIG (see runtime/embedded.py). Processes a library starts
for us cannot: vLLM's EngineCore (a multiprocessing child on GPUs) keeps running after its parent is
killed with SIGKILL, holding the GPU's memory. A Lifeline is a small watchdog process reading a pipe
whose only writer is this process. We tell it the pids to reap; when the pipe reaches end-of-file,
because we closed it or because we died however we died, it SIGKILLs those pids and everything they
started. Each pid is named with its start time, so a pid the kernel has since given to another
process is never touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["Lifeline", "descendants", "reap", "start_time"]

# Self-contained on purpose (it repeats `descendants`): the watchdog must start in milliseconds and keep
# working whatever happens to the run's environment, so it imports nothing of kodcode.
_WATCHDOG = r"""
import os, signal, sys

def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None

def tree(pids):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = set(), list(pids)
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, []))
    return found

signal.signal(signal.SIGINT, signal.SIG_IGN)   # a Ctrl-C meant for the run must not end the watch early
watched = {}
for line in sys.stdin:
    parts = line.split()
    if len(parts) == 2:
        watched[int(parts[0])] = parts[1]
alive = [pid for pid, started in watched.items() if start_time(pid) == started]
for pid in tree(alive) - {os.getpid()}:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
"""


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return stat.rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def descendants(pid: int | None = None) -> set[int]:
    """Every live process below `pid` (default: this process)."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if stat[0] not in (b"Z", b"X"):
                children.setdefault(int(stat[1]), []).append(int(entry))
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def reap(pids: set[int]) -> None:
    """SIGKILL `pids` and everything below them now (e.g. what a failed engine start left behind)."""
    doomed = set(pids)
    for pid in pids:
        doomed |= descendants(pid)
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class Lifeline:
    """`watch(pids)` now; whatever of them is still alive when this process ends (or `close()`) is killed."""

    def __init__(self) -> None:
        # The watchdog must not share our process group: a terminal's Ctrl-C or a `kill -- -pgid` aimed at
        # the run would otherwise take it down before it could reap.
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-c", _WATCHDOG], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        self.watched: set[int] = set()

    def watch(self, pids: set[int] | list[int]) -> None:
        stdin = self._process.stdin
        if stdin is None or stdin.closed:
            return
        lines = []
        for pid in pids:
            started = start_time(pid)
            if started is not None and pid not in self.watched and pid != self._process.pid:
                self.watched.add(pid)
                lines.append(f"{pid} {started}\n")
        if lines:
            stdin.write("".join(lines).encode())
            stdin.flush()

    def close(self, timeout_s: float = 10.0) -> None:
        """Reap what is left now and wait for the watchdog; safe to call more than once."""
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

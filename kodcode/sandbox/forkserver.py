"""A pool of warm fork servers, each inside one long-lived bubblewrap sandbox, behind `Sandbox.run`.

Host and server speak JSON lines over the server's stdin/stdout. Every trusted decision (input
checks, tampering screen, expected tests, the verdict) is made here, never inside the sandbox.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import anyio
import structlog
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from kodcode.errors import SandboxError
from kodcode.sandbox.base import Limits, Verdict
from kodcode.sandbox.bwrap import BWRAP_ENV, bwrap_argv, bwrap_unavailable_reason
from kodcode.sandbox.screen import screen
from kodcode.sandbox.uids import process_uid_range
from kodcode.sandbox.verdict import PHASES, decide

__all__ = ["ForkServer", "ForkServerSandbox", "slow_phase"]

_SERVER_SOURCE = (Path(__file__).parent / "_server.py").read_text(encoding="utf-8")
_START_TIMEOUT_S = 60.0
_ANSWER_MARGIN_S = 15.0   # the server enforces wall_s itself; this covers its kill and cleanup
_ANSWER_CAP = 16 << 20
_CLOSE_GRACE_S = 2.0
# Each root-started server drops to its own uid, so RLIMIT_NPROC counts only that server's processes;
# the uids come from this process's claimed range, disjoint from other kodcode processes' (see uids).
_uid_counter = itertools.count()
_log = structlog.get_logger("kodcode.sandbox")

# What one tiny task may cost per phase before the pool start check calls it far too slow: about ten
# times what a 2-core VM takes (whole task ~15-40 ms), so only a machine-level problem trips it. fork
# and wait scale with the machine's own bare fork + exit (measured by each server at start).
_EXPECTED_PHASE_S = {"fork": 0.01, "setup": 0.02, "collection": 0.15, "run": 0.05, "coverage": 0.06,
                     "teardown": 0.03, "wait": 0.02, "cleanup": 0.02}
_FORK_SCALED = {"fork": 10.0, "wait": 10.0, "cleanup": 2.0}
_PROBE_SOLUTION = "def double(x):\n    return 2 * x\n"
_PROBE_TESTS = ("import pytest\nfrom solution import double\n\n\n"
                "@pytest.mark.parametrize('x', [0, 1, 2])\ndef test_double(x):\n    assert double(x) == x + x\n")


def slow_phase(phases: dict[str, float], fork_s: float = 0.0) -> tuple[str, float, float] | None:
    """The phase of one warm-up task that took far longer than expected, as (name, seconds, expected
    seconds); the worst by ratio, or None when every phase is within its budget."""
    worst: tuple[float, str, float, float] | None = None
    for name in PHASES:
        if name not in phases:
            continue
        expected = _EXPECTED_PHASE_S[name] + _FORK_SCALED.get(name, 0.0) * fork_s
        ratio = phases[name] / expected
        if ratio > 1.0 and (worst is None or ratio > worst[0]):
            worst = (ratio, name, phases[name], expected)
    return None if worst is None else worst[1:]


class ForkServer:
    """One fork server process; runs one task at a time."""

    def __init__(self, process: Process, stderr_file, scratch: str | None) -> None:
        self._process = process
        self._stderr = stderr_file
        self._scratch = scratch
        assert process.stdout is not None
        self._answers = BufferedByteReceiveStream(process.stdout)
        self.tasks_done = 0
        self.fork_s = 0.0   # the server's bare fork + exit + wait, measured when it started

    @classmethod
    async def start(cls, *, isolation: bool, tmpfs_mb: int) -> ForkServer:
        stderr_file = tempfile.TemporaryFile()
        scratch: str | None = None
        if isolation:
            privileged = os.geteuid() == 0
            uid = process_uid_range().uid(next(_uid_counter)) if privileged else os.getuid()
            gid = uid if privileged else os.getgid()
            argv = [*bwrap_argv(tmpfs_mb=tmpfs_mb, privileged=privileged), sys.executable, "-I", "-c",
                    _SERVER_SOURCE, str(uid), str(gid), "/tmp", "1"]
            env = None
        else:
            scratch = tempfile.mkdtemp(prefix="kodcode-sandbox-")
            argv = [sys.executable, "-I", "-c", _SERVER_SOURCE, str(os.getuid()), str(os.getgid()), scratch, "0"]
            env = dict(BWRAP_ENV, HOME=scratch)
        process = await anyio.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=stderr_file, env=env, cwd=scratch or "/",
                                           start_new_session=True)
        server = cls(process, stderr_file, scratch)
        try:
            with anyio.fail_after(_START_TIMEOUT_S):
                hello = json.loads(await server._answers.receive_until(b"\n", 4096))
            if not hello.get("ready"):
                raise SandboxError("fork server did not report ready")
            if isinstance(hello.get("fork_s"), (int, float)):
                server.fork_s = float(hello["fork_s"])
        except BaseException as exc:
            detail = server.stderr_tail()
            await server.aclose()
            if isinstance(exc, (anyio.get_cancelled_exc_class(), KeyboardInterrupt)):
                raise
            raise SandboxError(f"fork server failed to start: {detail or exc}") from exc
        return server

    def stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
        except (OSError, ValueError):
            return ""
        return lines[-1] if lines else ""

    @property
    def alive(self) -> bool:
        return self._process.returncode is None

    async def request(self, req: dict, timeout_s: float) -> dict | None:
        """Send one task; the server's answer, or None if it died, lied about the id or overran."""
        assert self._process.stdin is not None
        try:
            with anyio.move_on_after(timeout_s):
                await self._process.stdin.send(json.dumps(req).encode() + b"\n")
                line = await self._answers.receive_until(b"\n", _ANSWER_CAP)
                answer = json.loads(line)
                self.tasks_done += 1
                return answer if answer.get("id") == req["id"] else None
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                anyio.IncompleteRead, anyio.DelimiterNotFound, ValueError):
            return None
        return None

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._process.returncode is None:
                # A clean exit lets bwrap reap its sandbox; killing it orphans the sandbox's init.
                assert self._process.stdin is not None
                await self._process.stdin.aclose()
                with anyio.move_on_after(_CLOSE_GRACE_S):
                    await self._process.wait()
                if self._process.returncode is None:
                    try:
                        self._process.kill()
                    except ProcessLookupError:
                        pass
            await self._process.aclose()
            self._stderr.close()
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)


def _precheck(solution: str, tests: str, limits: Limits) -> tuple[str | None, tuple[str, ...]]:
    """A reason to reject before running anything, or None and the expected test names."""
    trees = []
    for label, text in (("solution", solution), ("tests", tests)):
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            return f"non-utf-8 {label}", ()
        if len(data) > limits.source_bytes:
            return f"{label} too large", ()
        try:
            trees.append(ast.parse(text, filename=f"{label}.py"))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return f"syntax error in {label}", ()
    result = screen(trees[0], trees[1])
    if result.reason is not None:
        return result.reason, ()
    if not result.expected:
        return "no tests", ()
    return None, result.expected


class ForkServerSandbox:
    """The Sandbox port over a pool of fork servers; `run` is safe to call from many tasks at once."""

    def __init__(self, *, workers: int | None = None, isolation: bool = True, limits: Limits | None = None,
                 recycle_after: int = 500) -> None:
        if isolation:
            reason = bwrap_unavailable_reason()
            if reason is not None:
                raise SandboxError(f"{reason}; pass isolation=False to run untrusted code unisolated")
        else:
            _log.warning("sandbox.unisolated", detail="running untrusted code WITHOUT bubblewrap isolation")
        # One more server than CPUs: while the host turns one server's answer into a verdict and sends
        # it the next task, that server's CPU runs another one instead of idling.
        self.workers = workers or max(1, os.cpu_count() or 1) + 1
        self.isolation = isolation
        self.limits = limits or Limits()
        self.recycle_after = recycle_after
        self._send, self._receive = anyio.create_memory_object_stream[ForkServer | None](self.workers)
        for _ in range(self.workers):
            self._send.send_nowait(None)
        self._servers: set[ForkServer] = set()
        self._ids = itertools.count(1)
        self._closed = False
        self.probe: Verdict | None = None   # the warm-up task run by start(), for its phases

    async def __aenter__(self) -> ForkServerSandbox:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Warm every worker now rather than on first use."""
        slots = [self._receive.receive_nowait() for _ in range(self.workers)]

        async def warm(index: int) -> None:
            if slots[index] is None:
                slots[index] = await self._spawn()

        try:
            async with anyio.create_task_group() as tg:
                for index in range(len(slots)):
                    tg.start_soon(warm, index)
        except* SandboxError as group:
            raise group.exceptions[0] from None
        finally:
            for slot in slots:
                self._send.send_nowait(slot)
        await self._check_speed(max((s.fork_s for s in slots if s is not None), default=0.0))

    async def _check_speed(self, fork_s: float, probes: int = 3) -> None:
        """Run a tiny trusted task a few times and warn, naming the phase, when it costs far more than expected.

        A machine where forked children fault slowly, or waiting wakes late, shows it here once
        instead of as a quietly slow run; the phases say where to look. Each phase counts at its
        fastest over the runs, so one preemption on a busy machine does not raise the alarm.
        """
        best: dict[str, float] = {}
        for _ in range(probes):
            self.probe = verdict = await self.run(_PROBE_SOLUTION, _PROBE_TESTS)
            if not verdict.passed:
                _log.warning("sandbox.probe_failed", reason=verdict.reason, output=verdict.output_tail[-300:])
                return
            for name, value in verdict.extra.get("phases", {}).items():
                best[name] = min(value, best.get(name, value))
        slow = slow_phase(best, fork_s)
        if slow is not None:
            name, took, expected = slow
            load = os.getloadavg()[0]
            _log.warning("sandbox.slow_task", phase=name, ms=round(took * 1000, 1),
                         expected_ms=round(expected * 1000, 1), fork_ms=round(fork_s * 1000, 2),
                         phases_ms={k: round(v * 1000, 1) for k, v in best.items() if k in PHASES},
                         page_faults=int(best.get("minflt", 0)), load=round(load, 2), cpus=os.cpu_count(),
                         detail=f"a warm-up task spent {took * 1000:.0f} ms in {name} at best of {probes} "
                                f"(expected under {expected * 1000:.0f} ms; load average {load:.1f} on "
                                f"{os.cpu_count()} CPUs); verification will be slow here")

    async def _spawn(self) -> ForkServer:
        server = await ForkServer.start(isolation=self.isolation, tmpfs_mb=self.limits.tmpfs_mb)
        self._servers.add(server)
        return server

    async def _retire(self, server: ForkServer) -> None:
        self._servers.discard(server)
        await server.aclose()

    async def run(self, solution: str, tests: str, limits: Limits | None = None) -> Verdict:
        if self._closed:
            raise SandboxError("sandbox is closed")
        limits = limits or self.limits
        started = time.monotonic()
        reason, expected = _precheck(solution, tests, limits)
        if reason is not None:
            return Verdict(passed=False, reason=reason, duration_s=time.monotonic() - started)
        nonce = secrets.token_hex(16)
        req = {"id": next(self._ids), "nonce": nonce, "solution": solution, "tests": tests,
               "limits": dataclasses.asdict(limits)}
        server = await self._receive.receive()
        try:
            if server is None or not server.alive:
                if server is not None:
                    await self._retire(server)
                server = await self._spawn()
            answer = await server.request(req, limits.wall_s + _ANSWER_MARGIN_S)
        except BaseException:
            if server is not None:
                await self._retire(server)
            self._send.send_nowait(None)
            raise
        if answer is None:
            await self._retire(server)
            self._send.send_nowait(None)
            return Verdict(passed=False, reason="crashed", duration_s=time.monotonic() - started,
                           extra={"server": "died or overran"})
        verdict = decide(expected, answer, nonce)
        anomaly = (verdict.reason in ("timeout", "crashed", "memory") or not server.alive or answer.get("dirty")
                   or verdict.extra.get("survivors", 0) > 0)
        if anomaly or server.tasks_done >= self.recycle_after:
            await self._retire(server)
            server = None
        self._send.send_nowait(server)
        return dataclasses.replace(verdict, duration_s=time.monotonic() - started)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            for server in list(self._servers):
                await self._retire(server)

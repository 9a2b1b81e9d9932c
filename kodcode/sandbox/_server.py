"""The fork server that runs inside the sandbox (stdlib + pytest + coverage only; no kodcode imports).

The host starts it as `python -I -c <this source> <uid> <gid> <scratch dir> <isolated 0|1>`. It pre-imports pytest and coverage,
drops to an unprivileged uid when started as root, then reads one JSON request per line on stdin
and answers one JSON line on stdout. Before its first request it runs pytest once on trusted files
(see warm_up), so children inherit warm caches, then parses, configures and starts one pytest session
for the task directory (see PreparedSession). Each task runs in a freshly forked child in a fresh
directory, which only collects and runs the tests; everything the child leaves behind (processes,
files in /tmp and /dev/shm) is destroyed afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import shutil
import signal
import sys
import time

__all__ = ["main"]

SCRATCH_DIRS: list[str] = []
ISOLATED = False
WINDOWS: CoverageWindows
PREPARED: PreparedSession
REPORT_CAP = 4 << 20
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36


def preimport() -> None:
    # Everything imported here is shared copy-on-write by every task's child.
    import collections, dataclasses, datetime, decimal, fractions, functools, heapq  # noqa: F401,E401
    import itertools, json, math, random, re, string, typing, bisect, statistics  # noqa: F401,E401
    import coverage  # noqa: F401
    import pytest  # noqa: F401
    import _pytest.config

    names = [f"_pytest.{name}" for name in _pytest.config.default_plugins]
    for name in [*names, "_pytest.assertion.rewrite", "_pytest.assertion.util", "_pytest.raises",
                 "_pytest.approx", "coverage.control", "coverage.collector", "coverage.parser",
                 "coverage.python", "coverage.results"]:
        try:
            __import__(name)
        except ImportError:
            pass
    import coverage.collector

    # Every Collector records inspect.stack() for debug messages only; that reads the source of every
    # frame and walks sys.modules: about 20 ms per task, more than the rest of starting coverage.
    if hasattr(coverage.collector, "short_stack"):
        coverage.collector.short_stack = lambda *args, **kwargs: ""


def drop_privileges(uid: int, gid: int) -> None:
    if os.getuid() == 0 and uid != 0:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    # A non-dumpable server cannot be ptraced, nor its /proc/<pid>/fd opened, by its children.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


class CoverageWindows:
    """Line coverage of solution.py, measured only while pytest may run its code.

    Its code runs only while the test module is collected (imported) and while a test's setup, call
    and teardown run; tracing pytest's own machinery in between would double a task's run time.
    One Coverage object is created (and its tracer's per-file cache filled) in the server, so each
    child only starts and stops it. Windows nest (collectors collect inside collectors).
    """

    def __init__(self, solution_path: str) -> None:
        import coverage

        self.path = solution_path
        self.cov = coverage.Coverage(data_file=None, include=[solution_path], config_file=False)
        self.depth = 0
        self.enabled = True
        self.spent = 0.0  # seconds inside cov.start()/cov.stop(), reported as the task's coverage phase

    def open(self) -> None:
        self.depth += 1
        if self.depth == 1 and self.enabled:
            t0 = time.monotonic()
            self.cov.start()
            self.spent += time.monotonic() - t0

    def close(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.enabled:
            t0 = time.monotonic()
            self.cov.stop()
            self.spent += time.monotonic() - t0

    def percent(self) -> float | None:
        if not self.enabled:
            return None
        try:
            _, statements, _, missing, _ = self.cov.analysis2(self.path)
        except Exception:
            return None
        return 100.0 * (len(statements) - len(missing)) / len(statements) if statements else 100.0


class Recorder:
    """A pytest plugin recording each test's outcome from two sources that must agree on "passed".

    pytest's own reports (setup, call and teardown, subtests, skips, xfail/xpass) are what pytest
    concluded, including for unittest.TestCase tests, whose runner catches failures and skips before
    any hook sees them. The exceptions seen passing through the phase hooks back that up for
    pytest-style tests: code that forges reports must also get past them (and past the static screen,
    the real defence, since code in this process can forge anything).
    """

    def __init__(self, fd: int, nonce: str, per_test_s: float, windows: CoverageWindows) -> None:
        self.fd = fd
        self.nonce = nonce
        self.per_test_s = per_test_s
        self.per_test_cpu_s: float | None = None
        self.windows = windows
        self.phases: dict[str, str | None] = {}
        self.reports: list[tuple[str, str, bool, str]] = []  # (when, outcome, was xfail, message)
        # (monotonic time, coverage seconds so far) at each phase boundary the child reports.
        self.marks: dict[str, tuple[float, float]] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = (time.monotonic(), self.windows.spent)

    def bind(self, fd: int, nonce: str, per_test_s: float, per_test_cpu_s: float | None = None) -> None:
        self.fd, self.nonce, self.per_test_s = fd, nonce, per_test_s
        self.per_test_cpu_s = per_test_cpu_s

    def emit(self, record: dict) -> None:
        record["nonce"] = self.nonce
        data = (json.dumps(record) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data):]

    def _phase(self, name: str):
        import pytest

        @pytest.hookimpl(wrapper=True, tryfirst=True)
        def hook(item):
            self.windows.open()
            try:
                result = yield
            except BaseException as exc:
                self.phases[name] = describe(exc)
                raise
            finally:
                self.windows.close()
            self.phases[name] = None
            return result

        return hook

    def pytest_configure(self, config) -> None:
        import pytest

        plugin = self

        class Phases:
            pytest_runtest_setup = plugin._phase("setup")
            pytest_runtest_teardown = plugin._phase("teardown")

            @pytest.hookimpl(wrapper=True, tryfirst=True)
            def pytest_runtest_call(self, item):
                plugin.windows.open()
                signal.setitimer(signal.ITIMER_REAL, plugin.per_test_s)
                if plugin.per_test_cpu_s:
                    # CPU time of this process (all threads), which load does not stretch. It fires
                    # again every half CPU second for code that catches the first one and spins on.
                    signal.setitimer(signal.ITIMER_PROF, plugin.per_test_cpu_s, 0.5)
                try:
                    result = yield
                except BaseException as exc:
                    plugin.phases["call"] = describe(exc)
                    raise
                finally:
                    signal.setitimer(signal.ITIMER_PROF, 0)
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    plugin.windows.close()
                plugin.phases["call"] = None
                return result

            @pytest.hookimpl(wrapper=True, tryfirst=True)
            def pytest_make_collect_report(self, collector):
                # Collecting the test module imports it, and so runs solution.py's module level.
                plugin.windows.open()
                try:
                    return (yield)
                finally:
                    plugin.windows.close()

            def pytest_collection_finish(self, session):
                plugin.mark("collected")

            @pytest.hookimpl(wrapper=True, tryfirst=True)
            def pytest_runtestloop(self, session):
                try:
                    return (yield)
                finally:
                    plugin.mark("ran")

            @pytest.hookimpl(tryfirst=True)
            def pytest_runtest_logreport(self, report):
                plugin.reports.append((report.when, report.outcome, hasattr(report, "wasxfail"),
                                       report_message(report)))

            @pytest.hookimpl(wrapper=True, tryfirst=True)
            def pytest_runtest_protocol(self, item, nextitem):
                plugin.phases = {}
                plugin.reports = []
                try:
                    return (yield)
                finally:
                    plugin.report_item(item)

            def pytest_collectreport(self, report):
                if report.failed:
                    text = str(report.longrepr).strip().splitlines()
                    plugin.emit({"t": "collect_error", "msg": "\n".join(text[-5:])[-600:]})

        config.pluginmanager.register(Phases(), "kodcode-phases")

    def hook_outcome(self) -> tuple[str, str]:
        phases = self.phases
        if "call" not in phases:
            return "error", phases.get("setup") or "test did not run"
        if phases.get("setup") or phases.get("teardown"):
            return "error", phases.get("setup") or phases.get("teardown") or ""
        if phases["call"]:
            return "failed", phases["call"]
        return "passed", ""

    def report_outcome(self) -> tuple[str, str]:
        """What pytest's reports for this test say: any failed report (a subtest's too) fails it."""
        reports = self.reports
        for when, outcome, _, message in reports:
            if outcome == "failed":
                # The hook saw the exception itself (PerTestTimeout, MemoryError): its text is the exact one.
                return ("failed" if when == "call" else "error"), self.phases.get(when) or message
        calls = [r for r in reports if r[0] == "call"]
        if any(outcome == "skipped" and xfail for _, outcome, xfail, _ in calls):
            return "xfailed", next(m for _, o, x, m in calls if o == "skipped" and x)
        if any(outcome == "passed" and xfail for _, outcome, xfail, _ in calls):
            return "xpassed", "unexpectedly passed"
        for when, outcome, _, message in reports:
            if outcome == "skipped":
                return "skipped", message
        setups = [r for r in reports if r[0] == "setup"]
        teardowns = [r for r in reports if r[0] == "teardown"]
        if not setups or not calls or not teardowns:
            return "error", "pytest reported no " + ("setup" if not setups else "call" if not calls else "teardown")
        return "passed", ""

    def report_item(self, item) -> None:
        outcome, message = self.report_outcome()
        if outcome == "passed":
            outcome, message = self.hook_outcome()
        if "PerTestTimeout" in message:
            # The verdict is a timeout already; a hung solution would hang the remaining tests too,
            # each costing a full limit, so the session stops here and frees the server sooner.
            item.session.shouldstop = "a test ran out of time"
        cls = item.cls.__name__ if getattr(item, "cls", None) is not None else None
        func = getattr(item, "originalname", None) or item.name
        self.emit({
            "t": "test", "name": item.name, "func": f"{cls}::{func}" if cls else func,
            "item": f"{cls}::{item.name}" if cls else item.name, "outcome": outcome, "msg": message or "",
        })


def report_message(report) -> str:
    """A report's failure or skip reason in a line (pytest's own crash line, or the skip reason)."""
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, line, reason)
        return str(longrepr[2])[:300]
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return str(crash.message).strip().splitlines()[-1][:300] if str(crash.message).strip() else ""
    lines = str(longrepr).strip().splitlines()
    return lines[-1][:300] if lines else ""


def describe(exc: BaseException) -> str:
    """A failure in a line; a bare `assert` (asserts are not rewritten) is shown by its source line."""
    text = str(exc).strip()
    if not text and isinstance(exc, AssertionError):
        import linecache

        tb, where = exc.__traceback__, None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename.endswith(("/test_solution.py", "/solution.py")):
                where = tb
            tb = tb.tb_next
        if where is not None:
            filename = where.tb_frame.f_code.co_filename
            line = linecache.getline(filename, where.tb_lineno).strip()
            text = f"{line} ({os.path.basename(filename)}:{where.tb_lineno})"
    return f"{type(exc).__name__}: {text[:300]}"


class PerTestTimeout(Exception):
    pass


def on_alarm(signum, frame):
    raise PerTestTimeout("per-test timeout")


def on_cpu_limit(signum, frame):
    raise PerTestTimeout("per-test CPU time limit")


def child_main(req: dict, report_fd: int, out_fd: int, forked_at: float) -> None:
    recorder = PREPARED.recorder
    recorder.mark("started")
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # the server blocks SIGCHLD (see main); tests get none blocked
    limits = req["limits"]
    os.setsid()
    mb = 1 << 20
    for res, value in (
        (resource.RLIMIT_CPU, int(limits["cpu_s"])),
        (resource.RLIMIT_AS, int(limits["memory_mb"]) * mb),
        (resource.RLIMIT_FSIZE, int(limits["fsize_mb"]) * mb),
        (resource.RLIMIT_NOFILE, int(limits["nofile"])),
        (resource.RLIMIT_NPROC, int(limits["nproc"])),
        (resource.RLIMIT_CORE, 0),
    ):
        hard = value + 1 if res == resource.RLIMIT_CPU else value
        resource.setrlimit(res, (value, hard))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGPROF, on_cpu_limit)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    workdir = f"{SCRATCH_DIRS[0]}/task"
    os.mkdir(workdir, 0o700)
    os.chdir(workdir)
    write_task_files(req["solution"], req["tests"])

    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.dup2(report_fd, 3)
    start = 4
    for kept in PREPARED.fds:
        os.closerange(start, kept)
        start = kept + 1
    os.closerange(start, 1 << 16)
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = sys.stdout
    sys.stdin = open(0, encoding="utf-8", closefd=False)

    # Nobody reads a mutant's coverage; tracing it would slow every line the tests run.
    WINDOWS.enabled = bool(limits.get("coverage", True))
    cpu_limit = limits.get("per_test_cpu_s")
    recorder.bind(3, req["nonce"], float(limits["per_test_s"]), float(cpu_limit) if cpu_limit else None)
    recorder.mark("setup")
    exit_code = PREPARED.run()
    recorder.mark("finished")
    coverage = WINDOWS.percent()
    recorder.mark("measured")
    sys.stdout.flush()
    recorder.emit({"t": "end", "exit": int(exit_code), "coverage": coverage,
                   "phases": child_phases(recorder.marks, forked_at)})


def child_phases(marks: dict[str, tuple[float, float]], forked_at: float) -> dict[str, float]:
    """Seconds per phase of this child, from fork to its last record; coverage work is its own phase.

    A phase the run never reached (collection failed, say) counts as zero; `t_end` lets the server
    add how long the child then took to exit.
    """
    now = time.monotonic()
    started = marks["started"][0]
    order = ["setup", "collected", "ran", "finished"]
    phases = {"fork": started - forked_at}
    prev_t, prev_cov = marks["started"]
    cov_at_start = prev_cov
    for name, label in zip(order, ("setup", "collection", "run", "teardown")):
        t, cov = marks.get(name, (prev_t, prev_cov))
        phases[label] = max(0.0, (t - prev_t) - (cov - prev_cov))
        prev_t, prev_cov = t, cov
    measured_t = marks.get("measured", (prev_t, prev_cov))[0]
    phases["coverage"] = (prev_cov - cov_at_start) + (measured_t - prev_t)
    phases["teardown"] += max(0.0, now - measured_t)  # flushing output, writing this record
    phases["t_end"] = now
    return phases


def write_task_files(solution: str, tests: str) -> None:
    for name, text in (("solution.py", solution), ("test_solution.py", tests), ("pytest.ini", "[pytest]\n")):
        with open(name, "w", encoding="utf-8") as fh:
            fh.write(text)


def open_fds() -> list[int]:
    listed = [int(fd) for fd in os.listdir("/proc/self/fd")]
    open_now = []
    for fd in listed:  # one of them was the listing's own, now closed
        try:
            os.fstat(fd)
        except OSError:
            continue
        open_now.append(fd)
    return open_now


def pytest_args(workdir: str) -> list[str]:
    # faulthandler would keep a copy of the server's stderr for every child to write to. Rewriting
    # asserts is a Python AST pass over every test file, an eighth of a task; a failed bare assert is
    # described by its source line instead (see describe).
    # -s: no global capture. Capturing would dup files onto fds 1 and 2 while the server prepares the
    # session, and the server answers on fd 1; a child's prints reach the host's capped output pipe
    # anyway, and capsys/capfd still work.
    return [f"{workdir}/test_solution.py", "-q", "-s", "-p", "no:cacheprovider", "-p", "no:faulthandler", "--assert=plain", "--rootdir", workdir,
            "-c", f"{workdir}/pytest.ini", "--no-header", "-W", "ignore::pytest.PytestWarning"]


def run_pytest(workdir: str, recorder: Recorder) -> int:
    import pytest

    return pytest.main(pytest_args(workdir), plugins=[recorder])


class PreparedSession:
    """pytest parsed, configured and its session started once in the server, for the task directory.

    Parsing the arguments, registering some 30 plugins and collecting their fixtures is over half of
    a plain `pytest.main` and is the same for every task, because every task runs in the same
    directory with the same arguments. Each forked child inherits this state copy-on-write and only
    collects test_solution.py, runs it and finishes the session (what `wrap_session` does after
    `pytest_sessionstart`). A child cannot change the server's copy, so every task starts from it.
    """

    def __init__(self, workdir: str) -> None:
        from _pytest.config import _prepareconfig
        from _pytest.main import ExitCode, Session

        self.recorder = Recorder(-1, "", 1.0, WINDOWS)
        before = set(open_fds())
        os.mkdir(workdir, 0o700)
        os.chdir(workdir)
        # The paths must exist while the arguments are resolved; the ini pins pytest's configuration.
        write_task_files("", "def test_placeholder():\n    pass\n")
        self.config = _prepareconfig(pytest_args(workdir), plugins=[self.recorder])
        self.config._do_configure()
        self.session = Session.from_config(self.config)
        self.session.exitstatus = ExitCode.OK
        self.config.hook.pytest_sessionstart(session=self.session)
        # Files the session keeps open (the logging plugin's /dev/null log file) must survive the
        # child's fd sweep. They are opened while fds 0-6 are taken, so they never sit on fd 3, where
        # the child puts its report pipe; only /dev/null is allowed through.
        self.fds = sorted(set(open_fds()) - before)
        for fd in self.fds:
            if fd < 4 or os.readlink(f"/proc/self/fd/{fd}") != "/dev/null":
                raise RuntimeError(f"prepared pytest session holds fd {fd}: {os.readlink(f'/proc/self/fd/{fd}')}")

    def run(self) -> int:
        from _pytest.main import ExitCode, _main
        from _pytest.outcomes import Exit

        config, session = self.config, self.session
        try:
            session.exitstatus = _main(config, session) or ExitCode.OK
        except session.Failed:
            session.exitstatus = ExitCode.TESTS_FAILED
        except (KeyboardInterrupt, Exit) as exc:
            code = getattr(exc, "returncode", None)
            session.exitstatus = code if code is not None else ExitCode.INTERRUPTED
        except BaseException:
            session.exitstatus = ExitCode.INTERNAL_ERROR
        finally:
            os.chdir(session.startpath)
            try:
                config.hook.pytest_sessionfinish(session=session, exitstatus=session.exitstatus)
            except Exit as exc:
                session.exitstatus = exc.returncode if exc.returncode is not None else ExitCode.INTERRUPTED
            config._ensure_unconfigure()
        return int(session.exitstatus)


WARM_UP_SOLUTION = """
from dataclasses import dataclass


@dataclass
class Pair:
    a: int
    b: int


def add(a, b):
    if a < 0:
        raise ValueError("negative")
    return a + b
"""

WARM_UP_TESTS = """
import pytest
from solution import *
from solution import Pair, add


@pytest.fixture
def two():
    return 2


def test_add(two, tmp_path, capsys, monkeypatch):
    print("out")
    assert add(two, 3) == 5 and capsys.readouterr().out == "out\\n"


@pytest.mark.parametrize("a, b", [(1, 2), (2, 3)])
def test_param(a, b):
    assert add(a, b) == pytest.approx(a + b)


class TestGroup:
    def test_raises(self):
        with pytest.raises(ValueError):
            add(-1, 1)

    def test_fails(self):
        assert Pair(1, 2) == Pair(1, 3)
"""


@contextlib.contextmanager
def quiet_in(workdir: str):
    """Run in-process pytest work in `workdir` with fds 0-2 on /dev/null, then put back what a child could notice.

    fds, streams, cwd, sys.path, the alarm handler and any module imported from `workdir` are
    restored, so only warm caches (and what the caller keeps) remain.
    """
    import linecache

    saved_fds = [os.dup(fd) for fd in (0, 1, 2)]
    saved_streams = (sys.stdin, sys.stdout, sys.stderr)
    saved_path, saved_cwd = list(sys.path), os.getcwd()
    saved_alarm = signal.signal(signal.SIGALRM, on_alarm)
    devnull = os.open("/dev/null", os.O_RDWR)
    try:
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        sys.stdout = sys.stderr = open(1, "w", encoding="utf-8", closefd=False)
        sys.stdin = open(0, encoding="utf-8", closefd=False)
        yield devnull
    finally:
        sys.stdout.flush()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, saved_alarm)
        for fd, saved in zip((0, 1, 2), saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        os.close(devnull)
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", None) or "").startswith(workdir + "/"):
                del sys.modules[name]
        for key in [k for k in sys.path_importer_cache if str(k).startswith(workdir)]:
            del sys.path_importer_cache[key]
        linecache.clearcache()


def warm_up() -> None:
    """Run pytest once on trusted files, in this process, so every child starts warm.

    That leaves pytest's lazy imports done, its regexes compiled and coverage's per-file tracing
    decisions cached (the warm-up files are not measured), which is over a third of a cold child's
    time.
    """
    workdir = f"{SCRATCH_DIRS[0]}/warm-up"
    os.mkdir(workdir, 0o700)
    with quiet_in(workdir) as devnull:
        os.chdir(workdir)
        write_task_files(WARM_UP_SOLUTION, WARM_UP_TESTS)
        run_pytest(workdir, Recorder(devnull, "warm-up", 60.0, WINDOWS))
        CoverageWindows(f"{workdir}/solution.py").percent()  # compiles the source parser's regexes


def prepare() -> PreparedSession:
    """The session every child runs in; its terminal writer holds fd 1, the child's output pipe there."""
    workdir = f"{SCRATCH_DIRS[0]}/task"
    with quiet_in(workdir):
        return PreparedSession(workdir)


def wipe_scratch() -> None:
    def allow(func, path, exc_info):
        try:
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            func(path)
        except OSError:
            pass

    for base in SCRATCH_DIRS:
        try:
            entries = os.listdir(base)
        except OSError:
            continue
        for entry in entries:
            path = os.path.join(base, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, onerror=allow)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass


def survivors() -> list[int]:
    """Live processes in the sandbox besides its init and this server (zombies await reaping)."""
    me = os.getpid()
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in (1, me):
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    state = fh.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state not in (b"Z", b"X"):
                alive.append(int(entry))
    return alive


def reap_all() -> bool:
    """Reap every child that has exited; True once this server has no children left at all."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass
    except ChildProcessError:
        return True
    return False


def kill_everything_else(grace_s: float = 3.0) -> int:
    """Kill whatever the task left running in the sandbox and wait until it is gone; returns how many remain.

    The server is the sandbox's child subreaper (see main), so every process a task started, whatever
    it did (setsid, double fork), is this server's child or a descendant of one, alive or a zombie.
    After the task's child is reaped, no children left means nothing escaped: one waitpid call, no
    kill(-1) and no /proc walk. Otherwise kill(-1) reaches them all and the server reaps each as
    SIGCHLD reports it (blocked in the server, so sigtimedwait cannot miss one), never polling.
    """
    if not ISOLATED:
        return 0  # outside a pid namespace kill(-1) would reach the host's processes
    if reap_all():
        return 0
    deadline = time.monotonic() + grace_s
    while True:
        # kill(-1) reaches every process this uid may signal except ourselves and the sandbox's pid 1;
        # repeated each round for one that was being forked while the previous round ran.
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if reap_all():
            return 0
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return max(1, len(survivors()))
        signal.sigtimedwait([signal.SIGCHLD], min(remaining, 0.1))


def run_task(req: dict) -> dict:
    limits = req["limits"]
    report_r, report_w = os.pipe()
    out_r, out_w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(report_r)
            os.close(out_r)
            child_main(req, report_w, out_w, started)
            os._exit(0)
        except BaseException:
            os._exit(70)
        finally:
            os._exit(71)
    os.close(report_w)
    os.close(out_w)
    pidfd = os.pidfd_open(pid)
    report = bytearray()
    output = bytearray()
    out_cap = int(limits["output_bytes"])
    deadline = started + float(limits["wall_s"])
    open_fds = {report_r, out_r}
    timed_out = False

    def pump(fd: int) -> None:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:
            chunk = b""
        if not chunk:
            open_fds.discard(fd)
            return
        if fd == report_r:
            if len(report) < REPORT_CAP:
                report.extend(chunk)
        else:
            output.extend(chunk)
            if len(output) > out_cap:
                del output[: len(output) - out_cap]

    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([pidfd, *open_fds], [], [], remaining)
        for fd in ready:
            if fd != pidfd:
                pump(fd)
        if pidfd in ready:
            break
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _, status, usage = os.wait4(pid, 0)
    reaped = time.monotonic()
    remaining = kill_everything_else()
    elapsed = time.monotonic() - started
    # Every writer is dead now, so the pipes end in EOF.
    for fd in list(open_fds):
        while fd in open_fds:
            pump(fd)
    for fd in (report_r, out_r, pidfd):
        os.close(fd)
    wipe_scratch()
    return {
        "id": req["id"],
        # For the per-phase breakdown (see child_phases): when the child was reaped, when the server
        # was ready for the next task, and the child's page faults (costly on some VMs).
        "timing": {"started": started, "reaped": reaped, "cleaned": time.monotonic(),
                   "minflt": usage.ru_minflt, "majflt": usage.ru_majflt},
        "dirty": os.path.lexists(f"{SCRATCH_DIRS[0]}/task"),  # the next task could not start clean
        "timed_out": timed_out,
        "exit_code": os.waitstatus_to_exitcode(status),
        "report": report.decode("utf-8", "replace"),
        "report_truncated": len(report) >= REPORT_CAP,
        "output_tail": output[-4096:].decode("utf-8", "replace"),
        "duration_s": elapsed,
        "survivors": remaining,
    }


def bare_fork_s() -> float:
    """This machine's cost of fork + exit + wait for this very process (the floor under every task)."""
    costs = []
    for _ in range(3):
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        costs.append(time.monotonic() - t0)
    return sorted(costs)[1]


def main() -> None:
    global ISOLATED, WINDOWS, PREPARED
    uid, gid = int(sys.argv[1]), int(sys.argv[2])
    SCRATCH_DIRS.append(sys.argv[3])
    ISOLATED = sys.argv[4] == "1"
    if ISOLATED:
        SCRATCH_DIRS.append("/dev/shm")
        # Orphans of a task (daemons, double forks) become this server's children rather than the
        # sandbox init's, so the server knows by one waitpid whether anything outlived a task, and
        # SIGCHLD, blocked here and taken with sigtimedwait, tells it when each is gone.
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise RuntimeError(f"cannot become a child subreaper: {os.strerror(ctypes.get_errno())}")
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    preimport()
    drop_privileges(uid, gid)
    os.environ.pop("PYTEST_ADDOPTS", None)
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    sys.dont_write_bytecode = True
    wipe_scratch()
    WINDOWS = CoverageWindows(f"{SCRATCH_DIRS[0]}/task/solution.py")
    warm_up()
    wipe_scratch()
    PREPARED = prepare()
    wipe_scratch()
    import gc

    gc.collect()
    gc.freeze()  # shared copy-on-write by every child; the child's collector skips it
    requests = sys.stdin.buffer
    answers = sys.stdout.buffer
    answers.write(json.dumps({"ready": True, "uid": os.getuid(), "fork_s": bare_fork_s()}).encode() + b"\n")
    answers.flush()
    for line in requests:
        req = json.loads(line)
        answers.write(json.dumps(run_task(req)).encode() + b"\n")
        answers.flush()


if __name__ == "__main__":
    main()

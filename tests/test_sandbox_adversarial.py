"""Adversarial cases against the real bubblewrap sandbox: the host stays unaffected and no fake pass gets through."""

from __future__ import annotations

import hashlib
import os
import socket
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from kodcode.sandbox import Limits, bwrap_available, open_sandbox

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not bwrap_available(), reason="bubblewrap cannot run here"),
]

SECRET_NAME = "KODCODE_FAKE_SECRET"
SECRET_VALUE = "s3cr3t-7c1b9e-do-not-leak"
HARNESS_FILE = str(Path(__file__).resolve().parents[1] / "kodcode" / "sandbox" / "forkserver.py")
# Short limits: every timeout case only needs some timeout to fire; ordinary tasks take well under 0.5 s.
LIMITS = Limits(wall_s=2.5, per_test_s=1.0, cpu_s=2, memory_mb=768, nproc=16)

GOOD_SOLUTION = "def add(a, b):\n    return a + b\n"
GOOD_TESTS = "from solution import add\n\ndef test_add():\n    assert add(2, 3) == 5\n\ndef test_neg():\n    assert add(-1, 1) == 0\n"


@dataclass(frozen=True)
class Case:
    name: str
    solution: str
    tests: str
    reason: str | tuple[str, ...] | None = ""  # expected reason prefix(es); "" = any failure; None = any verdict


def t(body: str, header: str = "import os, sys, time\nfrom solution import add\n") -> str:
    """A test file with one test whose body is `body`."""
    return header + "\n\ndef test_attack():\n" + textwrap.indent(textwrap.dedent(body), "    ") + "\n"


def ut(body: str, header: str = "") -> str:
    """A test file with one unittest.TestCase whose body is `body` (methods, hooks)."""
    return ("import unittest\nfrom solution import add\n" + header + "\n\nclass TestAdd(unittest.TestCase):\n"
            + textwrap.indent(textwrap.dedent(body), "    ") + "\n")


# unittest's runner catches failures and skips itself; each must still fail the trial (issue: a skipped,
# expected-to-fail or failing unittest test was counted as passed).
UNITTEST_CASES = [
    Case("unittest_skip", "def add(a, b):\n    return a - b\n", ut("""
        @unittest.skip("not today")
        def test_add(self):
            self.assertEqual(add(2, 3), 5)
        """), "skipped: TestAdd::test_add"),
    Case("unittest_skip_test_call", "def add(a, b):\n    return a - b\n", ut("""
        def test_add(self):
            self.skipTest("later")
            self.assertEqual(add(2, 3), 5)
        """), "skipped"),
    Case("unittest_skip_if_true", "def add(a, b):\n    return a - b\n", ut("""
        @unittest.skipIf(True, "always")
        def test_add(self):
            self.assertEqual(add(2, 3), 5)
        """), "skipped"),
    Case("unittest_skip_class", "def add(a, b):\n    return a - b\n", ut("""
        def test_add(self):
            self.assertEqual(add(2, 3), 5)
        """).replace("class TestAdd", "@unittest.skip('all')\nclass TestAdd"), "skipped"),
    Case("unittest_expected_failure", "def add(a, b):\n    return a - b\n", ut("""
        @unittest.expectedFailure
        def test_add(self):
            self.assertEqual(add(2, 3), 5)
        """), "skipped"),
    Case("unittest_unexpected_success", GOOD_SOLUTION, ut("""
        @unittest.expectedFailure
        def test_add(self):
            self.assertEqual(add(2, 3), 5)
        """), "failed"),
    Case("unittest_failing_assert", "def add(a, b):\n    return a - b\n", ut("""
        def test_add(self):
            self.assertEqual(add(2, 3), 5)
        """), "failed: TestAdd::test_add"),
    Case("unittest_failing_setup", GOOD_SOLUTION, ut("""
        def setUp(self):
            raise RuntimeError("no fixture")

        def test_add(self):
            self.assertEqual(add(2, 3), 5)
        """), "failed"),
    Case("unittest_failing_setup_class", GOOD_SOLUTION, ut("""
        @classmethod
        def setUpClass(cls):
            raise RuntimeError("no class fixture")

        def test_add(self):
            self.assertEqual(add(2, 3), 5)
        """), "failed"),
    Case("unittest_failing_teardown", GOOD_SOLUTION, ut("""
        def tearDown(self):
            raise RuntimeError("cannot clean up")

        def test_add(self):
            self.assertEqual(add(2, 3), 5)
        """), "failed"),
    Case("unittest_failing_teardown_class", GOOD_SOLUTION, ut("""
        @classmethod
        def tearDownClass(cls):
            raise RuntimeError("cannot clean up the class")

        def test_add(self):
            self.assertEqual(add(2, 3), 5)
        """), "failed"),
    Case("unittest_subtest_failure", "def add(a, b):\n    return a + b if a < 2 else 0\n", ut("""
        def test_add(self):
            for a in range(4):
                with self.subTest(a=a):
                    self.assertEqual(add(a, 1), a + 1)
        """), "failed"),
    Case("unittest_not_named_test", "def add(a, b):\n    return a - b\n", ut("""
        def test_add(self):
            self.assertEqual(add(2, 3), 5)
        """).replace("class TestAdd", "class Checks"), "failed: Checks::test_add"),
    Case("pytest_skip_inside_test", "def add(a, b):\n    return a - b\n",
         "import pytest as p\nfrom solution import add\n\ndef test_add():\n    getattr(p, 'sk' + 'ip')('x')\n    assert add(2, 3) == 5\n",
         "skipped: test_add"),
]


def cases(host_dir: str, tcp_port: int, udp_port: int, unix_path: str) -> list[Case]:
    marker = f"{host_dir}/escaped"
    return [
        Case("fork_bomb_os", GOOD_SOLUTION, t("""
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
            """), "timeout"),
        Case("fork_bomb_subprocess", GOOD_SOLUTION, t("""
            import subprocess
            while True:
                try:
                    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100)"])
                except OSError:
                    pass
            """), ""),
        Case("infinite_loop", GOOD_SOLUTION, t("while True:\n    pass\nassert add(1, 1) == 2"), "timeout"),
        Case("huge_sleep", GOOD_SOLUTION, t("time.sleep(1e9)"), "timeout"),
        Case("catastrophic_regex", GOOD_SOLUTION, t("import re\nassert re.match(r'(a+)+$', 'a' * 64 + 'b')"), "timeout"),
        Case("threads_ignore_alarm", GOOD_SOLUTION, t("""
            import signal, threading
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
            def spin():
                while True:
                    pass
            th = threading.Thread(target=spin)
            th.start()
            th.join()
            """), "timeout"),
        Case("memory_blowup", GOOD_SOLUTION, t("blob = bytearray(8 << 30)\nassert blob"), "memory"),
        Case("memory_blowup_gradual", GOOD_SOLUTION, t("keep = []\nwhile True:\n    keep.append(bytearray(64 << 20))"), ("memory", "timeout")),
        Case("deep_recursion", GOOD_SOLUTION, t("""
            sys.setrecursionlimit(10 ** 8)
            def down(n):
                return down(n + 1) + 1
            down(0)
            """), ""),
        Case("write_outside", GOOD_SOLUTION, t(f"""
            wrote = 0
            for path in ({marker!r}, "/etc/kodcode-escape", "../../escaped", "/usr/kodcode-escape",
                         os.path.expanduser("~/escaped"), "/escaped"):
                try:
                    with open(path, "w") as fh:
                        fh.write("x")
                    wrote += 1
                except OSError:
                    pass
            assert wrote == 6
            """), "failed"),
        Case("symlink_escape", GOOD_SOLUTION, t(f"""
            os.symlink({host_dir!r}, "link")
            with open("link/escaped", "w") as fh:
                fh.write("x")
            """), "failed"),
        Case("fill_tmpfs", GOOD_SOLUTION, t("""
            chunk = b"x" * (1 << 20)
            for base in ("/tmp", "/dev/shm", "."):
                with open(f"{base}/fill", "wb") as fh:
                    for _ in range(200):
                        fh.write(chunk)
            """), "failed"),
        Case("tcp", GOOD_SOLUTION, t(f"""
            import socket
            socket.create_connection(("127.0.0.1", {tcp_port}), timeout=1).sendall(b"hi")
            """), "failed"),
        Case("udp", GOOD_SOLUTION, t(f"""
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"hi", ("127.0.0.1", {udp_port}))  # reaches only the sandbox's own loopback
            """), None),
        Case("dns", GOOD_SOLUTION, t("import socket\nsocket.getaddrinfo('example.com', 80)"), "failed"),
        Case("unix_socket", GOOD_SOLUTION, t(f"""
            import socket
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect({unix_path!r})
            """), "failed"),
        Case("read_secrets", GOOD_SOLUTION, t(f"""
            found = os.environ.get({SECRET_NAME!r}, "")
            for path in ("/proc/1/environ", f"/proc/{{os.getppid()}}/environ", "/proc/self/environ"):
                try:
                    found += open(path, "rb").read().decode("latin-1")
                except OSError:
                    pass
            print("FOUND", found)
            import hashlib, re
            digests = {{hashlib.sha256(part.encode()).hexdigest() for part in re.split(r"[\\0=\\n]", found)}}
            assert {hashlib.sha256(SECRET_VALUE.encode()).hexdigest()!r} in digests
            """), "failed"),
        Case("read_ssh_and_harness", GOOD_SOLUTION, t(f"""
            seen = []
            for path in ({HARNESS_FILE!r}, os.path.expanduser("~/.ssh"), "/root/.ssh", {str(Path(HARNESS_FILE).parents[1])!r}, "/home"):
                try:
                    seen.append(os.listdir(path) if os.path.isdir(path) else open(path).read())
                except OSError:
                    pass
            assert any(seen)
            """), "failed"),
        Case("kill_parent", GOOD_SOLUTION, t("import signal\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(5)"), ""),
        Case("kill_all", GOOD_SOLUTION, t("import signal\nos.kill(-1, signal.SIGKILL)"), ""),
        Case("daemonized_grandchild", GOOD_SOLUTION, t("""
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execvp("sleep", ["sleep", "4242.5"])
                os._exit(0)
            """.replace("os._exit(0)", "sys.exit(0)")), None),
        Case("child_holds_pipes", GOOD_SOLUTION, t("""
            import subprocess
            subprocess.Popen(["sleep", "4343.5"], stdout=sys.__stdout__, stderr=sys.__stderr__)
            """), None),
        Case("huge_output", GOOD_SOLUTION, t("for _ in range(64):\n    sys.__stdout__.write('x' * (1 << 20))\nassert False"), "failed"),
        Case("binary_output", GOOD_SOLUTION, t("sys.__stdout__.buffer.write(os.urandom(1 << 20))\nassert False"), "failed"),
        Case("closed_std_fds", "import os\nfor fd in (0, 1, 2):\n    os.close(fd)\n" + GOOD_SOLUTION,
             GOOD_TESTS.replace("== 5", "== 6"), ""),
        Case("sys_exit_at_import", "import sys\nsys.exit(0)\n" + GOOD_SOLUTION, GOOD_TESTS, "collection error"),
        Case("os_exit_at_import", "import os\nos._exit(0)\n" + GOOD_SOLUTION, GOOD_TESTS, "tampering: os._exit"),
        Case("os_exit_in_test", GOOD_SOLUTION, t("os._exit(0)"), "tampering: os._exit"),
        Case("os_exit_dynamic", GOOD_SOLUTION, t("getattr(os, '_e' + 'xit')(0)"), "crashed"),
        Case("sys_exit_in_test", GOOD_SOLUTION, t("sys.exit(0)"), "failed"),
        Case("sys_exit_in_fixture", GOOD_SOLUTION,
             "import sys, pytest\n\n@pytest.fixture\ndef boom():\n    sys.exit(0)\n\ndef test_a(boom):\n    assert False\n", ""),
        Case("atexit", GOOD_SOLUTION, t("import atexit\natexit.register(lambda: None)\nassert False"), "tampering: atexit"),
        Case("patch_testreport", "import _pytest.reports\n" + GOOD_SOLUTION, GOOD_TESTS.replace("== 5", "== 6"), "tampering: _pytest"),
        Case("patch_testreport_dynamic", GOOD_SOLUTION.replace("a + b", "a - b") + textwrap.dedent("""
            import importlib
            reports = importlib.import_module("_py" + "test.reports")
            original = reports.TestReport.from_item_and_call
            def forged(item, call):
                rep = original(item, call)
                rep.outcome = "passed"
                rep.longrepr = None
                return rep
            reports.TestReport.from_item_and_call = staticmethod(forged)
            """), GOOD_TESTS, "failed"),
        Case("hook_in_tests", GOOD_SOLUTION, "def pytest_runtest_makereport(item, call):\n    pass\n" + GOOD_TESTS, "tampering: pytest hook"),
        Case("conftest_write", GOOD_SOLUTION, t("open('conftest.py', 'w').write('')\nassert False"), "tampering: conftest"),
        Case("pytest_plugins", GOOD_SOLUTION, "pytest_plugins = ['x']\n" + GOOD_TESTS, "tampering: pytest_plugins"),
        Case("pytest_addopts", GOOD_SOLUTION, t("os.environ['PYTEST_ADDOPTS'] = '-p no:x'"), "tampering: PYTEST_ADDOPTS"),
        Case("xfail_mark", GOOD_SOLUTION, "import pytest\n\n@pytest.mark.xfail\ndef test_a():\n    assert False\n", "tampering: skip/xfail"),
        Case("module_skip", GOOD_SOLUTION, "import pytest\npytest.skip('x', allow_module_level=True)\n" + GOOD_TESTS, "tampering: skip/xfail"),
        Case("always_equal", "class Any:\n    def __eq__(self, other):\n        return True\n\ndef add(a, b):\n    return Any()\n",
             GOOD_TESTS, "tampering: __eq__"),
        Case("always_true_lambda", "class T:\n    __bool__ = lambda self: True\n", GOOD_TESTS, "tampering: __bool__"),
        Case("sys_modules", "import sys\nsys.modules['x'] = None\n" + GOOD_SOLUTION, GOOD_TESTS, "tampering: sys.modules"),
        Case("subclasses_walk", "x = ().__class__.__base__.__subclasses__()\n" + GOOD_SOLUTION, GOOD_TESTS, "tampering: __subclasses__"),
        Case("frame_tricks", "import sys\nf = sys._getframe(0)\n" + GOOD_SOLUTION, GOOD_TESTS, "tampering: frame tricks"),
        Case("ctypes", "import ctypes\n" + GOOD_SOLUTION, GOOD_TESTS, "tampering: ctypes"),
        Case("deleted_failing_test", GOOD_SOLUTION,
             "def test_real():\n    assert False\n\ndel test_real\n\ndef test_ok():\n    assert True\n", "missing tests"),
        Case("zero_tests", GOOD_SOLUTION, "from solution import add\n", "no tests"),
        Case("zero_tests_collected", GOOD_SOLUTION, "def helper():\n    pass\nif False:\n    def test_x():\n        pass\n", "no tests"),
        Case("syntax_error", "def add(a, b)\n    return a + b\n", GOOD_TESTS, "syntax error in solution"),
        Case("non_utf8", GOOD_SOLUTION + "# \udcff\n", GOOD_TESTS, "non-utf-8 solution"),
        Case("ten_mb_file", GOOD_SOLUTION + "#" + "x" * (10 << 20) + "\n", GOOD_TESTS, "solution too large"),
        Case("null_bytes", GOOD_SOLUTION + "\x00", GOOD_TESTS, "syntax error in solution"),
        *UNITTEST_CASES,
    ]


def _stray_processes(markers: tuple[str, ...]) -> list[str]:
    stray = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(marker in cmdline for marker in markers):
            status = Path(f"/proc/{entry}/status").read_text()
            stray.append(cmdline + " " + " ".join(l for l in status.splitlines() if l.startswith(("State", "Uid", "PPid", "NSpid"))))
    return stray


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory):
    host_dir = tmp_path_factory.mktemp("host")
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_path = str(host_dir / "host.sock")
    unix.bind(unix_path)
    unix.listen()
    unix.setblocking(False)
    yield {"dir": host_dir, "tcp": tcp, "udp": udp, "unix": unix,
           "cases": cases(str(host_dir), tcp.getsockname()[1], udp.getsockname()[1], unix_path)}
    for sock in (tcp, udp, unix):
        sock.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox():
    os.environ[SECRET_NAME] = SECRET_VALUE
    try:
        async with open_sandbox(workers=2, limits=LIMITS) as sb:
            yield sb
    finally:
        os.environ.pop(SECRET_NAME, None)


CASE_NAMES = [c.name for c in cases("/x", 1, 1, "/x")]


@pytest.mark.parametrize("name", CASE_NAMES)
async def test_attack_is_contained(name: str, sandbox, host) -> None:
    case = next(c for c in host["cases"] if c.name == name)
    verdict = await sandbox.run(case.solution, case.tests)

    if case.reason is not None:
        assert not verdict.passed, verdict
        assert verdict.reason and verdict.reason.startswith(case.reason), verdict.reason
    if name.startswith("unittest_"):
        # Listed per test as pytest concluded, never as "passed".
        assert verdict.tests and all(t.outcome != "passed" for t in verdict.tests), verdict.tests
    assert SECRET_VALUE not in verdict.output_tail
    assert "KODCODE_FAKE" not in verdict.output_tail.replace(f"{SECRET_NAME!r}", "")
    assert sorted(p.name for p in host["dir"].iterdir()) == ["host.sock"]
    for path in ("/etc/kodcode-escape", "/usr/kodcode-escape", "/escaped"):
        assert not os.path.exists(path)
    assert _stray_processes(("4242.5", "4343.5", "time.sleep(100)")) == [], verdict
    for listener in (host["tcp"], host["unix"]):
        with pytest.raises(BlockingIOError):
            listener.accept()
    with pytest.raises(BlockingIOError):
        host["udp"].recvfrom(16)

    # The pool keeps serving correct verdicts after every attack.
    good = await sandbox.run(GOOD_SOLUTION, GOOD_TESTS)
    assert good.passed, good
    bad = await sandbox.run(GOOD_SOLUTION.replace("+", "*"), GOOD_TESTS)
    assert not bad.passed and bad.reason == "failed: test_add, test_neg"


async def test_no_leak_between_tasks(sandbox) -> None:
    writer = t("for base in ('/tmp', '/dev/shm'):\n    open(f'{base}/leak', 'w').write('x')")
    assert (await sandbox.run(GOOD_SOLUTION, writer)).passed
    for _ in range(2):  # whichever server runs it, the file is gone
        reader = t("assert not os.path.exists('/tmp/leak') and not os.path.exists('/dev/shm/leak')")
        assert (await sandbox.run(GOOD_SOLUTION, reader)).passed

"""The sandbox port: run untrusted solution + pytest tests, get a verdict decided on the trusted side."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["Limits", "Sandbox", "TestOutcome", "Verdict"]


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0          # whole test file, wall clock
    per_test_s: float = 5.0       # one test, wall clock
    per_test_cpu_s: float | None = None  # one test's CPU time (all its threads); None: no such limit.
                                   # Load does not stretch CPU time, so it can sit far below a wall limit
                                   # and still never cut a slow legitimate test; the first test that
                                   # runs out of either limit also ends its file (the verdict is a timeout).
    cpu_s: int = 10
    memory_mb: int = 1024         # address space
    fsize_mb: int = 10
    nofile: int = 64
    nproc: int = 16
    output_bytes: int = 1 << 20   # stdout+stderr kept per task
    tmpfs_mb: int = 64             # per fork server (fixed when the server starts)
    source_bytes: int = 1 << 20    # solution or tests larger than this are rejected unrun
    coverage: bool = True          # measure solution.py's line coverage (off for mutants: unused there)


@dataclass(frozen=True)
class TestOutcome:
    name: str                      # pytest node name, e.g. "test_add" or "test_add[1-2]"
    outcome: str                   # passed | failed | error | skipped | xfailed | xpassed | missing,
                                   # as pytest's reports concluded (unittest.TestCase tests included)
    message: str = ""              # short failure text (last line of the assertion), capped

    __test__ = False               # not a pytest test class, despite the name


@dataclass(frozen=True)
class Verdict:
    passed: bool                   # every expected test reported passed, sentinel seen, clean exit
    reason: str | None             # None when passed; else a short machine-friendly reason, e.g.
                                   # "failed: test_a, test_b", "skipped: test_c", "timeout", "tampering: os._exit",
                                   # "collection error: ...", "no tests", "syntax error in solution"
    tests: tuple[TestOutcome, ...] = ()
    coverage: float | None = None  # percent of solution.py lines covered, 0..100
    duration_s: float = 0.0
    output_tail: str = ""          # last part of captured stdout/stderr, for debugging
    extra: dict = field(default_factory=dict, compare=False)


@runtime_checkable
class Sandbox(Protocol):
    """Runs `tests` (a pytest file that imports from module `solution`) against `solution`."""

    async def run(self, solution: str, tests: str, limits: Limits | None = None) -> Verdict: ...

    async def aclose(self) -> None: ...

"""A fake of the sandbox port, shipped beside it: verdicts from a function, no subprocess. For tests and
benchmarks of everything around the sandbox (the pipeline's flow, backpressure, the runtime's overhead);
the sandbox's own tests run the real one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from kodcode.sandbox.base import Limits, TestOutcome, Verdict

__all__ = ["FakeSandbox", "passing_verdict"]


def passing_verdict(solution: str, tests: str) -> Verdict:
    """Every test passes: one outcome named after the first test function in `tests` (or test_x)."""
    name = next((line.split("def ", 1)[1].split("(", 1)[0] for line in tests.splitlines()
                 if line.lstrip().startswith("def test")), "test_x")
    return Verdict(True, None, (TestOutcome(name, "passed"),), 100.0, 0.0)


@dataclass
class FakeSandbox:
    """A Sandbox whose verdicts come from `decide(solution, tests)`, after `delay_s` (a run's duration).

    Keeps `runs` (how many), `running` and `peak` (how many at once: backpressure tests read it).
    """

    decide: Callable[[str, str], Verdict] = passing_verdict
    delay_s: float = 0.0
    workers: int = 0
    runs: int = 0
    running: int = 0
    peak: int = 0
    seen: list[tuple[str, str]] = field(default_factory=list)

    async def run(self, solution: str, tests: str, limits: Limits | None = None) -> Verdict:
        self.runs += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.seen.append((solution, tests))
        try:
            await anyio.sleep(self.delay_s)
            return self.decide(solution, tests)
        finally:
            self.running -= 1

    async def aclose(self) -> None:
        pass

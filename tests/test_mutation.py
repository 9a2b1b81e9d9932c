"""Mutation gate: generation is deterministic and skips equivalent mutants; running it through the real
sandbox rejects weak tests, passes strong ones, stops once decided, and keeps mutants contained."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import pytest_asyncio

from kodcode.quality.mutation import Mutant, generate_mutants, run_mutation_gate
from kodcode.sandbox import Limits, bwrap_available, open_sandbox
from kodcode.sandbox.base import Verdict

FACTORIAL = '''\
def factorial(n):
    """Return n! for n >= 0; the docstring is not code and has 1 + 2 in it."""
    result = 1
    for k in range(2, n + 1):
        result *= k
    return result
'''
STRONG_TESTS = '''\
from solution import factorial

def test_small():
    assert factorial(0) == 1
    assert factorial(1) == 1

def test_larger():
    assert factorial(3) == 6
    assert factorial(5) == 120
'''
WEAK_TESTS = '''\
from solution import factorial

def test_zero():
    assert factorial(0) == 1
'''

RICH = '''\
def window_sums(values, width):
    if width <= 0 or width > len(values):
        return []
    total = sum(values[:width])
    sums = [total]
    for i in range(width, len(values)):
        total += values[i] - values[i - width]
        sums.append(total)
    return sums
'''


# -- generation (pure) --------------------------------------------------------------------------------

def test_mutants_are_deterministic_by_seed() -> None:
    first = generate_mutants(RICH, seed=7, limit=8)
    again = generate_mutants(RICH, seed=7, limit=8)
    other = generate_mutants(RICH, seed=8, limit=8)
    assert [m.source for m in first] == [m.source for m in again]
    assert [m.description for m in first] != [m.description for m in other]
    assert len(first) == 8


def test_mutants_mix_kinds_and_are_real_changes() -> None:
    mutants = generate_mutants(RICH, seed=0, limit=12)
    kinds = {m.operator for m in mutants}
    assert {"comparison", "boundary", "arithmetic", "return", "constant", "logical"} <= kinds
    original = ast.unparse(ast.parse(RICH))
    sources = [ast.unparse(ast.parse(m.source)) for m in mutants]
    assert original not in sources
    assert len(set(sources)) == len(sources)
    # Off-by-one mutants move range and slice bounds.
    descriptions = {m.description.split(": ", 1)[1] for m in mutants if m.operator == "boundary"}
    assert descriptions & {"range stop + 1", "range start + 1", "slice upper bound + 1", "<= → <", "> → >="}


def test_equivalent_mutants_are_skipped() -> None:
    solution = '''\
def helper_nobody_calls(x):
    return x + 1

def scale(x):
    """Docstring with 3 + 4 and x < y in it."""
    y = x * 1
    z = y + 0
    if False:
        z = z - 100
    if x < 0:
        raise ValueError("negative: " + str(x))
    return z
    z = z * 7

if __name__ == "__main__":
    print(scale(3) + 2)
'''
    mutants = generate_mutants(solution, seed=0, limit=50, entry_point="scale")
    touched = {m.line for m in mutants}
    # Only the live code of `scale` is mutated; `x * 1` and `y + 0` keep their operators (identities) but
    # their constants may change, since `x * 2` is a real bug.
    assert touched <= {6, 7, 10, 12}, [m.description for m in mutants]
    assert not [m for m in mutants if m.line in (6, 7) and m.operator == "arithmetic"]
    assert any(m.description == "line 10: < → >=" for m in mutants)
    assert any(m.description == "line 12: return value → None" for m in mutants)
    for mutant in mutants:
        compile(mutant.source, "solution.py", "exec")


def test_unparseable_solution_has_no_mutants() -> None:
    assert generate_mutants("def broken(:\n    pass\n", seed=0, limit=6) == []


def test_limit_caps_mutants() -> None:
    assert len(generate_mutants(RICH, seed=1, limit=3)) == 3


# -- running through the real sandbox -----------------------------------------------------------------------

needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap cannot run here")
in_module_loop = pytest.mark.asyncio(loop_scope="module")


class CountingSandbox:
    """The real sandbox, counting what goes through it (to see the gate stop early)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.runs = 0

    async def run(self, solution: str, tests: str, limits: Limits | None = None) -> Verdict:
        self.runs += 1
        return await self.inner.run(solution, tests, limits)

    async def aclose(self) -> None:
        pass


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox():
    async with open_sandbox(workers=2, isolation=bwrap_available()) as sb:
        yield sb


@in_module_loop
async def test_weak_tests_are_rejected(sandbox) -> None:
    mutants = generate_mutants(FACTORIAL, seed=3, limit=6, entry_point="factorial")
    assert len(mutants) == 6
    assert (await sandbox.run(FACTORIAL, WEAK_TESTS)).passed
    report = await run_mutation_gate(sandbox, WEAK_TESTS, mutants, threshold=0.5, concurrency=2)
    assert not report.passed
    assert report.reason is not None and report.reason.startswith(f"weak tests: killed {report.killed} of {report.run}")
    assert report.killed < 3
    assert report.as_dict()["survivors"], "the survivors are named"


@in_module_loop
async def test_strong_tests_pass_and_the_gate_stops_once_decided(sandbox) -> None:
    mutants = generate_mutants(FACTORIAL, seed=3, limit=6, entry_point="factorial")
    counting = CountingSandbox(sandbox)
    report = await run_mutation_gate(counting, STRONG_TESTS, mutants, threshold=0.5, concurrency=1)
    assert report.passed and report.reason is None
    assert report.needed == 3
    # One at a time, the strong tests kill every mutant: decided after three, the rest never run.
    assert counting.runs == report.run == report.killed == 3
    assert report.score == 1.0


@in_module_loop
async def test_weak_tests_stop_once_the_threshold_is_out_of_reach(sandbox) -> None:
    # Seed 0 orders the mutants so that the fourth survivor comes fifth: 3 kills of 6 are then out of reach.
    mutants = generate_mutants(FACTORIAL, seed=0, limit=6, entry_point="factorial")
    counting = CountingSandbox(sandbox)
    report = await run_mutation_gate(counting, WEAK_TESTS, mutants, threshold=0.5, concurrency=1)
    assert not report.passed
    assert (report.killed, report.survived) == (1, 4)
    assert counting.runs == report.run == 5
    assert report.reason == "weak tests: killed 1 of 5 mutants (threshold 0.5, needed 3 of 6)"


@in_module_loop
async def test_a_mutant_that_hangs_counts_as_killed(sandbox) -> None:
    hanging = Mutant("boundary", 4, "line 4: loops forever", FACTORIAL.replace("range(2, n + 1)", "iter(int, 1)"))
    report = await run_mutation_gate(sandbox, STRONG_TESTS, [hanging], threshold=1.0,
                                     limits=Limits(wall_s=2.0, per_test_s=1.0, cpu_s=2))
    assert report.passed and report.killed == 1
    assert report.runs[0].outcome != "survived"


@in_module_loop
@needs_bwrap
async def test_mutants_cannot_write_to_the_host(sandbox, tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    solution = f'''\
def clamp(n):
    if n > 100:
        with open({str(target)!r}, "w") as handle:
            handle.write("a mutant got out")
        return -1
    return n
'''
    tests = "from solution import clamp\n\ndef test_clamp():\n    assert clamp(5) == 5\n"
    mutants = generate_mutants(solution, seed=0, limit=50, entry_point="clamp")
    writing = [m for m in mutants if m.description in ("line 2: > → <=", "line 2: 100 → 101")]
    assert any(m.description == "line 2: > → <=" for m in writing)
    report = await run_mutation_gate(sandbox, tests, mutants, threshold=1.0, concurrency=2)
    assert any(run.mutant.description == "line 2: > → <=" and run.killed for run in report.runs)
    assert not target.exists()

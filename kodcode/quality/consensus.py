"""Consensus over an item's execution matrix: which (solution, tests) pair to accept, which solutions are
the model's real wrong ones, and whether the accepted tests reject them. Pure functions, no I/O.

The matrix has one cell per (solution attempt, test-file attempt); a cell holds each test function's
outcome. The rule is CodeT's dual execution agreement (Chen et al. 2022), on test functions:

* a solution's *pass pattern* is the set of test functions (over every test file) it passes;
* solutions with identical patterns form a group, scored |group| x |pattern| — solutions that agree
  with each other on many tests outrank a lone solution that passes its own tests;
* the best group (score, then size, then pattern size, then earliest attempt) is the consensus. Its
  accepted test file is one of the item's test files with the group's failing functions dropped. A
  function is dropped only when at least `min_agree_to_drop` (default 3) *distinct* agreeing programs
  all fail it (one solution failing a test is no evidence against the test, and copies of one program
  are one opinion), and only a minority of the file's functions (a file the consensus mostly fails
  speaks against the consensus: every solution of a small model can share one mistake);
* every solution outside the group is a *real wrong solution*. Those that some test passed by the
  group rejects are *detectable*; the accepted file must reject them (the detection gate, beside the
  vacuity and mutation gates). Wrong solutions whose pattern contains the whole group pattern differ
  only on tests the consensus judged wrong: no consensus test can reject them, so they are recorded as
  undetectable and left out of the gate, not of the metric.

Why CodeT's product and not majority over solutions alone (rStar-Coder) or the diagonal (the paper):
the diagonal accepts a solution whose tests encode its own mistake (the paper's 2 of 80 wrong); a
majority of solutions ignores how much the tests discriminate (two solutions that both crash agree
perfectly on nothing). The product needs both agreement and discriminating tests. Measured on a
synthetic world with ground truth (benchmarks/consensus_sim.py, 5000 questions, 3 attempts each;
gates other than detection not modelled):

    rule                         accepted  right  precision
    diagonal (the paper)             2590   2290     0.884
    majority of pass patterns        2972   2733     0.920
    codet, drop on 2                 3846   3372     0.877
    codet + detection, no drop       3048   2811     0.922
    codet + detection, drop on 3     3272   3022     0.924   <- the default

Dropping on the word of two programs buys yield at the cost of precision; on three distinct programs
plus the detection gate it gives the most right triplets at the best precision.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Candidate", "Cell", "TestKey", "candidates", "code_key", "drop_test_functions", "function_outcomes",
           "pass_sequence", "patterns", "split_assert_functions"]

TestKey = tuple[int, str]     # (test-file attempt, test function name)


@dataclass(frozen=True)
class Cell:
    """One solution run against one test file; `outcomes` per test function (parametrized cases folded)."""

    solution: int
    tests: int
    passed: bool
    outcomes: Mapping[str, str] = field(default_factory=dict)

    def passed_functions(self) -> frozenset[str]:
        return frozenset(name for name, outcome in self.outcomes.items() if outcome == "passed")


@dataclass(frozen=True)
class Candidate:
    """An acceptable triplet: `solution`'s code with test file `tests` minus `dropped` functions."""

    solution: int
    tests: int
    group: tuple[int, ...]            # the agreeing solutions (identical pass patterns)
    score: int                        # |group| x |pattern|
    kept: tuple[str, ...]             # test functions of the accepted file
    dropped: tuple[str, ...]          # functions every agreeing solution fails, dropped from the file
    wrong: tuple[int, ...]            # solutions outside the group: the model's real wrong solutions
    detectable: tuple[int, ...]       # wrong solutions some consensus-passed test rejects
    rejected: tuple[int, ...]         # wrong solutions the accepted file rejects

    @property
    def key(self) -> tuple[int, int, tuple[str, ...]]:
        """What the quality gates judged: the same key needs no second mutation run."""
        return self.solution, self.tests, self.dropped

    @property
    def detection_rate(self) -> float | None:
        """Share of the real wrong solutions the accepted tests reject (None: there were none)."""
        return len(self.rejected) / len(self.wrong) if self.wrong else None

    @property
    def gated_detection(self) -> float | None:
        """The gate's share: over the detectable wrong solutions only (None: there were none)."""
        if not self.detectable:
            return None
        return len(set(self.rejected) & set(self.detectable)) / len(self.detectable)

    def as_dict(self) -> dict[str, Any]:
        return {"solution_attempt": self.solution, "tests_attempt": self.tests, "group": list(self.group),
                "score": self.score, "kept": list(self.kept), "dropped": list(self.dropped),
                "wrong": list(self.wrong), "detectable": list(self.detectable), "rejected": list(self.rejected),
                "detection_rate": self.detection_rate}


def function_outcomes(tests: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Fold pytest node outcomes to test functions: `test_f[1-2]` counts for `test_f`, which passes only
    when every case of it passed (a function is what the consensus keeps or drops)."""
    out: dict[str, str] = {}
    for name, outcome in tests:
        function = name.split("[", 1)[0]
        if out.get(function, "passed") == "passed":
            out[function] = outcome
    return out


def patterns(cells: Iterable[Cell]) -> tuple[dict[int, frozenset[TestKey]], dict[int, frozenset[str]]]:
    """Each solution's pass pattern, and each test file's functions (the union over its cells)."""
    passed: dict[int, set[TestKey]] = {}
    functions: dict[int, set[str]] = {}
    for cell in cells:
        passed.setdefault(cell.solution, set()).update((cell.tests, name) for name in cell.passed_functions())
        functions.setdefault(cell.tests, set()).update(cell.outcomes)
    return ({s: frozenset(p) for s, p in passed.items()}, {t: frozenset(f) for t, f in functions.items()})


def candidates(cells: Sequence[Cell], *, min_agree_to_drop: int = 3,
               code_keys: Mapping[int, str] | None = None) -> list[Candidate]:
    """The consensus group's acceptable triplets, best first (empty: no solution passes any test).

    Within the group, a test file is ranked by the share of detectable wrong solutions it rejects, then
    the functions it keeps, then fewer dropped, then the earliest attempt; the solution is the tests'
    own attempt when it is in the group (a triplet that came together), else the earliest agreeing one.
    """
    pattern_of, functions_of = patterns(cells)
    groups: dict[frozenset[TestKey], list[int]] = {}
    for solution in sorted(pattern_of):
        groups.setdefault(pattern_of[solution], []).append(solution)
    scored = [(len(members) * len(pattern), len(members), len(pattern), -min(members), pattern, members)
              for pattern, members in groups.items() if pattern]
    if not scored:
        return []
    *_, pattern, members = max(scored, key=lambda entry: entry[:4])
    group = tuple(members)
    score = len(group) * len(pattern)
    wrong = tuple(s for s in sorted(pattern_of) if s not in group)
    detectable = tuple(s for s in wrong if not pattern <= pattern_of[s])
    # Copies of one program are one opinion: only distinct programs count towards dropping a test.
    distinct = len({(code_keys or {}).get(s, str(s)) for s in group})
    found: list[tuple[tuple[float, int, int, int], Candidate]] = []
    for tests in sorted(functions_of):
        kept = tuple(sorted(name for name in functions_of[tests] if (tests, name) in pattern))
        dropped = tuple(sorted(name for name in functions_of[tests] if (tests, name) not in pattern))
        if not kept or (dropped and (distinct < min_agree_to_drop or len(dropped) >= len(kept))):
            continue   # a file the consensus mostly fails says more against the consensus than against it
        rejected = tuple(s for s in wrong if any((tests, name) not in pattern_of[s] for name in kept))
        candidate = Candidate(solution=tests if tests in group else group[0], tests=tests, group=group,
                              score=score, kept=kept, dropped=dropped, wrong=wrong, detectable=detectable,
                              rejected=rejected)
        share = candidate.gated_detection
        found.append(((1.0 if share is None else share, len(kept), -len(dropped), -tests), candidate))
    found.sort(key=lambda entry: entry[0], reverse=True)
    return [candidate for _, candidate in found]


def code_key(solution: str) -> str:
    """Solutions that differ only in formatting or comments are one program."""
    try:
        return ast.dump(ast.parse(solution))
    except SyntaxError:
        return solution


def pass_sequence(cells: Iterable[Cell], attempts: Sequence[int], accepted: Candidate | None) -> list[bool]:
    """Per attempt (in order): did its solution pass every kept function of the accepted test file?
    The paper's pass sequence, judged against the accepted tests instead of each attempt's own."""
    if accepted is None:
        return [False] * len(attempts)
    by_solution = {cell.solution: cell for cell in cells if cell.tests == accepted.tests}
    out = []
    for attempt in attempts:
        cell = by_solution.get(attempt)
        out.append(cell is not None and set(accepted.kept) <= cell.passed_functions())
    return out


def drop_test_functions(tests: str, names: Iterable[str]) -> str:
    """`tests` without the top-level test functions `names` (decorators included); the rest verbatim."""
    drop = set(names)
    if not drop:
        return tests
    tree = ast.parse(tests)
    lines = tests.splitlines(keepends=True)
    spans = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in drop:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            spans.append((start, node.end_lineno or node.lineno))
    return "".join(line for number, line in enumerate(lines, 1) if not any(a <= number <= b for a, b in spans))


def split_assert_functions(tests: str) -> str:
    """Each top-level test function made only of asserts becomes one function per assert.

    Small models put every check in one function (`def test_f(): assert ...` x 10), and one wrong
    expectation then fails every solution on the whole file: the consensus works per function, so it
    could neither tell right solutions from wrong ones nor drop the one wrong check. Split, each assert
    is a function of its own (`test_f_1`, `test_f_2`, ...): the file passes exactly when it passed
    before, and the matrix sees which checks each solution fails. Only undecorated functions without
    parameters whose body (after a docstring) is two or more asserts are split, so fixtures, marks,
    setup statements and shared state keep their meaning; everything else stays verbatim.
    """
    try:
        tree = ast.parse(tests)
    except SyntaxError:
        return tests
    taken = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    lines = tests.splitlines(keepends=True)
    replaced: dict[int, tuple[int, str]] = {}      # first line -> (last line, new text)
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test") and not node.decorator_list
                and not (node.args.args or node.args.posonlyargs or node.args.kwonlyargs or node.args.vararg
                         or node.args.kwarg)):
            continue
        body = node.body[1:] if _is_docstring(node.body[0]) else node.body
        if len(body) < 2 or not all(isinstance(statement, ast.Assert) for statement in body):
            continue
        parts = []
        for number, statement in enumerate(body, 1):
            name = f"{node.name}_{number}"
            while name in taken:
                name += "_"
            taken.add(name)
            source = ast.get_source_segment(tests, statement)
            if source is None:
                break
            parts.append(f"def {name}():\n    {source}\n")
        else:
            replaced[node.lineno] = (node.end_lineno or node.lineno, "\n\n".join(parts))
    if not replaced:
        return tests
    out: list[str] = []
    number = 1
    while number <= len(lines):
        if number in replaced:
            last, text = replaced[number]
            out.append(text)
            number = last + 1
        else:
            out.append(lines[number - 1])
            number += 1
    return "".join(out)


def _is_docstring(statement: ast.stmt) -> bool:
    return (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str))

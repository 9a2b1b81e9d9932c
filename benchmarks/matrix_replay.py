"""Attempt policies replayed on recorded execution matrices: verified and right triplets per LLM call.

`self_verification_accuracy.py --matrix --out FILE` records, for every HumanEval question, all K
attempts (solution and tests each), every (solution, tests) cell of the matrix with its per-function
outcomes, and whether each solution passes HumanEval's human-written tests. Attempts are seeded per
(question, attempt) and no prompt depends on an earlier verdict, so any policy that chooses which of
those 2K generations to pay for, in which order, and when to stop, is replayed *exactly* from the
record: same model outputs, same sandbox verdicts, no new LLM call. Only the policies' choices differ.

Every generation (a solution or a test file) costs one call, parsed or not. Policies:

  naive loop          solution -> tests -> pytest, next attempt until the diagonal cell passes
  (b) no matrix       the live run's first attempt that passed its own tests *and the gates*
  (c) matrix, all K   the live run: every attempt, the consensus with its gates decides
  consensus, stop     after each attempt, stop once the consensus (no gates replayed) accepts a pair
  any cell, stop      after each attempt, stop once any solution passes any test file
  tests reused        s1 t1, then solutions only against the tests so far; a new test file only after
                      --reuse solutions in a row failed every test file; stop at the first passing cell
  reused + consensus  tests reused (x1), stopping when the consensus accepts: the pipeline's default
                      (matrix.reuse_tests), without its mutation and vacuity gates

Accuracy is the share of accepted solutions that pass the human tests (Wilson 95% interval).

`--split-asserts` re-runs every recorded cell in the sandbox (no LLM call) with each test file split
into one function per assert (kodcode.quality.consensus.split_assert_functions, what the Tester now
stores with the matrix on), so records made before the split show what it changes; `--min-agree`
sets the consensus's drop rule (distinct agreeing programs needed to drop a check they all fail).

    .venv/bin/python benchmarks/matrix_replay.py /path/to/he164.jsonl
    .venv/bin/python benchmarks/matrix_replay.py /path/to/he164.jsonl --split-asserts --min-agree 2 3
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio

from kodcode.quality.consensus import Cell, candidates, code_key, function_outcomes, split_assert_functions
from kodcode.report import wilson_interval
from kodcode.sandbox import open_sandbox


@dataclass(frozen=True)
class Record:
    """One question's recorded attempts (index 0 is attempt 1)."""

    question: str
    solutions: list[str | None]
    tests: list[str | None]
    human: list[bool | None]
    cells: dict[tuple[int, int], Cell]
    gated_at: int | None
    matrix_solution: str | None

    @property
    def attempts(self) -> int:
        return len(self.solutions)

    def cell(self, solution: int, tests: int) -> Cell | None:
        return self.cells.get((solution, tests))

    def right(self, solution: int) -> bool:
        return bool(self.human[solution - 1])


@dataclass(frozen=True)
class Decision:
    calls: int
    accepted: int | None      # the accepted solution's attempt, None: not verified
    right: bool = False


Policy = Callable[[Record], Decision]


def load(path: Path) -> list[Record]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            fields: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            continue   # the last line of a killed run may be cut short
        if "human" not in fields or (not fields["cells"] and any(
                s is not None and t is not None for s, t in zip(fields["solutions"], fields["tests"]))):
            continue   # before cells were recorded, or a run without --matrix (which leaves no cells)
        cells = {(c["solution_attempt"], c["tests_attempt"]): Cell(c["solution_attempt"], c["tests_attempt"],
                                                                   bool(c["passed"]), c["outcomes"])
                 for c in fields["cells"]}
        records.append(Record(fields["question"], fields["solutions"], fields["tests"], fields["human"], cells,
                              fields.get("gated_at"), fields.get("solution_matrix")))
    return records


def decide(record: Record, calls: int, accepted: int | None) -> Decision:
    return Decision(calls, accepted, accepted is not None and record.right(accepted))


def attempt_calls(record: Record, attempt: int) -> int:
    """A diagonal attempt: the solver's call, and the tester's only when there was a solution to test."""
    return 1 + (record.solutions[attempt - 1] is not None)


def naive(record: Record) -> Decision:
    calls = 0
    for attempt in range(1, record.attempts + 1):
        calls += attempt_calls(record, attempt)
        cell = record.cell(attempt, attempt)
        if cell is not None and cell.passed:
            return decide(record, calls, attempt)
    return decide(record, calls, None)


def no_matrix(record: Record) -> Decision:
    last = record.gated_at or record.attempts
    calls = sum(attempt_calls(record, attempt) for attempt in range(1, last + 1))
    return decide(record, calls, record.gated_at)


def matrix_all(record: Record) -> Decision:
    calls = sum(attempt_calls(record, attempt) for attempt in range(1, record.attempts + 1))
    if record.matrix_solution is None:
        return decide(record, calls, None)
    attempt = next((i for i, s in enumerate(record.solutions, 1) if s == record.matrix_solution), None)
    return decide(record, calls, attempt)


def consensus_stop(min_agree: int) -> Policy:
    def policy(record: Record) -> Decision:
        calls = 0
        for attempt in range(1, record.attempts + 1):
            calls += attempt_calls(record, attempt)
            so_far = [s for s in range(1, attempt + 1) if record.solutions[s - 1] is not None]
            accepted = consensus_pick(record, so_far, list(range(1, attempt + 1)), min_agree)
            if accepted is not None:
                return decide(record, calls, accepted)
        return decide(record, calls, None)

    return policy


async def resplit(records: list[Record], workers: int) -> list[Record]:
    """Every cell run again with each test file split into one function per assert."""
    out: list[Record] = []
    async with open_sandbox(workers=workers) as sandbox:
        for record in records:
            tests = [split_assert_functions(t) if t else None for t in record.tests]
            cells: dict[tuple[int, int], Cell] = {}

            async def run(solution: int, test_file: int, code: str, text: str) -> None:
                verdict = await sandbox.run(code, text)
                cells[solution, test_file] = Cell(solution, test_file, verdict.passed,
                                                  function_outcomes((t.name, t.outcome) for t in verdict.tests))

            async with anyio.create_task_group() as group:
                for (solution, test_file) in record.cells:
                    code, text = record.solutions[solution - 1], tests[test_file - 1]
                    if code is not None and text is not None:
                        group.start_soon(run, solution, test_file, code, text)
            out.append(replace(record, tests=tests, cells=cells))
    return out


def best_passing(record: Record, solutions: list[int], test_files: list[int]) -> int | None:
    """The solution passing the most of the test files so far (earliest on a tie), if any passes one."""
    scored = [(sum(bool((c := record.cell(s, t)) and c.passed) for t in test_files), -s) for s in solutions]
    best = max(scored, default=(0, 0))
    return -best[1] if best[0] else None


def any_cell_stop(record: Record) -> Decision:
    calls = 0
    for attempt in range(1, record.attempts + 1):
        calls += attempt_calls(record, attempt)
        accepted = best_passing(record, list(range(1, attempt + 1)), list(range(1, attempt + 1)))
        if accepted is not None:
            return decide(record, calls, accepted)
    return decide(record, calls, None)


def consensus_pick(record: Record, solutions: list[int], test_files: list[int], min_agree: int) -> int | None:
    """The consensus's accepted solution over the cells among these solutions and test files, if any."""
    seen = [c for (s, t), c in record.cells.items() if s in solutions and t in test_files]
    keys = {s: code_key(record.solutions[s - 1] or "") for s in solutions}
    ranked = candidates(seen, min_agree_to_drop=min_agree, code_keys=keys)
    return ranked[0].solution if ranked else None


def tests_reused(reuse: int, min_agree: int | None = None) -> Policy:
    """Solutions are cheap to check against tests already paid for: ask for tests again only after
    `reuse` solutions in a row failed every test file so far. Acceptance: any passing cell, or with
    `min_agree` the consensus (what the pipeline does, gates aside)."""

    def accept(record: Record, solutions: list[int], test_files: list[int]) -> int | None:
        if min_agree is None:
            return best_passing(record, solutions, test_files)
        return consensus_pick(record, solutions, test_files, min_agree)

    def policy(record: Record) -> Decision:
        solutions: list[int] = []
        test_files: list[int] = []
        next_solution = next_tests = 1
        calls = 0
        for event in events(record.attempts, reuse):
            if event == "s" and next_solution <= record.attempts:
                solutions.append(next_solution)
                next_solution += 1
            elif event == "t" and next_tests <= record.attempts:
                test_files.append(next_tests)
                next_tests += 1
            else:
                continue
            calls += 1
            accepted = accept(record, solutions, test_files) if test_files else None
            if accepted is not None:
                return decide(record, calls, accepted)
        return decide(record, calls, None)

    def events(attempts: int, every: int) -> Iterator[str]:
        # s1 t1, then `every` solutions per test file: s t s s t s s t ... until both run out.
        yield "s"
        yield "t"
        made_s, made_t = 1, 1
        while made_s < attempts or made_t < attempts:
            for _ in range(every):
                if made_s < attempts:
                    made_s += 1
                    yield "s"
            if made_t < attempts:
                made_t += 1
                yield "t"

    return policy


def report(records: list[Record], policies: dict[str, Policy]) -> list[dict[str, Any]]:
    rows = []
    for name, policy in policies.items():
        decisions = [policy(record) for record in records]
        calls = sum(d.calls for d in decisions)
        verified = sum(d.accepted is not None for d in decisions)
        right = sum(d.right for d in decisions)
        rows.append({"policy": name, "verified": verified, "right": right, "calls": calls,
                     "accuracy": right / verified if verified else None,
                     "interval": wilson_interval(right, verified),
                     "verified_per_call": verified / calls if calls else 0.0,
                     "right_per_call": right / calls if calls else 0.0})
    base = rows[0]
    for row in rows:
        row["vs_naive"] = row["right_per_call"] / base["right_per_call"] if base["right_per_call"] else None
    return rows


def print_table(rows: list[dict[str, Any]], questions: int) -> None:
    print(f"{questions} questions replayed")
    header = (f"{'policy':24}{'verified':>9}{'right':>7}{'accuracy':>10}{'95% CI':>14}{'calls':>7}"
              f"{'calls/verified':>16}{'right/call':>12}{'vs naive':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        accuracy = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        low, high = r["interval"]
        per = f"{r['calls'] / r['verified']:.1f}" if r["verified"] else "n/a"
        ratio = "n/a" if r["vs_naive"] is None else f"{r['vs_naive']:.2f}x"
        print(f"{r['policy']:24}{r['verified']:>9}{r['right']:>7}{accuracy:>10}{f'{low:.2f}-{high:.2f}':>14}"
              f"{r['calls']:>7}{per:>16}{r['right_per_call']:>12.3f}{ratio:>10}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=Path, help="the --out file of self_verification_accuracy.py --matrix")
    parser.add_argument("--reuse", type=int, nargs="+", default=[1, 2],
                        help="tests-reused policies: solutions tried per test file before new tests")
    parser.add_argument("--min-agree", type=int, nargs="+", default=[3],
                        help="consensus policies: distinct agreeing programs needed to drop a check")
    parser.add_argument("--split-asserts", action="store_true",
                        help="re-run every cell with one test function per assert (sandbox only)")
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers for --split-asserts")
    args = parser.parse_args(argv)
    if not args.records.exists():
        parser.error(f"{args.records} does not exist")
    records = load(args.records)
    if not records:
        print(f"{args.records}: no question recorded with its matrix (run self_verification_accuracy.py "
              "--matrix --out FILE)", file=sys.stderr)
        return 2
    policies: dict[str, Policy] = {"naive loop": naive, "(b) no matrix": no_matrix, "(c) matrix, all K": matrix_all}
    if args.split_asserts:
        records = anyio.run(resplit, records, args.workers)
        # The live arms' verdicts came from the unsplit files; the naive loop and the rest are replayed.
        del policies["(b) no matrix"], policies["(c) matrix, all K"]
    for min_agree in args.min_agree:
        policies[f"consensus, stop, drop {min_agree}"] = consensus_stop(min_agree)
    policies["any cell, stop"] = any_cell_stop
    for reuse in args.reuse:
        policies[f"tests reused x{reuse}"] = tests_reused(reuse)
    for min_agree in args.min_agree:
        policies[f"reused + consensus {min_agree}"] = tests_reused(1, min_agree)
    print_table(report(records, policies), len(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())

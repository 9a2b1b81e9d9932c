"""benchmarks/matrix_replay.py: each policy pays for, and accepts, exactly what its rule says on a recorded matrix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kodcode.quality.consensus import Cell

from helpers import ROOT, load_benchmark

replay = load_benchmark("matrix_replay")


def record(passing: set[tuple[int, int]], human: list[bool], *, solutions: list[str | None] | None = None,
           gated_at: int | None = None, matrix_solution: str | None = None):
    solutions = solutions or [f"def f():\n    return {i}\n" for i in range(1, len(human) + 1)]
    attempts = len(solutions)
    cells = {(s, t): Cell(s, t, (s, t) in passing, {"test_a": "passed" if (s, t) in passing else "failed"})
             for s in range(1, attempts + 1) for t in range(1, attempts + 1) if solutions[s - 1] is not None}
    return replay.Record("Q", solutions, ["tests"] * attempts, human, cells, gated_at, matrix_solution)


def test_naive_loop_pays_two_calls_per_attempt_and_stops_on_the_diagonal() -> None:
    # Solution 2 passes test file 1, but the naive loop only ever checks a solution against its own tests.
    world = record({(2, 1), (3, 3)}, [False, True, True])
    assert replay.naive(world) == replay.Decision(6, 3, True)
    assert replay.any_cell_stop(world) == replay.Decision(4, 2, True)
    # Tests reused: s1 t1 s2 -> solution 2 passes test file 1 after three calls.
    assert replay.tests_reused(1)(world) == replay.Decision(3, 2, True)
    assert replay.tests_reused(2)(world) == replay.Decision(3, 2, True)


def test_a_failed_solver_call_costs_one_call_and_no_tester_call() -> None:
    world = record({(2, 2)}, [False, True], solutions=[None, "def f():\n    return 2\n"])
    assert replay.naive(world) == replay.Decision(3, 2, True)


def test_unsolved_questions_cost_every_generation_and_accept_nothing() -> None:
    world = record(set(), [False, False, False])
    for policy in (replay.naive, replay.any_cell_stop, replay.consensus_stop(3), replay.tests_reused(2)):
        assert policy(world) == replay.Decision(6, None, False)


def test_accepting_a_wrong_solution_counts_as_verified_but_not_right() -> None:
    world = record({(1, 1)}, [False, True, True])
    assert replay.naive(world) == replay.Decision(2, 1, False)
    rows = replay.report([world], {"naive loop": replay.naive})
    assert rows[0]["verified"] == 1 and rows[0]["right"] == 0 and rows[0]["accuracy"] == 0.0


def test_live_arms_are_read_from_the_record() -> None:
    world = record({(1, 1), (2, 2)}, [True, True, False], gated_at=2,
                   matrix_solution="def f():\n    return 2\n")
    assert replay.no_matrix(world) == replay.Decision(4, 2, True)
    assert replay.matrix_all(world) == replay.Decision(6, 2, True)


def test_the_script_replays_a_recorded_benchmark_run(tmp_path: Path) -> None:
    out = tmp_path / "he.jsonl"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "self_verification_accuracy.py"), "--scripted",
                          "--limit", "6", "--max-attempts", "2", "--matrix", "--out", str(out)],
                         capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert len(out.read_text().splitlines()) == 6
    # A second run of the same command finds every question done and runs nothing.
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "self_verification_accuracy.py"), "--scripted",
                            "--limit", "6", "--max-attempts", "2", "--matrix", "--out", str(out), "--report-only"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 0 and "verified 5 of 6" in again.stdout, again.stdout
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "matrix_replay.py"), str(out)],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert table.returncode == 0, table.stderr
    rows = {line[:24].strip(): line[24:].split() for line in table.stdout.splitlines()[3:]}
    # The scripted model: canonical solutions, a planted bug on HumanEval/3's first attempt.
    # Naive: five questions on the first attempt (2 calls), HumanEval/3 on the second (4 calls).
    assert rows["naive loop"][:2] == ["6", "6"] and rows["naive loop"][4] == "14"
    # Tests reused: HumanEval/3's second solution passes the first test file: no second Tester call.
    assert rows["tests reused x1"][:2] == ["6", "6"] and rows["tests reused x1"][4] == "13"
    first = json.loads(out.read_text().splitlines()[0])
    assert {"solutions", "tests", "human", "cells"} <= set(first)


def test_records_without_a_matrix_and_a_cut_last_line_are_not_replayed(tmp_path: Path) -> None:
    no_matrix = {"question": "HumanEval/0", "solutions": ["def f(): pass\n"], "tests": ["def test_f(): f()\n"],
                 "human": [True], "cells": [], "gated_at": 1, "solution_matrix": None}
    unsolved = {**no_matrix, "question": "HumanEval/1", "solutions": [None], "tests": [None], "human": [None]}
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(no_matrix) + "\n" + json.dumps(unsolved) + "\n" + json.dumps(unsolved)[:40])
    # A run without --matrix leaves no cells although it had a solution and tests: its first-pass stop
    # would be replayed as failures. An attempt with nothing to run has no cells in any run.
    assert [record.question for record in replay.load(path)] == ["HumanEval/1"]

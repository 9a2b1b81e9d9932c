"""End to end: `python -m kodcode.run --no-matrix` (the per-attempt gates; the matrix's are in test_matrix.py) with a
model whose tests are weak for some problems. Those trials
pass their own tests but not the mutation gate, so they are not verified, and the store says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import query, run_kodcode

pytestmark = pytest.mark.slow

# One-case tests that stay weak whatever the mutants' seed: factorial(0) == 1 exercises no loop at all.
WEAK = {"factorial"}
STRONG = {"sum_of_evens", "is_palindrome"}


def test_weak_tests_fail_the_mutation_gate(fake_coder_server, run_dir: Path) -> None:
    from fake_coder import CATALOGUE

    problems = tuple(p for p in CATALOGUE if p.name in WEAK | STRONG)
    coder, server = fake_coder_server(problems=problems, weak_tests=WEAK)
    db = run_dir / "kc.db"
    result = run_kodcode("run", "--base-url", server.base_url, "--no-matrix", "--target", "2", "--concurrency", "2",
                         "--max-attempts", "2", "--mode", "split", "--budget-calls", "80", "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert server.responder_errors == []

    by_name = {p.question: p.name for p in problems}

    def problem(question: str) -> str:
        return next(name for text, name in by_name.items() if text.removeprefix("Write a python function to ").rstrip(".") in question)

    rows = query(db, "SELECT i.question, i.state, a.attempt, a.passed, a.reason, a.gates, a.mutation_score"
                     " FROM attempts a JOIN items i USING(item_id) WHERE a.state='judged' AND a.gates IS NOT NULL")
    weak_rows = [row for row in rows if problem(row[0]) in WEAK]
    strong_rows = [row for row in rows if problem(row[0]) in STRONG]
    assert weak_rows and strong_rows, "both kinds of problem were proposed and judged"
    for question, state, _attempt, passed, reason, gates_json, score in weak_rows:
        gates = json.loads(gates_json)
        # The tests passed in the sandbox; the mutation gate overruled them and the attempt says why.
        assert gates["tests_passed"] is True and gates["passed"] is False
        assert passed == 0 and state != "verified"
        assert reason.startswith("weak tests: killed ") and "(threshold 0.5" in reason
        assert gates["mutation"]["survivors"] and score is not None and score < 0.5
        assert gates["vacuous"]["vacuous"] == 0    # a single real assertion is weak, not vacuous
    for _question, state, _attempt, passed, reason, gates_json, score in strong_rows:
        gates = json.loads(gates_json)
        assert passed == 1 and reason is None and gates["passed"] is True and score >= 0.5
    assert query(db, "SELECT COUNT(*) FROM items WHERE state='verified'")[0][0] >= 2

    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    gate_events = [e for e in events if e["event"] == "gates"]
    assert len(gate_events) == len(rows)
    assert any(e["passed"] is False and e["reason"].startswith("weak tests") for e in gate_events)


def test_self_verification_benchmark_runs_scripted() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "benchmarks" / "self_verification_accuracy.py"),
                             "--scripted", "--limit", "6", "--max-attempts", "2"],
                            capture_output=True, text=True, timeout=240, cwd=root)
    assert result.returncode == 0, result.stderr
    lines = {line.split("  ")[0]: line.split() for line in result.stdout.splitlines()}
    # Canonical solutions: all six verify on their own tests (HumanEval/3 after a planted bug failed
    # once) and all pass the human tests; HumanEval/5's one-example tests do not survive the gate.
    assert lines["without mutation gate"][-4:] == ["6", "6", "1.000", "1.000"]
    assert lines["with mutation gate"][-4:] == ["5", "5", "1.000", "0.833"]
    assert "gate cost: 1 question(s)" in result.stdout
    assert "mutation scores of trials that passed their own tests: n=" in result.stdout


def test_cross_check_samples_an_independent_solution(fake_coder_server, run_dir: Path) -> None:
    from fake_coder import CATALOGUE

    problems = tuple(p for p in CATALOGUE if p.name in STRONG)
    coder, server = fake_coder_server(problems=problems)
    config = run_dir / "kodcode.toml"
    config.write_text("[gates]\ncross_check = true\nvacuous = \"reject\"\n")
    db = run_dir / "kc.db"
    result = run_kodcode("run", "--config", str(config), "--base-url", server.base_url, "--no-matrix", "--target", "1",
                         "--concurrency", "1", "--mode", "joint", "--db", str(db))
    assert result.returncode == 0, result.stderr
    rows = query(db, "SELECT passed, gates FROM attempts WHERE gates IS NOT NULL")
    assert rows
    for passed, gates_json in rows:
        cross_check = json.loads(gates_json)["cross_check"]
        # Joint mode makes no "solve" calls of its own: each one is the Judge's cross-check.
        assert cross_check["agreed"] is True and passed == 1
        assert "def " in cross_check["solution"]
    assert coder.kinds["solve"] == len(rows) and coder.kinds["joint"] >= len(rows)

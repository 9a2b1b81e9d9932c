"""benchmarks/embedded_speed.py: accuracy of what a run verified, judged by reference tests in the real sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from kodcode.export import iter_v1_rows

from helpers import load_benchmark
from view_helpers import finished_store

speed = load_benchmark("embedded_speed")


def test_verified_solutions_are_counted_right_only_when_the_reference_tests_pass(tmp_path: Path) -> None:
    store = finished_store(tmp_path / "run")
    rows = [row for row in iter_v1_rows(store.db) if row["style"] == "instruct"]
    assert len(rows) >= 3
    right_row, _, unreferenced = rows[:3]
    given_lines = [json.dumps({"id": f"q{i}", "question": row["question"]}) for i, row in enumerate(rows[:2])]
    reference = tmp_path / "reference.jsonl"
    # The run's own tests as the reference for one question; for the other, tests that expect something else.
    wrong_test = ("import solution\n\n\ndef test_defines_the_function_the_question_names():\n"
                  "    assert hasattr(solution, 'a_function_no_solution_defines')\n")
    reference.write_text(json.dumps({"id": "q0", "entry_point": "right_one", "test": right_row["test"]}) + "\n"
                         + json.dumps({"id": "q1", "entry_point": "wrong_one", "test": wrong_test}) + "\n")
    references = speed.load_references(reference, given_lines)
    assert unreferenced["question"].strip() not in references

    right, wrong = anyio.run(speed.right_solutions, store.db, references)

    assert (right, wrong) == (1, ["wrong_one"])


def test_a_given_question_without_reference_tests_is_refused(tmp_path: Path) -> None:
    reference = tmp_path / "reference.jsonl"
    reference.write_text(json.dumps({"id": "q0", "entry_point": "f", "test": "def test_f():\n    pass\n"}) + "\n")
    given = [json.dumps({"id": "q0", "question": "Q0"}), json.dumps({"id": "q9", "question": "Q9"})]
    with pytest.raises(SystemExit, match="no reference tests for given question 'q9'"):
        speed.load_references(reference, given)

"""The execution matrix on real parts: a real SQLite file, the real sandbox, the Judge and the Matrix agent
(no LLM: attempts are written through the records port as the Solver and Tester would)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from kodcode.agents.judge import Judge
from kodcode.agents.matrix import Matrix
from kodcode.app.build import RunParts, assemble
from kodcode.config import load_config
from kodcode.llm.client import OpenAITransport
from kodcode.log import configure_logging
from kodcode.messages import AttemptTask, ProposeTask
from kodcode.sandbox.fake import FakeSandbox
from kodcode.sandbox.base import Sandbox, Verdict

pytestmark = pytest.mark.anyio

QUESTION = "Write a python function to return the distinct elements of a list in ascending order."
ITEM = "item-1"
# First-seen order instead of ascending: the mistake a small model makes, and its tests encode it.
WRONG = "def unique_sorted(items):\n    return list(dict.fromkeys(items))\n"
RIGHT = "def unique_sorted(items):\n    return sorted(set(items))\n"
RIGHT_TOO = "def unique_sorted(values):\n    out = sorted(set(values))\n    return out\n"

WEAK = ("from solution import unique_sorted\n\ndef test_empty():\n    assert unique_sorted([]) == []\n\n"
        "def test_repeat():\n    assert unique_sorted([1, 1]) == [1]\n")
STRONG = ("from solution import unique_sorted\n\ndef test_order():\n    assert unique_sorted([3, 1, 3, 2]) == [1, 2, 3]\n\n"
          "def test_empty():\n    assert unique_sorted([]) == []\n\ndef test_pair():\n    assert unique_sorted([5, 4]) == [4, 5]\n")
ENCODES_WRONG = ("from solution import unique_sorted\n\ndef test_order():\n    assert unique_sorted([3, 1, 3, 2]) == [3, 1, 2]\n\n"
                 "def test_empty():\n    assert unique_sorted([]) == []\n\ndef test_repeat():\n    assert unique_sorted([1, 1]) == [1]\n")
# One right function and two wrong ones: the consensus may not trim it down to one.
MOSTLY_WRONG = ("from solution import unique_sorted\n\ndef test_order():\n    assert unique_sorted([3, 1, 2]) == [1, 2, 3]\n\n"
                "def test_bad_a():\n    assert unique_sorted([2, 2]) == [2, 2]\n\n"
                "def test_bad_b():\n    assert unique_sorted([7]) == []\n")


async def open_parts(server: Any, db: Path, stack: AsyncExitStack, sandbox: Sandbox | None = None) -> RunParts:
    config = load_config(None, {"base_url": server.base_url, "mode": "split", "styles": []})
    configure_logging(db.parent / "events.jsonl", console_level="warning")
    return await assemble(config, db, stack, transport=OpenAITransport(server.base_url), sandbox=sandbox)


async def add_item(parts: RunParts) -> None:
    await parts.records.add_proposal(ProposeTask(ITEM, 0, "seeds", "Given"))
    await parts.records.set_question(ITEM, QUESTION, {}, "open")


@asynccontextmanager
async def item_matrix(server: Any, db: Path) -> AsyncIterator[tuple[RunParts, Matrix]]:
    """A store with the one item, and the Matrix agent over it."""
    async with AsyncExitStack() as stack:
        parts = await open_parts(server, db, stack)
        await add_item(parts)
        yield parts, Matrix(parts.context())


async def add_attempt(parts: RunParts, attempt: int, solution: str, tests: str) -> None:
    """What the Solver, Tester and Judge write for one attempt (the Judge's run is the diagonal cell)."""
    records = parts.records
    entry = "unique_sorted"
    await records.open_attempt(ITEM, attempt, "split")
    await records.save_solution(ITEM, attempt, solution, entry, {})
    await records.save_tests(ITEM, attempt, tests, {})
    await Judge(parts.context()).judge(AttemptTask(ITEM, attempt, QUESTION, solution, entry, tests))


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_consensus_accepts_right_solution_with_other_attempts_tests(fake_coder_server, tmp_path: Path) -> None:
    _coder, server = fake_coder_server()
    db = tmp_path / "kc.db"
    async with item_matrix(server, db) as (parts, matrix):
        # Attempt 1 alone: a wrong solution whose tests encode its mistake passes itself (the paper's
        # diagonal would verify it; with one attempt there is no other evidence).
        await add_attempt(parts, 1, WRONG, ENCODES_WRONG)
        first = await matrix.update(ITEM)
        assert first.verified and first.accepted["solution_attempt"] == 1
        # Two right solutions (distinct programs), the first with right tests: the consensus moves.
        await add_attempt(parts, 2, RIGHT, STRONG)
        await add_attempt(parts, 3, RIGHT_TOO, WEAK)
        outcome = await matrix.update(ITEM)
    assert outcome.verified
    accepted = outcome.accepted
    assert (accepted["solution_attempt"], accepted["tests_attempt"]) == (2, 2)
    assert accepted["group"] == [2, 3] and accepted["wrong"] == [1] and accepted["rejected"] == [1]
    assert accepted["detection_rate"] == 1.0
    assert outcome.pass_sequence == (False, True, True)
    assert outcome.solution == RIGHT and outcome.tests == STRONG
    # Every solution ran against every test file, per test function, stored.
    cells = rows(db, "SELECT solution_attempt, tests_attempt, passed, outcomes FROM matrix WHERE item_id='item-1'")
    assert {(s, t) for s, t, _, _ in cells} == {(s, t) for s in (1, 2, 3) for t in (1, 2, 3)}
    outcomes = {(s, t): json.loads(o) for s, t, _, o in cells}
    assert outcomes[1, 2] == {"test_order": "failed", "test_empty": "passed", "test_pair": "failed"}
    assert outcomes[2, 1]["test_order"] == "failed" and outcomes[2, 1]["test_repeat"] == "passed"
    stored = json.loads(rows(db, "SELECT consensus FROM items")[0][0])
    assert stored["accepted"]["tests_attempt"] == 2 and stored["pass_sequence"] == [0, 1, 1]
    assert rows(db, "SELECT accepted_tests FROM items")[0][0] == STRONG


async def test_matrix_fills_incrementally_and_resume_keeps_it(fake_coder_server, tmp_path: Path) -> None:
    _coder, server = fake_coder_server()
    db = tmp_path / "kc.db"
    async with item_matrix(server, db) as (parts, matrix):
        await add_attempt(parts, 1, RIGHT, WEAK)
        await matrix.update(ITEM)
        assert rows(db, "SELECT COUNT(*) FROM matrix")[0][0] == 1
        await add_attempt(parts, 2, WRONG, STRONG)
        before = {(s, t): c for s, t, c in rows(db, "SELECT solution_attempt, tests_attempt, created_at FROM matrix")}
        outcome = await matrix.update(ITEM)
        after = {(s, t): c for s, t, c in rows(db, "SELECT solution_attempt, tests_attempt, created_at FROM matrix")}
        # The new solution met the earlier tests and the new tests met the earlier solution; nothing re-ran.
        assert set(after) == {(1, 1), (1, 2), (2, 1), (2, 2)}
        assert all(after[key] == stamp for key, stamp in before.items())
        assert outcome.verified and outcome.accepted["tests_attempt"] == 2
    # A resumed run (the store reopened) has the matrix and its gate results: a sandbox that would fail
    # everything is never asked, and the same triplet stays accepted.
    never = FakeSandbox(decide=lambda solution, tests: Verdict(False, "must not run"))
    async with AsyncExitStack() as stack:
        parts = await open_parts(server, db, stack, sandbox=never)
        again = await Matrix(parts.context()).update(ITEM)
    assert never.runs == 0
    assert again.accepted == outcome.accepted and again.pass_sequence == outcome.pass_sequence


async def test_detection_gate_rejects_tests_that_pass_a_known_wrong_solution(fake_coder_server, tmp_path: Path) -> None:
    _coder, server = fake_coder_server()
    db = tmp_path / "kc.db"
    async with item_matrix(server, db) as (parts, matrix):
        await add_attempt(parts, 1, WRONG, WEAK)
        await add_attempt(parts, 2, RIGHT, WEAK)
        await add_attempt(parts, 3, RIGHT_TOO, MOSTLY_WRONG)
        blocked = await matrix.update(ITEM)
        # The agreeing right solutions pass the weak files, but so does the wrong one, which test_order
        # rejects: weak tests may not verify the item, and the one rejecting file is mostly wrong.
        assert not blocked.verified and blocked.pass_sequence == (False, False, False)
        reason = json.loads(rows(db, "SELECT consensus FROM items")[0][0])["reason"]
        assert "detection: the accepted tests pass 1 of 1 real wrong solutions (attempts 1)" in reason
        # Tests that reject it arrive with attempt 4: the item is verified with them.
        await add_attempt(parts, 4, RIGHT, STRONG)
        outcome = await matrix.update(ITEM)
    assert outcome.verified and outcome.accepted["tests_attempt"] == 4
    assert outcome.accepted["rejected"] == [1] and outcome.pass_sequence == (False, True, True, True)


async def test_a_new_solution_that_passes_earlier_tests_needs_no_tests_of_its_own(fake_coder_server,
                                                                                  tmp_path: Path) -> None:
    _coder, server = fake_coder_server()
    db = tmp_path / "kc.db"
    async with item_matrix(server, db) as (parts, matrix):
        await add_attempt(parts, 1, WRONG, STRONG)
        assert not (await matrix.update(ITEM)).verified
        records = parts.records
        await records.open_attempt(ITEM, 2, "split")
        await records.save_solution(ITEM, 2, WRONG.replace("items", "values"), "unique_sorted", {})
        wrong_again = AttemptTask(ITEM, 2, QUESTION, WRONG.replace("items", "values"), "unique_sorted")
        # A second wrong solution fails the only test file: its own tests must be written.
        assert await matrix.earlier_tests_passed(wrong_again) is None
        await records.open_attempt(ITEM, 3, "split")
        await records.save_solution(ITEM, 3, RIGHT, "unique_sorted", {})
        right = AttemptTask(ITEM, 3, QUESTION, RIGHT, "unique_sorted")
        earlier = await matrix.earlier_tests_passed(right)
        assert earlier is not None and earlier.attempt == 1 and earlier.tests == STRONG and earlier.verdict.passed
        # Its cells are stored once: the update that follows runs nothing again.
        cells = rows(db, "SELECT solution_attempt, tests_attempt, passed FROM matrix ORDER BY 1, 2")
        assert cells == [(1, 1, 0), (2, 1, 0), (3, 1, 1)]
        result = await Judge(parts.context()).judge_against(right, earlier.tests, judged_by="tests of attempt 1",
                                                            verdict=earlier.verdict)
        assert result.passed
        outcome = await matrix.update(ITEM)
    assert outcome.verified and (outcome.accepted["solution_attempt"], outcome.accepted["tests_attempt"]) == (3, 1)
    # Both wrong solutions are real wrong solutions, and the accepted tests reject both.
    assert outcome.accepted["rejected"] == [1, 2] and outcome.tests == STRONG
    assert rows(db, "SELECT COUNT(*) FROM matrix")[0][0] == 3
    assert json.loads(rows(db, "SELECT gates FROM attempts WHERE attempt=3")[0][0]) == {"judged_by": "tests of attempt 1"}


# -- end to end: kodcode.run with the matrix (default) and without, then export and report ---------------

def test_run_with_matrix_exports_its_evidence_and_reports_detection(fake_coder_server, run_dir: Path) -> None:
    from helpers import query, run_kodcode

    coder, server = fake_coder_server(fail_first={"sum_of_evens": 2, "reverse_words": 1})
    db = run_dir / "kc.db"
    result = run_kodcode("run", "--base-url", server.base_url, "--target", "4", "--concurrency", "2",
                         "--mode", "split", "--max-attempts", "4", "--db", str(db))
    assert result.returncode == 0, result.stderr
    # Tests are written from the fixed signature (test_signature), not from a solution's body.
    templates = {row[0] for row in query(db, "SELECT template FROM llm_calls WHERE role='tester'")}
    assert templates == {"test_signature"}
    verified = query(db, "SELECT COUNT(*) FROM items WHERE state='verified' AND consensus IS NOT NULL"
                         " AND accepted_tests IS NOT NULL")[0][0]
    assert verified >= 4
    out = run_dir / "out.jsonl"
    assert run_kodcode("export", "--db", str(db), "--out", str(out)).returncode == 0
    rows = [json.loads(line) for line in out.read_text().splitlines() if json.loads(line)["style"] == "instruct"]
    assert len(rows) == verified
    for row in rows:
        matrix = row["metadata"]["matrix"]
        assert matrix["rule"] == "codet-dual-agreement" and matrix["consensus_score"] >= 1
        assert row["trials"][row["chosen_trial"]]["test_result"] == "Pass"
        assert row["gpt_pass_trial_num"] == sum(row["gpt_pass_sequence"]) >= 1
        attempts = len(row["gpt_pass_sequence"])
        assert {(s, t) for s, t, _, _ in matrix["cells"]} <= {(s, t) for s in range(1, attempts + 1)
                                                               for t in range(1, attempts + 1)}
        if "sum of all even integers" in row["question"]:
            # Two wrong solutions, then a right one: both wrong ones are real wrong solutions the
            # accepted tests reject.
            assert row["gpt_pass_sequence"][:3] == [0, 0, 1]
            assert matrix["wrong_attempts"][:2] == [1, 2] and matrix["detection_rate"] == 1.0
    # A right solution after wrong ones passed an earlier attempt's test file whole: that file judged
    # it, and no Tester call was paid for a file of its own.
    reused = query(db, "SELECT item_id, attempt FROM attempts WHERE json_extract(gates, '$.judged_by') LIKE 'tests of attempt %'")
    assert reused
    testers = set(query(db, "SELECT item_id, attempt FROM llm_calls WHERE role='tester'"))
    assert not set(reused) & testers
    # fail_first makes real wrong solutions; wherever the matrix met one, the accepted tests rejected it.
    assert any(row["metadata"]["matrix"]["wrong_attempts"] for row in rows)
    assert all(row["metadata"]["matrix"]["detection_rate"] in (None, 1.0) for row in rows)
    report = run_kodcode("report", "--db", str(db))
    assert report.returncode == 0, report.stderr
    assert "execution matrix:" in report.stdout and "detection of the model's real wrong solutions" in report.stdout


def test_run_without_matrix_judges_each_attempt_alone(fake_coder_server, run_dir: Path) -> None:
    from helpers import query, run_kodcode

    _coder, server = fake_coder_server(fail_first={"sum_of_evens": 1})
    db = run_dir / "kc.db"
    result = run_kodcode("run", "--base-url", server.base_url, "--target", "2", "--concurrency", "2",
                         "--mode", "split", "--no-matrix", "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert query(db, "SELECT COUNT(*) FROM matrix")[0][0] == 0
    assert query(db, "SELECT COUNT(*) FROM items WHERE consensus IS NOT NULL")[0][0] == 0
    assert {row[0] for row in query(db, "SELECT template FROM llm_calls WHERE role='tester'")} == {"test_split"}
    out = run_dir / "out.jsonl"
    assert run_kodcode("export", "--db", str(db), "--out", str(out)).returncode == 0
    for line in out.read_text().splitlines():
        assert "matrix" not in json.loads(line)["metadata"]

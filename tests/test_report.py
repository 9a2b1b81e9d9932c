"""`python -m kodcode.report` on a store with known contents, written through the real Store and Records."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import kodcode_env
from kodcode.messages import ProposeTask
from kodcode.report import build_report, compare_prompts, normalise_reason, open_readonly, wilson_interval
from kodcode.store.records import SqliteRecords
from kodcode.store.sqlite import Store
from kodcode.sandbox.base import Verdict

SOLVE_V1 = {"model": "m-a", "template": "solve", "template_hash": "v1"}
SOLVE_V2 = {"model": "m-b", "template": "solve", "template_hash": "v2"}
TESTER = {"model": "m-a", "template": "test_split", "template_hash": "t1"}

# Calls per role (count, prompt tokens, completion tokens, usd each): every attempt's calls, failed ones too.
CALLS = {"proposer": (7, 10, 5, 0.001), "solver": (7, 100, 50, 0.01), "tester": (6, 80, 40, 0.005),
         "rewriter": (2, 30, 20, 0.0)}


async def attempt(records: SqliteRecords, item_id: str, number: int, solver: dict[str, Any], reason: str | None,
                  *, tested: bool = True) -> None:
    """One judged attempt; `reason` None means it passed; untested attempts failed at the solver."""
    await records.open_attempt(item_id, number, "split")
    if not tested:
        await records.fail_attempt(item_id, number, reason or "", role="solver", lineage=solver, raw_output="junk")
        return
    await records.save_solution(item_id, number, "def f():\n    return 1\n", "f", solver)
    await records.save_tests(item_id, number, "from solution import f\n", TESTER)
    await records.save_verdict(item_id, number, Verdict(passed=reason is None, reason=reason, coverage=100.0))


async def build_store(path: Path) -> Store:
    store = await Store.open(path)
    records = SqliteRecords(store)
    await records.start_run({"target": 2})
    items = [("L1", "Leetcode"), ("L2", "Leetcode"), ("L3", "Leetcode"), ("P1", "Prefill"), ("P2", "Prefill"),
             ("P3", "Prefill"), ("P4", "Prefill")]
    proposer = {"proposer": {"model": "m-a", "template": "propose_prefill", "template_hash": "p1"}}
    for seq, (item_id, subset) in enumerate(items):
        await records.add_proposal(ProposeTask(item_id=item_id, seq=seq, source="prefill", subset=subset))
    for item_id in ("L1", "L2", "P1", "P4"):
        await records.set_question(item_id, f"Write {item_id}.", proposer, "open")
    await records.set_question("L3", "Write L1.", proposer, "duplicate", "duplicate of L1 (exact 1.00)")
    await records.set_question("P2", "Write HumanEval 3.", proposer, "contaminated",
                               "contaminated: matches HumanEval HumanEval/3 (ngram 0.91)")
    await records.set_question("P3", None, proposer, "rejected", "question too short (12 chars)")

    await attempt(records, "L1", 1, SOLVE_V1, "failed: test_a, test_b")
    await attempt(records, "L1", 2, SOLVE_V1, None)
    await attempt(records, "L1", 3, SOLVE_V1, None)
    await records.decide("L1", 3, "stop", "label medium settled", label="medium", final_state="verified",
                         chosen_attempt=2, entry_point="f", pass_sequence=[False, True, True])
    await attempt(records, "L2", 1, SOLVE_V1, "solver output unusable: syntax error in code: line 3: bad", tested=False)
    await attempt(records, "L2", 2, SOLVE_V2, "failed: test_c")
    await records.decide("L2", 2, "give_up", "no pass in 2 attempts; label fail", label="fail", final_state="failed",
                         pass_sequence=[False, False])
    await attempt(records, "P1", 1, SOLVE_V2, None)
    await records.decide("P1", 1, "stop", "label easy settled", label="easy", final_state="verified",
                         chosen_attempt=1, entry_point="f", pass_sequence=[True])
    await attempt(records, "P4", 1, SOLVE_V2, "timeout")      # still open: not settled

    await records.save_rewrite("L1", "complete", "verified", "def f():\n    '''Doc.'''\n", True, None, {})
    await records.save_rewrite("P1", "complete", "rejected", None, False, "signature drift: f(a) != f()", {})

    ops = []
    number = 0
    for role, (count, prompt, completion, usd) in CALLS.items():
        for _ in range(count):
            number += 1
            ops.append(("INSERT INTO llm_calls(request_hash, role, model, template, template_hash, request, response,"
                        " finish_reasons, prompt_tokens, completion_tokens, latency_s, cost_usd, created_at)"
                        " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (f"h{number}", role, "m-a", role, "x", "[]", "[]", "[]", prompt, completion, 0.5, usd, 0.0)))
    await store.write(ops)
    return store


@pytest.fixture
async def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "kc.db"
    store = await build_store(path)
    await store.aclose()
    return path


def report_of(path: Path) -> dict[str, Any]:
    conn = open_readonly(path)
    try:
        return build_report(conn)
    finally:
        conn.close()


def test_yield_by_subset_style_difficulty_and_model(store_path: Path) -> None:
    report = report_of(store_path)["yield"]
    # settled = verified + failed + duplicate + contaminated + rejected; the open P4 does not count yet.
    assert report["by_subset"]["Leetcode"] == {"settled": 3, "verified": 1, "failed": 1, "yield": pytest.approx(1 / 3),
                                               "solve_rate": 0.5}
    assert report["by_subset"]["Prefill"]["settled"] == 3 and report["by_subset"]["Prefill"]["verified"] == 1
    assert report["by_style"]["instruct"]["yield"] == pytest.approx(2 / 6)
    assert report["by_style"]["complete"] == {"settled": 2, "verified": 1, "failed": 1, "yield": 0.5, "solve_rate": 0.5}
    assert {k: v["verified"] for k, v in report["by_difficulty"].items()} == {"easy": 1, "fail": 0, "medium": 1}
    # An item's model is the one that answered its last attempt.
    assert {k: (v["settled"], v["verified"]) for k, v in report["by_model"].items()} == {"m-a": (1, 1), "m-b": (2, 1)}
    assert report["by_proposer_prompt"]["propose_prefill@p1"]["settled"] == 6
    assert report["by_attempt_prompt"]["solver:solve@v1"] == {"attempts": 4, "passed": 2, "pass_rate": 0.5}


def test_cost_per_accepted_triplet_counts_every_failed_attempt(store_path: Path) -> None:
    cost = report_of(store_path)["cost"]
    assert cost["accepted"] == 2
    solver = cost["by_role"]["solver"]
    assert solver["calls"] == 7 and solver["tokens"] == 7 * 150
    assert solver["tokens_per_accepted"] == pytest.approx(7 * 150 / 2)
    assert solver["usd_per_accepted"] == pytest.approx(0.07 / 2)
    assert cost["by_role"]["rewriter"]["usd"] == 0.0               # unpriced calls cost 0, their tokens still count
    assert cost["by_role"]["rewriter"]["tokens_per_accepted"] == pytest.approx(2 * 50 / 2)
    assert cost["total"]["usd_per_accepted"] == pytest.approx((0.007 + 0.07 + 0.03) / 2)
    assert cost["total"]["calls"] == 22
    assert cost["total"]["usd_per_row"] == pytest.approx(0.107 / 3)   # 2 instruct rows + 1 verified rewrite


def test_attempts_labels_and_ranked_failure_reasons(store_path: Path) -> None:
    report = report_of(store_path)
    assert report["attempts"]["mean"] == pytest.approx(2.0)          # L1: 3, L2: 2, P1: 1
    assert report["attempts"]["distribution"] == {"1": 1, "2": 1, "3": 1}
    assert report["attempts"]["mean_to_first_pass"] == pytest.approx(1.5)
    assert report["labels"] == {"easy": 1, "fail": 1, "medium": 1}
    attempts = [(r["reason"], r["count"]) for r in report["failure_reasons"]["attempts"]]
    assert attempts == [("failed tests", 2), ("solver output unusable: syntax error in code", 1), ("timeout", 1)]
    items = dict((r["reason"], r["count"]) for r in report["failure_reasons"]["items"])
    assert items == {"duplicate (exact)": 1, "contaminated: HumanEval": 1, "question too short": 1,
                     "no pass in attempts; label fail": 1}
    assert report["failure_reasons"]["rewrites"] == [{"reason": "signature drift", "count": 1}]
    assert report["gate_by_subset"] == {"Leetcode": {"duplicate": 1, "contaminated": 0, "rejected": 0},
                                        "Prefill": {"duplicate": 0, "contaminated": 1, "rejected": 1}}
    assert report["llm"]["calls"] == 22 and report["llm"]["tokens"] == 7 * 15 + 7 * 150 + 6 * 120 + 2 * 50


@pytest.mark.parametrize(("reason", "group"), [
    ("failed: test_a, test_b, ...", "failed tests"),
    ("solver output unusable: no python code block in the answer", "solver output unusable: no python code block in the answer"),
    ("tester output unusable: syntax error in code: line 2: invalid syntax", "tester output unusable: syntax error in code"),
    ("solver error: LLMError: HTTP 500 (gave up after 7 tries)", "solver error: LLMError"),
    ("collection error: NameError: name 'x' is not defined", "collection error: NameError"),
    ("missing tests: test_a", "missing tests"),
    ("missing module: numpy", "missing module: numpy"),
    ("question too short (12 chars)", "question too short"),
    ("duplicate of Prefill_3 (near 0.91)", "duplicate (near)"),
    ("timeout", "timeout"),
    (None, "unknown"),
])
def test_reasons_are_normalised_into_groups(reason: str | None, group: str) -> None:
    assert normalise_reason(reason) == group


def test_wilson_interval_matches_known_values() -> None:
    assert wilson_interval(2, 4) == pytest.approx((0.1500, 0.8500), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_compare_prompts_per_template_version(store_path: Path) -> None:
    conn = open_readonly(store_path)
    try:
        rows = {(r["role"], r["template"], r["template_hash"]): r for r in compare_prompts(conn)}
    finally:
        conn.close()
    assert set(rows) == {("solver", "solve", "v1"), ("solver", "solve", "v2"), ("tester", "test_split", "t1")}
    v1, v2, tester = rows["solver", "solve", "v1"], rows["solver", "solve", "v2"], rows["tester", "test_split", "t1"]
    assert (v1["attempts"], v1["passed"]) == (4, 2) and v1["ci95"] == pytest.approx([0.1500, 0.8500], abs=1e-4)
    assert (v2["attempts"], v2["passed"], v2["models"]) == (3, 1, ["m-b"])
    # The solver-only failure (L2 #1) never reached the tester.
    assert (tester["attempts"], tester["passed"]) == (6, 3)
    assert tester["ci95"] == pytest.approx([0.1876, 0.8124], abs=1e-4)


def run_report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kodcode.report", *args], capture_output=True, text=True,
                          timeout=60, env=kodcode_env())


async def test_cli_reports_on_a_store_that_is_in_use(tmp_path: Path) -> None:
    path = tmp_path / "kc.db"
    store = await build_store(path)      # still open: the run's lock is held, as during a run
    try:
        before = path.read_bytes()
        result = run_report("--db", str(path), "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["cost"]["accepted"] == 2 and report["store"]["exportable_rows"] == 3
        text = run_report("--db", str(path))
        assert "cost per accepted triplet" in text.stdout and "failed tests" in text.stdout
        compared = run_report("--db", str(path), "--compare-prompts", "--json")
        assert {r["template_hash"] for r in json.loads(compared.stdout)["prompts"]} == {"v1", "v2", "t1"}
        assert "15.0% - 85.0%" in run_report("--db", str(path), "--compare-prompts").stdout
        assert path.read_bytes() == before
    finally:
        await store.aclose()


def test_cli_fails_in_one_line_without_a_store(tmp_path: Path) -> None:
    missing = run_report("--db", str(tmp_path / "absent.db"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "does not exist" in missing.stderr
    assert not (tmp_path / "absent.db").exists()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    broken = run_report("--db", str(garbage))
    assert broken.returncode == 2 and broken.stderr.count("\n") == 1 and "cannot be read" in broken.stderr
    empty = tmp_path / "other.db"
    sqlite3.connect(empty).execute("CREATE TABLE t(x)").connection.close()
    assert run_report("--db", str(empty)).returncode == 2

"""Prompt iteration: `kodcode.iterate` re-runs one stage on stored verified items with a changed prompt."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from helpers import query, run_kodcode
from kodcode.prompts import TEMPLATE_DIR


MARKER = "Prefer the shortest possible answer."


def _candidate(tmp_path: Path, template: str, extra: str) -> Path:
    """A prompts directory that changes one template: the packaged text plus one line."""
    folder = tmp_path / f"prompts-{template}"
    folder.mkdir()
    source = (TEMPLATE_DIR / f"{template}.j2").read_text()
    (folder / f"{template}.j2").write_text(source.replace("{% block user -%}\n", "{% block user -%}\n" + extra + "\n", 1))
    return folder


def _verified_store(fake_coder_server, run_dir: Path, mode: str = "split"):
    coder, server = fake_coder_server(worse_when=MARKER)
    db = run_dir / "kc.db"
    result = run_kodcode("run", "--base-url", server.base_url, "--target", "3", "--concurrency", "4",
                         "--mode", mode, "--db", str(db), "--no-mutation-gate")
    assert result.returncode == 0, result.stderr
    return coder, server, db


def _snapshot(db: Path) -> tuple:
    return (query(db, "SELECT item_id, state, chosen_attempt FROM items ORDER BY item_id"),
            query(db, "SELECT item_id, attempt, state, passed, solution, tests FROM attempts ORDER BY item_id, attempt"))


def test_solver_iteration_calls_only_the_solver_and_compares_arms(fake_coder_server, run_dir: Path,
                                                                   tmp_path: Path) -> None:
    coder, server, db = _verified_store(fake_coder_server, run_dir)
    before = _snapshot(db)
    coder.kinds.clear()
    prompts = _candidate(tmp_path, "solve", MARKER)

    result = run_kodcode("iterate", "--db", str(db), "--stage", "solver", "--prompts", str(prompts),
                         "--sample", "3", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    # Only the chosen stage reached the model: one solve call per item and arm, nothing upstream or downstream.
    assert coder.kinds == Counter({"solve": 6}), coder.kinds
    arms = {arm["arm"]: arm for arm in summary["arms"]}
    # The run's prompt passes the items' verified tests; the candidate (which the fake model answers wrongly) fails.
    assert (arms["baseline"]["trials"], arms["baseline"]["passed"]) == (3, 3)
    assert (arms["candidate"]["trials"], arms["candidate"]["passed"]) == (3, 0)
    assert arms["baseline"]["template_hash"] != arms["candidate"]["template_hash"]
    assert summary["paired"] == {"trials": 3, "candidate_better": 0, "candidate_worse": 3, "same": 0}
    # The run's own data is untouched; the trials have their own table.
    assert _snapshot(db) == before
    trials = query(db, "SELECT arm, stage, template, passed, solution IS NOT NULL, tests IS NOT NULL FROM prompt_trials")
    assert sorted(trials) == sorted([("baseline", "solver", "solve", 1, 1, 1)] * 3
                                    + [("candidate", "solver", "solve", 0, 1, 1)] * 3)

    # Again, same sample: every call is answered from the store's cache; nothing is paid twice.
    again = run_kodcode("iterate", "--db", str(db), "--stage", "solver", "--prompts", str(prompts),
                        "--sample", "3", "--json")
    assert again.returncode == 0, again.stderr
    assert coder.kinds == Counter({"solve": 6})
    assert json.loads(again.stdout)["llm"]["cache_hits"] == 6

    compared = run_kodcode("report", "--db", str(db), "--compare-prompts", "--json")
    rows = [r for r in json.loads(compared.stdout)["prompts"] if r["source"] == "iterate"]
    assert {(r["template_hash"], r["attempts"], r["passed"]) for r in rows} == {
        (arms["baseline"]["template_hash"], 6, 6), (arms["candidate"]["template_hash"], 6, 0)}
    text = run_kodcode("report", "--db", str(db), "--compare-prompts").stdout
    assert "iterate" in text and "run" in text


def test_tester_iteration_calls_only_the_tester(fake_coder_server, run_dir: Path, tmp_path: Path) -> None:
    coder, server, db = _verified_store(fake_coder_server, run_dir)
    coder.kinds.clear()
    prompts = _candidate(tmp_path, "test_split", MARKER)
    result = run_kodcode("iterate", "--db", str(db), "--stage", "tester", "--prompts", str(prompts),
                         "--sample", "2", "--samples-per-item", "2", "--json", "--seed", "7")
    assert result.returncode == 0, result.stderr
    assert coder.kinds == Counter({"tests": 8}), coder.kinds
    summary = json.loads(result.stdout)
    assert [(a["arm"], a["trials"]) for a in summary["arms"]] == [("baseline", 4), ("candidate", 4)]
    stored = query(db, "SELECT DISTINCT item_id FROM prompt_trials")
    verified = query(db, "SELECT item_id FROM items WHERE state='verified'")
    assert {r[0] for r in stored} <= {r[0] for r in verified} and len(stored) == 2
    # Each trial's tests are the new ones (the candidate's assert one case only), judged against the
    # item's verified solution, which they all pass.
    counts = query(db, "SELECT arm, tests, passed FROM prompt_trials")
    assert all(tests.count("def test_") == 1 for arm, tests, _ in counts if arm == "candidate")
    assert all(tests.count("def test_") >= 2 for arm, tests, _ in counts if arm == "baseline")
    assert all(passed == 1 for arm, _, passed in counts if arm == "baseline")


def test_joint_mode_solver_iteration_writes_solution_and_tests(fake_coder_server, run_dir: Path,
                                                               tmp_path: Path) -> None:
    coder, server, db = _verified_store(fake_coder_server, run_dir, mode="joint")
    coder.kinds.clear()
    prompts = _candidate(tmp_path, "solve_and_test_joint", "Answer carefully.")
    result = run_kodcode("iterate", "--db", str(db), "--stage", "solver", "--prompts", str(prompts),
                         "--sample", "2", "--no-baseline", "--json")
    assert result.returncode == 0, result.stderr
    assert coder.kinds == Counter({"joint": 2})
    assert [(a["arm"], a["passed"]) for a in json.loads(result.stdout)["arms"]] == [("candidate", 2)]
    tester = run_kodcode("iterate", "--db", str(db), "--stage", "tester", "--prompts", str(prompts))
    assert tester.returncode == 2 and "joint mode" in tester.stderr


def test_iteration_refuses_what_it_cannot_compare(fake_coder_server, run_dir: Path, tmp_path: Path) -> None:
    coder, server, db = _verified_store(fake_coder_server, run_dir)
    unchanged = _candidate(tmp_path, "test_split", MARKER)   # changes the tester's prompt, not the solver's
    result = run_kodcode("iterate", "--db", str(db), "--stage", "solver", "--prompts", str(unchanged))
    assert result.returncode == 2 and "does not change solve.j2" in result.stderr
    missing = run_kodcode("iterate", "--db", str(run_dir / "nothing.db"), "--stage", "solver",
                          "--prompts", str(unchanged))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "solve.j2").write_text("{% block user %}{{ question }{% endblock %}")
    bad = run_kodcode("iterate", "--db", str(db), "--stage", "solver", "--prompts", str(broken))
    assert bad.returncode == 2 and "solve.j2" in bad.stderr
    assert query(db, "SELECT COUNT(*) FROM prompt_trials")[0][0] == 0

"""Post-training data: reasoning responses kept by test-based reject sampling, re-verified style variants,
and exports for SFT and RL that load with the declared schema."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.json as pa_json
import pyarrow.parquet as pq
import pytest

from fake_coder import CATALOGUE
from helpers import query, run_kodcode

MODES = ["renamed", "helpers", "ambiguous", "wrong", "unfinished", "ok"]
SCRIPT = {
    # Every variant's six samples take every shape once.
    "reasoning_script": {p.name: MODES for p in CATALOGUE},
    "drift_rewrite": {p.name for p in CATALOGUE[::2]},
}


@pytest.fixture
def post_training_run(fake_coder_server, run_dir: Path) -> Path:
    _coder, server = fake_coder_server(**SCRIPT)
    db = run_dir / "kc.db"
    result = run_kodcode("run", "--base-url", server.base_url, "--target", "4", "--concurrency", "3",
                         "--reasoning-samples", "6", "--db", str(db))
    assert result.returncode == 0, result.stderr
    return db


def test_reasoning_responses_are_kept_only_when_their_tests_pass(post_training_run: Path) -> None:
    db = post_training_run
    rows = query(db, "SELECT item_id, style, sample, passed, reason, renamed_from, code FROM responses")
    verified_variants = query(db, "SELECT COUNT(*) FROM items WHERE state='verified'")[0][0] + \
        query(db, "SELECT COUNT(*) FROM rewrites WHERE state='verified'")[0][0]
    assert len(rows) == 6 * verified_variants, "every verified question and variant gets its samples"
    by_reason: dict[str, list[tuple]] = {}
    for row in rows:
        by_reason.setdefault("pass" if row[3] else (row[4] or "").split(":")[0], []).append(row)
    passing = by_reason["pass"]
    # One function with another name: renamed to the entry point, then it passes.
    assert sum(r[5] == "solve" for r in passing) == verified_variants
    # A helper plus one public function: the public one is the unambiguous answer.
    assert sum(r[5] == "answer" for r in passing) == verified_variants
    # Already named right: passes untouched.
    assert sum(r[5] is None for r in passing) == verified_variants
    assert len(passing) == 3 * verified_variants
    # Two candidates: never guessed, recorded as a mismatch.
    assert all(not r[3] for r in by_reason["entry point mismatch"])
    assert any("first, second" in r[4] for r in by_reason["entry point mismatch"])
    # Wrong code fails its tests; an unfinished trace has no answer.
    assert any(r[4].startswith("failed: test_") for r in by_reason["failed"])
    assert "no answer after the reasoning trace" in by_reason


def test_rewrites_whose_signature_drifts_are_rejected(post_training_run: Path) -> None:
    rewrites = query(post_training_run, "SELECT state, reason, question FROM rewrites")
    assert rewrites
    rejected = [r for r in rewrites if r[0] == "rejected"]
    verified = [r for r in rewrites if r[0] == "verified"]
    assert rejected and verified
    assert all(reason.startswith("signature drift") for _, reason, _ in rejected)
    for _, _, question in verified:
        assert '"""' in question and "return" not in question.split('"""')[-1]


def test_exports_round_trip_with_their_schema(post_training_run: Path, tmp_path: Path) -> None:
    db = post_training_run
    out = tmp_path / "export"
    assert run_kodcode("export", "--db", str(db), "--out", str(out / "v1.jsonl"), "--card").returncode == 0
    v1 = pa_json.read_json(out / "v1.jsonl").to_pylist()
    assert v1 and {"question_id", "reasoning_pass_sequence", "reasoning_correctness", "trials"} <= v1[0].keys()
    card = (out / "README.md").read_text()
    assert "data_files: v1.jsonl" in card and "| instruct |" in card

    assert run_kodcode("export", "--db", str(db), "--out", str(out / "sft.parquet"), "--kind", "sft").returncode == 0
    sft = pq.read_table(out / "sft.parquet")
    assert {"question_id", "messages", "source"} <= set(sft.schema.names)
    for row in sft.to_pylist():
        messages = json.loads(row["messages"])
        assert [m["role"] for m in messages] == ["user", "assistant"]
        if row["source"] == "reasoning":
            assert "</think>" in messages[1]["content"]
    # Questions whose every response failed are left out of SFT data.
    failing = {r["question_id"] for r in v1 if r.get("reasoning_correctness") is False}
    assert failing.isdisjoint(sft.column("question_id").to_pylist())

    assert run_kodcode("export", "--db", str(db), "--out", str(out / "sft-notrace.jsonl"), "--kind", "sft",
                       "--no-reasoning-trace").returncode == 0
    for line in (out / "sft-notrace.jsonl").read_text().splitlines():
        assert "<think>" not in json.loads(line)["messages"][1]["content"]

    assert run_kodcode("export", "--db", str(db), "--out", str(out / "rl.jsonl"), "--kind", "rl",
                       "--style", "instruct").returncode == 0
    rl = [json.loads(line) for line in (out / "rl.jsonl").read_text().splitlines()]
    assert rl and all(r["style"] == "instruct" and r["entry_point"] in r["tests"] for r in rl)

    assert run_kodcode("export", "--db", str(db), "--out", str(out / "hard.jsonl"), "--difficulty", "hard").returncode == 0
    assert all(json.loads(line)["gpt_difficulty"] == "hard" for line in (out / "hard.jsonl").read_text().splitlines())


def test_kept_answers_carry_the_renamed_code(post_training_run: Path) -> None:
    rows = query(post_training_run, "SELECT response, code, renamed_from FROM responses WHERE passed=1 AND renamed_from IS NOT NULL")
    assert rows
    for response, code, renamed_from in rows:
        answer = response.rpartition("</think>")[2]
        assert f"def {renamed_from}(" not in answer and code.strip() in answer

"""End to end: `python -m kodcode.run` against a scripted OpenAI-protocol server, then `kodcode.export`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import query, run_kodcode

V1_FIELDS = {"style", "subset", "question_id", "question", "solution", "test", "test_info", "gpt_pass_sequence",
             "gpt_pass_trial_num", "gpt_difficulty", "gpt_pass_percentage", "trials", "chosen_trial", "metadata"}


def test_run_reaches_target_and_exports_v1_rows(fake_coder_server, run_dir: Path) -> None:
    coder, server = fake_coder_server(fail_first={"sum_of_evens": 2, "reverse_words": 1},
                                      broken_format={"count_vowels"})
    db = run_dir / "kc.db"
    result = run_kodcode("run", "--base-url", server.base_url, "--target", "5", "--concurrency", "4",
                         "--mode", "split", "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert "target reached" in result.stdout
    verified = query(db, "SELECT COUNT(*) FROM items WHERE state='verified'")[0][0]
    assert verified >= 5
    # Split mode: every attempt that got a solution had its tests written by a separate call.
    assert coder.kinds["solve"] > 0 and coder.kinds["tests"] > 0 and coder.kinds["joint"] == 0
    assert server.internal_errors == [] and server.responder_errors == []

    out = run_dir / "out.jsonl"
    exported = run_kodcode("export", "--db", str(db), "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    instruct = [row for row in rows if row["style"] == "instruct"]
    assert len(instruct) == verified
    for row in rows:
        assert V1_FIELDS <= row.keys()
        assert row["trials"][row["chosen_trial"]]["test_result"] == "Pass"
        assert row["gpt_pass_trial_num"] == sum(row["gpt_pass_sequence"]) >= 1
        assert row["gpt_difficulty"] in ("easy", "medium", "hard")
        assert row["test_info"][0]["function_name"] in row["solution"]
        assert row["metadata"]["models"]["solver"] == "scripted-model"
        assert len(row["metadata"]["prompt_hashes"]["solve"]) == 12
    complete = [row for row in rows if row["style"] == "complete"]
    assert complete, "verified items are rewritten into completion questions"
    for row in complete:
        assert row["question_id"].endswith("_C")
        assert row["question"].lstrip().startswith(("def ", "from ", "import "))
        assert row["metadata"]["original_instruction"]
    # An item whose first solutions were wrong needed more attempts and still got verified.
    sequences = {row["question"]: row["gpt_pass_sequence"] for row in instruct}
    for question, sequence in sequences.items():
        if "sum of all even integers" in question:
            assert sequence[:2] == [0, 0] and 1 in sequence


def test_joint_mode_uses_one_call_per_attempt(fake_coder_server, run_dir: Path) -> None:
    coder, server = fake_coder_server()
    db = run_dir / "kc.db"
    result = run_kodcode("run", "--base-url", server.base_url, "--target", "2", "--concurrency", "2",
                         "--mode", "joint", "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert coder.kinds["joint"] > 0 and coder.kinds["solve"] == 0 and coder.kinds["tests"] == 0
    rows = query(db, "SELECT a.tests FROM attempts a JOIN items i USING(item_id) WHERE i.state='verified'")
    assert rows and all("from solution import" in tests for (tests,) in rows)


def test_failed_questions_are_stored_with_reasons(fake_coder_server, run_dir: Path) -> None:
    # Every problem's solutions are wrong: nothing can be verified, and every attempt says why.
    from fake_coder import CATALOGUE

    coder, server = fake_coder_server(fail_first={p.name: 99 for p in CATALOGUE},
                                      broken_format={p.name for p in CATALOGUE})
    db = run_dir / "kc.db"
    result = run_kodcode("run", "--base-url", server.base_url, "--target", "1", "--concurrency", "2",
                         "--max-attempts", "3", "--budget-calls", "40", "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert "budget-calls reached" in result.stdout
    failed = query(db, "SELECT item_id, reason, pass_sequence FROM items WHERE state='failed'")
    assert failed, "questions that exhaust their attempts are stored as failed"
    for _item, reason, sequence in failed:
        assert reason and json.loads(sequence) == [0] * len(json.loads(sequence))
    reasons = {row[0] for row in query(db, "SELECT reason FROM attempts WHERE state='judged'")}
    assert any(r.startswith("solver output unusable: missing <|Solution Begin|>") for r in reasons)
    assert any(r.startswith("failed: test_") for r in reasons)
    assert query(db, "SELECT COUNT(*) FROM items WHERE state='verified'")[0][0] == 0


def test_llm_faults_are_retried_and_logged(fake_coder_server, run_dir: Path) -> None:
    from scripted_openai import FailFirst, Fault

    coder, server = fake_coder_server(server={"faults": FailFirst(Fault.http_error(500), times=1)})
    db = run_dir / "kc.db"
    result = run_kodcode("run", "--base-url", server.base_url, "--target", "2", "--concurrency", "2", "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert query(db, "SELECT COUNT(*) FROM items WHERE state='verified'")[0][0] >= 2
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    retries = [e for e in events if e["event"] == "llm_retry"]
    assert retries and all("500" in e["error"] for e in retries)
    # Every call was answered with a 500 once and then once for real; none was paid twice.
    assert set(server.completed_hashes.values()) == {1}


UNREACHABLE = "http://127.0.0.1:9/v1"


@pytest.mark.parametrize("args, message", [
    (["--target", "0", "--base-url", UNREACHABLE], "config key 'target'"),
    (["--base-url", UNREACHABLE], "cannot reach --base-url http://127.0.0.1:9/v1"),
    (["--seeds", "/nonexistent/seeds.jsonl", "--base-url", UNREACHABLE], "seed file /nonexistent/seeds.jsonl does not exist"),
    (["--embedded-model", "1.5b", "--base-url", UNREACHABLE], "--embedded-model and --base-url conflict"),
])
def test_bad_input_gets_one_line_and_exit_2(args: list[str], message: str, run_dir: Path) -> None:
    result = run_kodcode("run", "--db", str(run_dir / "kc.db"), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_reaching_the_target_abandons_slow_attempts_after_the_grace(scripted_server, run_dir: Path) -> None:
    """Attempts in flight when the target is reached get --grace seconds, then wait for the next run; the
    run does not sit on a slow model's calls that cannot change its result, and loses nothing."""
    import threading

    from fake_coder import FakeCoder, problem_for
    from scripted_openai import Reply

    coder = FakeCoder()
    fast: list[str] = []
    lock = threading.Lock()

    def slow_but_one(request):
        answer = coder(request)
        problem = problem_for(request.user, coder.problems)
        if coder.kind(request) not in ("solve", "tests") or problem is None:
            return answer
        with lock:
            if not fast:
                fast.append(problem.name)
        # Every question but the first answers only after two minutes: far beyond the grace.
        return answer if problem.name == fast[0] else Reply(answer, delay=120.0)

    server = scripted_server(slow_but_one)
    db = run_dir / "kc.db"
    result = run_kodcode("run", "--base-url", server.base_url, "--target", "1", "--concurrency", "3",
                         "--mode", "split", "--grace", "1", "--db", str(db), timeout=90)
    assert result.returncode == 0, result.stderr
    assert "target reached: 1 verified" in result.stdout
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    abandoned = [e for e in events if e["event"] == "abandoned_in_flight"]
    assert abandoned and all(e["busy"] + e["queued"] >= 1 for e in abandoned)
    assert query(db, "PRAGMA integrity_check")[0][0] == "ok"
    open_items = query(db, "SELECT COUNT(*) FROM items WHERE state='open'")[0][0]
    assert open_items >= 1
    # The next run, on a server that answers at once, takes the abandoned attempts up where they were.
    again = run_kodcode("run", "--base-url", scripted_server(FakeCoder()).base_url, "--target", str(1 + open_items),
                        "--concurrency", "3", "--mode", "split", "--db", str(db), timeout=120)
    assert again.returncode == 0, again.stderr
    assert query(db, "SELECT COUNT(*) FROM items WHERE state='verified'")[0][0] >= 1 + open_items

"""Kill -9 and resume: nothing verified is lost, nothing is duplicated, no completed LLM call is re-sent."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

from helpers import query, run_kodcode, start_kodcode
from scripted_openai import canonical_body_hash

SCRIPT = {"fail_first": {"sum_of_evens": 2, "reverse_words": 1, "count_vowels": 3}}


def verified_items(db: Path) -> dict[str, tuple[str, int, str]]:
    rows = query(db, "SELECT item_id, question, chosen_attempt, pass_sequence FROM items WHERE state='verified'")
    return {item: (question, chosen, sequence) for item, question, chosen, sequence in rows}


def recorded_call_hashes(db: Path) -> set[str]:
    """The server-side hash of every call the client had recorded as completed."""
    return {canonical_body_hash(json.loads(request)[1]) for (request,) in query(db, "SELECT request FROM llm_calls")}


class KillSwitch:
    """Fires once the scripted server has received `threshold` requests in total."""

    def __init__(self) -> None:
        self.coder = None
        self.threshold: int | None = None
        self.reached = threading.Event()

    def arm(self, more: int) -> None:
        self.threshold = sum(self.coder.kinds.values()) + more
        self.reached = threading.Event()

    def __call__(self, _kind: str, _request) -> None:
        if self.threshold is not None and sum(self.coder.kinds.values()) >= self.threshold:
            self.reached.set()


def scripted_fleet(fake_coder_server) -> tuple:
    switch = KillSwitch()
    coder, server = fake_coder_server(**SCRIPT, on_request=switch)
    switch.coder = coder
    return switch, server


def run_until_killed(switch: KillSwitch, server, db: Path, args: list[str], more: int,
                     sig: int = signal.SIGKILL) -> int:
    switch.arm(more)
    process = start_kodcode("run", "--base-url", server.base_url, "--db", str(db), *args,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert switch.reached.wait(120), "the run never reached the kill point"
        process.send_signal(sig)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_verified_items(fake_coder_server, tmp_path: Path) -> None:
    # Concurrency 1 makes a run deterministic, so the resumed run must equal the uninterrupted one exactly.
    args = ["--target", "5", "--concurrency", "1", "--mode", "split"]
    _coder, reference_server = fake_coder_server(**SCRIPT)
    reference_db = tmp_path / "reference.db"
    done = run_kodcode("run", "--base-url", reference_server.base_url, "--db", str(reference_db), *args)
    assert done.returncode == 0, done.stderr
    reference_calls = sum(reference_server.completed_hashes.values())

    db = tmp_path / "killed.db"
    switch, server = scripted_fleet(fake_coder_server)
    assert run_until_killed(switch, server, db, args, more=reference_calls // 2) == -signal.SIGKILL
    before = recorded_call_hashes(db)
    assert 0 < len(before) < reference_calls
    assert query(db, "PRAGMA integrity_check")[0][0] == "ok"

    resumed = run_kodcode("run", "--base-url", server.base_url, "--db", str(db), *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "from cache" in resumed.stdout
    assert verified_items(db) == verified_items(reference_db)
    # No call the killed run had completed was sent again; only the one in flight at the kill may repeat.
    assert all(server.completed_hashes[h] == 1 for h in before)
    assert sum(count - 1 for count in server.completed_hashes.values()) <= 1
    ids = [row[0] for row in query(db, "SELECT item_id FROM items")]
    assert len(ids) == len(set(ids))
    assert query(db, "PRAGMA integrity_check")[0][0] == "ok"


@pytest.mark.slow
def test_repeated_kills_at_concurrency_lose_and_duplicate_nothing(fake_coder_server, tmp_path: Path) -> None:
    args = ["--target", "6", "--concurrency", "4", "--mode", "split"]
    db = tmp_path / "kc.db"
    switch, server = scripted_fleet(fake_coder_server)
    snapshots: list[tuple[set[str], Counter]] = []
    kills = 0
    for more in (6, 10, 10):
        if run_until_killed(switch, server, db, args, more=more) == -signal.SIGKILL:
            kills += 1
        snapshots.append((recorded_call_hashes(db), Counter(server.completed_hashes)))
        assert query(db, "PRAGMA integrity_check")[0][0] == "ok"
    assert kills >= 2
    resumed = run_kodcode("run", "--base-url", server.base_url, "--db", str(db), *args)
    assert resumed.returncode == 0, resumed.stderr
    # A call the store held at a kill is never sent again after it.
    for recorded, counts_then in snapshots:
        assert all(server.completed_hashes[h] == counts_then[h] for h in recorded)
    # At most the calls in flight at each kill (concurrency 4) were sent twice.
    assert sum(count - 1 for count in server.completed_hashes.values()) <= 4 * kills
    assert len(verified_items(db)) >= 6
    out = tmp_path / "out.jsonl"
    assert run_kodcode("export", "--db", str(db), "--out", str(out)).returncode == 0
    question_ids = [json.loads(line)["question_id"] for line in out.read_text().splitlines()]
    assert len(question_ids) == len(set(question_ids))
    # Every attempt has one row, numbered without gaps.
    for item, attempts, top in query(db, "SELECT item_id, COUNT(*), MAX(attempt) FROM attempts GROUP BY item_id"):
        assert attempts == top, item
    assert query(db, "PRAGMA integrity_check")[0][0] == "ok"

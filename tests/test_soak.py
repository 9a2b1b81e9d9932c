"""Crash soak: a run killed at many random moments (SIGKILL, and SIGTERM with a graceful stop) and resumed
each time ends with exactly the export of an uninterrupted run, a sound store and no completed LLM call
paid for twice; an export killed mid-write leaves the old file or a complete one, never a torn one.

`soak()` is the engine; benchmarks/soak.py drives it with more kills and bigger targets.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fake_coder import FakeCoder
from helpers import query, run_kodcode, start_kodcode
from scripted_openai import Reply, ScriptedOpenAIServer, ScriptedRequest, canonical_body_hash

__all__ = ["IdempotentCoder", "SoakResult", "export_rows", "recorded_call_hashes", "soak", "uninterrupted"]

SCRIPT = {"fail_first": {"sum_of_evens": 2, "reverse_words": 1, "count_vowels": 3}}
RUN_ARGS = ["--concurrency", "1", "--mode", "split", "--grace", "20"]


class IdempotentCoder:
    """The fake coder behind a memo: the same request body always gets the same answer.

    A real server with a fixed seed behaves so, and it keeps the scripted model's own counters (k-th
    solution is wrong) from drifting when a call that was in flight at a kill is sent again. It also
    counts requests and fires `reached` once `arm(n)` more have arrived: the kill switch."""

    def __init__(self, coder: FakeCoder) -> None:
        self._coder = coder
        self._answers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.received = 0
        self._threshold: int | None = None
        self.reached = threading.Event()

    def arm(self, more: int) -> None:
        with self._lock:
            self._threshold = self.received + more
            self.reached = threading.Event()

    def __call__(self, request: ScriptedRequest) -> Reply | str:
        with self._lock:
            self.received += 1
            if self._threshold is not None and self.received >= self._threshold:
                self.reached.set()
            answer = self._answers.get(request.body_hash)
        if answer is None:
            answer = self._coder(request)
            with self._lock:
                answer = self._answers.setdefault(request.body_hash, answer)
        return answer


def recorded_call_hashes(db: Path) -> set[str]:
    """The server-side hash of every call the store holds as completed."""
    if not db.exists():
        return set()
    return {canonical_body_hash(json.loads(request)[1]) for (request,) in query(db, "SELECT request FROM llm_calls")}


def export_rows(db: Path, out: Path) -> list[dict[str, Any]]:
    done = run_kodcode("export", "--db", str(db), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def comparable(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What must match between an interrupted and an uninterrupted run (timings and run ids may not)."""
    return sorted((row["question_id"], row["style"], row["question"], row["solution"], row["test"],
                   row["chosen_trial"], tuple(row["gpt_pass_sequence"]), row["gpt_difficulty"]) for row in rows)


def start_server(script: dict[str, Any] = SCRIPT) -> tuple[IdempotentCoder, ScriptedOpenAIServer]:
    coder = IdempotentCoder(FakeCoder(**script))
    return coder, ScriptedOpenAIServer(coder).start()


def uninterrupted(db: Path, target: int) -> subprocess.Popen[str]:
    """Start the reference run on its own server; the caller waits on it (it runs beside the soak)."""
    _coder, server = start_server()
    process = start_kodcode("run", "--base-url", server.base_url, "--db", str(db), "--target", str(target),
                            *RUN_ARGS, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.server = server  # type: ignore[attr-defined]  # stopped by the caller once the run is done
    return process


@dataclass
class SoakResult:
    kills: int = 0                 # SIGKILLs that landed while the run was working
    terms: int = 0                 # SIGTERMs that ended in a graceful exit 143 (128 + SIGTERM)
    resumes: int = 0               # runs started on an existing store
    finished_early: int = 0        # runs that reached the target before their kill point
    resent: int = 0                # completed calls the server answered more than once
    resent_after_recorded: list[str] = field(default_factory=list)   # calls re-sent after the store held them
    integrity: list[str] = field(default_factory=list)
    stderr_tracebacks: int = 0
    server_counts: Counter = field(default_factory=Counter)


def soak(db: Path, *, target: int, kills: int, seed: int, term_share: float = 0.2, max_requests: int = 5,
         max_jitter_s: float = 0.4, on_progress: Callable[[str], None] | None = None) -> SoakResult:
    """Run to `target` on `db`, interrupting it `kills` times at seeded random moments, then finish it."""
    rng = random.Random(seed)
    coder, server = start_server()
    result = SoakResult()
    snapshots: list[tuple[set[str], Counter]] = []
    try:
        for number in range(kills):
            sig = signal.SIGTERM if rng.random() < term_share else signal.SIGKILL
            more, jitter = rng.randint(1, max_requests), rng.uniform(0, max_jitter_s)
            if db.exists():
                result.resumes += 1
            coder.arm(more)
            process = start_kodcode("run", "--base-url", server.base_url, "--db", str(db), "--target", str(target),
                                    *RUN_ARGS, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                while not coder.reached.wait(0.05):
                    if process.poll() is not None:
                        break
                if process.poll() is None:
                    time.sleep(jitter)
                    process.send_signal(sig)
                _out, err = process.communicate(timeout=120)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            result.stderr_tracebacks += "Traceback" in err
            if process.returncode == -signal.SIGKILL:
                result.kills += 1
            elif sig == signal.SIGTERM and process.returncode == 128 + signal.SIGTERM and "SIGTERM" in err:
                result.terms += 1
            elif process.returncode == 0:
                result.finished_early += 1
            else:
                raise AssertionError(f"run {number} ended with {process.returncode} after {sig.name}: {err[-2000:]}")
            snapshots.append((recorded_call_hashes(db), server.completed_hashes))
            result.integrity.append(query(db, "PRAGMA integrity_check")[0][0] if db.exists() else "ok")
            if on_progress is not None:
                on_progress(f"{number + 1}/{kills}: {sig.name} after {more} requests -> rc {process.returncode}")
            if process.returncode == 0 and "target reached" in _out:
                break
        result.resumes += 1
        final = run_kodcode("run", "--base-url", server.base_url, "--db", str(db), "--target", str(target), *RUN_ARGS)
        assert final.returncode == 0, final.stderr
        counts = server.completed_hashes
        result.server_counts = counts
        result.resent = sum(count - 1 for count in counts.values())
        for recorded, counts_then in snapshots:
            result.resent_after_recorded += [h for h in recorded if counts[h] != counts_then[h]]
        result.integrity.append(query(db, "PRAGMA integrity_check")[0][0])
    finally:
        server.stop()
    return result


@pytest.mark.slow
def test_twenty_random_kills_end_in_the_uninterrupted_export(tmp_path: Path) -> None:
    # Long enough for twenty interruptions to land while the run works: with the execution matrix, label
    # attempts need no Tester call, so a run makes fewer requests per verified item than it used to.
    target = 14
    reference_db = tmp_path / "reference" / "kc.db"
    reference = uninterrupted(reference_db, target)
    try:
        db = tmp_path / "soak" / "kc.db"
        result = soak(db, target=target, kills=20, seed=13)
        reference.communicate(timeout=300)
    finally:
        if reference.poll() is None:
            reference.kill()
        reference.server.stop()
    assert reference.returncode == 0

    assert result.kills + result.terms >= 15, result   # the kills landed while the run was working
    assert result.kills >= 10 and result.terms >= 1, result
    assert result.stderr_tracebacks == 0
    assert set(result.integrity) == {"ok"}
    # No call the store held at an interruption was ever sent again; only a call in flight at a SIGKILL
    # (one at a time: concurrency 1) may have been answered twice.
    assert result.resent_after_recorded == []
    assert result.resent <= result.kills

    rows = export_rows(db, tmp_path / "soak.jsonl")
    reference_rows = export_rows(reference_db, tmp_path / "reference.jsonl")
    assert comparable(rows) == comparable(reference_rows)
    ids = [row["question_id"] for row in rows]
    assert len(ids) == len(set(ids)) and len(rows) >= target
    # The same question is never stored twice as live work, and the store holds as many verified items.
    assert query(db, "SELECT question FROM items WHERE state IN ('open', 'verified', 'failed') "
                     "GROUP BY question HAVING COUNT(*) > 1") == []
    assert query(db, "SELECT COUNT(*) FROM items WHERE state='verified'") == \
        query(reference_db, "SELECT COUNT(*) FROM items WHERE state='verified'")
    # Attempts are numbered without gaps: a killed attempt is taken up again, not started anew.
    for item, attempts, top in query(db, "SELECT item_id, COUNT(*), MAX(attempt) FROM attempts GROUP BY item_id"):
        assert attempts == top, item


# -- export killed mid-write ------------------------------------------------------------------------

def amplify(db: Path, copies: int) -> int:
    """Copy every verified item (with its attempts and rewrites) `copies` times: a big store, fast."""
    conn = sqlite3.connect(db)
    try:
        originals = [row[0] for row in conn.execute("SELECT item_id FROM items WHERE state='verified'")]
        marks = ", ".join("?" * len(originals))
        top = conn.execute("SELECT MAX(seq) FROM items").fetchone()[0]
        with conn:
            for copy in range(1, copies + 1):
                renamed = {"item_id": f"item_id || '_x{copy}'", "seq": f"seq + {copy * (top + 1)}"}
                for table in ("items", "attempts", "rewrites"):
                    names = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
                    select = ", ".join(renamed.get(name, name) for name in names)
                    conn.execute(f"INSERT INTO {table}({', '.join(names)}) SELECT {select} FROM {table} "
                                 f"WHERE item_id IN ({marks})", originals)
        return conn.execute("SELECT COUNT(*) FROM items WHERE state='verified'").fetchone()[0]
    finally:
        conn.close()


@pytest.mark.slow
def test_export_killed_mid_write_leaves_the_old_file_or_a_complete_one(tmp_path: Path) -> None:
    _coder, server = start_server()
    db = tmp_path / "kc.db"
    try:
        done = run_kodcode("run", "--base-url", server.base_url, "--db", str(db), "--target", "2", *RUN_ARGS)
        assert done.returncode == 0, done.stderr
    finally:
        server.stop()
    verified = amplify(db, 1500)
    assert verified >= 3000
    out = tmp_path / "data.jsonl"
    full = export_rows(db, out)
    expected_lines = len(full)
    old = "old export\n"
    rng = random.Random(7)
    outcomes: Counter = Counter()
    for _ in range(6):
        out.write_text(old, encoding="utf-8")
        process = start_kodcode("export", "--db", str(db), "--out", str(out),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Wait for the temporary file (the write has begun), then kill it a random moment later.
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline and not list(tmp_path.glob(".data.jsonl.*")):
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        process.kill()
        process.wait()
        text = out.read_text(encoding="utf-8")
        if text == old:
            outcomes["old"] += 1
        else:
            lines = text.splitlines()
            assert len(lines) == expected_lines and all(json.loads(line) for line in lines)
            outcomes["complete"] += 1
        for leftover in tmp_path.glob(".data.jsonl.*"):
            leftover.unlink()          # what a SIGKILLed export cannot clean up: never under the real name
    assert outcomes["old"] >= 1, outcomes

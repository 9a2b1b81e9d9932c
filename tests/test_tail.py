"""`python -m kodcode.tail`: history, filters, --json passthrough, and following a file another process
appends to (partial lines, truncation, rotation), as a user would run it."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from helpers import kodcode_env, start_kodcode
from kodcode.tail import EventFilter, LogFollower, history, render_event, resolve_events_path

WAIT_S = 30.0   # a generous ceiling for output to arrive, never a timing assertion


def event(name: str, **fields: Any) -> dict[str, Any]:
    return {"event": name, "run_id": "r1", "level": fields.pop("level", "info"),
            "ts": "2026-01-02T03:04:05.678901Z", **fields}


def line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


SAMPLE = [
    event("run_started", target=3),
    event("question_proposed", agent="proposer", item_id="Prefill_1", subset="Prefill", state="open"),
    event("attempt_judged", agent="judge", item_id="Prefill_1", attempt=1, passed=False, reason="failed: test_a, test_b"),
    event("llm_retry", level="warning", role="solver", item_id="Prefill_2", attempt=1, error="HTTP 429"),
    event("item_settled", agent="scheduler", item_id="Prefill_12", attempt=2, state="verified", difficulty="easy"),
    event("handler_error", level="error", agent="tester", item_id="Prefill_3", attempt=1, error="boom"),
    event("rewrite_done", agent="rewriter", item_id="Prefill_1", style="complete", state="verified"),
    event("run_finished", status="completed"),
]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "events.jsonl"
    path.parent.mkdir()
    path.write_text("".join(line(r) for r in SAMPLE))
    return path


def run_tail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kodcode.tail", *args], capture_output=True, text=True,
                          timeout=60, env=kodcode_env())


def events_of(output: str) -> list[str]:
    return [json.loads(raw)["event"] for raw in output.splitlines()]


# -- history and filters --------------------------------------------------------------------------------------

def test_history_shows_last_n_lines(log_file: Path) -> None:
    result = run_tail(str(log_file), "--no-follow", "-n", "3", "--json")
    assert result.returncode == 0, result.stderr
    assert events_of(result.stdout) == ["handler_error", "rewrite_done", "run_finished"]


def test_json_passes_lines_through_unchanged(log_file: Path) -> None:
    result = run_tail(str(log_file.parent), "--no-follow", "-n", "100", "--json")
    assert result.stdout == log_file.read_text()


@pytest.mark.parametrize(("args", "expected"), [
    (["--agent", "judge"], ["attempt_judged"]),
    (["--agent", "solver,tester"], ["llm_retry", "handler_error"]),
    (["--item", "Prefill_1"], ["question_proposed", "attempt_judged", "item_settled", "rewrite_done"]),
    (["--event", "run_started", "--event", "rewrite_*,item_settled"], ["run_started", "item_settled", "rewrite_done"]),
    (["--level", "warning"], ["llm_retry", "handler_error"]),
    (["--grep", "test_b"], ["attempt_judged"]),
    (["--item", "Prefill_1", "--event", "attempt_judged,rewrite_done"], ["attempt_judged", "rewrite_done"]),
])
def test_filters(log_file: Path, args: list[str], expected: list[str]) -> None:
    result = run_tail(str(log_file), "--no-follow", "-n", "100", "--json", *args)
    assert result.returncode == 0, result.stderr
    assert events_of(result.stdout) == expected


def test_history_counts_matching_lines_only(log_file: Path) -> None:
    result = run_tail(str(log_file), "--no-follow", "-n", "2", "--json", "--item", "Prefill_1")
    assert events_of(result.stdout) == ["item_settled", "rewrite_done"]


def test_history_reads_backwards_across_blocks(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    records = [event("progress", verified=n, padding="x" * 50) for n in range(400)]
    path.write_text("".join(line(r) for r in records) + '{"event":"half-writ')
    keep = EventFilter(grep='"verified":3').matches
    with path.open("rb") as handle:
        found, start = history(handle, 5, lambda raw: keep(raw, None), block=256)
    assert [json.loads(raw)["verified"] for raw in found] == [395, 396, 397, 398, 399]
    # Following resumes at the start of the unfinished line, so it is printed once it is complete.
    assert start == path.stat().st_size - len('{"event":"half-writ')


def test_readable_rendering_without_colour(log_file: Path) -> None:
    result = run_tail(str(log_file), "--no-follow", "-n", "100")   # stdout is a pipe: no colour
    assert "\x1b[" not in result.stdout
    judged = next(row for row in result.stdout.splitlines() if "attempt_judged" in row)
    assert judged.split()[:5] == ["03:04:05.678", "INFO", "judge", "Prefill_1#1", "attempt_judged"]
    assert "passed=False" in judged and "reason='failed: test_a, test_b'" in judged
    assert "run_id" not in judged


def test_colour_marks_levels_and_outcomes() -> None:
    failed = render_event(event("attempt_judged", item_id="a", attempt=1, passed=False), color=True)
    passed = render_event(event("attempt_judged", item_id="a", attempt=1, passed=True), color=True)
    error = render_event(event("handler_error", level="error", agent="solver"), color=True)
    assert "\x1b[31mattempt_judged" in failed and "\x1b[1;32mattempt_judged" in passed
    assert "\x1b[1;31mERRO" in error
    assert "\x1b[" not in render_event(event("attempt_judged", passed=True), color=False)


def test_paths_resolve_to_the_events_file(tmp_path: Path) -> None:
    assert resolve_events_path(tmp_path) == tmp_path / "events.jsonl"
    assert resolve_events_path(tmp_path / "kc.db") == tmp_path / "events.jsonl"
    assert resolve_events_path(tmp_path / "old.jsonl") == tmp_path / "old.jsonl"
    assert resolve_events_path(tmp_path / "not_yet") == tmp_path / "not_yet" / "events.jsonl"


def test_missing_log_without_follow_is_an_error(tmp_path: Path) -> None:
    result = run_tail(str(tmp_path / "nothing.jsonl"), "--no-follow")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no event log" in result.stderr


# -- following ------------------------------------------------------------------------------------------------

def test_follower_waits_for_the_newline_and_survives_truncation_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(line(event("a")))
    follower = LogFollower(path)
    assert [json.loads(raw)["event"] for raw in follower.poll()] == ["a"]
    with path.open("a") as handle:
        handle.write('{"event":"b","x":')
    assert follower.poll() == []                          # half a line is never printed
    with path.open("a") as handle:
        handle.write('1}\n')
    assert [json.loads(raw) for raw in follower.poll()] == [{"event": "b", "x": 1}]
    path.write_text(line(event("c")))                      # truncated (and shorter than before)
    assert [json.loads(raw)["event"] for raw in follower.poll()] == ["c"]
    with path.open("a") as handle:
        handle.write(line(event("d")))                     # the old file's last words before rotation
    path.rename(tmp_path / "events.jsonl.1")
    path.write_text(line(event("e")))
    assert [json.loads(raw)["event"] for raw in follower.poll()] == ["d", "e"]
    follower.close()


WRITER = r"""
import os, sys, time
path = sys.argv[1]
def append(text):
    with open(path, "a") as handle:
        handle.write(text)
for command in sys.stdin:
    kind, _, text = command.rstrip("\n").partition(" ")
    if kind == "line":
        append(text + "\n")
    elif kind == "half":
        append(text)
    elif kind == "truncate":
        open(path, "w").close()
    elif kind == "rotate":
        os.replace(path, path + ".1")
    print("ok", flush=True)
"""


class Reader:
    """Lines from a subprocess's stdout, read on a thread so the test can wait with a ceiling."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for raw in stream:
            self.lines.put(raw.rstrip("\n"))

    def next(self) -> str:
        return self.lines.get(timeout=WAIT_S)


def test_follows_a_file_another_process_writes(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(line(event("old", item_id="x_1")))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    tail = start_kodcode("tail", str(path), "-n", "1", "--json", "--item", "x_", stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        out = Reader(tail.stdout)

        def send(command: str) -> None:
            assert writer.stdin is not None and writer.stdout is not None
            writer.stdin.write(command + "\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "ok"

        assert json.loads(out.next())["event"] == "old"
        send("line " + json.dumps(event("skipped", item_id="y_1")))
        send("line " + json.dumps(event("first", item_id="x_1")))
        assert json.loads(out.next())["event"] == "first"       # y_1 was filtered out
        whole = json.dumps(event("split", item_id="x_2", note="written in two chunks"))
        send("half " + whole[:25])
        send("line " + whole[25:])
        assert json.loads(out.next()) == json.loads(whole)
        send("truncate")
        send("line " + json.dumps(event("after_truncate", item_id="x_3")))
        assert json.loads(out.next())["event"] == "after_truncate"
        send("rotate")
        send("line " + json.dumps(event("after_rotate", item_id="x_4")))
        assert json.loads(out.next())["event"] == "after_rotate"
        tail.send_signal(signal.SIGINT)
        assert tail.wait(timeout=WAIT_S) == 0                    # Ctrl-C is a normal way to stop
        assert tail.stderr is not None
        assert "Traceback" not in tail.stderr.read()
    finally:
        for process in (tail, writer):
            if process.poll() is None:
                process.kill()
            process.wait()
        assert writer.stdin is not None
        writer.stdin.close()


def test_waits_for_a_log_that_does_not_exist_yet(tmp_path: Path) -> None:
    path = tmp_path / "later" / "events.jsonl"
    tail = start_kodcode("tail", str(path.parent), "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert tail.stderr is not None
        assert "waiting for" in tail.stderr.readline()
        path.parent.mkdir()
        path.write_text(line(event("born")))
        assert json.loads(Reader(tail.stdout).next())["event"] == "born"
    finally:
        tail.send_signal(signal.SIGINT)
        assert tail.wait(timeout=WAIT_S) == 0

"""The embedded default, for real: `python -m kodcode.run` with no endpoint starts the local llama.cpp server
(the prebuilt xllamacpp runtime in its child process, or a native build where `prepare --native` made one)
with Qwen2.5-Coder-0.5B, makes verified triplets, and never leaves the server behind.

These need `python -m kodcode.embedded prepare` to have run on this machine (README's setup and CI do it);
they fail, not skip, when it has not: the embedded default is the product's first impression.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import query, run_kodcode, start_kodcode
from kodcode.models.files import default_cache_dir
from kodcode.models.native_build import built_server_path

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append((int(entry.name), cmdline))
    return found


def _wait_for_server(process: subprocess.Popen, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-2000:]
        servers = [pid for pid, cmd in _children(process.pid)
                   if "llama-server" in cmd or "kodcode.models.xllamacpp_server" in cmd]
        if servers:
            return servers[0]
        time.sleep(0.2)
    raise AssertionError("the embedded server never started")


def _wait_for_log(log: Path, text: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-2000:]
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {log}")


def _gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True      # dead, waiting for its (dead) parent's reaper
        time.sleep(0.1)
    return False


# Plain one-line tasks (and none a benchmark has, or decontamination would turn them away): the 0.5B model
# writes right tests for these, where its own prefill questions left a run 14 minutes without a verified
# triplet. How many it verifies per hour on real questions is a benchmark's question
# (benchmarks/embedded_speed.py --given), not a test's.
EASY_QUESTIONS = (
    "Write a Python function `double_all(values: list[int]) -> list[int]` that returns a new list with every value multiplied by 2.",
    "Write a Python function `count_spaces(text: str) -> int` that returns how many space characters `text` contains.",
    "Write a Python function `last_item(values: list[int]) -> int` that returns the last element of a non-empty list.",
    "Write a Python function `greet(name: str) -> str` that returns the string 'Hello, ' followed by `name`.",
    "Write a Python function `is_negative(x: int) -> bool` that returns True when `x` is below zero and False otherwise.",
    "Write a Python function `total_length(words: list[str]) -> int` that returns the sum of the lengths of the strings in `words`.",
)


def test_embedded_model_makes_verified_triplets(run_dir: Path) -> None:
    db = run_dir / "kc.db"
    given = run_dir / "easy.jsonl"
    given.write_text("".join(json.dumps({"id": f"easy{i}", "question": q}) + "\n" for i, q in enumerate(EASY_QUESTIONS)))
    # One verified triplet proves the path: real model, real sandbox, matrix and gates, stop at target.
    result = run_kodcode("run", "--given", str(given), "--concurrency", "4", "--target", "1", "--max-attempts", "4",
                         "--db", str(db), timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    assert query(db, "SELECT COUNT(*) FROM items WHERE state='verified'")[0][0] >= 1
    models = {row[0] for row in query(db, "SELECT DISTINCT model FROM llm_calls")}
    assert models == {"qwen2.5-coder-0.5b-instruct"}
    assert "target reached" in result.stdout
    # The server's own log went to the run directory, and it served the OpenAI-compatible routes.
    log = (run_dir / "llama-server.log").read_text(errors="replace")
    assert "/v1/chat/completions" in log or "chat/completions" in log or "slot" in log
    if not built_server_path(default_cache_dir()).exists():
        # No native build here: the run used the prebuilt runtime, which needs no compiler.
        assert "kodcode: xllamacpp server listening" in log


@pytest.mark.parametrize("sig, expected_exit", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130)])
def test_stopping_the_run_leaves_no_server(run_dir: Path, sig: int, expected_exit: int) -> None:
    process = start_kodcode("run", "--concurrency", "2", "--target", "50", "--grace", "1",
                            "--db", str(run_dir / "kc.db"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        server = _wait_for_server(process)
        # Requests in flight when the signal lands: wait for the server to take its first one (a signal during
        # start-up, before kodcode watches signals, is another case).
        _wait_for_log(run_dir / "llama-server.log", "processing task", process)
        os.kill(process.pid, sig)
        process.communicate(timeout=60)
        assert process.returncode == expected_exit
        assert _gone(server), f"llama-server {server} outlived kodcode"
    finally:
        if process.poll() is None:
            process.kill()

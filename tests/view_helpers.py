"""Stores for the kodcode.view tests, made by real runs against the scripted OpenAI-protocol server."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fake_coder import CATALOGUE, FakeCoder, Problem
from helpers import query, run_kodcode, start_kodcode
from scripted_openai import ScriptedOpenAIServer

# A problem whose question, wrong solution and failing test output carry markup a browser would run.
MARKUP = Problem(
    "echo_markup",
    "Write a python function to return the text <script>alert(1)</script> unchanged, even with </textarea> inside.",
    "text", "    return text\n", (("'<b>'", "'<b>'"),),
    wrong_body="    return '</textarea><script>alert(2)</script>'\n")
PROBLEMS = (MARKUP, *CATALOGUE[:8])
RUN_ARGS = ("--concurrency", "3", "--mode", "split")


def view_coder() -> FakeCoder:
    # The first solutions of two problems are wrong: their items have failed attempts with test output.
    return FakeCoder(problems=PROBLEMS, fail_first={"echo_markup": 1, "sum_of_evens": 2})


@dataclass(frozen=True)
class RunStore:
    db: Path
    markup_item: str          # the item whose question contains <script>
    run_stdout: str


def finished_store(directory: Path) -> RunStore:
    """A store left by a completed `kodcode.run` (target 6)."""
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "kc.db"
    with ScriptedOpenAIServer(view_coder()) as server:
        result = run_kodcode("run", "--base-url", server.base_url, "--target", "6", *RUN_ARGS, "--db", str(db))
    assert result.returncode == 0, result.stderr
    found = query(db, "SELECT item_id FROM items WHERE question LIKE '%<script>alert(1)</script>%' ORDER BY seq")
    assert found, "the scripted run proposes the markup question"
    return RunStore(db, found[0][0], result.stdout)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ViewServer:
    url: str
    process: subprocess.Popen[str]


def start_view(db: Path, *, refresh_s: float = 2.0) -> ViewServer:
    """`python -m kodcode.view` in a subprocess, as a user starts it; returns once it answers."""
    port = free_port()
    process = start_kodcode("view", "--db", str(db), "--port", str(port), "--refresh", str(refresh_s),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert f"http://127.0.0.1:{port}/" in line, (line, process.stderr.read() if process.poll() is not None else "")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return ViewServer(url, process)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("kodcode.view did not start listening")


def stop_view(server: ViewServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    for stream in (server.process.stdout, server.process.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture(scope="session")
def run_store(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    """One finished scripted run's store, shared by the view's tests (they only read it)."""
    return finished_store(tmp_path_factory.mktemp("view-run"))


@pytest.fixture
def view_server(run_store: RunStore) -> Iterator[ViewServer]:
    server = start_view(run_store.db)
    yield server
    stop_view(server)

"""LLM faults: a server that answers with seeded 429s, 500s, dropped connections, stalls past the client
timeout, truncated JSON and empty choices still yields the same verified data as a fault-free one, and
every fault is in the log with its retry."""

from __future__ import annotations

import json
import itertools
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

from fake_coder import FakeCoder
from helpers import query, start_kodcode
from scripted_openai import Fault, ScriptedOpenAIServer
from test_soak import RUN_ARGS, SCRIPT, IdempotentCoder, comparable, export_rows

# The client's error text for each fault kind (kodcode.llm.client.OpenAITransport words them).
FAULTS: dict[str, tuple[Fault, str]] = {
    "rate_limited": (Fault.rate_limited("0.05"), "429 rate limited"),
    "http_500": (Fault.http_error(500), "500 from"),
    "drop": (Fault.drop(), "connection to"),
    "stall": (Fault.stall(30), "timeout waiting"),
    "truncated_json": (Fault.truncated_json(), "malformed response"),
    "empty_choices": (Fault.empty_choices(), "empty choices"),
}


class EveryKindInTurn:
    """Every third first-time request gets the next kind of fault, in turn, so every kind is met
    whatever the requests' contents; a retried request (same body) is answered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen = 0
        self._kinds = itertools.cycle([fault for fault, _ in FAULTS.values()])

    def __call__(self, request) -> Fault | None:
        if request.attempt:
            return None
        with self._lock:
            self._seen += 1
            return next(self._kinds) if self._seen % 3 == 0 else None


def fault_name(fault: Fault) -> str:
    return next(name for name, (known, _) in FAULTS.items() if known == fault)


@pytest.mark.slow
def test_faulty_server_yields_the_fault_free_data_and_logs_every_fault(tmp_path: Path) -> None:
    servers = {
        "clean": ScriptedOpenAIServer(IdempotentCoder(FakeCoder(**SCRIPT))).start(),
        "faulty": ScriptedOpenAIServer(IdempotentCoder(FakeCoder(**SCRIPT)), faults=EveryKindInTurn()).start(),
    }
    dbs = {name: tmp_path / name / "kc.db" for name in servers}
    try:
        # Both runs at once: they share nothing but the CPU.
        processes = {name: start_kodcode("run", "--base-url", server.base_url, "--db", str(dbs[name]), "--target", "4",
                                         "--llm-timeout", "1.5", *RUN_ARGS,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                     for name, server in servers.items()}
        outputs = {name: process.communicate(timeout=300) for name, process in processes.items()}
    finally:
        for server in servers.values():
            server.stop()      # also ends the stalls, so their requests are on the record
    for name, process in processes.items():
        assert process.returncode == 0, outputs[name][1]
        assert "Traceback" not in outputs[name][1]

    assert comparable(export_rows(dbs["faulty"], tmp_path / "faulty.jsonl")) == \
        comparable(export_rows(dbs["clean"], tmp_path / "clean.jsonl"))

    faulted = [record for record in servers["faulty"].llm_requests if record.fault is not None]
    injected = Counter(fault_name(record.fault) for record in faulted)
    assert set(injected) == set(FAULTS), injected          # every kind of fault was met
    events = [json.loads(line) for line in (dbs["faulty"].parent / "events.jsonl").read_text().splitlines()]
    retries = [event for event in events if event["event"] == "llm_retry"]
    logged = Counter(next((name for name, (_, text) in FAULTS.items() if text in event["error"]), event["error"])
                     for event in retries)
    assert logged == injected
    # Each faulted call was retried until it was answered, and answered (paid for) exactly once.
    completed = servers["faulty"].completed_hashes
    assert all(completed[record.body_hash] == 1 for record in faulted)
    assert set(completed.values()) == {1}
    assert query(dbs["faulty"], "SELECT COUNT(*) FROM llm_calls") == query(dbs["clean"], "SELECT COUNT(*) FROM llm_calls")

"""Endpoint outages pause the run instead of failing items (issue 21).

Client level: a real scripted OpenAI server that refuses connections (stopped, then restarted on the same
port) or answers 503 for longer than the retry budget; calls wait and finish once it is back, and only
past max_outage do they raise EndpointUnavailable. Run level: `kodcode.run` through an outage ends with the
verified set of a run without one; past --max-outage it stops with exit 75 and a store that resumes; items
an older kodcode failed for a transport reason are retried on resume."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from fake_coder import FakeCoder
from helpers import query, run_kodcode, start_kodcode
from kodcode.errors import EndpointUnavailable, LLMError
from kodcode.llm.client import LLMClient, LLMRequest, OpenAITransport
from scripted_openai import FailFirst, Fault, Reply, ScriptedOpenAIServer, ScriptedRequest
from test_fleet import SamePortServer
from test_soak import RUN_ARGS, SCRIPT, IdempotentCoder, comparable, export_rows


def answer(request: ScriptedRequest) -> Reply:
    return Reply(f"answer to: {request.user}")


def chat(content: str) -> LLMRequest:
    return LLMRequest(role="solver", model="scripted-model", messages=({"role": "user", "content": content},),
                      max_tokens=32)


class Events:
    """Stands in for the structlog logger: keeps every event with its fields."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _keep(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    warning = error = info = _keep

    def named(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.events if event == name]


def client_for(url: str, log: Events, **options: Any) -> LLMClient:
    options = {"concurrency": 4, "max_retries": 1, "backoff_base_s": 0.001, "backoff_cap_s": 0.01,
               "probe_base_s": 0.02, "probe_cap_s": 0.1, **options}
    return LLMClient({"default": OpenAITransport(url, "key", timeout_s=10)}, None, logger=log, **options)


async def wait_until(condition: Any, limit_s: float = 20.0) -> None:
    """Wait for a state change made by another task (a generous bound, not a timing assertion)."""
    for _ in range(int(limit_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


async def test_refused_connections_pause_calls_until_the_endpoint_is_back() -> None:
    server = SamePortServer(answer).start()
    url = server.base_url
    server.stop()                                           # nothing listens: connections are refused
    log = Events()
    client = client_for(url, log)
    try:
        calls = [asyncio.ensure_future(client.complete(chat(f"q{i}"))) for i in range(6)]
        await wait_until(lambda: client.outages() and client.outages()[0].probes >= 3)
        # Far past the 2 tries of the retry budget, nothing has failed: every call waits.
        assert not any(call.done() for call in calls)
        outage = client.outages()[0]
        assert outage.endpoint == url and outage.roles == ("default",)
        assert outage.reason in ("connection refused", "cannot connect")
        assert log.named("endpoint_down") and "waiting for endpoint" in log.named("endpoint_waiting")[0]["message"]
        # The client, not each call, probes: one request at a time while the endpoint is down.
        assert client.statistics()["in_flight"] <= 1

        server.start()
        replies = await asyncio.gather(*calls)
        assert sorted(reply.text for reply in replies) == sorted(f"answer to: q{i}" for i in range(6))
        assert client.outages() == []
        assert len(log.named("endpoint_recovered")) == 1
    finally:
        server.stop()
        await client.aclose()


async def test_a_503_storm_longer_than_the_retry_budget_is_waited_out(scripted_server: Any) -> None:
    server = scripted_server(answer, faults=FailFirst(Fault.http_error(503), times=8))
    log = Events()
    client = client_for(server.base_url, log)
    try:
        reply = await client.complete(chat("through the storm"))
        assert reply.text == "answer to: through the storm"
        assert log.named("endpoint_down")[0]["reason"] == "503 Service Unavailable"
        assert sum(1 for record in server.llm_requests if record.status == 503) == 8
    finally:
        await client.aclose()


async def test_the_models_own_errors_still_fail_the_call(scripted_server: Any) -> None:
    # A 500 is not an outage: it spends the retry budget and fails as before, and pauses nothing.
    server = scripted_server(answer, faults=FailFirst(Fault.http_error(500), times=100))
    log = Events()
    client = client_for(server.base_url, log)
    try:
        with pytest.raises(LLMError, match="gave up after 2 tries"):
            await client.complete(chat("broken"))
        assert log.named("endpoint_down") == [] and client.outages() == []
    finally:
        await client.aclose()


async def test_past_max_outage_every_waiter_gets_endpoint_unavailable() -> None:
    server = SamePortServer(answer).start()
    url = server.base_url
    server.stop()
    log = Events()
    client = client_for(url, log, max_outage_s=0.3)
    try:
        results = await asyncio.gather(*(client.complete(chat(f"q{i}")) for i in range(3)), return_exceptions=True)
        assert all(isinstance(result, EndpointUnavailable) for result in results), results
        assert "longer than --max-outage" in str(results[0])
        assert log.named("endpoint_outage_too_long")
        with pytest.raises(EndpointUnavailable):     # later calls do not wait again
            await client.complete(chat("later"))
    finally:
        await client.aclose()


# -- whole runs ------------------------------------------------------------------------------------------

OUTAGE_CONFIG = "llm_max_retries = 1\noutage_probe_s = 0.2\n"


class OutageAfter:
    """Stops the server (connections refused) once it has received `after` requests, keeps it down for
    `down_s` (or until `end` is set), then starts it again on the same port."""

    def __init__(self, coder: IdempotentCoder, server: SamePortServer, *, after: int, down_s: float) -> None:
        self.coder, self.server, self.down_s = coder, server, down_s
        self.end = threading.Event()
        self.came_back = threading.Event()
        coder.arm(after)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if not self.coder.reached.wait(120):
            return
        self.server.stop()
        self.end.wait(self.down_s)
        self.server.start()
        self.came_back.set()


def start_run(server: ScriptedOpenAIServer, db: Path, *extra: str) -> subprocess.Popen[str]:
    return start_kodcode("run", "--base-url", server.base_url, "--db", str(db), "--target", "3", *RUN_ARGS, *extra,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def events(db: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (db.parent / "events.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_run_through_an_outage_ends_with_the_verified_set_of_a_run_without_one(tmp_path: Path) -> None:
    config = tmp_path / "kodcode.toml"
    config.write_text(OUTAGE_CONFIG)
    clean_coder = IdempotentCoder(FakeCoder(**SCRIPT))
    clean = ScriptedOpenAIServer(clean_coder).start()
    coder = IdempotentCoder(FakeCoder(**SCRIPT))
    flaky = SamePortServer(coder).start()
    flaky_url = flaky.base_url
    # Down for far longer than the retry budget (2 tries a call, well under a second of backoff).
    outage = OutageAfter(coder, flaky, after=5, down_s=6.0)
    dbs = {"clean": tmp_path / "clean" / "kc.db", "outage": tmp_path / "outage" / "kc.db"}
    try:
        processes = {"clean": start_run(clean, dbs["clean"], "--config", str(config)),
                     "outage": start_run(flaky, dbs["outage"], "--config", str(config))}
        outputs = {name: process.communicate(timeout=300) for name, process in processes.items()}
    finally:
        clean.stop()
        flaky.stop()
    assert outage.came_back.is_set(), "the outage never happened"
    for name, process in processes.items():
        assert process.returncode == 0, outputs[name][1]
        assert "Traceback" not in outputs[name][1]
    assert comparable(export_rows(dbs["outage"], tmp_path / "outage.jsonl")) == \
        comparable(export_rows(dbs["clean"], tmp_path / "clean.jsonl"))
    # No item failed for the network: every failure reason is the model's.
    reasons = [reason for (reason,) in query(dbs["outage"], "SELECT reason FROM items WHERE reason IS NOT NULL")]
    reasons += [reason for (reason,) in query(dbs["outage"], "SELECT reason FROM attempts WHERE reason IS NOT NULL")]
    assert not [reason for reason in reasons if "connection" in reason or "gave up" in reason], reasons
    logged = events(dbs["outage"])
    down = [event for event in logged if event["event"] == "endpoint_down"]
    assert down and down[0]["endpoint"] == flaky_url
    assert "waiting for endpoint" in down[0]["message"]
    assert [event for event in logged if event["event"] == "endpoint_recovered"]


@pytest.mark.slow
def test_past_max_outage_the_run_stops_with_exit_75_and_resumes(tmp_path: Path) -> None:
    config = tmp_path / "kodcode.toml"
    config.write_text(OUTAGE_CONFIG)
    reference_db = tmp_path / "reference" / "kc.db"
    reference_server = ScriptedOpenAIServer(IdempotentCoder(FakeCoder(**SCRIPT))).start()
    coder = IdempotentCoder(FakeCoder(**SCRIPT))
    flaky = SamePortServer(coder).start()
    db = tmp_path / "run" / "kc.db"
    outage = OutageAfter(coder, flaky, after=4, down_s=3600)     # down for good, as far as this run knows
    try:
        reference = start_run(reference_server, reference_db, "--config", str(config))
        stopped = start_run(flaky, db, "--config", str(config), "--max-outage", "2s")
        out, err = stopped.communicate(timeout=300)
        assert stopped.returncode == 75, err
        assert "Traceback" not in err
        assert "longer than --max-outage" in err and "run the same command again to resume" in err
        assert query(db, "PRAGMA integrity_check")[0][0] == "ok"
        assert query(db, "SELECT COUNT(*) FROM items WHERE state='failed' AND reason LIKE '%connection%'")[0][0] == 0
        assert query(db, "SELECT status FROM runs")[-1][0] == "interrupted"

        outage.end.set()                   # the endpoint is back: the same command resumes and finishes
        assert outage.came_back.wait(30)
        resumed = run_kodcode("run", "--base-url", flaky.base_url, "--db", str(db), "--target", "3", *RUN_ARGS,
                              "--config", str(config))
        assert resumed.returncode == 0, resumed.stderr
        reference.communicate(timeout=300)
        assert reference.returncode == 0
    finally:
        outage.end.set()
        reference_server.stop()
        flaky.stop()
    assert comparable(export_rows(db, tmp_path / "resumed.jsonl")) == \
        comparable(export_rows(reference_db, tmp_path / "reference.jsonl"))


class RefuseProblem:
    """400 for every request about one problem: its attempts fail with an LLMError, as a down endpoint's
    did in older kodcode (the test then words the reasons as that kodcode did)."""

    def __init__(self, phrase: str) -> None:
        self.phrase = phrase

    def __call__(self, request: ScriptedRequest) -> Fault | None:
        return Fault.http_error(400, message="refused") if self.phrase in request.text else None


@pytest.mark.slow
def test_items_an_older_kodcode_failed_for_a_down_endpoint_are_retried_on_resume(tmp_path: Path) -> None:
    db = tmp_path / "kc.db"
    broken = ScriptedOpenAIServer(IdempotentCoder(FakeCoder(**SCRIPT)), faults=RefuseProblem("reverse the order")).start()
    try:
        first = run_kodcode("run", "--base-url", broken.base_url, "--db", str(db), "--target", "2",
                            "--max-attempts", "3", *RUN_ARGS)
    finally:
        broken.stop()
    assert first.returncode == 0, first.stderr
    [(lost, lost_question)] = query(db, "SELECT item_id, question FROM items WHERE state='failed'")
    assert "reverse the order" in lost_question
    # What kodcode before the outage gate wrote when the endpoint refused connections for a few minutes.
    old = "{} error: LLMError: connection to http://127.0.0.1:1/v1 failed: All connection attempts failed (gave up after 7 tries)"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE attempts SET reason=? WHERE item_id=?", (old.format("solver"), lost))
        conn.execute("UPDATE items SET reason=? WHERE item_id=?", (old.format("solver"), lost))
        seq = conn.execute("SELECT MAX(seq) + 1 FROM items").fetchone()[0]
        conn.execute("INSERT INTO items(item_id, seq, source, subset, state, seed_ids, reason, created_at, updated_at)"
                     " VALUES(?, ?, 'prefill', 'Prefill', 'failed', '[]', ?, 0, 0)",
                     (f"Prefill_{seq}", seq, old.format("proposer")))
    conn.close()

    healthy = ScriptedOpenAIServer(IdempotentCoder(FakeCoder(**SCRIPT))).start()
    try:
        resumed = run_kodcode("run", "--base-url", healthy.base_url, "--db", str(db), "--target", "4", *RUN_ARGS)
    finally:
        healthy.stop()
    assert resumed.returncode == 0, resumed.stderr
    reopened = dict(query(db, "SELECT item_id, reason FROM decisions WHERE action='reopen'"))
    assert set(reopened) == {lost, f"Prefill_{seq}"}
    assert "attempts 1-3 failed for a transport reason" in reopened[lost]
    # The lost question was solved this time, from its first attempt on, with no gap in attempt numbers.
    assert query(db, "SELECT state FROM items WHERE item_id=?", (lost,))[0][0] == "verified"
    attempts = [a for (a,) in query(db, "SELECT attempt FROM attempts WHERE item_id=? ORDER BY attempt", (lost,))]
    assert attempts == list(range(1, len(attempts) + 1))
    lineage = json.loads(query(db, "SELECT lineage FROM items WHERE item_id=?", (lost,))[0][0])
    assert lineage["reopened"][0]["was"] == "failed" and "connection to" in lineage["reopened"][0]["reason"]
    # The lost proposal was proposed again and went on like any other.
    assert query(db, "SELECT state FROM items WHERE item_id=?", (f"Prefill_{seq}",))[0][0] != "failed"
    left = query(db, "SELECT COUNT(*) FROM items WHERE reason LIKE '%connection to%'")[0][0] + \
        query(db, "SELECT COUNT(*) FROM attempts WHERE reason LIKE '%connection to%'")[0][0]
    assert left == 0

"""The SQLite store on real files (migrations, the run lock, group commit, failures, cancellation) and the
Records operations over it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from kodcode.errors import SchemaError, StoreError
from kodcode.messages import ProposeTask
from kodcode.llm.client import LLMRequest, LLMResponse
from kodcode.store.records import SqliteRecords
from kodcode.store.sqlite import SCHEMA_VERSION, Store
from kodcode.sandbox.base import TestOutcome as Outcome
from kodcode.sandbox.base import Verdict

TABLES = {"meta", "runs", "items", "attempts", "llm_calls", "rewrites", "decisions", "dedup_index"}


def sqlite_rows(db: Path, sql: str) -> list[tuple]:
    """Read the file with a separate plain sqlite3 connection: what is there for another process."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_migrations_create_the_schema(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "kodcode.db"
    async with await Store.open(db) as store:
        tables = {row[0] for row in await store.rows("SELECT name FROM sqlite_master WHERE type='table'")}
        assert TABLES <= tables
        assert await store.scalar("SELECT value FROM meta WHERE key='schema_version'") == str(SCHEMA_VERSION)
        assert await store.scalar("PRAGMA journal_mode") == "wal"
        assert await store.integrity_check() == "ok"


async def test_reopening_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    db = tmp_path / "kodcode.db"
    async with await Store.open(db) as store:
        await store.write([("INSERT INTO runs(run_id, started_at, status, config) VALUES('r1', 1, 'done', '{}')", ())])
    async with await Store.open(db) as store:
        assert await store.scalar("SELECT status FROM runs WHERE run_id='r1'") == "done"
        assert await store.scalar("SELECT COUNT(*) FROM meta") == 1


async def test_a_newer_schema_is_refused_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "kodcode.db"
    async with await Store.open(db):
        pass
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError) as caught:
        await Store.open(db)
    message = str(caught.value)
    assert "\n" not in message
    assert f"written by a newer kodcode (schema {SCHEMA_VERSION + 1}); upgrade kodcode" in message
    # The refused open released the run lock: after a downgrade of the value, the store opens.
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
    conn.commit()
    conn.close()
    async with await Store.open(db):
        pass


async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    db = tmp_path / "kodcode.db"
    db.write_bytes(b"this is not an sqlite file at all, just text" * 100)
    with pytest.raises(StoreError, match="cannot be used") as caught:
        await Store.open(db)
    assert "\n" not in str(caught.value)


async def test_a_second_open_while_in_use_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "kodcode.db"
    first = await Store.open(db)
    try:
        with pytest.raises(StoreError, match="in use") as caught:
            await Store.open(db)
        assert "\n" not in str(caught.value)
    finally:
        await first.aclose()
    second = await Store.open(db)  # closing released the lock
    await second.aclose()


async def test_group_commit_makes_every_write_durable_in_fewer_commits(tmp_path: Path) -> None:
    db = tmp_path / "kodcode.db"
    writers = 200
    store = await Store.open(db)
    returned: list[int] = []
    try:
        async def write_one(i: int) -> None:
            await store.write([(
                "INSERT INTO decisions(item_id, attempts, action, reason, created_at) VALUES(?,?,?,?,?)",
                (f"item-{i}", i, "stop", "r", 0.0))])
            # Returned means committed: another connection already sees the row.
            assert sqlite_rows(db, f"SELECT COUNT(*) FROM decisions WHERE item_id='item-{i}'") == [(1,)]
            returned.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(writers):
                tg.start_soon(write_one, i)
        assert sorted(returned) == list(range(writers))
        assert store.ops_committed == writers
        assert store.commits < writers
    finally:
        await store.aclose()
    assert sqlite_rows(db, "SELECT COUNT(DISTINCT item_id) FROM decisions") == [(writers,)]


async def test_a_failing_statement_raises_and_the_store_stays_usable(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "kodcode.db") as store:
        insert = "INSERT INTO runs(run_id, started_at, status, config) VALUES(?, 1, 'running', '{}')"
        with pytest.raises(StoreError, match="no such table"):
            await store.write([(insert, ("r1",)), ("INSERT INTO nowhere VALUES(1)", ())])
        # The batch was one transaction: its good statement was rolled back with the bad one.
        assert await store.scalar("SELECT COUNT(*) FROM runs") == 0
        await store.write([(insert, ("r2",))])
        assert await store.scalar("SELECT run_id FROM runs") == "r2"
        assert await store.integrity_check() == "ok"


async def test_a_bad_write_does_not_fail_the_writes_batched_with_it(tmp_path: Path) -> None:
    insert = "INSERT INTO runs(run_id, started_at, status, config) VALUES(?, 1, 'running', '{}')"
    async with await Store.open(tmp_path / "kodcode.db") as store:
        await store.write([(insert, ("dup",))])
        outcomes: dict[str, str] = {}

        async def write(name: str, ops: list) -> None:
            try:
                await store.write(ops)
                outcomes[name] = "ok"
            except StoreError as exc:
                outcomes[name] = str(exc)

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(write, f"good-{i}", [(insert, (f"good-{i}",))])
            tg.start_soon(write, "bad", [(insert, ("dup",))])  # PRIMARY KEY violation
        assert "UNIQUE constraint failed" in outcomes.pop("bad")
        assert set(outcomes.values()) == {"ok"}
        assert await store.scalar("SELECT COUNT(*) FROM runs") == 21


async def test_a_malformed_op_does_not_leave_a_transaction_open(tmp_path: Path) -> None:
    insert = "INSERT INTO runs(run_id, started_at, status, config) VALUES(?, 1, 'running', '{}')"
    async with await Store.open(tmp_path / "kodcode.db") as store:
        with pytest.raises(StoreError):
            await store.write([(insert, ("a",)), ("only the sql, no params",)])  # type: ignore[list-item]
        await store.write([(insert, ("b",))])
        assert [row[0] for row in await store.rows("SELECT run_id FROM runs")] == ["b"]


async def test_cancelled_writers_leave_the_store_usable(tmp_path: Path) -> None:
    insert = "INSERT INTO runs(run_id, started_at, status, config) VALUES(?, 1, 'running', '{}')"
    async with await Store.open(tmp_path / "kodcode.db") as store:
        # Many writers cancelled at once, mid-flight, at whatever point each has reached.
        with anyio.move_on_after(0):
            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(store.write, [(insert, (f"c{i}",))])
        with anyio.fail_after(10):
            await store.write([(insert, ("after",))])
        assert await store.scalar("SELECT COUNT(*) FROM runs WHERE run_id='after'") == 1
        assert not store._conn.in_transaction  # noqa: SLF001 - what matters is that no transaction is left open


async def test_a_leader_cancelled_while_a_commit_runs_does_not_strand_its_followers(tmp_path: Path) -> None:
    insert = "INSERT INTO runs(run_id, started_at, status, config) VALUES(?, 1, 'running', '{}')"
    async with await Store.open(tmp_path / "kodcode.db") as store:
        commit_running = anyio.Event()
        release = anyio.Event()

        async def slow_commit() -> None:
            # Stands in for a long commit: holds the commit slot as a leader does while committing.
            async with store._commit_lock:  # noqa: SLF001
                commit_running.set()
                await release.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_commit)
            await commit_running.wait()
            leader_scope = anyio.CancelScope()

            async def leader() -> None:
                with leader_scope:
                    await store.write([(insert, ("leader",))])

            tg.start_soon(leader)
            await anyio.wait_all_tasks_blocked()
            leader_scope.cancel()                     # cancelled while waiting for the commit slot
            await anyio.wait_all_tasks_blocked()
            follower_done = anyio.Event()

            async def follower() -> None:
                await store.write([(insert, ("follower",))])
                follower_done.set()

            tg.start_soon(follower)
            await anyio.wait_all_tasks_blocked()
            release.set()
            with anyio.fail_after(10):
                await follower_done.wait()
        assert await store.scalar("SELECT COUNT(*) FROM runs WHERE run_id='follower'") == 1


# -- records: the domain operations over a real store ----------------------------------------------

async def open_records(tmp_path: Path) -> SqliteRecords:
    records = SqliteRecords(await Store.open(tmp_path / "kodcode.db"))
    await records.start_run({"target": 3})
    return records


async def add_item(records: SqliteRecords, item_id: str, question: str | None, state: str) -> None:
    await records.add_proposal(ProposeTask(item_id=item_id, seq=await records.next_seq(), source="prefill",
                                           subset="Prefill", seed_ids=("s1",)))
    if state != "proposing":
        await records.set_question(item_id, question, {"model": "m"}, state)


async def test_resume_state_sorts_items_by_what_is_left_to_do(tmp_path: Path) -> None:
    records = await open_records(tmp_path)
    try:
        await add_item(records, "p", None, "proposing")
        await add_item(records, "o", "Write a function that adds.", "open")
        await records.open_attempt("o", 0, "split")
        await records.save_verdict("o", 0, Verdict(passed=False, reason="failed: test_a",
                                                   tests=(Outcome("test_a", "failed", "assert 1 == 2"),)))
        await records.open_attempt("o", 1, "split")
        await add_item(records, "v", "Write a function that sorts.", "open")
        await records.open_attempt("v", 0, "joint")
        await records.save_tests("v", 0, "def test_s(): pass\n", {"model": "m"},
                                 solution="def s(x):\n    return sorted(x)\n", entry_point="s")
        await records.save_verdict("v", 0, Verdict(passed=True, reason=None, coverage=100.0))
        await records.decide("v", 1, "stop", "passed", label="easy", final_state="verified", chosen_attempt=0,
                             entry_point="s", pass_sequence=[True])
        await add_item(records, "d", "Write a function that adds.", "duplicate")
        await add_item(records, "w", "Write a function that sorts twice.", "open")
        await records.decide("w", 1, "stop", "failed", final_state="verified", chosen_attempt=0, entry_point="s")
        await records.open_attempt("w", 0, "joint")
        await records.save_verdict("w", 0, Verdict(passed=True, reason=None))
        await records.save_rewrite("w", "complete", "verified", "stub", True, None, {})

        state = await records.resume_state(("complete",))
        assert [task.item_id for task in state.proposing] == ["p"]
        assert state.proposing[0].seed_ids == ("s1",)
        assert [item.item_id for item in state.open_items] == ["o"]
        assert [(a["attempt"], a["state"], a["passed"]) for a in state.open_items[0].attempts] == [
            (0, "judged", 0), (1, "queued", None)]
        # Verified and not yet rewritten: "v"; "w" has its rewrite, "d" was never solved.
        assert [(row["item_id"], row["style"], row["entry_point"]) for row in state.unrewritten] == [
            ("v", "complete", "s")]
        assert state.unrewritten[0]["solution"].startswith("def s(")
        counts = await records.counts()
        assert (counts["proposing"], counts["open"], counts["verified"], counts["duplicate"]) == (1, 1, 2, 1)
        assert await records.pass_history("o") == [False]
    finally:
        await records.store.aclose()


async def test_recorded_calls_round_trip_and_count_as_spent(tmp_path: Path) -> None:
    records = await open_records(tmp_path)
    try:
        request = LLMRequest(role="solver", model="m", messages=({"role": "user", "content": "héllo"},), seed=5,
                             template="solve", template_hash="abc", item_id="i", attempt=0)
        assert await records.cached_call(request) is None
        response = LLMResponse(texts=("a", "b"), finish_reasons=("stop", "length"), prompt_tokens=10,
                               completion_tokens=7, latency_s=0.5, request_hash=request.key, cost_usd=0.25)
        await records.record_call(request, response)
        await records.record_call(request, response)  # a second record of the same call is ignored
        cached = await records.cached_call(request)
        assert cached == LLMResponse(texts=("a", "b"), finish_reasons=("stop", "length"), prompt_tokens=10,
                                     completion_tokens=7, latency_s=0.5, request_hash=request.key, cached=True,
                                     cost_usd=0.25)
        # The lineage fields are not part of the key; the sampling is.
        same_call = LLMRequest(role="solver", model="m", messages=({"role": "user", "content": "héllo"},), seed=5)
        assert (await records.cached_call(same_call)) is not None
        assert await records.cached_call(LLMRequest(role="solver", model="m", messages=request.messages, seed=6)) is None
        assert await records.spent() == {"calls": 1, "tokens": 17, "usd": 0.25}
    finally:
        await records.store.aclose()


async def test_decide_settles_or_retries_in_one_transaction(tmp_path: Path) -> None:
    records = await open_records(tmp_path)
    store = records.store
    try:
        await add_item(records, "a", "Write a function that adds numbers.", "open")
        await records.open_attempt("a", 0, "split")
        await records.decide("a", 1, "retry", "failed once", priority=0.5, next_attempt=(1, "split"))
        assert await store.scalar("SELECT COUNT(*) FROM attempts WHERE item_id='a'") == 2
        assert await store.scalar("SELECT action FROM decisions WHERE item_id='a'") == "retry"

        await records.decide("a", 2, "stop", "budget of attempts spent", label="fail", final_state="failed",
                             pass_sequence=[False, False])
        row = (await store.rows("SELECT state, reason, pass_sequence, difficulty FROM items WHERE item_id='a'"))[0]
        assert tuple(row) == ("failed", "budget of attempts spent", "[0,0]", "fail")

        # A retry whose attempt cannot be opened (no such item: foreign key) records no decision either.
        before = await store.scalar("SELECT COUNT(*) FROM decisions")
        with pytest.raises(StoreError, match="FOREIGN KEY"):
            await records.decide("ghost", 1, "retry", "x", next_attempt=(1, "split"))
        assert await store.scalar("SELECT COUNT(*) FROM decisions") == before
        # And a final decision whose decision row fails leaves the item as it was.
        with pytest.raises(StoreError):
            await records.decide("a", None, "stop", "x", final_state="verified")  # type: ignore[arg-type]
        assert await store.scalar("SELECT state FROM items WHERE item_id='a'") == "failed"
    finally:
        await store.aclose()


async def test_best_attempt_is_the_passing_one_with_the_highest_coverage(tmp_path: Path) -> None:
    records = await open_records(tmp_path)
    try:
        await add_item(records, "a", "Write a function that adds numbers.", "open")
        for attempt, (passed, coverage) in enumerate([(True, 80.0), (False, 100.0), (True, 95.0), (True, 95.0)]):
            await records.open_attempt("a", attempt, "joint")
            await records.save_verdict("a", attempt, Verdict(passed=passed, reason=None if passed else "failed",
                                                             coverage=coverage))
        best = await records.best_attempt("a")
        assert best is not None and best["attempt"] == 2
    finally:
        await records.store.aclose()

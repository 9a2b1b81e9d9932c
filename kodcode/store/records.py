"""The records port (kodcode.store.port.Records) on SQLite: each method is one grouped, committed write
or one read."""

from __future__ import annotations

import json
import uuid
from typing import Any

from kodcode.messages import ProposeTask, ReasonTask
from kodcode.llm.client import LLMRequest, LLMResponse, transport_failure
from kodcode.store.port import ITEM_STATES, TERMINAL_STATES, OpenItem, ResumeState
from kodcode.store.sqlite import Op, Store, dumps, now
from kodcode.sandbox.base import Verdict

__all__ = ["SqliteRecords"]

class SqliteRecords:
    def __init__(self, store: Store, run_id: str | None = None) -> None:
        self.store = store
        self.run_id = run_id

    # -- runs ------------------------------------------------------------------------------------------

    async def start_run(self, config: dict[str, Any]) -> str:
        self.run_id = uuid.uuid4().hex[:12]
        await self.store.write([(
            "INSERT INTO runs(run_id, started_at, status, config) VALUES(?,?,?,?)",
            (self.run_id, now(), "running", dumps(config)),
        )])
        return self.run_id

    async def finish_run(self, status: str, summary: dict[str, Any]) -> None:
        await self.store.write([(
            "UPDATE runs SET ended_at=?, status=?, summary=? WHERE run_id=?",
            (now(), status, dumps(summary), self.run_id),
        )])

    # -- items -----------------------------------------------------------------------------------------

    async def next_seq(self) -> int:
        return int(await self.store.scalar("SELECT COALESCE(MAX(seq), -1) + 1 FROM items"))

    async def add_proposal(self, task: ProposeTask) -> None:
        t = now()
        await self.store.write([(
            "INSERT INTO items(item_id, seq, source, subset, state, seed_ids, run_id, created_at, updated_at)"
            " VALUES(?,?,?,?,?,?,?,?,?)",
            (task.item_id, task.seq, task.source, task.subset, "proposing", dumps(list(task.seed_ids)),
             self.run_id, t, t),
        )])

    async def set_question(self, item_id: str, question: str | None, lineage: dict[str, Any], state: str,
                           reason: str | None = None, dedup: tuple[str, bytes | None] | None = None) -> None:
        ops: list[Op] = [(
            "UPDATE items SET question=?, lineage=?, state=?, reason=?, updated_at=? WHERE item_id=?",
            (question, dumps(lineage), state, reason, now(), item_id),
        )]
        if dedup is not None:
            ops.append(("INSERT OR REPLACE INTO dedup_index(item_id, exact_hash, minhash) VALUES(?,?,?)",
                        (item_id, dedup[0], dedup[1])))
        await self.store.write(ops)

    async def question(self, item_id: str) -> str | None:
        return await self.store.scalar("SELECT question FROM items WHERE item_id=?", (item_id,))

    async def verified_questions(self) -> list[tuple[str, str]]:
        """(item_id, question) of every verified item, in proposal order: the parents evolution draws from."""
        rows = await self.store.rows(
            "SELECT item_id, question FROM items WHERE state='verified' AND question IS NOT NULL ORDER BY seq")
        return [(row[0], row[1]) for row in rows]

    async def dedup_rows(self) -> list[tuple[str, str, bytes | None]]:
        rows = await self.store.rows("SELECT item_id, exact_hash, minhash FROM dedup_index ORDER BY rowid")
        return [(row[0], row[1], row[2]) for row in rows]

    # -- attempts --------------------------------------------------------------------------------------

    async def open_attempt(self, item_id: str, attempt: int, mode: str) -> None:
        t = now()
        await self.store.write([(
            "INSERT OR IGNORE INTO attempts(item_id, attempt, state, mode, created_at, updated_at) VALUES(?,?,?,?,?,?)",
            (item_id, attempt, "queued", mode, t, t),
        )])

    async def save_solution(self, item_id: str, attempt: int, solution: str, entry_point: str,
                            lineage: dict[str, Any]) -> None:
        await self.store.write([(
            "UPDATE attempts SET state='solved', solution=?, entry_point=?,"
            " lineage=json_set(lineage, '$.solver', json(?)), updated_at=? WHERE item_id=? AND attempt=?",
            (solution, entry_point, dumps(lineage), now(), item_id, attempt),
        )])

    async def save_tests(self, item_id: str, attempt: int, tests: str, lineage: dict[str, Any],
                         solution: str | None = None, entry_point: str | None = None) -> None:
        await self.store.write([(
            "UPDATE attempts SET state='tested', tests=?, solution=COALESCE(?, solution),"
            " entry_point=COALESCE(?, entry_point), lineage=json_set(lineage, '$.tester', json(?)), updated_at=?"
            " WHERE item_id=? AND attempt=?",
            (tests, solution, entry_point, dumps(lineage), now(), item_id, attempt),
        )])

    async def save_verdict(self, item_id: str, attempt: int, verdict: Verdict, *,
                           gates: dict[str, Any] | None = None, mutation_score: float | None = None) -> None:
        """The trial's verdict; `gates` (the Judge's quality gates, when they ran) may have overruled a pass,
        so `verdict.passed`/`reason` here are the final ones and `gates["tests_passed"]` the sandbox's."""
        outcomes = [{"name": t.name, "outcome": t.outcome, "message": t.message} for t in verdict.tests]
        await self.store.write([(
            "UPDATE attempts SET state='judged', passed=?, reason=?, test_results=?, coverage=?, duration_s=?,"
            " gates=?, mutation_score=?, updated_at=? WHERE item_id=? AND attempt=?",
            (int(verdict.passed), verdict.reason, dumps(outcomes), verdict.coverage, verdict.duration_s,
             None if gates is None else dumps(gates), mutation_score, now(), item_id, attempt),
        )])

    async def fail_attempt(self, item_id: str, attempt: int, reason: str, *, role: str | None = None,
                           lineage: dict[str, Any] | None = None, raw_output: str | None = None) -> None:
        """An attempt that ended before (or instead of) a verdict; the unusable output is kept for debugging."""
        column = "tests" if role == "tester" else "solution"
        await self.store.write([(
            f"UPDATE attempts SET state='judged', passed=0, reason=?, {column}=COALESCE(?, {column}),"
            " lineage=CASE WHEN ? IS NULL THEN lineage ELSE json_set(lineage, '$.' || ?, json(?)) END,"
            " updated_at=? WHERE item_id=? AND attempt=?",
            (reason, raw_output, role, role, dumps(lineage) if lineage is not None else None, now(), item_id, attempt),
        )])

    async def pass_history(self, item_id: str) -> list[bool]:
        rows = await self.store.rows(
            "SELECT passed FROM attempts WHERE item_id=? AND state='judged' ORDER BY attempt", (item_id,))
        return [bool(row[0]) for row in rows]

    async def best_attempt(self, item_id: str) -> dict[str, Any] | None:
        """The paper's chosen trial: the passing attempt with the highest coverage (earliest on ties)."""
        rows = await self.store.rows(
            "SELECT * FROM attempts WHERE item_id=? AND passed=1 ORDER BY COALESCE(coverage, -1) DESC, attempt LIMIT 1",
            (item_id,))
        return dict(rows[0]) if rows else None

    async def decide(self, item_id: str, attempts: int, action: str, reason: str, *, label: str | None = None,
                     priority: float | None = None, confidence: float | None = None,
                     final_state: str | None = None, chosen_attempt: int | None = None,
                     entry_point: str | None = None, pass_sequence: list[bool] | None = None,
                     next_attempt: tuple[int, str] | None = None) -> None:
        """Record a scheduler decision together with its effect, in one transaction: a final decision
        settles the item, a retry opens the next attempt."""
        t = now()
        ops: list[Op] = [(
            "INSERT INTO decisions(item_id, attempts, action, label, priority, confidence, reason, run_id, created_at)"
            " VALUES(?,?,?,?,?,?,?,?,?)",
            (item_id, attempts, action, label, priority, confidence, reason, self.run_id, t),
        )]
        if final_state is not None:
            ops.append((
                "UPDATE items SET state=?, difficulty=?, pass_sequence=?, chosen_attempt=?, entry_point=?,"
                " reason=?, updated_at=? WHERE item_id=?",
                (final_state, label, dumps([int(p) for p in pass_sequence or []]), chosen_attempt, entry_point,
                 None if final_state == "verified" else reason, t, item_id),
            ))
        if next_attempt is not None:
            ops.append((
                "INSERT OR IGNORE INTO attempts(item_id, attempt, state, mode, created_at, updated_at)"
                " VALUES(?,?,?,?,?,?)", (item_id, next_attempt[0], "queued", next_attempt[1], t, t)))
        await self.store.write(ops)

    # -- execution matrix ------------------------------------------------------------------------------

    async def matrix_members(self, item_id: str) -> list[dict[str, Any]]:
        """The item's ended attempts with what the matrix needs: a solution is usable when it has an entry
        point (the Solver parsed it), a test file when the Judge ran it (a verdict exists)."""
        rows = await self.store.rows(
            "SELECT attempt, solution, entry_point, tests, test_results IS NOT NULL AS tests_ran, coverage"
            " FROM attempts WHERE item_id=? AND state='judged' ORDER BY attempt", (item_id,))
        return [dict(row) for row in rows]

    async def matrix_cells(self, item_id: str) -> list[dict[str, Any]]:
        rows = await self.store.rows(
            "SELECT solution_attempt, tests_attempt, passed, outcomes, reason, duration_s FROM matrix"
            " WHERE item_id=? ORDER BY solution_attempt, tests_attempt", (item_id,))
        return [{**dict(row), "outcomes": json.loads(row["outcomes"])} for row in rows]

    async def save_matrix_cells(self, item_id: str, cells: list[dict[str, Any]]) -> None:
        """Cells as {solution_attempt, tests_attempt, passed, outcomes, reason, duration_s}; one commit."""
        t = now()
        await self.store.write([(
            "INSERT OR REPLACE INTO matrix(item_id, solution_attempt, tests_attempt, passed, outcomes, reason,"
            " duration_s, created_at) VALUES(?,?,?,?,?,?,?,?)",
            (item_id, c["solution_attempt"], c["tests_attempt"], int(c["passed"]), dumps(c["outcomes"]),
             c.get("reason"), c.get("duration_s"), t)) for c in cells])

    async def save_consensus(self, item_id: str, consensus: dict[str, Any], accepted_tests: str | None) -> None:
        await self.store.write([(
            "UPDATE items SET consensus=?, accepted_tests=?, updated_at=? WHERE item_id=?",
            (dumps(consensus), accepted_tests, now(), item_id))])

    async def consensus(self, item_id: str) -> dict[str, Any] | None:
        value = await self.store.scalar("SELECT consensus FROM items WHERE item_id=?", (item_id,))
        return json.loads(value) if value else None

    async def accepted_tests(self, item_id: str) -> str | None:
        """The test file the matrix's consensus accepted for the item (None: nothing accepted yet)."""
        return await self.store.scalar("SELECT accepted_tests FROM items WHERE item_id=?", (item_id,))

    async def first_solution(self, item_id: str) -> tuple[str, str] | None:
        """(solution, entry point) of the item's earliest parsed solution: it fixes the signature."""
        rows = await self.store.rows(
            "SELECT solution, entry_point FROM attempts WHERE item_id=? AND entry_point IS NOT NULL"
            " AND solution IS NOT NULL ORDER BY attempt LIMIT 1", (item_id,))
        return (rows[0][0], rows[0][1]) if rows else None

    # -- rewrites --------------------------------------------------------------------------------------

    async def save_rewrite(self, item_id: str, style: str, state: str, question: str | None,
                           passed: bool | None, reason: str | None, lineage: dict[str, Any]) -> None:
        t = now()
        await self.store.write([(
            "INSERT INTO rewrites(item_id, style, state, question, passed, reason, lineage, created_at, updated_at)"
            " VALUES(?,?,?,?,?,?,?,?,?) ON CONFLICT(item_id, style) DO UPDATE SET state=excluded.state,"
            " question=excluded.question, passed=excluded.passed, reason=excluded.reason,"
            " lineage=excluded.lineage, updated_at=excluded.updated_at",
            (item_id, style, state, question, None if passed is None else int(passed), reason, dumps(lineage), t, t),
        )])

    # -- reasoning responses ---------------------------------------------------------------------------

    async def save_response(self, task: ReasonTask, model: str, response: str | None, reasoning: str | None,
                            code: str | None, renamed_from: str | None, passed: bool, reason: str | None,
                            coverage: float | None, lineage: dict[str, Any]) -> None:
        await self.store.write([(
            "INSERT OR REPLACE INTO responses(item_id, style, sample, model, response, reasoning, code, renamed_from,"
            " passed, reason, coverage, lineage, created_at) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (task.item_id, task.style, task.sample, model, response, reasoning, code, renamed_from, int(passed),
             reason, coverage, dumps(lineage), now()),
        )])

    async def missing_responses(self, samples: int) -> list[dict[str, Any]]:
        """Verified questions (and verified rewrites) still owed reasoning samples, with what a sample needs."""
        if samples <= 0:
            return []
        rows = await self.store.rows(
            "SELECT i.item_id, 'instruct' AS style, i.question, i.entry_point, a.solution,"
            " COALESCE(i.accepted_tests, a.tests) AS tests FROM items i"
            " JOIN attempts a ON a.item_id=i.item_id AND a.attempt=i.chosen_attempt WHERE i.state='verified'"
            " UNION ALL SELECT i.item_id, r.style, r.question, i.entry_point, a.solution,"
            " COALESCE(i.accepted_tests, a.tests) AS tests FROM rewrites r"
            " JOIN items i USING(item_id) JOIN attempts a ON a.item_id=i.item_id AND a.attempt=i.chosen_attempt"
            " WHERE r.state='verified'")
        done = {(r[0], r[1], r[2]) for r in await self.store.rows("SELECT item_id, style, sample FROM responses")}
        missing = []
        for row in rows:
            for sample in range(samples):
                if (row["item_id"], row["style"], sample) not in done:
                    missing.append({**dict(row), "sample": sample})
        return missing

    # -- LLM call cache (CallRecorder) -----------------------------------------------------------------

    async def cached_call(self, request: LLMRequest) -> LLMResponse | None:
        rows = await self.store.rows(
            "SELECT response, finish_reasons, prompt_tokens, completion_tokens, latency_s, cost_usd"
            " FROM llm_calls WHERE request_hash=?", (request.key,))
        if not rows:
            return None
        row = rows[0]
        return LLMResponse(
            texts=tuple(json.loads(row[0])), finish_reasons=tuple(json.loads(row[1])), prompt_tokens=row[2],
            completion_tokens=row[3], latency_s=row[4], request_hash=request.key, cached=True, cost_usd=row[5])

    async def record_call(self, request: LLMRequest, response: LLMResponse) -> None:
        await self.store.write([(
            "INSERT OR IGNORE INTO llm_calls(request_hash, role, model, template, template_hash, item_id, attempt,"
            " request, response, finish_reasons, prompt_tokens, completion_tokens, latency_s, cost_usd, run_id,"
            " created_at) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (request.key, request.role, request.model, request.template, request.template_hash, request.item_id,
             request.attempt, dumps([request.endpoint, request.body()]), dumps(list(response.texts)),
             dumps(list(response.finish_reasons)), response.prompt_tokens, response.completion_tokens,
             response.latency_s, response.cost_usd, self.run_id, now()),
        )])

    async def spent(self) -> dict[str, float]:
        row = (await self.store.rows(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens + completion_tokens), 0), COALESCE(SUM(cost_usd), 0)"
            " FROM llm_calls"))[0]
        return {"calls": row[0], "tokens": row[1], "usd": row[2]}

    # -- resume and counts -----------------------------------------------------------------------------

    async def reopen_transport_failures(self) -> list[dict[str, Any]]:
        """Put back to work what an older kodcode failed because an endpoint was down (before the outage
        gate, such calls gave up after their retries): a proposal goes back to 'proposing'; an item whose
        last attempts failed so goes back to 'open' with the first of them 'queued' again and the ones
        after it removed (their answered calls stay in the call cache, so nothing paid for is paid again,
        and attempt numbers keep no gap); a rewrite or reasoning sample so failed is dropped, to be redone.
        Each reopened item gets a 'reopen' decision and a `reopened` entry in its lineage saying why.
        Returns one record per reopened item (for the log). Idempotent: a second call finds nothing."""
        t = now()
        reopened: list[dict[str, Any]] = []
        ops: list[Op] = []
        pattern = "%gave up after%"
        for row in await self.store.rows(
                "SELECT item_id, reason, lineage FROM items WHERE state='failed' AND question IS NULL"
                " AND reason LIKE ? ORDER BY seq", (pattern,)):
            if not transport_failure(row["reason"]):
                continue
            note = {"at": t, "run_id": self.run_id, "was": "failed", "reason": row["reason"], "now": "proposing"}
            ops.append(("UPDATE items SET state='proposing', reason=NULL, lineage=?, updated_at=? WHERE item_id=?",
                        (dumps(_with_reopened(row["lineage"], note)), t, row["item_id"])))
            ops.append(_reopen_decision(row["item_id"], 0, f"proposal failed for a transport reason: {row['reason']}",
                                        self.run_id, t))
            reopened.append({"item_id": row["item_id"], "state": "proposing"})
        attempts = await self.store.rows(
            "SELECT a.item_id, a.attempt, a.state, a.reason, i.state AS item_state, i.lineage AS item_lineage"
            " FROM attempts a JOIN items i USING(item_id) WHERE i.state IN ('failed', 'open') AND i.item_id IN"
            " (SELECT item_id FROM attempts WHERE state='judged' AND passed=0 AND reason LIKE ?)"
            " ORDER BY i.seq, a.attempt", (pattern,))
        by_item: dict[str, list[Any]] = {}
        for row in attempts:
            by_item.setdefault(row["item_id"], []).append(row)
        for item_id, rows in by_item.items():
            # The first attempt from which on every attempt failed for a transport reason or never finished.
            first: int | None = None
            for row in rows:
                lost = row["state"] == "judged" and transport_failure(row["reason"])
                if lost and first is None:
                    first = row["attempt"]
                elif not lost and row["state"] == "judged":
                    first = None
            if first is None:
                continue
            reasons = [row["reason"] for row in rows if row["attempt"] >= first and row["state"] == "judged"]
            last = rows[-1]["attempt"]
            span = f"attempt {first}" if last == first else f"attempts {first}-{last}"
            why = f"{span} failed for a transport reason ({reasons[0]}); attempt {first} runs again"
            note = {"at": t, "run_id": self.run_id, "was": rows[0]["item_state"], "reason": reasons[0],
                    "attempts": [row["attempt"] for row in rows if row["attempt"] >= first], "now": "open"}
            ops.append(("DELETE FROM attempts WHERE item_id=? AND attempt>?", (item_id, first)))
            ops.append(("UPDATE attempts SET state='queued', passed=NULL, reason=NULL, test_results=NULL,"
                        " coverage=NULL, duration_s=NULL, gates=NULL, mutation_score=NULL,"
                        " lineage=json_set(lineage, '$.transport_failure', ?), updated_at=?"
                        " WHERE item_id=? AND attempt=?", (reasons[0], t, item_id, first)))
            ops.append(("UPDATE items SET state='open', reason=NULL, difficulty=NULL, pass_sequence=NULL,"
                        " chosen_attempt=NULL, entry_point=NULL, lineage=?, updated_at=? WHERE item_id=?",
                        (dumps(_with_reopened(rows[0]["item_lineage"], note)), t, item_id)))
            ops.append(_reopen_decision(item_id, first - 1, why, self.run_id, t))
            reopened.append({"item_id": item_id, "state": "open", "attempt": first})
        for row in await self.store.rows("SELECT item_id, style, reason FROM rewrites WHERE state='rejected'"
                                         " AND reason LIKE ?", (pattern,)):
            if transport_failure(row["reason"]):
                ops.append(("DELETE FROM rewrites WHERE item_id=? AND style=?", (row["item_id"], row["style"])))
        for row in await self.store.rows("SELECT item_id, style, sample, reason FROM responses WHERE passed=0"
                                         " AND reason LIKE ?", (pattern,)):
            if transport_failure(row["reason"]):
                ops.append(("DELETE FROM responses WHERE item_id=? AND style=? AND sample=?",
                            (row["item_id"], row["style"], row["sample"])))
        if ops:
            await self.store.write(ops)
        return reopened

    async def resume_state(self, styles: tuple[str, ...]) -> ResumeState:
        proposing = tuple(
            ProposeTask(item_id=row["item_id"], seq=row["seq"], source=row["source"], subset=row["subset"],
                        seed_ids=tuple(json.loads(row["seed_ids"] or "[]")))
            for row in await self.store.rows("SELECT * FROM items WHERE state='proposing' ORDER BY seq"))
        open_rows = await self.store.rows("SELECT item_id, question FROM items WHERE state='open' ORDER BY seq")
        attempt_rows = await self.store.rows(
            "SELECT a.* FROM attempts a JOIN items i USING(item_id) WHERE i.state='open' ORDER BY a.item_id, a.attempt")
        by_item: dict[str, list[dict[str, Any]]] = {}
        for row in attempt_rows:
            by_item.setdefault(row["item_id"], []).append(dict(row))
        open_items = tuple(OpenItem(row["item_id"], row["question"], tuple(by_item.get(row["item_id"], ())))
                           for row in open_rows)
        unrewritten: list[dict[str, Any]] = []
        for style in styles:
            rows = await self.store.rows(
                "SELECT i.item_id, i.question, i.entry_point, a.solution, COALESCE(i.accepted_tests, a.tests) AS tests,"
                " ? AS style FROM items i"
                " JOIN attempts a ON a.item_id=i.item_id AND a.attempt=i.chosen_attempt"
                " WHERE i.state='verified' AND NOT EXISTS (SELECT 1 FROM rewrites r WHERE r.item_id=i.item_id"
                " AND r.style=? AND r.state IN ('verified','rejected')) ORDER BY i.seq",
                (style, style))
            unrewritten.extend(dict(row) for row in rows)
        return ResumeState(proposing, open_items, tuple(unrewritten))

    async def counts(self) -> dict[str, int]:
        rows = await self.store.rows("SELECT state, COUNT(*) FROM items GROUP BY state")
        counts = {state: 0 for state in ITEM_STATES}
        counts.update({row[0]: row[1] for row in rows})
        return counts

    async def verified_count(self) -> int:
        return int(await self.store.scalar("SELECT COUNT(*) FROM items WHERE state='verified'"))

    async def yield_so_far(self) -> tuple[int, int]:
        """(verified, settled) over items that reached a final verdict; the Proposer sizes its supply by it."""
        row = (await self.store.rows(
            "SELECT SUM(state='verified'), SUM(state IN (" + ",".join("?" * len(TERMINAL_STATES)) + "))"
            " FROM items", TERMINAL_STATES))[0]
        return int(row[0] or 0), int(row[1] or 0)


def _with_reopened(lineage: str | None, note: dict[str, Any]) -> dict[str, Any]:
    try:
        data = json.loads(lineage) if lineage else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {"previous": data}
    data["reopened"] = [*data.get("reopened", []), note]
    return data


def _reopen_decision(item_id: str, attempts: int, reason: str, run_id: str | None, t: float) -> Op:
    return ("INSERT INTO decisions(item_id, attempts, action, reason, run_id, created_at) VALUES(?,?,?,?,?,?)",
            (item_id, attempts, "reopen", reason, run_id, t))

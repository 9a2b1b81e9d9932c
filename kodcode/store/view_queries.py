"""The read queries behind `python -m kodcode.view`, over a read-only connection (`open_readonly`).

Every function takes a `sqlite3.Connection` opened with `mode=ro` and returns plain dicts and dataclasses,
so the web layer holds no SQL. Queries are shaped for stores of 100,000+ items that a run is still writing:
item pages use keyset paging on the unique `seq` index (a page deep in the table costs what the first one
does), per-item lookups go through primary keys and the existing `*_item` indexes, and the LLM spend is read
incrementally by rowid (`llm_calls` rows are only ever inserted), so a live page does not rescan a table of
prompts and responses every few seconds.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ITEM_STATES",
    "ItemFilter",
    "ItemPage",
    "LLMSpend",
    "RARE_STATE_SHARE",
    "charts_data",
    "filter_options",
    "item_detail",
    "items_page",
    "items_page_sql",
    "llm_spend_since",
    "prompt_trials_summary",
    "query_plan",
    "run_facts",
    "store_version",
]

# records.ITEM_STATES, repeated so that the view does not import the writer's module (and its LLM client).
ITEM_STATES = ("proposing", "open", "verified", "failed", "duplicate", "contaminated", "rejected")


def _json(text: str | None, default: Any = None) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def store_version(db: Path) -> str:
    """A token that changes whenever a commit lands: the sizes and mtimes of the store and its WAL.

    Read from the file system, not SQLite, so that polling it costs no query and takes no lock."""
    parts = []
    for suffix in ("", "-wal"):
        try:
            st = os.stat(f"{db}{suffix}")
        except OSError:
            parts.append("-")
            continue
        parts.append(f"{st.st_size:x}.{st.st_mtime_ns:x}")
    return "_".join(parts)


# -- the run page ------------------------------------------------------------------------------------------

def run_facts(conn: sqlite3.Connection) -> dict[str, Any]:
    """Store-wide counts and the latest run's row: what the progress panel shows, read from the store."""
    counts = {state: 0 for state in ITEM_STATES}
    # GROUP BY over the items_state index: a covering scan of the index, not of the items.
    counts.update({row[0]: row[1] for row in conn.execute("SELECT state, COUNT(*) FROM items GROUP BY state")})
    judged, passed = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(passed), 0) FROM attempts WHERE state='judged'").fetchone()
    runs = [dict(row) for row in conn.execute(
        "SELECT run_id, started_at, ended_at, status, config, summary FROM runs ORDER BY started_at")]
    for run in runs:
        run["config"] = _json(run["config"], {})
        run["summary"] = _json(run["summary"], {})
    latest = runs[-1] if runs else None
    verified_this_run = 0
    if latest is not None:
        # The rate behind the ETA counts this run's verified items only (a resumed store has older ones).
        verified_this_run = conn.execute(
            "SELECT COUNT(*) FROM items WHERE state='verified' AND updated_at >= ?",
            (latest["started_at"],)).fetchone()[0]
    rewrites = {row[0]: row[1] for row in conn.execute("SELECT state, COUNT(*) FROM rewrites GROUP BY state")}
    responses = conn.execute("SELECT COUNT(*), COALESCE(SUM(passed), 0) FROM responses").fetchone() \
        if _has_table(conn, "responses") else (0, 0)
    return {
        "counts": counts,
        "items": sum(counts.values()),
        "attempts_judged": judged,
        "attempts_passed": passed,
        "runs": runs,
        "latest_run": latest,
        "verified_this_run": verified_this_run,
        "rewrites": rewrites,
        "responses": {"total": responses[0], "passed": responses[1]},
    }


@dataclass
class LLMSpend:
    """LLM calls added up by second of `created_at`; `last_rowid` is where the next read starts."""

    last_rowid: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float = 0.0
    by_second: dict[int, list[float]] = field(default_factory=dict)   # second -> [calls, tokens, usd]

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def llm_spend_since(conn: sqlite3.Connection, spend: LLMSpend) -> LLMSpend:
    """Add the calls recorded after `spend.last_rowid` to `spend` and return it (a new one after a reset).

    Calls are inserted, never updated or deleted, so rowids only grow: each refresh reads only new rows
    through the rowid b-tree instead of summing a table that holds every prompt and response. A store
    replaced under the view (fewer rows than already counted) is summed again from the start."""
    newest = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM llm_calls").fetchone()[0]
    if newest < spend.last_rowid:
        spend = LLMSpend()
    rows = conn.execute(
        "SELECT CAST(created_at AS INTEGER) AS second, COUNT(*), COALESCE(SUM(prompt_tokens), 0),"
        " COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cost_usd), 0), MAX(rowid)"
        " FROM llm_calls WHERE rowid > ? GROUP BY second", (spend.last_rowid,)).fetchall()
    for second, calls, prompt, completion, usd, last in rows:
        spend.calls += calls
        spend.prompt_tokens += prompt
        spend.completion_tokens += completion
        spend.usd += usd
        bucket = spend.by_second.setdefault(int(second), [0, 0, 0.0])
        bucket[0] += calls
        bucket[1] += prompt + completion
        bucket[2] += usd
        spend.last_rowid = max(spend.last_rowid, int(last))
    return spend


def charts_data(conn: sqlite3.Connection, *, buckets: int = 48, until: float | None = None) -> dict[str, Any]:
    """The run page's distributions and the verified-over-time series (in `buckets` time steps, from the
    first run's start to the last verified item, or to `until` (now, while a run goes on))."""
    span = conn.execute(
        "SELECT MIN(updated_at), MAX(updated_at), COUNT(*) FROM items WHERE state='verified'").fetchone()
    verified_series: list[tuple[float, int]] = []
    if span[2]:
        start = conn.execute("SELECT MIN(started_at) FROM runs").fetchone()[0] or span[0]
        start = min(start, span[0])
        end = max(span[1], until or span[1])
        width = max((end - start) / buckets, 1e-6)
        counts = dict(conn.execute(
            "SELECT MIN(CAST((updated_at - ?) / ? AS INTEGER), ?), COUNT(*) FROM items WHERE state='verified'"
            " GROUP BY 1", (start, width, buckets - 1)).fetchall())
        total = 0
        verified_series.append((start, 0))
        for index in range(buckets):
            total += counts.get(index, 0)
            verified_series.append((start + (index + 1) * width, total))
    by_subset = [dict(row) for row in conn.execute(
        "SELECT i.subset AS subset, COUNT(*) AS judged, COALESCE(SUM(a.passed), 0) AS passed"
        " FROM attempts a JOIN items i ON i.item_id = a.item_id WHERE a.state='judged'"
        " GROUP BY i.subset ORDER BY i.subset")]
    difficulty = [dict(row) for row in conn.execute(
        "SELECT COALESCE(difficulty, 'unlabelled') AS label, COUNT(*) AS items FROM items"
        " WHERE state IN ('verified', 'failed') GROUP BY 1 ORDER BY 1")]
    # Attempts per settled question; GROUP BY item_id walks the attempts primary key in order.
    attempts = [dict(row) for row in conn.execute(
        "SELECT n AS attempts, COUNT(*) AS questions FROM (SELECT a.item_id, COUNT(*) AS n FROM attempts a"
        " WHERE a.state='judged' GROUP BY a.item_id) AS per JOIN items i ON i.item_id = per.item_id"
        " WHERE i.state IN ('verified', 'failed') GROUP BY n ORDER BY n")]
    return {"verified_series": verified_series, "pass_by_subset": by_subset, "difficulty": difficulty,
            "attempts_per_question": attempts}


# -- the items page ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ItemFilter:
    state: str | None = None
    subset: str | None = None
    source: str | None = None
    difficulty: str | None = None
    reason: str | None = None      # the start of the item's reason ("duplicate", "contaminated: matches …")
    text: str | None = None        # a substring of the question, or an item id

    def active(self) -> bool:
        return any((self.state, self.subset, self.source, self.difficulty, self.reason, self.text))


@dataclass(frozen=True)
class ItemPage:
    rows: list[dict[str, Any]]
    matching: int                  # items matching the filter, all pages
    newer: int | None              # cursor for the page before this one (`after=`), None on the first page
    older: int | None              # cursor for the next page (`before=`), None on the last page


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _filter_sql(flt: ItemFilter) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column in ("state", "subset", "source"):
        value = getattr(flt, column)
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    if flt.difficulty:
        if flt.difficulty == "unlabelled":
            where.append("difficulty IS NULL")
        else:
            where.append("difficulty = ?")
            params.append(flt.difficulty)
    if flt.reason:
        where.append("reason LIKE ? ESCAPE '\\'")
        params.append(_like_escape(flt.reason) + "%")
    if flt.text:
        where.append("(item_id = ? OR question LIKE ? ESCAPE '\\')")
        params += [flt.text, "%" + _like_escape(flt.text) + "%"]
    return where, params


_ITEM_COLUMNS = ("item_id, seq, source, subset, state, difficulty, reason, updated_at, substr(question, 1, 240) AS question,"
                 " (SELECT COUNT(*) FROM attempts a WHERE a.item_id = items.item_id AND a.state = 'judged') AS judged,"
                 " (SELECT COUNT(*) FROM attempts a WHERE a.item_id = items.item_id AND a.passed = 1) AS passed")


def items_page_sql(flt: ItemFilter, *, before: int | None = None, after: int | None = None, limit: int = 50,
                   rare_state: bool = False) -> tuple[str, list[Any]]:
    """The page query: newest first, keyset on `seq` (`before`: older than that seq; `after`: newer).

    By default SQLite walks the unique `seq` index in order and stops after `limit + 1` matches, so a page
    deep in the table costs what the first one does; the state filter is written `+state` to keep the
    planner on that walk instead of collecting every item of a common state through items_state and sorting
    them. A `rare_state` (a few percent of the items) is the opposite case: its items_state entries are few,
    so reading them all and sorting beats walking the whole seq index to find a page of them. The attempt
    counts are correlated lookups on the attempts primary key, for the page's rows only."""
    where, params = _filter_sql(flt)
    if not rare_state:
        where = ["+" + w if w.startswith("state = ") else w for w in where]
    if before is not None:
        where.append("seq < ?")
        params.append(before)
    if after is not None:
        where.append("seq > ?")
        params.append(after)
    order = "ASC" if after is not None else "DESC"
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    source = "items INDEXED BY items_state" if rare_state and flt.state else "items"
    return f"SELECT {_ITEM_COLUMNS} FROM {source}{clause} ORDER BY seq {order} LIMIT ?", [*params, limit + 1]


# A state held by fewer than this share of the items is read through items_state (see items_page_sql).
RARE_STATE_SHARE = 0.05


def items_page(conn: sqlite3.Connection, flt: ItemFilter, *, before: int | None = None, after: int | None = None,
               limit: int = 50) -> ItemPage:
    where, count_params = _filter_sql(flt)
    matching = conn.execute(
        "SELECT COUNT(*) FROM items" + (f" WHERE {' AND '.join(where)}" if where else ""), count_params).fetchone()[0]
    rare_state = False
    if flt.state:
        # Both counts come from indexes (items_state, and the smallest index for the total).
        in_state = conn.execute("SELECT COUNT(*) FROM items WHERE state = ?", (flt.state,)).fetchone()[0]
        total = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        rare_state = in_state < RARE_STATE_SHARE * total
    sql, params = items_page_sql(flt, before=before, after=after, limit=limit, rare_state=rare_state)
    rows = [dict(row) for row in conn.execute(sql, params)]
    more = len(rows) > limit
    rows = rows[:limit]
    if after is not None:
        rows.reverse()
    if not rows:
        return ItemPage(rows, matching, None, None)
    newest, oldest = rows[0]["seq"], rows[-1]["seq"]
    # The fetched extra row answers "is there more" in the direction read; the other direction is one probe.
    if after is not None:
        has_newer, has_older = more, _exists(conn, flt, "seq < ?", oldest)
    else:
        has_newer, has_older = before is not None and _exists(conn, flt, "seq > ?", newest), more
    return ItemPage(rows, matching, newest if has_newer else None, oldest if has_older else None)


def _exists(conn: sqlite3.Connection, flt: ItemFilter, bound: str, seq: int) -> bool:
    where, params = _filter_sql(flt)
    sql = "SELECT 1 FROM items WHERE " + " AND ".join([*where, bound]) + " LIMIT 1"
    return conn.execute(sql, [*params, seq]).fetchone() is not None


def filter_options(conn: sqlite3.Connection) -> dict[str, list[tuple[str, int]]]:
    """Values to filter by, with how many items have each (the reason groups are the text before ':')."""
    options: dict[str, list[tuple[str, int]]] = {}
    options["state"] = [(row[0], row[1]) for row in conn.execute(
        "SELECT state, COUNT(*) FROM items GROUP BY state ORDER BY state")]
    for column in ("subset", "source"):
        options[column] = [(row[0], row[1]) for row in conn.execute(
            f"SELECT {column}, COUNT(*) FROM items GROUP BY {column} ORDER BY {column}")]
    options["difficulty"] = [(row[0], row[1]) for row in conn.execute(
        "SELECT COALESCE(difficulty, 'unlabelled'), COUNT(*) FROM items GROUP BY 1 ORDER BY 1")]
    options["reason"] = [(row[0], row[1]) for row in conn.execute(
        "SELECT CASE WHEN instr(reason, ':') > 0 THEN substr(reason, 1, instr(reason, ':') - 1) ELSE reason END,"
        " COUNT(*) FROM items WHERE reason IS NOT NULL AND state IN ('duplicate', 'contaminated', 'rejected', 'failed')"
        " GROUP BY 1 ORDER BY 2 DESC LIMIT 30")]
    return options


def query_plan(conn: sqlite3.Connection, sql: str, params: list[Any]) -> list[str]:
    """EXPLAIN QUERY PLAN's details, for tests that hold a query to its index."""
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]


# -- the item page -----------------------------------------------------------------------------------------

def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def item_detail(conn: sqlite3.Connection, item_id: str) -> dict[str, Any] | None:
    """Everything recorded about one item, JSON columns parsed; None when there is no such item."""
    row = conn.execute("SELECT * FROM items WHERE item_id = ?", (item_id,)).fetchone()
    if row is None:
        return None
    item = dict(row)
    item["lineage"] = _json(item["lineage"], {})
    item["seed_ids"] = _json(item["seed_ids"], [])
    item["pass_sequence"] = _json(item["pass_sequence"], [])
    attempts = []
    for attempt in conn.execute("SELECT * FROM attempts WHERE item_id = ? ORDER BY attempt", (item_id,)):
        entry = dict(attempt)
        entry["lineage"] = _json(entry["lineage"], {})
        entry["test_results"] = _json(entry["test_results"], [])
        entry["gates"] = _json(entry.get("gates"), None)          # absent before schema 3
        entry.setdefault("mutation_score", None)
        attempts.append(entry)
    decisions = [dict(d) for d in conn.execute(
        "SELECT attempts, action, label, priority, confidence, reason, created_at FROM decisions"
        " WHERE item_id = ? ORDER BY id", (item_id,))]
    rewrites = []
    for rewrite in conn.execute("SELECT * FROM rewrites WHERE item_id = ? ORDER BY style", (item_id,)):
        entry = dict(rewrite)
        entry["lineage"] = _json(entry["lineage"], {})
        rewrites.append(entry)
    responses = []
    if _has_table(conn, "responses"):
        for response in conn.execute("SELECT * FROM responses WHERE item_id = ? ORDER BY style, sample", (item_id,)):
            entry = dict(response)
            entry["lineage"] = _json(entry["lineage"], {})
            responses.append(entry)
    calls = []
    for call in conn.execute(
            "SELECT request_hash, role, model, template, template_hash, attempt, request, response, finish_reasons,"
            " prompt_tokens, completion_tokens, latency_s, cost_usd, created_at FROM llm_calls WHERE item_id = ?"
            " ORDER BY created_at, rowid", (item_id,)):
        entry = dict(call)
        request = _json(entry.pop("request"), [])
        entry["endpoint"], entry["body"] = (request + [None, {}])[:2] if isinstance(request, list) else (None, {})
        entry["texts"] = _json(entry.pop("response"), [])
        entry["finish_reasons"] = _json(entry["finish_reasons"], [])
        calls.append(entry)
    dedup = conn.execute("SELECT exact_hash FROM dedup_index WHERE item_id = ?", (item_id,)).fetchone()
    parent_id = item["lineage"].get("parent") if isinstance(item["lineage"], dict) else None
    related = [str(i) for i in [*(item["seed_ids"] or []), parent_id] if isinstance(i, str)]
    duplicate_of = None
    if item["state"] == "duplicate" and (item["reason"] or "").startswith("duplicate of "):
        duplicate_of = item["reason"].split()[2]
        related.append(duplicate_of)
    known = {r[0] for r in conn.execute(
        f"SELECT item_id FROM items WHERE item_id IN ({','.join('?' * len(related))})", related)} if related else set()
    trials = []
    if _has_table(conn, "prompt_trials"):
        trials = [dict(t) for t in conn.execute(
            "SELECT batch, arm, stage, sample, template, template_hash, model, passed, reason, coverage, mutation_score"
            " FROM prompt_trials WHERE item_id = ? ORDER BY batch, arm, sample", (item_id,))]
    return {"item": item, "attempts": attempts, "decisions": decisions, "rewrites": rewrites,
            "responses": responses, "calls": calls, "dedup_hash": dedup[0] if dedup else None,
            "duplicate_of": duplicate_of, "known_items": known, "trials": trials,
            "matrix": _item_matrix(conn, item_id, _json(item.get("consensus"), None))}


def _item_matrix(conn: sqlite3.Connection, item_id: str, consensus: dict[str, Any] | None) -> dict[str, Any] | None:
    """The execution matrix as a grid (rows: solutions, columns: test files) with the consensus's reading:
    the accepted cell, the agreeing group, dropped test functions, and the real wrong solutions."""
    if not _has_table(conn, "matrix"):
        return None
    cells = {}
    for row in conn.execute("SELECT solution_attempt, tests_attempt, passed, outcomes, reason FROM matrix"
                            " WHERE item_id = ?", (item_id,)):
        outcomes: dict[str, str] = _json(row["outcomes"], {})
        cells[(row["solution_attempt"], row["tests_attempt"])] = {
            "passed": bool(row["passed"]), "reason": row["reason"],
            "functions": len(outcomes), "passed_functions": sum(o == "passed" for o in outcomes.values()),
            "failing": sorted(name for name, outcome in outcomes.items() if outcome != "passed")}
    if not cells and consensus is None:
        return None
    consensus = consensus or {}
    accepted = consensus.get("accepted") or {}
    solutions = sorted({s for s, _ in cells} | set(consensus.get("solutions", [])))
    test_files = sorted({t for _, t in cells} | set(consensus.get("test_files", [])))
    group, wrong, rejected = (set(accepted.get(key, [])) for key in ("group", "wrong", "rejected"))
    rows = [{"solution": s,
             "role": ("accepted" if s == accepted.get("solution_attempt") else "agrees" if s in group
                      else "wrong, rejected" if s in rejected else "wrong, passes" if s in wrong else ""),
             "cells": [cells.get((s, t)) for t in test_files]} for s in solutions]
    return {"solutions": solutions, "test_files": test_files, "rows": rows, "consensus": consensus,
            "accepted": accepted or None, "accepted_cell": (accepted.get("solution_attempt"), accepted.get("tests_attempt"))}


# -- the prompts page --------------------------------------------------------------------------------------

def prompt_trials_summary(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """`kodcode.iterate` batches: per batch, arm and stage, the trials, passes and mean gate scores."""
    if not _has_table(conn, "prompt_trials"):
        return []
    return [dict(row) for row in conn.execute(
        "SELECT batch, arm, stage, template, template_hash, COUNT(*) AS trials, SUM(passed) AS passed,"
        " AVG(coverage) AS coverage, AVG(mutation_score) AS mutation_score, COUNT(DISTINCT item_id) AS items,"
        " MIN(created_at) AS created_at FROM prompt_trials GROUP BY batch, arm, stage, template, template_hash"
        " ORDER BY MIN(created_at), batch, arm, stage")]

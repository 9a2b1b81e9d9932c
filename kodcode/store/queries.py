"""Read-side queries over a run's store, for the command-line tools (report, export, iterate, view).

Every query takes a read-only connection from `open_readonly` (it can never write to, or lock out, a
store a run is writing) and returns plain dicts or dataclasses; a SQLite error becomes a StoreError that
names the store. The tools hold no SQL of their own: the schema is known only inside this package.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from kodcode.errors import StoreError
from kodcode.store.sqlite import open_readonly

__all__ = [
    "ItemSample",
    "ReadConnection",
    "ReadError",
    "Row",
    "attempt_lineages",
    "consensus_rows",
    "item_rows",
    "judged_attempts",
    "llm_spend_by_model",
    "llm_spend_by_role",
    "llm_totals",
    "matrix_cells",
    "open_readonly",
    "prompt_trials",
    "responses",
    "rewrite_rows",
    "run_rows",
    "sample_items",
    "state_counts",
    "stored_run_config",
    "verified_items",
    "verified_rewrites",
]

ReadConnection = sqlite3.Connection
Row = sqlite3.Row                 # a row read by name: row["item_id"]
ReadError = sqlite3.Error         # what a query not wrapped in a StoreError raises (kodcode.view's)
P = ParamSpec("P")
R = TypeVar("R")


def _reading(query: Callable[P, R]) -> Callable[P, R]:
    """A failed read says which store and why, as a StoreError (one line for the user, no traceback)."""

    @functools.wraps(query)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return query(*args, **kwargs)
        except sqlite3.Error as exc:
            conn = args[0] if args else None
            where = _path(conn) if isinstance(conn, sqlite3.Connection) else "the store"
            raise StoreError(f"store {where} cannot be read: {exc}") from None

    return wrapper


def _path(conn: sqlite3.Connection) -> str:
    try:
        return str(conn.execute("PRAGMA database_list").fetchone()[2])
    except sqlite3.Error:
        return "?"


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


# -- report -------------------------------------------------------------------------------------------

@_reading
def item_rows(conn: ReadConnection) -> list[dict[str, Any]]:
    return [dict(row) for row in conn.execute(
        "SELECT item_id, subset, source, state, difficulty, reason, lineage, chosen_attempt FROM items ORDER BY seq")]


@_reading
def attempt_lineages(conn: ReadConnection) -> list[dict[str, Any]]:
    """Every attempt's outcome and lineage (what prompts and models made it), in item order."""
    return [dict(row) for row in conn.execute(
        "SELECT item_id, attempt, state, mode, passed, reason, lineage FROM attempts ORDER BY item_id, attempt")]


@_reading
def rewrite_rows(conn: ReadConnection) -> list[dict[str, Any]]:
    return [dict(row) for row in conn.execute("SELECT item_id, style, state, reason FROM rewrites")]


@_reading
def run_rows(conn: ReadConnection) -> list[dict[str, Any]]:
    return [dict(row) for row in conn.execute("SELECT run_id, status, started_at, ended_at FROM runs ORDER BY started_at")]


@_reading
def llm_spend_by_role(conn: ReadConnection) -> dict[str, dict[str, Any]]:
    """role -> calls, prompt_tokens, completion_tokens, usd over every recorded call."""
    return {row["role"]: dict(row) for row in conn.execute(
        "SELECT role, COUNT(*) AS calls, COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,"
        " COALESCE(SUM(completion_tokens), 0) AS completion_tokens, COALESCE(SUM(cost_usd), 0) AS usd"
        " FROM llm_calls GROUP BY role")}


@_reading
def llm_totals(conn: ReadConnection) -> dict[str, Any]:
    row = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),"
        " COALESCE(SUM(cost_usd), 0), COALESCE(AVG(latency_s), 0) FROM llm_calls").fetchone()
    return {"calls": row[0], "prompt_tokens": row[1], "completion_tokens": row[2], "usd": float(row[3]),
            "mean_latency_s": float(row[4])}


@_reading
def llm_spend_by_model(conn: ReadConnection) -> dict[str, dict[str, Any]]:
    return {r[0]: {"calls": r[1], "tokens": r[2], "usd": float(r[3])} for r in conn.execute(
        "SELECT model, COUNT(*), COALESCE(SUM(prompt_tokens + completion_tokens), 0), COALESCE(SUM(cost_usd), 0)"
        " FROM llm_calls GROUP BY model ORDER BY model")}


@_reading
def prompt_trials(conn: ReadConnection) -> list[dict[str, Any]]:
    """kodcode.iterate's trials (none in a store from before it existed)."""
    if not _has_table(conn, "prompt_trials"):
        return []
    return [dict(row) for row in conn.execute("SELECT stage, template, template_hash, model, passed FROM prompt_trials")]


@_reading
def state_counts(conn: ReadConnection) -> dict[str, int]:
    return {row[0]: row[1] for row in conn.execute("SELECT state, COUNT(*) FROM items GROUP BY state")}


@_reading
def consensus_rows(conn: ReadConnection) -> list[dict[str, Any]]:
    """Each item's execution-matrix consensus (items.consensus JSON), in proposal order; none in a store
    from before the matrix (schema < 5) or from a run without it."""
    if "consensus" not in {row[1] for row in conn.execute("PRAGMA table_info(items)")}:
        return []
    return [{"item_id": row["item_id"], "state": row["state"], "consensus": json.loads(row["consensus"])}
            for row in conn.execute("SELECT item_id, state, consensus FROM items WHERE consensus IS NOT NULL ORDER BY seq")]


@_reading
def matrix_cells(conn: ReadConnection, item_id: str) -> list[dict[str, Any]]:
    """One item's matrix cells: (solution attempt, tests attempt, passed, per-function outcomes)."""
    if not _has_table(conn, "matrix"):
        return []
    return [{"solution_attempt": row[0], "tests_attempt": row[1], "passed": bool(row[2]), "outcomes": json.loads(row[3])}
            for row in conn.execute("SELECT solution_attempt, tests_attempt, passed, outcomes FROM matrix WHERE item_id=?"
                                    " ORDER BY solution_attempt, tests_attempt", (item_id,))]


# -- export -------------------------------------------------------------------------------------------

@_reading
def verified_items(conn: ReadConnection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM items WHERE state='verified' ORDER BY seq").fetchall()


@_reading
def judged_attempts(conn: ReadConnection, item_id: str) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM attempts WHERE item_id=? AND state='judged' ORDER BY attempt",
                        (item_id,)).fetchall()


@_reading
def verified_rewrites(conn: ReadConnection, item_id: str) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM rewrites WHERE item_id=? AND state='verified' ORDER BY style",
                        (item_id,)).fetchall()


@_reading
def responses(conn: ReadConnection, item_id: str, style: str) -> list[sqlite3.Row]:
    """Reasoning-model responses to one (item, style), in sample order (none before they existed)."""
    if not _has_table(conn, "responses"):
        return []
    return conn.execute("SELECT * FROM responses WHERE item_id=? AND style=? ORDER BY sample",
                        (item_id, style)).fetchall()


# -- iterate ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ItemSample:
    """A verified item and the triplet that verified it: the fixed upstream of every trial on it."""

    item_id: str
    question: str
    solution: str
    tests: str
    entry_point: str


@_reading
def sample_items(conn: ReadConnection, n: int, seed: int) -> list[ItemSample]:
    """`n` verified items, the same ones for the same store and seed whatever order they were stored in."""
    rows = conn.execute(
        "SELECT i.item_id, i.question, a.solution, COALESCE(i.accepted_tests, a.tests) AS tests,"
        " COALESCE(a.entry_point, i.entry_point) AS entry_point"
        " FROM items i JOIN attempts a ON a.item_id = i.item_id AND a.attempt = i.chosen_attempt"
        " WHERE i.state = 'verified' AND a.solution IS NOT NULL AND a.tests IS NOT NULL").fetchall()
    items = [ItemSample(r["item_id"], r["question"], r["solution"], r["tests"], r["entry_point"] or "") for r in rows]
    items.sort(key=lambda item: hashlib.sha256(f"{seed}:{item.item_id}".encode()).hexdigest())
    return items[:n]


@_reading
def stored_run_config(conn: ReadConnection) -> dict[str, Any]:
    """The latest run's settings, as `kodcode.run` stored them (without what it added for the record)."""
    row = conn.execute("SELECT config FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
    if row is None:
        raise StoreError("the store has no run to iterate on")
    data = json.loads(row["config"])
    for key in ("models", "prompts"):
        data.pop(key, None)
    return data

"""The SQLite store: the run's only copy of paid-for work.

One aiosqlite connection, WAL journal, a schema version with forward-only migrations. Writes are
grouped: callers hand over their statements and wait until a commit containing them is done, and
while one transaction commits the next batch fills up (leader/follower group commit). So every state
change is durable before its message moves on, yet 64 concurrent workers cost a handful of commits.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from kodcode.errors import SchemaError, StoreError

__all__ = ["SCHEMA_VERSION", "Op", "Store", "dumps", "open_readonly"]

SCHEMA_VERSION = 5

Op = tuple[str, Sequence[Any]]

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE runs(
        run_id TEXT PRIMARY KEY, started_at REAL NOT NULL, ended_at REAL, status TEXT NOT NULL,
        config TEXT NOT NULL, summary TEXT);
    CREATE TABLE items(
        item_id TEXT PRIMARY KEY,
        seq INTEGER UNIQUE NOT NULL,
        source TEXT NOT NULL,
        subset TEXT NOT NULL,
        state TEXT NOT NULL,
        question TEXT,
        seed_ids TEXT,
        lineage TEXT,
        entry_point TEXT,
        difficulty TEXT,
        pass_sequence TEXT,
        chosen_attempt INTEGER,
        reason TEXT,
        run_id TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL);
    CREATE INDEX items_state ON items(state);
    CREATE TABLE attempts(
        item_id TEXT NOT NULL REFERENCES items(item_id),
        attempt INTEGER NOT NULL,
        state TEXT NOT NULL,
        mode TEXT NOT NULL,
        solution TEXT,
        tests TEXT,
        entry_point TEXT,
        passed INTEGER,
        reason TEXT,
        test_results TEXT,
        coverage REAL,
        lineage TEXT NOT NULL DEFAULT '{}',
        duration_s REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY(item_id, attempt));
    CREATE TABLE llm_calls(
        request_hash TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        model TEXT NOT NULL,
        template TEXT,
        template_hash TEXT,
        item_id TEXT,
        attempt INTEGER,
        request TEXT NOT NULL,
        response TEXT NOT NULL,
        finish_reasons TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        latency_s REAL NOT NULL,
        cost_usd REAL NOT NULL DEFAULT 0,
        run_id TEXT,
        created_at REAL NOT NULL);
    CREATE INDEX llm_calls_item ON llm_calls(item_id);
    CREATE TABLE rewrites(
        item_id TEXT NOT NULL REFERENCES items(item_id),
        style TEXT NOT NULL,
        state TEXT NOT NULL,
        question TEXT,
        passed INTEGER,
        reason TEXT,
        lineage TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY(item_id, style));
    CREATE TABLE decisions(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        item_id TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        action TEXT NOT NULL,
        label TEXT,
        priority REAL,
        confidence REAL,
        reason TEXT NOT NULL,
        run_id TEXT,
        created_at REAL NOT NULL);
    CREATE INDEX decisions_item ON decisions(item_id);
    CREATE TABLE dedup_index(
        item_id TEXT PRIMARY KEY,
        exact_hash TEXT NOT NULL,
        minhash BLOB);
    """,
    2: """
    CREATE TABLE responses(
        item_id TEXT NOT NULL REFERENCES items(item_id),
        style TEXT NOT NULL,
        sample INTEGER NOT NULL,
        model TEXT NOT NULL,
        response TEXT,
        reasoning TEXT,
        code TEXT,
        renamed_from TEXT,
        passed INTEGER NOT NULL,
        reason TEXT,
        coverage REAL,
        lineage TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        PRIMARY KEY(item_id, style, sample));
    """,
    3: """
    ALTER TABLE attempts ADD COLUMN mutation_score REAL;
    ALTER TABLE attempts ADD COLUMN gates TEXT;
    """,
    4: """
    CREATE TABLE prompt_trials(
        batch TEXT NOT NULL,
        arm TEXT NOT NULL,
        stage TEXT NOT NULL,
        item_id TEXT NOT NULL REFERENCES items(item_id),
        sample INTEGER NOT NULL,
        template TEXT NOT NULL,
        template_hash TEXT NOT NULL,
        model TEXT,
        solution TEXT,
        tests TEXT,
        passed INTEGER NOT NULL,
        reason TEXT,
        coverage REAL,
        mutation_score REAL,
        gates TEXT,
        lineage TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        PRIMARY KEY(batch, arm, item_id, sample));
    """,
    # The execution matrix: every solution of an item against every test file of it, per test function.
    # items.consensus holds the triplet the matrix accepted (rule, score, dropped tests, detection of the
    # real wrong solutions); items.accepted_tests the accepted test file, which may differ from every
    # attempt's own (another attempt's tests, or wrong-looking functions dropped).
    5: """
    CREATE TABLE matrix(
        item_id TEXT NOT NULL REFERENCES items(item_id),
        solution_attempt INTEGER NOT NULL,
        tests_attempt INTEGER NOT NULL,
        passed INTEGER NOT NULL,
        outcomes TEXT NOT NULL,
        reason TEXT,
        duration_s REAL,
        created_at REAL NOT NULL,
        PRIMARY KEY(item_id, solution_attempt, tests_attempt));
    ALTER TABLE items ADD COLUMN consensus TEXT;
    ALTER TABLE items ADD COLUMN accepted_tests TEXT;
    """,
}


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


@dataclass
class _Batch:
    writes: list[list[Op]] = field(default_factory=list)   # one entry per waiting caller
    led: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)
    errors: dict[int, StoreError] = field(default_factory=dict)  # index in `writes` -> its failure


class Store:
    """Async access to one store file. Create with `await Store.open(path)`; close with `aclose()`."""

    def __init__(self, conn: aiosqlite.Connection, path: str, lock_fd: int | None) -> None:
        self._conn = conn
        self.path = path
        self._lock_fd = lock_fd
        self._batch = _Batch()
        self._commit_lock = anyio.Lock()
        self.commits = 0
        self.ops_committed = 0

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path, *, synchronous: str = "NORMAL") -> "Store":
        """Open (creating or migrating) the store. `path=":memory:"` keeps nothing on disk."""
        path = str(path)
        lock_fd = None
        if path != ":memory:":
            db_path = Path(path)
            if db_path.is_dir():
                raise StoreError(f"--db {db_path} is a directory; give the store's file, e.g. {db_path / 'kodcode.db'}")
            try:
                db_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the store's directory {db_path.parent}: {exc.strerror}") from None
            lock_fd = _lock_exclusively(db_path)
        try:
            # Shielded: a connect abandoned half-way (Ctrl-C at start-up) leaves aiosqlite's thread posting
            # its result to an event loop that is already closed, a traceback after a clean stop.
            with anyio.CancelScope(shield=True):
                conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            _unlock(lock_fd)
            raise StoreError(f"cannot open store {path}: {exc}") from None
        store = cls(conn, path, lock_fd)
        try:
            await store._setup(synchronous)
        except BaseException:
            await store.aclose()
            raise
        return store

    async def _setup(self, synchronous: str) -> None:
        try:
            await self._conn.execute("PRAGMA busy_timeout=5000")
            # The versions are read before anything is written (the WAL switch, the meta table): a store this
            # kodcode must refuse is left byte for byte as it was.
            version = await self._schema_version()
            if self.path != ":memory:":
                await self._conn.execute("PRAGMA journal_mode=WAL")
            await self._conn.execute(f"PRAGMA synchronous={synchronous}")
            await self._conn.execute("PRAGMA foreign_keys=ON")
            await self._conn.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"store {self.path} cannot be used: {exc}") from None
        for target in range(version + 1, SCHEMA_VERSION + 1):
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
                await self._run_script(_MIGRATIONS[target])
                await self._conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES('schema_version', ?)", (str(target),))
                # Mirrored in the file header, where any SQLite tool (and an older kodcode) can read it.
                await self._conn.execute(f"PRAGMA user_version={target}")
                await self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                await self._rollback()
                raise StoreError(f"store {self.path}: migration to schema {target} failed: {exc}{_write_hint(exc)}") from None

    async def _schema_version(self) -> int:
        """The store's schema version: meta.schema_version, checked against the header's user_version.
        Refuses a store from a newer kodcode and a version that is not a number (SchemaError)."""
        async def scalar(sql: str) -> Any:   # sqlite3 errors raw: _setup words them ("cannot be used")
            async with self._conn.execute(sql) as cursor:
                row = await cursor.fetchone()
            return row[0] if row else None

        header = int(await scalar("PRAGMA user_version") or 0)
        has_meta = await scalar("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'")
        raw = await scalar("SELECT value FROM meta WHERE key='schema_version'") if has_meta else None
        try:
            version = int(str(raw).strip()) if raw is not None else 0
        except ValueError:
            raise SchemaError(f"store {self.path} has a schema version that is not a number ({str(raw)[:40]!r} in "
                              "its meta table): it was not written by kodcode, or was edited; use another --db") from None
        newest = max(version, header)
        if newest > SCHEMA_VERSION:
            raise SchemaError(f"store {self.path} was written by a newer kodcode (schema {newest}); upgrade kodcode "
                              f"(this one knows schema {SCHEMA_VERSION} at most: pip install -U kodcode) or use another --db")
        return version

    async def _run_script(self, script: str) -> None:
        # executescript() would COMMIT first; run the statements one by one inside our transaction.
        for statement in script.split(";"):
            if statement.strip():
                await self._conn.execute(statement)

    async def aclose(self) -> None:
        # Shielded for the same reason: closing is what a cancelled run does last, and an unfinished close
        # leaves the connection's thread behind the event loop.
        try:
            with anyio.CancelScope(shield=True):
                await self._conn.close()
        finally:
            _unlock(self._lock_fd)
            self._lock_fd = None

    async def __aenter__(self) -> "Store":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- writing: group commit -----------------------------------------------------------------------

    async def write(self, ops: Iterable[Op]) -> None:
        """Run `ops` in a transaction with whatever else is pending; return once committed."""
        batch = self._batch
        index = len(batch.writes)
        batch.writes.append(list(ops))
        if batch.led:
            await batch.done.wait()
        else:
            batch.led = True
            # Shielded from the wait for the commit slot to the end of the commit: the followers in this
            # batch depend on their leader (a leader cancelled while waiting would strand them forever),
            # and a cancelled run must not leave a transaction half-applied or open.
            with anyio.CancelScope(shield=True):
                try:
                    async with self._commit_lock:
                        # Everything that arrived while the previous commit ran is in this batch now.
                        self._batch = _Batch()
                        await self._commit_batch(batch)
                except BaseException as exc:
                    for waiting in range(len(batch.writes)):
                        batch.errors.setdefault(waiting, StoreError(f"store {self.path}: write failed: {exc!r}"))
                    raise
                finally:
                    batch.done.set()
        error = batch.errors.get(index)
        if error is not None:
            raise error

    async def _commit_batch(self, batch: _Batch) -> None:
        try:
            await self._commit([op for ops in batch.writes for op in ops])
        except StoreError as exc:
            if len(batch.writes) == 1:
                batch.errors[0] = exc
                return
            # One caller's bad statement must not fail the others batched with it (a lost record_call
            # would be a paid-for answer thrown away): commit each caller's statements on their own.
            for index, ops in enumerate(batch.writes):
                try:
                    await self._commit(ops)
                except StoreError as own:
                    batch.errors[index] = own

    async def _commit(self, ops: list[Op]) -> None:
        try:
            await self._conn.execute("BEGIN IMMEDIATE")
            for sql, params in ops:
                await self._conn.execute(sql, params)
            await self._conn.execute("COMMIT")
        except Exception as exc:  # sqlite errors, and malformed ops too: never leave the transaction open
            await self._rollback()
            raise StoreError(f"store {self.path}: {exc}{_write_hint(exc)}") from None
        except BaseException:
            await self._rollback()
            raise
        self.commits += 1
        self.ops_committed += len(ops)

    async def _rollback(self) -> None:
        try:
            await self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    # -- reading -------------------------------------------------------------------------------------

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            self._conn.row_factory = sqlite3.Row
            async with self._conn.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path}: {exc}") from None

    async def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        found = await self.rows(sql, params)
        return found[0][0] if found else None

    async def integrity_check(self) -> str:
        return str(await self.scalar("PRAGMA integrity_check"))


def _write_hint(exc: Exception) -> str:
    """The fix for a failed write, where SQLite's words do not say it (EFBIG reads as "disk I/O error")."""
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(("SQLITE_FULL", "SQLITE_IOERR")):
        return "; is the disk full or the file size limited? free space, then run again with the same --db to resume"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "; another program holds a lock on the store: close it, then run again with the same --db"
    if name.startswith("SQLITE_READONLY"):
        return "; make the store and its directory writable, or use another --db"
    return ""


def now() -> float:
    return time.time()


def _lock_exclusively(db_path: Path) -> int:
    """One run per store: a second writer would duplicate work and double-pay calls."""
    lock_path = db_path.with_name(db_path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot use store {db_path}: {exc.strerror} ({lock_path})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise StoreError(f"store {db_path} is in use by another kodcode run (pid {holder}); wait for it or use another --db") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def open_readonly(db: Path) -> sqlite3.Connection:
    """A read-only connection (URI mode=ro): the report can never write to, or lock out, a running store."""
    if not db.exists():
        raise StoreError(f"store {db} does not exist")
    if not db.is_file():
        raise StoreError(f"store {db} is not a file")
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("SELECT 1 FROM items LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"store {db} cannot be read: {exc}") from None
    return conn

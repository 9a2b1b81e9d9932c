"""Bad input: each case gets one line naming the problem (and the fix), exit 2, no traceback, and the store
is left as it was (not created where there was none, byte for byte the same where there was one).

The (case, message) table is written to $KODCODE_BAD_INPUT_TABLE when set, else printed (pytest -s)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from helpers import kodcode_command, kodcode_env, query, run_kodcode
from kodcode.store.sqlite import Store
from scripted_openai import ScriptedOpenAIServer
from test_hygiene import LAUNCHER
from fake_coder import FakeCoder
from test_soak import RUN_ARGS, SCRIPT, IdempotentCoder, start_server

UNREACHABLE = "http://127.0.0.1:9/v1"
TABLE: list[tuple[str, str]] = []


@dataclass(frozen=True)
class Case:
    name: str
    module: str                                     # run | export
    args: tuple[str, ...]                           # {dir}, {db} and {server} are filled in
    message: str                                    # must appear in the one error line
    prepare: Callable[[Path], None] = lambda _dir: None
    has_store: bool = False                         # a store exists before and must not change


def write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda directory: (directory / name).write_bytes(data)


def newer_store(directory: Path) -> None:
    async def create() -> None:
        store = await Store.open(directory / "kc.db")
        await store.aclose()

    anyio.run(create)
    conn = sqlite3.connect(directory / "kc.db")
    with conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.close()


def store_with(directory: Path, schema_version: str | None = None, user_version: int | None = None) -> None:
    newer_store(directory)
    conn = sqlite3.connect(directory / "kc.db")
    with conn:
        conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (schema_version or "4",))
        if user_version is not None:
            conn.execute(f"PRAGMA user_version={user_version}")
    conn.close()


def existing_store(directory: Path) -> None:
    newer_store(directory)
    conn = sqlite3.connect(directory / "kc.db")
    with conn:
        conn.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    conn.close()


def a_file_named(name: str) -> Callable[[Path], None]:
    return write(name, b"not a directory\n")


RUN = ("--db", "{db}", "--base-url", "{server}")
CASES = [
    Case("config: malformed TOML", "run", ("--config", "{dir}/bad.toml", *RUN), "bad.toml",
         write("bad.toml", b"target = = 3\n")),
    Case("config: unknown key", "run", ("--config", "{dir}/typo.toml", *RUN), "tragett",
         write("typo.toml", b"tragett = 3\n")),
    Case("config: value out of range", "run", ("--target", "0", *RUN), "config key 'target'"),
    Case("seeds: missing file", "run", ("--seeds", "{dir}/nope.jsonl", *RUN), "nope.jsonl does not exist"),
    Case("seeds: empty file", "run", ("--seeds", "{dir}/empty.jsonl", *RUN), "empty.jsonl", write("empty.jsonl", b"")),
    Case("seeds: not UTF-8", "run", ("--seeds", "{dir}/latin1.jsonl", *RUN), "latin1.jsonl",
         write("latin1.jsonl", '{"question": "caf\u00e9"}\n'.encode("latin-1"))),
    Case("seeds: invalid JSON", "run", ("--seeds", "{dir}/broken.jsonl", *RUN), "broken.jsonl",
         write("broken.jsonl", b'{"question": "ok"}\n{"question": \n')),
    Case("unreachable --base-url", "run", ("--db", "{db}", "--base-url", UNREACHABLE),
         "cannot reach --base-url http://127.0.0.1:9/v1"),
    Case("wrong --model", "run", (*RUN, "--model", "no-such-model"), "model 'no-such-model' is not served"),
    Case("store from a newer schema", "run", RUN, "written by a newer kodcode (schema 99); upgrade kodcode",
         newer_store, has_store=True),
    Case("store from a newer schema (PRAGMA user_version)", "run", RUN,
         "written by a newer kodcode (schema 7); upgrade kodcode", lambda d: store_with(d, user_version=7),
         has_store=True),
    Case("store whose meta.schema_version is not an integer", "run", RUN, "store {db} has a schema version that is not a number",
         lambda d: store_with(d, schema_version="four"), has_store=True),
    Case("--db is a directory", "run", ("--db", "{dir}/dbdir", "--base-url", "{server}"), "--db {dir}/dbdir is a directory",
         lambda d: (d / "dbdir").mkdir()),
    Case("--prompts overlay uses a variable its stage does not provide", "run", (*RUN, "--prompts", "{dir}/prompts"),
         "solve.j2 uses difficulty, which the solve stage does not provide",
         lambda d: ((d / "prompts").mkdir(), (d / "prompts" / "solve.j2").write_text(
             "{% block user %}{{ question }} at level {{ difficulty }}{% endblock %}\n"))),
    Case("conflicting flags: --embedded-model with --base-url", "run", (*RUN, "--embedded-model", "1.5b"),
         "--embedded-model and --base-url conflict"),
    Case("conflicting flags: --budget-usd without prices", "run", (*RUN, "--budget-usd", "1"), "--budget-usd"),
    Case("--db under a regular file", "run", ("--db", "{dir}/file/kc.db", "--base-url", "{server}"), "{dir}/file",
         a_file_named("file")),
    Case("export: --db missing", "export", ("--db", "{db}", "--out", "{dir}/out.jsonl"), "does not exist"),
    Case("export: --out under a regular file", "export", ("--db", "{db}", "--out", "{dir}/file/out.jsonl"),
         "cannot write {dir}/file/out.jsonl", lambda d: (existing_store(d), a_file_named("file")(d)), has_store=True),
    Case("export: --out with a suffix no format has (.csv)", "export", ("--db", "{db}", "--out", "{dir}/data.csv"),
         "cannot write .csv files; the formats are .jsonl, .parquet", existing_store, has_store=True),
    Case("export: --out is a directory", "export", ("--db", "{db}", "--out", "{dir}/outdir"),
         "cannot write {dir}/outdir", lambda d: (existing_store(d), (d / "outdir").mkdir()), has_store=True),
]


@pytest.fixture(scope="module")
def models_server() -> Iterator[ScriptedOpenAIServer]:
    server = ScriptedOpenAIServer(lambda request: "unused").start()
    yield server
    server.stop()
    table = "\n".join(f"{case:55s} | {message}" for case, message in TABLE)
    destination = os.environ.get("KODCODE_BAD_INPUT_TABLE")
    if destination:
        Path(destination).write_text(table + "\n", encoding="utf-8")
    else:
        print("\n" + table)


def snapshot(db: Path) -> tuple[bytes, int] | None:
    return (db.read_bytes(), db.stat().st_mtime_ns) if db.exists() else None


@pytest.mark.parametrize("case", CASES, ids=[(case.values[0] if hasattr(case, "values") else case).name for case in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_the_store_alone(case: Case, tmp_path: Path,
                                                                   models_server: ScriptedOpenAIServer) -> None:
    case.prepare(tmp_path)
    db = tmp_path / "kc.db"
    before = snapshot(db)
    assert (before is not None) == case.has_store
    fill = {"dir": str(tmp_path), "db": str(db), "server": models_server.base_url}
    result = run_kodcode(case.module, *(arg.format(**fill) for arg in case.args), timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kodcode: error: ") and case.message.format(**fill) in lines[0], lines[0]
    assert snapshot(db) == before           # not created where there was none; untouched where there was one
    TABLE.append((case.name, lines[0].replace(str(tmp_path), "<tmp>").replace(models_server.base_url, "<server>")))


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_kodcode("run", "--db", str(tmp_path / "kc.db"), "--base-url", UNREACHABLE, "--debug")
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("kodcode: error: cannot reach --base-url")


# -- Ctrl-C during start-up ----------------------------------------------------------------------------------
# The same clean stop as later in the run: one `kodcode:` line naming the signal, exit 130, no traceback,
# nothing left running (the run is started under the subreaper launcher of test_hygiene, which reports every
# process it left behind) and a sound store.

class SlowModels(ScriptedOpenAIServer):
    """/v1/models answers only after `delay_s`, like a server still loading its model: a long start-up."""

    delay_s = 30.0

    def _dispatch(self, handler: Any, method: str, path: str, outcome: Any) -> None:
        if method == "GET" and path == "/v1/models":
            self._stopping.wait(self.delay_s)
        super()._dispatch(handler, method, path, outcome)


def interrupt(args: list[str], moments: list[float]) -> tuple[int, list[str], str]:
    """Run kodcode under the launcher, send SIGINT at each moment (seconds after start); return the exit
    code, the processes it left behind, and its stderr."""
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, *kodcode_command("run", *args)], env=kodcode_env(),
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert launcher.stdout is not None
        pid = int(launcher.stdout.readline())
        started = time.monotonic()
        for moment in moments:
            time.sleep(max(0.0, started + moment - time.monotonic()))
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                break
        out, err = launcher.communicate(timeout=180)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    report = json.loads(out.strip().splitlines()[-1])
    return report["rc"], report["left"], err


def assert_clean_stop(rc: int, left: list[str], err: str) -> str:
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert left == [], left
    ours = [line for line in err.splitlines() if line.startswith("kodcode:")]
    assert len(ours) == 1 and "SIGINT" in ours[0], ours
    return ours[0]


@pytest.mark.parametrize("moment", [1.5, 6.0], ids=["1.5s", "6s"])
def test_sigint_during_start_up_is_a_clean_stop(tmp_path: Path, moment: float) -> None:
    server = SlowModels(lambda request: "unused").start()
    db = tmp_path / "kc.db"
    try:
        rc, left, err = interrupt(["--base-url", server.base_url, "--db", str(db), *RUN_ARGS], [moment])
    finally:
        server.stop()
    line = assert_clean_stop(rc, left, err)
    assert not db.exists() or query(db, "PRAGMA integrity_check")[0][0] == "ok"
    TABLE.append((f"SIGINT {moment} s into start-up (exit 130)", line))


@pytest.mark.parametrize("moments", [[1.5, 1.7], [3.5, 3.7]], ids=["during-imports", "during-resume"])
def test_sigint_twice_on_an_existing_store_is_a_clean_stop(tmp_path: Path, moments: list[float]) -> None:
    _coder, server = start_server()
    db = tmp_path / "kc.db"
    try:
        first = run_kodcode("run", "--base-url", server.base_url, "--db", str(db), "--target", "1", *RUN_ARGS)
        assert first.returncode == 0, first.stderr
    finally:
        server.stop()
    verified = set(query(db, "SELECT item_id, question FROM items WHERE state='verified'"))
    # The resumed run must still be working when the signals land: on a fast machine a scripted server
    # that answers at once lets it reach its target before 3.5 s, and the test would see exit 0.
    slow = ScriptedOpenAIServer(IdempotentCoder(FakeCoder(**SCRIPT)), latency=1.0).start()
    try:
        rc, left, err = interrupt(["--base-url", slow.base_url, "--db", str(db), "--target", "50", *RUN_ARGS],
                                  moments)
    finally:
        slow.stop()
    line = assert_clean_stop(rc, left, err)
    TABLE.append((f"SIGINT twice on an existing store, {moments[0]} s in (exit 130)", line))
    assert query(db, "PRAGMA integrity_check")[0][0] == "ok"
    assert verified <= set(query(db, "SELECT item_id, question FROM items WHERE state='verified'"))

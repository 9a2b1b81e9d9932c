"""`kodcode.view` over stores made by real scripted runs, through Starlette's TestClient (httpx), and on a
generated 100,000-item store for paging. The browser tests are in test_view_browser.py."""

from __future__ import annotations

import html
import json
import importlib
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from starlette.testclient import TestClient

from helpers import query, run_kodcode
from kodcode.messages import ProposeTask
from kodcode.prompts import TEMPLATE_DIR
from kodcode.store.records import SqliteRecords
from kodcode.store.sqlite import Store, open_readonly
from kodcode.store.view_queries import ItemFilter, LLMSpend, items_page, items_page_sql, llm_spend_since, query_plan
from kodcode.view.app import LIVE_HEADER, create_app
from scripted_openai import ScriptedOpenAIServer
from view_helpers import RunStore, digest, view_coder

LOCAL = "http://127.0.0.1"


def client_for(db: Path) -> TestClient:
    return TestClient(create_app(db), base_url=LOCAL)


def by_testid(page: str, name: str) -> list[str]:
    """The text of every element with data-testid=name (one level of markup deep is enough here)."""
    return [html.unescape(re.sub(r"<[^>]+>", "", m)) for m in
            re.findall(rf'data-testid="{re.escape(name)}"[^>]*>(.*?)</', page, flags=re.S)]


def test_run_page_shows_the_stores_counts(run_store: RunStore) -> None:
    page = client_for(run_store.db).get("/")
    assert page.status_code == 200
    verified = query(run_store.db, "SELECT COUNT(*) FROM items WHERE state='verified'")[0][0]
    assert verified >= 6
    assert by_testid(page.text, "verified") == [str(verified)]
    for state, count in query(run_store.db, "SELECT state, COUNT(*) FROM items GROUP BY state"):
        assert f'data-state="{state}">{count}<' in page.text
    calls = query(run_store.db, "SELECT COUNT(*) FROM llm_calls")[0][0]
    assert by_testid(page.text, "llm-calls") == [str(calls)]
    judged, passed = query(run_store.db, "SELECT COUNT(*), SUM(passed) FROM attempts WHERE state='judged'")[0]
    assert by_testid(page.text, "pass-rate") == [f"{100 * passed / judged:.1f}%"]
    assert "target reached" in page.text                  # the stop reason of the finished run
    assert page.text.count("<svg") >= 4                   # the charts are drawn


def test_the_run_prints_the_view_command_once(run_store: RunStore) -> None:
    line = f"python -m kodcode.view --db {run_store.db}"
    assert run_store.run_stdout.count(line) == 1


def test_items_are_filtered_and_searched(run_store: RunStore) -> None:
    client = client_for(run_store.db)
    page = client.get("/items", params={"state": "verified"}).text
    verified = {row[0] for row in query(run_store.db, "SELECT item_id FROM items WHERE state='verified'")}
    shown = set(re.findall(r'href="/items/([^"?]+)"', page))
    assert shown == verified
    assert f'data-testid="matching"><strong>{len(verified)}</strong> matching items' in page

    found = client.get("/items", params={"q": "<script>alert"}).text
    assert set(re.findall(r'href="/items/([^"?]+)"', found)) == {run_store.markup_item}
    assert set(re.findall(r'href="/items/([^"?]+)"', client.get("/items", params={"subset": "Nothing"}).text)) == set()


def test_item_page_shows_attempts_verdicts_and_failing_output(run_store: RunStore) -> None:
    item = run_store.markup_item
    page = client_for(run_store.db).get(f"/items/{item}")
    assert page.status_code == 200
    attempts = query(run_store.db, "SELECT attempt, passed FROM attempts WHERE item_id=? ORDER BY attempt", (item,))
    assert attempts[0][1] == 0 and any(passed for _, passed in attempts)
    assert by_testid(page.text, "verdict") == ["passed" if passed else "failed" for _, passed in attempts]
    # The failing test of attempt 1, by name, with the output pytest gave.
    assert "failed: test_echo_markup_0" in page.text
    assert any("AssertionError" in out and "echo_markup('<b>')" in out for out in by_testid(page.text, "test-output"))
    # Solutions are highlighted; the calls, decisions and the rewrite behind the item are listed.
    assert '<span class="k">def</span>' in page.text
    calls = query(run_store.db, "SELECT COUNT(*) FROM llm_calls WHERE item_id=?", (item,))[0][0]
    assert page.text.count('<details class="call"') == calls > 0
    assert "Scheduler decisions" in page.text and "retry" in page.text
    assert "rewrite_complete@" in page.text


def test_item_page_shows_the_execution_matrix_and_its_consensus(run_store: RunStore) -> None:
    item = run_store.markup_item      # attempt 1 wrong, a later one right: a matrix with a failing row
    cells = query(run_store.db, "SELECT solution_attempt, tests_attempt, passed, outcomes FROM matrix WHERE item_id=?",
                  (item,))
    consensus = json.loads(query(run_store.db, "SELECT consensus FROM items WHERE item_id=?", (item,))[0][0])
    accepted = consensus["accepted"]
    assert len(cells) >= 2 and any(not passed for _, _, passed, _ in cells)
    page = client_for(run_store.db).get(f"/items/{item}").text
    assert by_testid(page, "matrix") and "Execution matrix" in page
    for solution, tests, passed, outcomes in cells:
        cell = re.search(rf'<td class="cell (pass|fail)( accepted)?" data-testid="cell-{solution}x{tests}"', page)
        assert cell is not None, (solution, tests)
        assert cell.group(1) == ("pass" if passed else "fail")
        assert bool(cell.group(2)) == ((solution, tests) == (accepted["solution_attempt"], accepted["tests_attempt"]))
        functions = json.loads(outcomes)
        shown = f'{sum(o == "passed" for o in functions.values())}/{len(functions)}'
        assert shown in page[cell.end():cell.end() + 400]
    # The wrong first solution is named as such, and so is the share of wrong solutions the tests reject.
    row = by_testid(page, "matrix-row-1")
    assert row and "solution 1" in row[0]
    assert ("wrong, rejected" in page) == bool(accepted["rejected"])
    assert f"solution {accepted['solution_attempt']} with the tests of attempt {accepted['tests_attempt']}" in page


def test_a_store_without_the_matrix_has_no_matrix_section(tmp_path: Path) -> None:
    db = tmp_path / "old.db"

    async def build() -> None:
        store = await Store.open(db)
        records = SqliteRecords(store)
        await records.add_proposal(ProposeTask("old-1", 1, "prefill", "Prefill"))
        await store.aclose()

    anyio.run(build)
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE matrix")
    page = client_for(db).get("/items/old-1")
    assert page.status_code == 200 and "Execution matrix" not in page.text


def test_model_written_markup_is_shown_as_text(run_store: RunStore) -> None:
    page = client_for(run_store.db).get(f"/items/{run_store.markup_item}", params={"a": 1, "b": 2})
    body = page.text
    # The only script element is the page's own; question, wrong solution, diff and prompts are escaped.
    assert re.findall(r"<script\b[^>]*>", body) == ['<script src="/static/view.js" defer>']
    assert "</textarea>" not in body and "alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    question = by_testid(body, "question")[0]
    assert "<script>alert(1)</script>" in question and "</textarea>" in question
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_diff_between_two_attempts(run_store: RunStore) -> None:
    page = client_for(run_store.db).get(f"/items/{run_store.markup_item}", params={"a": 1, "b": 2}).text
    diff = page[page.index('data-testid="diff"'):]
    assert '<span class="del">-    return &#39;&lt;/textarea&gt;&lt;script&gt;alert(2)&lt;/script&gt;&#39;</span>' in diff
    assert '<span class="add">+    return text</span>' in diff


def test_prompts_page_compares_template_versions(run_store: RunStore) -> None:
    page = client_for(run_store.db).get("/prompts").text
    hashes = {row[0] for row in query(run_store.db, "SELECT DISTINCT template_hash FROM llm_calls WHERE role='solver'")}
    assert hashes and all(h in page for h in hashes)
    assert "no prompt trials in this store" in page


def test_prompts_page_shows_iterate_trials(run_store: RunStore, tmp_path: Path) -> None:
    db = tmp_path / "kc.db"
    shutil.copy(run_store.db, db)
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    solve = (TEMPLATE_DIR / "solve.j2").read_text()
    (prompts / "solve.j2").write_text(solve.replace("{% block user -%}\n", "{% block user -%}\nBe brief.\n", 1))
    with ScriptedOpenAIServer(view_coder()) as server:
        result = run_kodcode("iterate", "--db", str(db), "--stage", "solver", "--prompts", str(prompts), "--sample", "2",
                             "--base-url", server.base_url)
    assert result.returncode == 0, result.stderr
    batches = query(db, "SELECT DISTINCT batch, arm FROM prompt_trials")
    assert {arm for _, arm in batches} == {"baseline", "candidate"}
    client = client_for(db)
    page = client.get("/prompts").text
    assert all(batch in page for batch, _ in batches) and "<td>candidate</td>" in page
    assert page.count("<td>iterate</td>") == 2             # both solve versions, as iterate trials
    item = query(db, "SELECT item_id FROM prompt_trials LIMIT 1")[0][0]
    assert "Prompt trials (kodcode.iterate)" in client.get(f"/items/{item}").text


def test_live_fragment_is_sent_only_when_the_page_changed(run_store: RunStore, tmp_path: Path) -> None:
    db = tmp_path / "kc.db"
    shutil.copy(run_store.db, db)
    client = client_for(db)
    first = client.get("/items")
    version, digest_ = first.headers["x-kodcode-version"], first.headers["x-kodcode-hash"]
    assert client.get("/items", headers={LIVE_HEADER: f"{version} {digest_}"}).status_code == 204

    async def add_item() -> None:
        async with await Store.open(db) as store:
            records = SqliteRecords(store)
            seq = await records.next_seq()
            await records.add_proposal(ProposeTask(item_id="Fresh_1", seq=seq, source="prefill", subset="Prefill"))

    anyio.run(add_item)
    update = client.get("/items", headers={LIVE_HEADER: f"{version} {digest_}"})
    assert update.status_code == 200
    assert "<html" not in update.text and 'href="/items/Fresh_1"' in update.text   # the fragment only
    assert update.headers["x-kodcode-hash"] != digest_


def test_view_never_writes_the_store_and_does_not_block_a_writer(run_store: RunStore, tmp_path: Path) -> None:
    db = tmp_path / "kc.db"
    shutil.copy(run_store.db, db)
    before = digest(db)
    client = client_for(db)
    items = [row[0] for row in query(db, "SELECT item_id FROM items")]
    for path in ["/", "/items", "/items?state=verified", "/items?q=python", "/prompts", "/static/view.js",
                 *(f"/items/{item}" for item in items), f"/items/{items[0]}?a=1&b=2"]:
        assert client.get(path).status_code == 200, path
    assert digest(db) == before

    async def write_while_viewing() -> int:
        # A run's writer opens the store (taking its lock) and commits while the view reads it.
        async with await Store.open(db) as store:
            records = SqliteRecords(store)
            await records.add_proposal(ProposeTask(item_id="During_1", seq=await records.next_seq(), source="prefill",
                                                   subset="Prefill"))
            page = await anyio.to_thread.run_sync(lambda: client.get("/items", params={"q": "During_1"}).text)
            assert 'href="/items/During_1"' in page
            await records.add_proposal(ProposeTask(item_id="During_2", seq=await records.next_seq(), source="prefill",
                                                   subset="Prefill"))
            return int(await store.scalar("SELECT COUNT(*) FROM items WHERE item_id LIKE 'During_%'"))

    assert anyio.run(write_while_viewing) == 2


def test_unknown_item_is_404_and_foreign_hosts_are_refused(run_store: RunStore) -> None:
    client = client_for(run_store.db)
    missing = client.get("/items/NoSuchItem")
    assert missing.status_code == 404 and "No item" in missing.text
    # A page elsewhere that resolves its own name to 127.0.0.1 (DNS rebinding) gets nothing.
    assert TestClient(create_app(run_store.db), base_url="http://evil.example").get("/").status_code == 400


def test_bad_store_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_kodcode("view", "--db", str(tmp_path / "missing.db"), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"kodcode: error: store {tmp_path / 'missing.db'} does not exist"


def test_a_port_in_use_is_one_line_and_exit_2(run_store: RunStore) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_kodcode("view", "--db", str(run_store.db), "--port", str(port), timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"kodcode: error: cannot listen on 127.0.0.1:{port}: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


# -- 100,000 items -------------------------------------------------------------------------------------------

BIG = 100_000


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with the real schema and 100,000 items (every 1,000th one rejected, the rest in five states)."""
    db = tmp_path_factory.mktemp("view-big") / "kc.db"

    async def create() -> None:
        await (await Store.open(db)).aclose()

    anyio.run(create)
    states = ("verified", "failed", "duplicate", "open", "contaminated")
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO items(item_id, seq, source, subset, state, question, difficulty, created_at, updated_at)"
            " VALUES(?,?,?,?,?,?,?,?,?)",
            ((f"it{n}", n, "prefill", ("Prefill", "Leetcode", "Codeforces")[n % 3],
              "rejected" if n % 1000 == 0 else states[n % 5], f"Question {n}: reverse a list", "easy",
              1e9 + n, 1e9 + n) for n in range(BIG)))
    conn.close()
    return db


def vm_steps(conn: sqlite3.Connection, sql: str, params: list[object]) -> int:
    """SQLite virtual-machine instructions (in thousands) a query runs: its work, counted, not timed."""
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(tick, 1000)
    try:
        conn.execute(sql, params).fetchall()
    finally:
        conn.set_progress_handler(None, 0)
    return steps[0]


def test_paging_100k_items_walks_the_seq_index(big_store: Path) -> None:
    conn = open_readonly(big_store)
    try:
        first_sql, first_params = items_page_sql(ItemFilter())
        deep_sql, deep_params = items_page_sql(ItemFilter(), before=BIG // 2)
        for sql, params in ((first_sql, first_params), (deep_sql, deep_params),
                            items_page_sql(ItemFilter(state="verified"), before=BIG // 2)):
            plan = query_plan(conn, sql, params)
            assert "USING INDEX sqlite_autoindex_items_2" in plan[0], plan     # the unique seq index
            assert not any("TEMP B-TREE" in step for step in plan), plan      # no sort of the matches
        # A page in the middle of the table costs what the first page costs, a tiny share of a full scan.
        full_scan = vm_steps(conn, "SELECT COUNT(*) FROM items WHERE question LIKE '%never%'", [])
        first, deep = vm_steps(conn, first_sql, first_params), vm_steps(conn, deep_sql, deep_params)
        assert deep <= first + 1 and first * 50 < full_scan
        # A rare state is read through its own index instead.
        rare_sql, rare_params = items_page_sql(ItemFilter(state="rejected"), rare_state=True)
        assert "USING INDEX items_state (state=?)" in query_plan(conn, rare_sql, rare_params)[0]

        page = items_page(conn, ItemFilter(), before=BIG // 2)
        assert [row["seq"] for row in page.rows] == list(range(BIG // 2 - 1, BIG // 2 - 51, -1))
        assert page.matching == BIG and page.newer == BIG // 2 - 1 and page.older == BIG // 2 - 50
        rejected = items_page(conn, ItemFilter(state="rejected"))
        assert [row["seq"] for row in rejected.rows] == list(range(99_000, 49_000, -1000))
        assert rejected.matching == 100 and rejected.older == 50_000
    finally:
        conn.close()


def test_items_pages_of_100k_items_over_http(big_store: Path) -> None:
    client = client_for(big_store)
    page = client.get("/items").text
    assert re.findall(r'href="/items/(it\d+)"', page)[:2] == ["it99999", "it99998"]
    older = re.search(r'href="/items\?before=(\d+)"', page)
    assert older and older.group(1) == str(BIG - 50)
    second = client.get(f"/items?before={older.group(1)}").text
    assert re.findall(r'href="/items/(it\d+)"', second)[0] == f"it{BIG - 51}"
    searched = client.get("/items", params={"q": "Question 77777:", "subset": "Codeforces"}).text
    assert set(re.findall(r'href="/items/(it\d+)"', searched)) == {"it77777"}
    assert client.get("/").status_code == 200


def test_view_imports_no_pipeline_module() -> None:
    # A command-line module over the store: it must not pull in the composition root, runtime or agents.
    code = ("import sys, kodcode.view, kodcode.view.__main__; "
            "print(sorted(m for m in sys.modules if m.startswith(('kodcode.app', 'kodcode.runtime', 'kodcode.agents'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("module", ["kodcode.store.view_queries", "kodcode.view.app", "kodcode.view.charts",
                                    "kodcode.view.__main__"])
def test_exports_are_sorted_and_exist(module: str) -> None:
    imported = importlib.import_module(module)
    assert imported.__all__ == sorted(imported.__all__)
    assert all(hasattr(imported, name) for name in imported.__all__)


def test_llm_spend_is_read_incrementally(run_store: RunStore, tmp_path: Path) -> None:
    db = tmp_path / "kc.db"
    shutil.copy(run_store.db, db)
    conn = open_readonly(db)
    try:
        spend = llm_spend_since(conn, LLMSpend())
        calls, tokens = query(db, "SELECT COUNT(*), SUM(prompt_tokens + completion_tokens) FROM llm_calls")[0]
        assert (spend.calls, spend.tokens) == (calls, tokens)
        # Nothing new: nothing is added twice.
        assert llm_spend_since(conn, spend).calls == calls
        # A store replaced under the view (fewer calls than counted) is summed from the start.
        shrunk = LLMSpend(last_rowid=spend.last_rowid + 1000, calls=10**6)
        assert llm_spend_since(conn, shrunk).calls == calls
    finally:
        conn.close()


def test_a_store_that_disappears_is_an_error_page_not_a_traceback(run_store: RunStore, tmp_path: Path) -> None:
    db = tmp_path / "kc.db"
    shutil.copy(run_store.db, db)
    client = client_for(db)
    assert client.get("/").status_code == 200
    db.unlink()
    gone = client.get("/")
    assert gone.status_code == 503
    assert "The store cannot be read" in gone.text and f"store {db} does not exist" in gone.text

"""`python -m kodcode.view` in a real browser: Playwright for Python driving Debian's Chromium (no browser
download). Each test writes a screenshot of its page to artifacts/screenshots/, which CI keeps."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import query, start_kodcode
from scripted_openai import ScriptedOpenAIServer
from view_helpers import RUN_ARGS, RunStore, ViewServer, start_view, stop_view, view_coder

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})   # type: ignore[attr-defined]
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    yield tab
    context.close()


def screenshot(tab: object, name: str, *, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    tab.screenshot(path=str(path), full_page=full_page)   # type: ignore[attr-defined]
    assert path.stat().st_size > 10_000        # a page was drawn, not a blank
    return path


def test_run_page_shows_the_counts(view_server: ViewServer, run_store: RunStore, page) -> None:
    page.goto(view_server.url + "/")
    verified = query(run_store.db, "SELECT COUNT(*) FROM items WHERE state='verified'")[0][0]
    assert page.get_by_test_id("verified").inner_text() == str(verified)
    for state, count in query(run_store.db, "SELECT state, COUNT(*) FROM items GROUP BY state"):
        assert page.locator(f'[data-state="{state}"]').inner_text() == str(count)
    calls = query(run_store.db, "SELECT COUNT(*) FROM llm_calls")[0][0]
    assert page.get_by_test_id("llm-calls").inner_text() == str(calls)
    assert page.locator("svg.chart").count() >= 4
    screenshot(page, "run")


def test_items_are_filtered_in_the_browser(view_server: ViewServer, run_store: RunStore, page) -> None:
    page.goto(view_server.url + "/items")
    total = query(run_store.db, "SELECT COUNT(*) FROM items")[0][0]
    assert page.locator("[data-testid=items-table] tbody tr").count() == total
    page.get_by_test_id("filter-state").select_option("verified")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/items?state=verified**")
    verified = {row[0] for row in query(run_store.db, "SELECT item_id FROM items WHERE state='verified'")}
    badges = page.locator("[data-testid=items-table] tbody .badge").all_inner_texts()
    assert badges == ["verified"] * len(verified)
    screenshot(page, "items")
    page.get_by_test_id("filter-state").select_option("")
    page.get_by_test_id("filter-q").fill("<script>")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**q=%3Cscript%3E**")
    assert page.locator("[data-testid=items-table] tbody a").all_inner_texts() == [run_store.markup_item]


def test_an_item_shows_attempts_verdicts_and_failing_output(view_server: ViewServer, run_store: RunStore, page) -> None:
    item = run_store.markup_item
    page.goto(view_server.url + "/items?q=" + item)
    page.get_by_role("link", name=item, exact=True).click()
    page.wait_for_url(f"**/items/{item}")
    attempts = query(run_store.db, "SELECT passed FROM attempts WHERE item_id=? ORDER BY attempt", (item,))
    verdicts = page.locator("[data-testid=attempts] [data-testid=verdict]").all_inner_texts()
    assert verdicts == ["passed" if passed else "failed" for (passed,) in attempts]
    first = page.get_by_test_id("attempt-1")
    assert "failed: test_echo_markup_0" in first.inner_text()
    output = first.get_by_test_id("test-output")
    assert output.is_visible() and "AssertionError: assert echo_markup('<b>') == '<b>'" in output.inner_text()
    page.goto(view_server.url + f"/items/{item}?a=1&b=2")
    assert "+    return text" in page.get_by_test_id("diff").inner_text()
    screenshot(page, "item")
    page.goto(view_server.url + f"/items/{item}")
    screenshot(page, "item-top", full_page=False)


def test_markup_in_a_question_is_text_and_no_dialog_opens(view_server: ViewServer, run_store: RunStore, page) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(view_server.url + f"/items/{run_store.markup_item}?a=1&b=2")
    question = page.get_by_test_id("question").inner_text()
    assert "<script>alert(1)</script>" in question and "</textarea>" in question
    page.goto(view_server.url + "/items?q=alert")
    assert "<script>alert(1)</script>" in page.locator("td.question").first.inner_text()
    page.wait_for_timeout(300)          # let anything that could run, run
    assert dialogs == []
    assert page.evaluate("document.scripts.length") == 1     # only the view's own script is on the page


def test_prompts_page(view_server: ViewServer, run_store: RunStore, page) -> None:
    page.goto(view_server.url + "/prompts")
    rows = page.locator("[data-testid=prompt-table] tbody tr").count()
    assert rows >= 2      # the solver's and the tester's template
    screenshot(page, "prompts")


def test_the_run_page_updates_while_a_run_goes_on(tmp_path: Path, page) -> None:
    db = tmp_path / "kc.db"
    with ScriptedOpenAIServer(view_coder(), latency=0.15) as server:
        run = start_kodcode("run", "--base-url", server.base_url, "--target", "5", *RUN_ARGS, "--db", str(db),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        view: ViewServer | None = None
        try:
            deadline = time.monotonic() + 60
            while not (db.exists() and _has_run(db)):
                assert run.poll() is None and time.monotonic() < deadline, "the run did not start"
                time.sleep(0.1)
            view = start_view(db, refresh_s=0.3)
            page.goto(view.url + "/")
            page.evaluate("window.kodcodeNotReloaded = true")
            calls_at_load = int(page.get_by_test_id("llm-calls").inner_text())
            # While the run writes, the counts move on the open page.
            page.wait_for_function(
                "n => Number(document.querySelector('[data-testid=llm-calls]').textContent) > n", arg=calls_at_load,
                timeout=30_000)
            assert "running" in page.get_by_test_id("run-status").inner_text()
            screenshot(page, "run-live")
            assert run.wait(timeout=120) == 0
            verified = query(db, "SELECT COUNT(*) FROM items WHERE state='verified'")[0][0]
            page.wait_for_function(
                "v => document.querySelector('[data-testid=verified]').textContent === String(v)"
                " && document.querySelector('[data-testid=run-status]').textContent.includes('target reached')",
                arg=verified, timeout=15_000)
            assert page.evaluate("window.kodcodeNotReloaded") is True       # updated in place, never reloaded
            assert int(page.locator("#live").get_attribute("data-updates") or 0) >= 2
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
            if view is not None:
                stop_view(view)


def _has_run(db: Path) -> bool:
    try:
        return bool(query(db, "SELECT COUNT(*) FROM runs")[0][0])
    except sqlite3.OperationalError:      # the store is still being created: its tables may not exist yet
        return False

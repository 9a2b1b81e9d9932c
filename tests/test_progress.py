"""The progress panel: derived figures are pure functions of a snapshot; the view draws a Live panel on a
terminal and one plain line per update elsewhere."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from kodcode.llm.outage import OutageStatus, waiting_line

from kodcode.app.progress import (ProgressSnapshot, ProgressView, derive, format_duration, plain_line, render_panel,
                              windowed_rate)


def snapshot(**fields: object) -> ProgressSnapshot:
    base: dict[str, object] = dict(
        elapsed_s=100.0, target=10, verified=6, verified_at_start=2,
        counts_by_state={"open": 3, "verified": 6, "failed": 1, "duplicate": 2},
        questions_settled=8, attempts_judged=20, attempts_passed=5, llm_in_flight=4, llm_waiting=9,
        llm_concurrency=8, llm_calls=1500, tokens=50_000, cost_usd=0.8, sandbox_busy=3, sandbox_workers=4)
    base.update(fields)
    return ProgressSnapshot(**base)  # type: ignore[arg-type]


def test_derived_figures() -> None:
    figures = derive(snapshot())
    assert figures.progress == pytest.approx(0.6)
    assert figures.pass_rate == pytest.approx(0.25)
    assert figures.attempts_per_question == pytest.approx(20 / 10)     # open + verified + failed questions
    assert figures.yield_rate == pytest.approx(4 / 8)                   # this run's verified / settled
    assert figures.verified_per_s == pytest.approx(0.04)                # 4 gained (resumed at 2) in 100 s
    assert figures.eta_s == pytest.approx(4 / 0.04)                     # 4 still needed at 0.04/s
    assert figures.tokens_per_s == pytest.approx(500.0)
    assert figures.sandbox_utilisation == pytest.approx(0.75)
    assert figures.cost_per_verified == pytest.approx(0.2)


def test_derived_figures_at_the_edges() -> None:
    start = derive(snapshot(elapsed_s=0.0, verified=2, attempts_judged=0, attempts_passed=0, questions_settled=0,
                            tokens=0, sandbox_workers=0, counts_by_state={}))
    assert start.eta_s is None and start.pass_rate is None and start.tokens_per_s is None
    assert start.attempts_per_question is None and start.sandbox_utilisation is None and start.yield_rate is None
    assert derive(snapshot(verified=12)).eta_s == 0.0 and derive(snapshot(verified=12)).progress == 1.0
    assert derive(snapshot(), tokens_per_s=42.0).tokens_per_s == 42.0


def test_windowed_rate_uses_the_recent_window() -> None:
    samples = [(0.0, 0.0), (10.0, 1000.0), (70.0, 1600.0), (80.0, 1700.0)]
    assert windowed_rate(samples, 60.0) == pytest.approx((1700 - 1600) / 10)   # (10, 1000) is 70 s old
    assert windowed_rate(samples, 1000.0) == pytest.approx(1700 / 80)
    assert windowed_rate(samples[:1], 60.0) is None


@pytest.mark.parametrize(("seconds", "text"), [(None, "?"), (5.4, "5s"), (65, "1m05s"), (3725, "1h02m"),
                                               (90000, "1d01h")])
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_plain_line_holds_every_figure() -> None:
    line = plain_line(snapshot(stopping="SIGINT received"))
    for part in ("verified 6/10 (60%)", "open 3", "dup 2", "pass 25%", "att/q 2.0", "llm 4 running 9 queued",
                 "1.5k calls", "500 tok/s", "sandbox 3/4", "$0.8000", "eta 1m40s", "stopping: SIGINT received"):
        assert part in line, part
    assert "\n" not in line


def test_view_prints_one_plain_line_per_update_when_not_a_terminal() -> None:
    out = io.StringIO()
    view = ProgressView(Console(file=out, width=80), live=False)
    view.update(snapshot(elapsed_s=10.0, tokens=1000))
    view.update(snapshot(elapsed_s=20.0, tokens=3000, verified=7))
    view.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2                                   # never wrapped at the console width
    assert "verified 7/10" in lines[1] and "\x1b[" not in out.getvalue()
    assert "200 tok/s" in lines[1]                           # (3000 - 1000) / 10 s: the recent rate


def test_live_view_redraws_a_panel_in_place() -> None:
    out = io.StringIO()
    view = ProgressView(Console(file=out, width=100, force_terminal=True), live=True)
    view.update(snapshot(verified=3))
    view.update(snapshot(verified=7))
    view.close()
    text = out.getvalue()
    assert "3/10 verified" in text and "7/10 verified" in text
    assert "\x1b[1A" in text                                 # cursor moved up: the panel was redrawn, not appended


def test_panel_shows_states_and_stop_reason() -> None:
    out = io.StringIO()
    Console(file=out, width=100).print(render_panel(snapshot(stopping="target reached: 10 verified")))
    text = out.getvalue()
    assert "verified 6" in text and "duplicate 2" in text and "4/8 in flight, 9 queued" in text
    assert "stopping: target reached" in text and "ETA 1m40s" in text


def test_a_paused_endpoint_is_named_in_the_line_and_the_panel() -> None:
    waiting = waiting_line(OutageStatus("http://127.0.0.1:8000/v1", ("default",), "connection refused", 42.0, 8.0, 3))
    assert waiting == ("waiting for endpoint http://127.0.0.1:8000/v1 (default): connection refused, retrying in 8 s"
                       " (down 42 s)")
    assert waiting in plain_line(snapshot(waiting_for=(waiting,)))
    out = io.StringIO()
    Console(file=out, width=200).print(render_panel(snapshot(waiting_for=(waiting,))))
    assert "paused: waiting for endpoint http://127.0.0.1:8000/v1" in out.getvalue()

"""A live progress panel for a run, drawn from plain snapshots.

The runtime builds a `ProgressSnapshot` (numbers only) every tick; `derive` turns it into the figures
people read (pass rate, tokens/s, ETA …) with pure functions, and `ProgressView` draws them: a rich Live
panel on a terminal, one plain line per update anywhere else (CI logs, `| tee`). Nothing here knows the
pipeline's internals.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from kodcode.units import format_duration

__all__ = [
    "DerivedFigures",
    "ProgressSnapshot",
    "ProgressView",
    "derive",
    "format_duration",
    "plain_line",
    "render_panel",
    "windowed_rate",
]

# Item states in the order an item moves through them (kodcode.store.port.ITEM_STATES).
STATE_ORDER = ("proposing", "open", "verified", "failed", "duplicate", "contaminated", "rejected")
_STATE_STYLES = {"verified": "green", "failed": "red", "duplicate": "yellow", "contaminated": "magenta",
                 "rejected": "yellow", "open": "cyan", "proposing": "blue"}
_SHORT_STATES = {"proposing": "prop", "duplicate": "dup", "contaminated": "contam", "rejected": "rej"}


@dataclass(frozen=True)
class ProgressSnapshot:
    """One moment of a run. Store-wide figures (verified, counts) include earlier runs of a resumed store;
    flow figures (llm_calls, tokens, cost_usd, attempts) count this run only, like `elapsed_s`."""

    elapsed_s: float
    target: int
    verified: int                                 # verified items in the store
    verified_at_start: int = 0                    # verified before this run began (resume)
    counts_by_state: dict[str, int] = field(default_factory=dict)   # item state -> items
    questions_settled: int = 0                    # items that reached a final state, this run
    attempts_judged: int = 0
    attempts_passed: int = 0
    llm_in_flight: int = 0
    llm_waiting: int = 0
    llm_concurrency: int = 0                      # 0: unknown
    llm_calls: int = 0
    llm_cache_hits: int = 0
    llm_retries: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    sandbox_busy: int = 0
    sandbox_workers: int = 0
    rewrites_done: int = 0
    stopping: str | None = None                   # the stop reason once intake has closed
    waiting_for: tuple[str, ...] = ()             # one line per endpoint that is down (its roles are paused)


@dataclass(frozen=True)
class DerivedFigures:
    progress: float                   # verified / target, 0..1
    pass_rate: float | None           # attempts passed / judged
    attempts_per_question: float | None
    yield_rate: float | None          # verified this run / questions settled this run
    verified_per_s: float | None
    tokens_per_s: float | None
    sandbox_utilisation: float | None
    cost_per_verified: float | None
    eta_s: float | None               # None: no estimate yet; 0: target reached


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def windowed_rate(samples: Any, window_s: float) -> float | None:
    """Rate of a growing counter over the last `window_s` seconds of (elapsed_s, value) samples, oldest
    first; None until two samples span some time."""
    points = list(samples)
    if len(points) < 2:
        return None
    newest_t, newest_v = points[-1]
    oldest_t, oldest_v = next(((t, v) for t, v in points if newest_t - t <= window_s), points[-1])
    if oldest_t == newest_t:
        oldest_t, oldest_v = points[-2]
    return _ratio(newest_v - oldest_v, newest_t - oldest_t)


def derive(snapshot: ProgressSnapshot, *, tokens_per_s: float | None = None) -> DerivedFigures:
    """The figures shown, from one snapshot. `tokens_per_s` overrides the whole-run average (the view passes
    a recent-window rate, which says more about the present)."""
    s = snapshot
    gained = s.verified - s.verified_at_start
    verified_per_s = _ratio(gained, s.elapsed_s)
    remaining = max(0, s.target - s.verified)
    if remaining == 0:
        eta: float | None = 0.0
    elif verified_per_s:
        eta = remaining / verified_per_s
    else:
        eta = None
    counts = s.counts_by_state
    questions_solving = counts.get("open", 0) + counts.get("verified", 0) + counts.get("failed", 0)
    return DerivedFigures(
        progress=min(1.0, s.verified / s.target) if s.target > 0 else 1.0,
        pass_rate=_ratio(s.attempts_passed, s.attempts_judged),
        attempts_per_question=_ratio(s.attempts_judged, questions_solving),
        yield_rate=_ratio(gained, s.questions_settled),
        verified_per_s=verified_per_s,
        tokens_per_s=tokens_per_s if tokens_per_s is not None else _ratio(s.tokens, s.elapsed_s),
        sandbox_utilisation=_ratio(s.sandbox_busy, s.sandbox_workers),
        cost_per_verified=_ratio(s.cost_usd, gained),
        eta_s=eta,
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _count(value: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def _states(counts: dict[str, int]) -> list[tuple[str, int]]:
    ordered = [s for s in STATE_ORDER if counts.get(s)] + sorted(s for s in counts if s not in STATE_ORDER and counts[s])
    return [(s, counts[s]) for s in ordered]


def plain_line(snapshot: ProgressSnapshot, figures: DerivedFigures | None = None) -> str:
    """One self-contained line per update, for logs and pipes."""
    s, d = snapshot, figures or derive(snapshot)
    states = " ".join(f"{_SHORT_STATES.get(state, state)} {n}" for state, n in _states(s.counts_by_state)) or "none"
    sandbox = f"{s.sandbox_busy}/{s.sandbox_workers}" if s.sandbox_workers else "-"
    eta = "done" if d.eta_s == 0 else format_duration(d.eta_s)
    line = (f"[{format_duration(s.elapsed_s):>6}] verified {s.verified}/{s.target} ({_pct(d.progress)})"
            f" | items {states} | pass {_pct(d.pass_rate)}"
            f" | att/q {'-' if d.attempts_per_question is None else f'{d.attempts_per_question:.1f}'}"
            f" | llm {s.llm_in_flight} running {s.llm_waiting} queued {_count(s.llm_calls)} calls"
            f" {'-' if d.tokens_per_s is None else _count(d.tokens_per_s)} tok/s"
            f" | sandbox {sandbox} | ${s.cost_usd:.4f} | eta {eta}")
    line += "".join(f" | {waiting}" for waiting in s.waiting_for)
    return line + (f" | stopping: {s.stopping}" if s.stopping else "")


def render_panel(snapshot: ProgressSnapshot, figures: DerivedFigures | None = None) -> Panel:
    s, d = snapshot, figures or derive(snapshot)
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=max(1, s.target), completed=min(s.verified, max(1, s.target)), width=40,
                            complete_style="green", finished_style="bold green"),
                Text(f"{s.verified}/{s.target} verified ({_pct(d.progress)})", style="bold"),
                Text("ETA " + ("done" if d.eta_s == 0 else format_duration(d.eta_s)), style="cyan"))
    states = Text()
    for state, n in _states(s.counts_by_state):
        states.append(f"{state} ", style="dim").append(f"{n}  ", style=_STATE_STYLES.get(state, ""))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", justify="right")
    grid.add_column()
    grid.add_column(style="dim", justify="right")
    grid.add_column()
    concurrency = f"/{s.llm_concurrency}" if s.llm_concurrency else ""
    grid.add_row("pass rate", f"{_pct(d.pass_rate)} of {s.attempts_judged} attempts",
                 "attempts/question", "-" if d.attempts_per_question is None else f"{d.attempts_per_question:.2f}")
    grid.add_row("yield", f"{_pct(d.yield_rate)} of {s.questions_settled} settled",
                 "verified/min", "-" if d.verified_per_s is None else f"{60 * d.verified_per_s:.2f}")
    grid.add_row("llm", f"{s.llm_in_flight}{concurrency} in flight, {s.llm_waiting} queued",
                 "calls", f"{s.llm_calls:,} ({s.llm_cache_hits:,} cached, {s.llm_retries:,} retried)")
    grid.add_row("tokens", f"{s.tokens:,}", "tokens/s", "-" if d.tokens_per_s is None else f"{d.tokens_per_s:,.0f}")
    grid.add_row("sandbox", f"{s.sandbox_busy}/{s.sandbox_workers} busy ({_pct(d.sandbox_utilisation)})",
                 "cost", f"${s.cost_usd:,.4f}" + (f" (${d.cost_per_verified:,.4f}/verified)" if d.cost_per_verified else ""))
    items = Text("items  ", style="dim").append_text(states if states else Text("none"))
    parts: list[Any] = [bar, items, grid]
    for waiting in s.waiting_for:
        parts.append(Text(f"paused: {waiting}", style="bold red"))
    if s.stopping:
        parts.append(Text(f"stopping: {s.stopping}", style="bold yellow"))
    return Panel(Group(*parts), title=f"kodcode · {format_duration(s.elapsed_s)}", title_align="left",
                 border_style="red" if s.waiting_for else "yellow" if s.stopping else "blue")


class ProgressView:
    """Draws snapshots: a Live panel when `live` (stdout is a terminal), else one plain line per update."""

    def __init__(self, console: Console, live: bool, *, window_s: float = 60.0) -> None:
        self.console = console
        self.live = live
        self._window_s = window_s
        self._token_samples: deque[tuple[float, float]] = deque()
        self._live: Live | None = None

    def _tokens_per_s(self, snapshot: ProgressSnapshot) -> float | None:
        samples = self._token_samples
        if samples and snapshot.elapsed_s < samples[-1][0]:
            samples.clear()                  # a new run's clock: old samples would give a negative rate
        samples.append((snapshot.elapsed_s, float(snapshot.tokens)))
        while len(samples) > 2 and snapshot.elapsed_s - samples[1][0] > self._window_s:
            samples.popleft()
        return windowed_rate(samples, self._window_s)

    def update(self, snapshot: ProgressSnapshot) -> None:
        figures = derive(snapshot, tokens_per_s=self._tokens_per_s(snapshot))
        if not self.live:
            self.console.print(plain_line(snapshot, figures), markup=False, highlight=False, soft_wrap=True)
            return
        panel = render_panel(snapshot, figures)
        if self._live is None:
            self._live = Live(panel, console=self.console, auto_refresh=False, transient=False)
            self._live.start(refresh=True)
        else:
            self._live.update(panel, refresh=True)

    def close(self) -> None:
        """Leave the last panel on screen and give the terminal back."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __enter__(self) -> "ProgressView":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

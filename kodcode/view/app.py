"""The web app of `python -m kodcode.view`: four pages over one store, read-only, refreshed while a run writes.

Every request opens its own `mode=ro` connection (`open_readonly`), reads, and closes it: nothing here can
write, take the run's lock, or hold a read transaction open long enough to stall the run's checkpoints.
Pages are rendered on the server with autoescaping Jinja2, so whatever a model wrote reaches the browser as
text; the one script on the page only swaps in fragments the server rendered (see static/view.js).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from kodcode.errors import StoreError
from kodcode.report import compare_prompts, normalise_reason
from kodcode.store.queries import ReadConnection, ReadError
from kodcode.store.sqlite import open_readonly
from kodcode.store.view_queries import (
    ITEM_STATES,
    ItemFilter,
    LLMSpend,
    charts_data,
    filter_options,
    item_detail,
    items_page,
    llm_spend_since,
    prompt_trials_summary,
    run_facts,
    store_version,
)
from kodcode.units import format_duration
from kodcode.view.charts import bar_chart, line_chart

__all__ = ["LIVE_HEADER", "create_app"]

_HERE = Path(__file__).parent
# The live script sends "<store version> <fragment hash>" in this header and gets only the page's fragment.
LIVE_HEADER = "X-Kodcode-Live"
PAGE_SIZE = 50
_TOKENS_WINDOW_S = 300.0     # LLM calls land when they finish: a minute of a slow model is too jumpy
# Defence in depth behind escaping: no inline script, nothing loaded from elsewhere.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_FORMATTER = HtmlFormatter(nowrap=True)
_LEXER = PythonLexer()


def code_html(source: str | None) -> Markup:
    """Python highlighted by Pygments, which escapes the text it wraps in spans."""
    if not source:
        return Markup("")
    return Markup(highlight(source, _LEXER, _FORMATTER))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _usd(value: float | None) -> str:
    if value is None:
        return "–"
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"


def _duration(seconds: float | None) -> str:
    return format_duration(seconds, unknown="–")


def _count(value: float | None) -> str:
    if value is None:
        return "–"
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:,.0f}" if isinstance(value, int) or value >= 10 else f"{value:.1f}"


def _clock(t: float | None) -> str:
    return "–" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _run_process_alive(db: Path) -> int | None:
    """The pid written in the store's lock file when that process is alive. Reads the file; never locks it."""
    try:
        pid = int((db.with_name(db.name + ".lock")).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


class _RunFigures:
    """The run page's figures, recomputed only when the store changed (its version token moved)."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._spend = LLMSpend()
        self._version: str | None = None
        self._figures: dict[str, Any] = {}

    def get(self, conn: ReadConnection, version: str) -> dict[str, Any]:
        with self._lock:
            if version != self._version:
                self._figures = self._compute(conn)
                self._version = version
            return self._figures

    def _compute(self, conn: ReadConnection) -> dict[str, Any]:
        facts = run_facts(conn)
        self._spend = spend = llm_spend_since(conn, self._spend)
        latest = facts["latest_run"] or {}
        config = latest.get("config") or {}
        summary = latest.get("summary") or {}
        target = int(config.get("target") or 0)
        counts = facts["counts"]
        verified = counts["verified"]
        pid = _run_process_alive(self.db)
        running = latest.get("status") == "running" and pid is not None
        now = time.time()
        charts = charts_data(conn, until=now if running else None)
        started = latest.get("started_at")
        ended = latest.get("ended_at")
        elapsed = ((ended or now) - started) if started else None
        if latest.get("status") == "running" and not running:
            status = "stopped without finishing (the run's process is gone)"
        else:
            status = latest.get("status") or "no run recorded"
        solving = counts["open"] + counts["verified"] + counts["failed"]
        judged, passed = facts["attempts_judged"], facts["attempts_passed"]
        if running:
            horizon = now - _TOKENS_WINDOW_S
            recent = sum(b[1] for s, b in spend.by_second.items() if s >= horizon)
            tokens_per_s = recent / min(_TOKENS_WINDOW_S, max(1.0, elapsed or 1.0))
        else:
            run_tokens = sum(b[1] for s, b in spend.by_second.items() if started and s >= int(started))
            tokens_per_s = run_tokens / elapsed if elapsed else None
        eta: float | None = None
        remaining = max(0, target - verified)
        if target and remaining == 0:
            eta = 0.0
        elif running and elapsed and facts["verified_this_run"]:
            eta = remaining / (facts["verified_this_run"] / elapsed)
        verified_series = charts["verified_series"]
        cost_series = self._cost_per_verified(spend, verified_series)
        return {
            "facts": facts, "target": target, "verified": verified, "counts": counts, "status": status,
            "running": running, "pid": pid if running else None, "elapsed": elapsed,
            "stop_reason": summary.get("stop_reason"),
            "progress": min(1.0, verified / target) if target else None,
            "pass_rate": passed / judged if judged else None, "judged": judged,
            "attempts_per_question": judged / solving if solving else None,
            "calls": spend.calls, "tokens": spend.tokens, "usd": spend.usd,
            "usd_per_verified": spend.usd / verified if verified else None,
            "tokens_per_s": tokens_per_s, "eta": eta,
            "charts": {
                "verified": line_chart(verified_series, label="verified items over time", y_format=lambda v: f"{v:.0f}"),
                "cost": line_chart(cost_series, label="cost per verified triplet over time", y_format=_usd)
                if spend.usd > 0 else Markup('<p class="empty">no cost recorded (no prices for these models)</p>'),
                "pass_by_subset": bar_chart(
                    [(r["subset"], r["passed"] / r["judged"], f"{_pct(r['passed'] / r['judged'])} of {r['judged']}")
                     for r in charts["pass_by_subset"] if r["judged"]], label="attempt pass rate per subset", scale=1.0),
                "difficulty": bar_chart([(r["label"], r["items"], f"{r['items']:,}") for r in charts["difficulty"]],
                                        label="difficulty of settled questions"),
                "attempts": bar_chart([(str(r["attempts"]), r["questions"], f"{r['questions']:,}")
                                       for r in charts["attempts_per_question"]], label="attempts per settled question"),
            },
        }

    @staticmethod
    def _cost_per_verified(spend: LLMSpend, verified_series: list[tuple[float, int]]) -> list[tuple[float, float]]:
        """Money spent up to each time step over the items verified by then: every failed attempt counts."""
        seconds = sorted(spend.by_second.items())
        out: list[tuple[float, float]] = []
        spent, index = 0.0, 0
        for t, verified in verified_series:
            while index < len(seconds) and seconds[index][0] <= t:
                spent += seconds[index][1][2]
                index += 1
            if verified:
                out.append((t, spent / verified))
        return out


def _filter_from(request: Request) -> ItemFilter:
    q = request.query_params

    def value(name: str) -> str | None:
        text = (q.get(name) or "").strip()
        return text[:200] or None

    return ItemFilter(state=value("state"), subset=value("subset"), source=value("source"),
                      difficulty=value("difficulty"), reason=value("reason"), text=value("q"))


def _int_param(request: Request, name: str) -> int | None:
    try:
        return int(request.query_params[name])
    except (KeyError, ValueError):
        return None


def _diff_lines(a: str | None, b: str | None, a_name: str, b_name: str) -> list[tuple[str, str]]:
    """A unified diff as (kind, line) pairs; the template escapes the lines."""
    lines = difflib.unified_diff((a or "").splitlines(), (b or "").splitlines(), a_name, b_name, lineterm="", n=3)
    out = []
    for line in lines:
        kind = "meta" if line.startswith(("---", "+++", "@@")) else {"+": "add", "-": "del"}.get(line[:1], "ctx")
        out.append((kind, line))
    return out


def create_app(db: Path, *, allowed_hosts: list[str] | None = None, refresh_ms: int = 2000) -> Starlette:
    """The app over store `db`. `allowed_hosts` guards against DNS rebinding (a page elsewhere reaching the
    local server through a name that resolves to 127.0.0.1)."""
    db = Path(db)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, usd=_usd, duration=_duration, count=_count, clock=_clock, code=code_html,
                       pretty_json=_pretty_json, reason_group=normalise_reason)
    env.globals.update(states=ITEM_STATES, refresh_ms=refresh_ms, db_name=db.name)
    figures = _RunFigures(db)
    options_cache: dict[str, Any] = {}          # store version -> the items page's filter values

    def options_for(conn: ReadConnection, version: str) -> dict[str, Any]:
        # Four GROUP BYs over every item: once per store version, not once per page of a 100k-item table.
        if version not in options_cache:
            options_cache.clear()
            options_cache[version] = filter_options(conn)
        return options_cache[version]

    @contextmanager
    def reading() -> Iterator[ReadConnection]:
        conn = open_readonly(db)
        try:
            yield conn
        finally:
            conn.close()

    def page(request: Request, template: str, build: Callable[[ReadConnection, str], dict[str, Any]],
             *, status: int = 200) -> Response:
        """Render a page, or only its live fragment when the page's script asks, or 204 when unchanged."""
        # A run killed with -9 leaves the store as it was: the version also says whether its process lives,
        # so an open page learns that the run is gone.
        version = f"{store_version(db)}.{_run_process_alive(db) or 0}"
        live = request.headers.get(LIVE_HEADER)
        seen_version, _, seen_hash = (live or "").partition(" ")
        if live is not None and seen_version == version:
            return Response(status_code=204, headers={**_SECURITY_HEADERS, "X-Kodcode-Version": version})
        try:
            with reading() as conn:
                context = build(conn, version)
        except (StoreError, ReadError) as exc:
            return HTMLResponse(env.get_template("error.html").render(message=str(exc), nav=""), status_code=503,
                                headers=_SECURITY_HEADERS)
        status = context.pop("status_code", status)
        context.setdefault("nav", template.removesuffix(".html"))
        fragment = env.get_template(template).render(**context, fragment=True)
        digest = hashlib.sha1(fragment.encode()).hexdigest()[:16]
        headers = {**_SECURITY_HEADERS, "X-Kodcode-Version": version, "X-Kodcode-Hash": digest}
        if live is not None:
            if seen_hash == digest:
                return Response(status_code=204, headers=headers)
            return HTMLResponse(fragment, headers=headers)
        html = env.get_template(template).render(**context, fragment=False, version=version, digest=digest)
        return HTMLResponse(html, status_code=status, headers=headers)

    def run_page(request: Request) -> Response:
        return page(request, "run.html", lambda conn, version: {"f": figures.get(conn, version)})

    def items_view(request: Request) -> Response:
        flt = _filter_from(request)
        before, after = _int_param(request, "before"), _int_param(request, "after")

        def build(conn: ReadConnection, version: str) -> dict[str, Any]:
            result = items_page(conn, flt, before=before, after=after, limit=PAGE_SIZE)
            query = {k: v for k, v in request.query_params.items() if k not in ("before", "after") and v}
            return {"page": result, "flt": flt, "options": options_for(conn, version), "query": query,
                    "first_page": before is None and after is None}

        return page(request, "items.html", build)

    def item_view(request: Request) -> Response:
        item_id = request.path_params["item_id"]

        def build(conn: ReadConnection, version: str) -> dict[str, Any]:
            detail = item_detail(conn, item_id)
            if detail is None:
                return {"detail": None, "item_id": item_id, "diff": None, "nav": "items", "status_code": 404}
            attempts = {a["attempt"]: a for a in detail["attempts"]}
            diff = None
            a, b = _int_param(request, "a"), _int_param(request, "b")
            if a in attempts and b in attempts:
                diff = {"a": a, "b": b,
                        "solution": _diff_lines(attempts[a]["solution"], attempts[b]["solution"],
                                                f"attempt {a} solution", f"attempt {b} solution"),
                        "tests": _diff_lines(attempts[a]["tests"], attempts[b]["tests"],
                                             f"attempt {a} tests", f"attempt {b} tests")}
            return {"detail": detail, "item_id": item_id, "diff": diff, "nav": "items"}

        return page(request, "item.html", build)

    def prompts_view(request: Request) -> Response:
        return page(request, "prompts.html", lambda conn, version: {
            "rows": compare_prompts(conn), "trials": prompt_trials_summary(conn)})

    routes = [
        Route("/", run_page),
        Route("/items", items_view),
        Route("/items/{item_id:path}", item_view),
        Route("/prompts", prompts_view),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    hosts = allowed_hosts or ["127.0.0.1", "localhost", "[::1]"]
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])

"""Small charts drawn server-side as inline SVG.

A few lines of SVG per chart need no JavaScript library, work offline and print; every label goes
through `escape` (subset names and reasons come from configs and models)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

__all__ = ["bar_chart", "line_chart"]

_W, _H = 420, 170
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 46, 12, 10, 24


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def line_chart(points: Sequence[tuple[float, float]], *, label: str, y_format: Callable[[float], str] = str,
               x_format: Callable[[float], str] = _clock) -> Markup:
    """A line over time: `points` are (unix time, value), oldest first."""
    if len(points) < 2:
        return Markup('<p class="empty">not enough data yet</p>')
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y1 = max(ys) or 1.0
    span_x = (x1 - x0) or 1.0
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B

    def at(x: float, y: float) -> str:
        return f"{_PAD_L + (x - x0) / span_x * plot_w:.1f},{_PAD_T + plot_h - y / y1 * plot_h:.1f}"

    line = " ".join(at(x, y) for x, y in points)
    area = f"{at(x0, 0)} {line} {at(x1, 0)}"
    last = points[-1]
    return Markup(
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(label)}">'
        f'<line class="axis" x1="{_PAD_L}" y1="{_PAD_T + plot_h}" x2="{_W - _PAD_R}" y2="{_PAD_T + plot_h}"/>'
        f'<line class="axis" x1="{_PAD_L}" y1="{_PAD_T}" x2="{_PAD_L}" y2="{_PAD_T + plot_h}"/>'
        f'<line class="grid" x1="{_PAD_L}" y1="{_PAD_T}" x2="{_W - _PAD_R}" y2="{_PAD_T}"/>'
        f'<polygon class="area" points="{area}"/><polyline class="line" points="{line}"/>'
        f'<circle class="dot" r="3" cx="{at(*last).split(",")[0]}" cy="{at(*last).split(",")[1]}"/>'
        f'<text class="tick" x="{_PAD_L - 4}" y="{_PAD_T + 4}" text-anchor="end">{escape(y_format(y1))}</text>'
        f'<text class="tick" x="{_PAD_L - 4}" y="{_PAD_T + plot_h}" text-anchor="end">{escape(y_format(0))}</text>'
        f'<text class="tick" x="{_PAD_L}" y="{_H - 6}">{escape(x_format(x0))}</text>'
        f'<text class="tick" x="{_W - _PAD_R}" y="{_H - 6}" text-anchor="end">{escape(x_format(x1))}</text>'
        "</svg>")


def bar_chart(bars: Sequence[tuple[str, float, str]], *, label: str, scale: float | None = None) -> Markup:
    """Horizontal bars: (name, value, text shown after the bar); `scale` is the full-width value."""
    if not bars:
        return Markup('<p class="empty">no data yet</p>')
    top = scale or max((value for _, value, _ in bars), default=1.0) or 1.0
    row_h, name_w, text_w = 22, 120, 110
    height = row_h * len(bars) + 4
    bar_w = _W - name_w - text_w
    parts = [f'<svg class="chart bars" viewBox="0 0 {_W} {height}" role="img" aria-label="{escape(label)}">']
    for index, (name, value, text) in enumerate(bars):
        y = 2 + index * row_h
        width = max(0.0, min(1.0, value / top)) * bar_w
        shown = name if len(name) <= 18 else name[:17] + "…"
        parts.append(
            f'<text class="name" x="{name_w - 6}" y="{y + 15}" text-anchor="end">{escape(shown)}'
            f'<title>{escape(name)}</title></text>'
            f'<rect class="track" x="{name_w}" y="{y + 3}" width="{bar_w}" height="{row_h - 8}" rx="3"/>'
            f'<rect class="bar" x="{name_w}" y="{y + 3}" width="{width:.1f}" height="{row_h - 8}" rx="3"/>'
            f'<text class="value" x="{name_w + bar_w + 6}" y="{y + 15}">{escape(text)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))

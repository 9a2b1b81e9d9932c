"""How durations read to a person: one formatter for the progress panel and the web view."""

from __future__ import annotations

__all__ = ["format_duration"]


def format_duration(seconds: float | None, unknown: str = "?") -> str:
    """`42s`, `3m05s`, `2h07m`, `1d03h`; `unknown` when there is no figure yet."""
    if seconds is None:
        return unknown
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"

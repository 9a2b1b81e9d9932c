"""Structured logging, configured once: JSON lines to `<run dir>/events.jsonl`, readable lines on stderr.

Every event carries the run id and, where known, the agent, item id and attempt (bound as contextvars
by the runtime), so `python -m kodcode.tail` and `jq` can follow one item through every agent.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

import structlog

__all__ = ["EVENTS_FILE", "configure_logging", "get_logger", "close_logging"]

EVENTS_FILE = "events.jsonl"

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class _JsonLinesSink:
    """Appends one JSON object per event; a whole line per write so a concurrent reader never sees
    half an event (it may see the line before its newline arrives, which tail tolerates)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def __call__(self, _logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        line = json.dumps(event_dict, default=str, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            if not self._file.closed:
                self._file.write(line + "\n")
        return event_dict

    def close(self) -> None:
        with self._lock:
            self._file.close()


class _ConsoleFilter:
    def __init__(self, level: int) -> None:
        self.level = level

    def __call__(self, _logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        if _LEVELS.get(event_dict.get("level", method), 20) < self.level:
            raise structlog.DropEvent
        return event_dict


_sink: _JsonLinesSink | None = None


def configure_logging(events_path: Path | None, *, console_level: str = "info", console: TextIO | None = None) -> None:
    """Set up structlog for this process. Call once per run (tests may call it again)."""
    global _sink
    close_logging()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    if events_path is not None:
        _sink = _JsonLinesSink(events_path)
        processors.append(_sink)
    processors += [
        _ConsoleFilter(_LEVELS.get(console_level, 20)),
        structlog.dev.ConsoleRenderer(colors=(console or sys.stderr).isatty(), sort_keys=False),
    ]
    structlog.configure(
        processors=processors,
        logger_factory=structlog.PrintLoggerFactory(console or sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )


def close_logging() -> None:
    global _sink
    if _sink is not None:
        _sink.close()
        _sink = None


def get_logger(**bindings: Any) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger().bind(**bindings)

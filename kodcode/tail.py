"""`python -m kodcode.tail`: follow a run's events.jsonl like `tail -f`, filtered and readable.

The log is written by a live run, so the reader tolerates a line whose newline has not arrived yet
(it waits for it), and a file that is truncated or replaced under it (it starts over on the new one).
`--json` passes the matching lines through byte for byte, for `jq`.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from kodcode.log import EVENTS_FILE

__all__ = [
    "DEFAULT_PATH",
    "EventFilter",
    "LogFollower",
    "agent_of",
    "build_parser",
    "history",
    "main",
    "render_event",
    "resolve_events_path",
]

DEFAULT_PATH = Path("runs") / EVENTS_FILE

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_LEVEL_ALIASES = {"warn": "warning", "exception": "error", "fatal": "critical"}

_SHOWN_IN_COLUMNS = ("ts", "level", "event", "run_id", "agent", "item_id", "attempt")


def _level_number(name: object) -> int:
    text = str(name or "info").lower()
    return LEVELS.get(_LEVEL_ALIASES.get(text, text), 20)


def agent_of(record: dict[str, Any]) -> str | None:
    """The agent an event belongs to: `agent`, bound by the runtime as a context variable around every
    message an actor handles (the scheduler's events name it too); else the LLM call's `role`."""
    agent = record.get("agent") or record.get("role")
    return str(agent) if agent else None


@dataclass(frozen=True)
class EventFilter:
    agents: frozenset[str] = frozenset()
    item_prefix: str | None = None
    events: tuple[str, ...] = ()          # names or shell-style patterns (rewrite_*)
    min_level: int = 0
    grep: str | None = None

    @property
    def needs_record(self) -> bool:
        return bool(self.agents or self.item_prefix is not None or self.events or self.min_level)

    def matches(self, raw: str, record: dict[str, Any] | None) -> bool:
        """`raw` is the line as written; `record` its parsed object (None when it is not JSON)."""
        if self.grep is not None and self.grep not in raw:
            return False
        if not self.needs_record:
            return True
        if record is None:
            return False
        if self.agents and agent_of(record) not in self.agents:
            return False
        if self.item_prefix is not None and not str(record.get("item_id") or "").startswith(self.item_prefix):
            return False
        if self.events:
            name = str(record.get("event", ""))
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.events):
                return False
        return _level_number(record.get("level")) >= self.min_level


def parse_line(raw: str) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


# -- rendering ------------------------------------------------------------------------------------------

_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"
_LEVEL_STYLES = {10: "\x1b[2m", 20: "\x1b[32m", 30: "\x1b[33m", 40: "\x1b[1;31m", 50: "\x1b[1;41;97m"}
_EVENT_STYLES = {
    "run_started": "\x1b[1;36m", "run_finished": "\x1b[1;36m", "stopping": "\x1b[1;36m", "resumed": "\x1b[36m",
    "progress": "\x1b[34m",
    "question_proposed": "\x1b[35m", "question_rejected": "\x1b[33m",
    "decision": "\x1b[2;37m",
    "rewrite_done": "\x1b[32m", "rewrite_rejected": "\x1b[33m",
    "llm_retry": "\x1b[33m", "handler_error": "\x1b[31m", "item_failed": "\x1b[1;31m",
}
_GOOD = "\x1b[1;32m"
_BAD = "\x1b[31m"


def _event_style(record: dict[str, Any]) -> str:
    name = str(record.get("event", ""))
    if name == "attempt_judged":
        return _GOOD if record.get("passed") else _BAD
    if name == "item_settled":
        return _GOOD if record.get("state") == "verified" else _BAD
    if name == "question_proposed" and record.get("state") not in (None, "open"):
        return "\x1b[33m"
    return _EVENT_STYLES.get(name, "")


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and not any(ch.isspace() or ch in "='\"" for ch in value) else repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _clock(ts: object) -> str:
    """HH:MM:SS.mmm from the ISO timestamp (UTC, as logged)."""
    text = str(ts or "")
    if "T" in text:
        return text.split("T", 1)[1].rstrip("Z")[:12].ljust(12)
    return text[:12].ljust(12)


def render_event(record: dict[str, Any], *, color: bool) -> str:
    """One readable line: time, level, agent, item#attempt, event, then key=value for the rest."""
    level_name = _LEVEL_ALIASES.get(str(record.get("level", "info")).lower(), str(record.get("level", "info")).lower())
    item = str(record.get("item_id") or "")
    if record.get("attempt") is not None and item:
        item = f"{item}#{record['attempt']}"
    columns = [_clock(record.get("ts")), level_name[:4].upper().ljust(4), (agent_of(record) or "-").ljust(9),
               (item or "-").ljust(16)]
    event = str(record.get("event", "?"))
    rest = " ".join(f"{key}={_format_value(value)}" for key, value in record.items()
                    if key not in _SHOWN_IN_COLUMNS and value is not None)
    if not color:
        return " ".join([*columns, event.ljust(18), rest]).rstrip()
    time_col, level_col, agent_col, item_col = columns
    level_style = _LEVEL_STYLES.get(_level_number(level_name), "")
    event_style = _event_style(record)
    return (f"{_DIM}{time_col}{_RESET} {level_style}{level_col}{_RESET} \x1b[36m{agent_col}{_RESET} "
            f"{_BOLD}{item_col}{_RESET} {event_style}{event.ljust(18)}{_RESET} {_DIM}{rest}{_RESET}").rstrip()


# -- reading a growing file --------------------------------------------------------------------------------

def resolve_events_path(path: Path | None) -> Path:
    """An events file, a run directory, or a store path (its directory holds the events file)."""
    if path is None:
        return DEFAULT_PATH
    if path.is_dir() or (not path.exists() and not path.suffix):   # a run directory, maybe not made yet
        return path / EVENTS_FILE
    if path.suffix in (".jsonl", ".json", ".log") or path.name.startswith(EVENTS_FILE):
        return path
    return path.parent / EVENTS_FILE


def history(handle: BinaryIO, count: int, keep: Callable[[str], bool], *, block: int = 1 << 16) -> tuple[list[str], int]:
    """The last `count` complete lines for which `keep` holds, read backwards from the end (a long log
    is never read whole), and the offset just after the last complete line (where following resumes)."""
    handle.seek(0, os.SEEK_END)
    end = handle.tell()
    # A trailing line without its newline is still being written: it belongs to the follow phase.
    position, tail = end, b""
    while position > 0:
        step = min(block, position)
        position -= step
        handle.seek(position)
        tail = handle.read(step) + tail
        if b"\n" in tail:
            break
    complete_end = position + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
    if count <= 0 or complete_end == 0:
        return [], complete_end
    found: deque[str] = deque()
    pending = b""                          # the start of a line whose beginning lies in an earlier block
    position = complete_end
    while position > 0 and len(found) < count:
        step = min(block, position)
        position -= step
        handle.seek(position)
        chunk = handle.read(step) + pending
        lines = chunk.split(b"\n")
        pending = lines[0] if position > 0 else b""
        complete = lines[1:] if position > 0 else lines
        for raw in reversed(complete):
            if not raw:
                continue
            text = raw.decode("utf-8", errors="replace")
            if keep(text):
                found.appendleft(text)
                if len(found) >= count:
                    break
    return list(found), complete_end


@dataclass
class LogFollower:
    """Reads the lines appended to `path` since the last `poll()`, across truncation and replacement.

    A line is returned only once its newline has arrived. When the file at `path` is a different file
    than the one open (rotated) the rest of the old one is read first; when it shrank (truncated) reading
    starts again from its beginning."""

    path: Path
    position: int = 0
    _handle: BinaryIO | None = field(default=None, repr=False)
    _partial: bytes = field(default=b"", repr=False)

    def open_at(self, position: int) -> bool:
        try:
            self._handle = self.path.open("rb")
        except FileNotFoundError:
            return False
        self._handle.seek(position)
        self.position = position
        self._partial = b""
        return True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def poll(self) -> list[str]:
        if self._handle is None:
            if not self.open_at(0):
                return []
        assert self._handle is not None
        lines = self._drain()
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return lines                   # removed and not yet recreated: keep the old file until it is
        opened = os.fstat(self._handle.fileno())
        if (current.st_ino, current.st_dev) != (opened.st_ino, opened.st_dev):
            lines += self._drain()         # whatever the writer added before it switched files
            self.close()
            if self.open_at(0):
                lines += self._drain()
        elif current.st_size < self.position:
            self._handle.seek(0)
            self.position = 0
            self._partial = b""
            lines += self._drain()
        return lines

    def _drain(self) -> list[str]:
        assert self._handle is not None
        data = self._handle.read()
        if not data:
            return []
        self.position += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        return [raw.decode("utf-8", errors="replace") for raw in complete if raw.strip()]

    def follow(self, poll_s: float = 0.2) -> Iterator[str]:
        """Lines forever (until the caller stops iterating)."""
        while True:
            lines = self.poll()
            yield from lines
            if not lines:
                time.sleep(poll_s)


# -- command line ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kodcode.tail",
                                     description="Follow a kodcode run's event log (events.jsonl), filtered and readable.")
    parser.add_argument("path", nargs="?", type=Path,
                        help=f"events file, run directory or store path (default: {DEFAULT_PATH})")
    parser.add_argument("-n", "--lines", type=int, default=10, metavar="N",
                        help="matching lines of history to show first (default 10)")
    parser.add_argument("--no-follow", action="store_true", help="print the history and exit")
    parser.add_argument("--agent", action="append", default=[],
                        help="only this agent: proposer, solver, tester, judge, scheduler, rewriter (repeatable)")
    parser.add_argument("--item", help="only this item id (a prefix matches too)")
    parser.add_argument("--event", action="append", default=[],
                        help="only these events; repeatable or comma separated; patterns like 'rewrite_*' work")
    parser.add_argument("--level", choices=tuple(LEVELS), help="minimum level")
    parser.add_argument("--grep", metavar="TEXT", help="only lines containing TEXT (matched on the raw JSON line)")
    parser.add_argument("--json", action="store_true", help="print matching lines unchanged (for jq)")
    parser.add_argument("--no-color", action="store_true", help="no colours (the default when stdout is not a terminal)")
    return parser


def _filter_from(args: argparse.Namespace) -> EventFilter:
    agents = frozenset(a.strip() for value in args.agent for a in value.split(",") if a.strip())
    events = tuple(e.strip() for value in args.event for e in value.split(",") if e.strip())
    return EventFilter(agents=agents, item_prefix=args.item, events=events,
                       min_level=LEVELS[args.level] if args.level else 0, grep=args.grep)


def _printer(out: TextIO, *, as_json: bool, color: bool) -> Callable[[str], None]:
    def emit(raw: str) -> None:
        if as_json:
            out.write(raw + "\n")
        else:
            record = parse_line(raw)
            out.write((render_event(record, color=color) if record is not None else raw) + "\n")
        out.flush()
    return emit


def _run(args: argparse.Namespace, out: TextIO) -> int:
    path = resolve_events_path(args.path)
    selected = _filter_from(args)
    keep: Callable[[str], bool] = lambda raw: selected.matches(raw, parse_line(raw) if selected.needs_record else None)
    color = not args.json and not args.no_color and out.isatty() and "NO_COLOR" not in os.environ
    emit = _printer(out, as_json=args.json, color=color)
    follower = LogFollower(path)
    try:
        with path.open("rb") as handle:
            lines, start = history(handle, args.lines, keep)
    except FileNotFoundError:
        if args.no_follow:
            print(f"kodcode: error: no event log at {path}", file=sys.stderr)
            return 2
        print(f"kodcode: waiting for {path} to appear", file=sys.stderr)
        lines, start = [], 0
    except IsADirectoryError:
        print(f"kodcode: error: {path} is a directory, not an event log", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"kodcode: error: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    _emit_all(lines, emit)
    if args.no_follow:
        return 0
    follower.open_at(start)
    try:
        _emit_all((raw for raw in follower.follow() if keep(raw)), emit)
    finally:
        follower.close()
    return 0


def _emit_all(lines: Iterable[str], emit: Callable[[str], None]) -> None:
    for raw in lines:
        emit(raw)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args, sys.stdout)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep the interpreter's final flush from failing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m kodcode.verify`: re-run any KodCode-format dataset's solutions against their tests, in the sandbox.

Each selected row's verdict goes to `--out` as one JSON line (one write per line, so a kill leaves only
complete lines and a rerun skips the rows already there). Where the input records a verdict
(`verdict`/`passed`, or `gpt_pass_sequence` + `chosen_trial`), the summary lists every row on which the
sandbox disagrees, with the reason: environment-dependent rows and fake passes become visible.

    python -m kodcode.verify data.parquet --out verdicts.jsonl --filter subset=Leetcode --sample 500

Tests run the way KodCode's own harness ran them: `from solution import *` is written above every test
file (many KodCode test files call the function without importing it). `--test-prelude none` runs the
files as they are, `--test-prelude FILE` puts that file's text above each instead; the summary says which.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio

from kodcode.errors import ConfigError, KodcodeError
from kodcode.log import configure_logging
from kodcode.sandbox import Limits, Verdict, open_sandbox
from kodcode.verify_io import InputSource, RowError, open_input

__all__ = [
    "KODCODE_PRELUDE",
    "FieldMap",
    "RowTask",
    "Summary",
    "VerifyOptions",
    "load_done",
    "main",
    "prepare_row",
    "recorded_verdict",
    "select_rows",
    "verify",
]

_DEFAULT_TIMEOUT_S = 30.0       # KodCode's own harness: `timeout 30 pytest` per trial
# A test that has used this much CPU time is taken as hung (see _limits).
_DEFAULT_TEST_CPU_S = 10.0
# KodCode's step2.2_gen_unit_tests.py writes this line above every test_solution.py it runs.
KODCODE_PRELUDE = "from solution import *\n"
_FILTER_ALIASES = {"difficulty": "gpt_difficulty"}
_PASS_WORDS = {"pass", "passed", "true", "yes", "ok", "1"}
_FAIL_WORDS = {"fail", "failed", "false", "no", "0"}


@dataclass(frozen=True)
class FieldMap:
    """Which columns hold what; each is tried in order, the first present wins."""

    solution: tuple[str, ...] = ("solution",)
    test: tuple[str, ...] = ("test", "test_code")
    id: tuple[str, ...] = ("question_id", "task_id", "conversation_id", "id")
    entry: tuple[str, ...] = ("test_info", "test_entry_point", "entry_point", "metadata")
    recorded: tuple[str, ...] = ("verdict", "passed", "gpt_pass_sequence")

    def columns(self) -> set[str]:
        return {*self.solution, *self.test, *self.id, *self.entry, *self.recorded, "chosen_trial"}


@dataclass(frozen=True)
class RowTask:
    """One selected row, ready to run; `problem` says why it cannot be run at all."""

    index: int
    id: str
    solution: str = ""
    tests: str = ""
    entry_point: str | None = None
    recorded: bool | None = None
    problem: str | None = None


@dataclass(frozen=True)
class VerifyOptions:
    input: Path
    out: Path
    fields: FieldMap = FieldMap()
    filters: tuple[tuple[str, frozenset[str]], ...] = ()
    sample: int | None = None
    seed: int = 0
    limit: int | None = None
    timeout_s: float = _DEFAULT_TIMEOUT_S
    test_cpu_s: float | None = _DEFAULT_TEST_CPU_S   # None: wall time per file only, as KodCode's harness
    workers: int | None = None
    isolation: bool = True
    split: str | None = None
    test_prelude: str = "kodcode"   # "kodcode", "none", or the path of a file whose text goes above each test file
    sandbox: str = "local"               # or "ray": worker actors on a Ray cluster
    ray_address: str | None = None


@dataclass
class Summary:
    """Totals over every selected row, including those a previous run already wrote."""

    selected: int = 0
    resumed: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    with_recorded: int = 0
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    test_prelude: str = "kodcode"

    def add(self, record: dict[str, Any]) -> None:
        self.verdicts[record["verdict"]] += 1
        if record.get("reason"):
            self.reasons[_reason_kind(record["reason"])] += 1
        if record.get("recorded") is not None:
            self.with_recorded += 1
        if record.get("disagrees"):
            entry = {"id": record["id"], "index": record.get("index", -1), "recorded": record["recorded"],
                     "verdict": record["verdict"], "reason": record.get("reason"), "likely": _likely_cause(record)}
            # Rows finish out of order; the list keeps input order.
            bisect.insort(self.disagreements, entry, key=lambda d: d["index"])

    def as_dict(self) -> dict[str, Any]:
        return {"selected": self.selected, "resumed": self.resumed, "test_prelude": self.test_prelude, "verdicts": dict(self.verdicts),
                "reasons": dict(self.reasons.most_common()), "with_recorded": self.with_recorded,
                "disagreements": self.disagreements}


# -- rows -----------------------------------------------------------------------------------------


def recorded_verdict(row: dict[str, Any], fields: FieldMap) -> bool | None:
    """The verdict the dataset claims for this row, or None when it records none."""
    for name in fields.recorded:
        value = row.get(name)
        if value is None:
            continue
        if name == "gpt_pass_sequence":
            return _chosen_trial_passed(value, row.get("chosen_trial"))
        verdict = _as_verdict(value)
        if verdict is not None:
            return verdict
    return None


def _as_verdict(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _PASS_WORDS:
            return True
        if word in _FAIL_WORDS or word.startswith("fail"):
            return False
    if isinstance(value, dict) and "passed" in value:
        return _as_verdict(value["passed"])
    return None


def _chosen_trial_passed(sequence: Any, chosen: Any) -> bool | None:
    """KodCode keeps a passing trial: `chosen_trial` "trial_gpt4o_3" is `gpt_pass_sequence[3]`."""
    if isinstance(sequence, str):
        try:
            sequence = json.loads(sequence)
        except ValueError:
            return None
    if not isinstance(sequence, list) or not sequence:
        return None
    if isinstance(chosen, str) and chosen:
        suffix = chosen.rsplit("_", 1)[-1]
        if suffix.isdigit() and int(suffix) < len(sequence):
            return bool(sequence[int(suffix)])
    return any(bool(x) for x in sequence)


def _entry_point(row: dict[str, Any], fields: FieldMap) -> str | None:
    for name in fields.entry:
        value = row.get(name)
        if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list):
            names = [e.get("function_name") for e in value if isinstance(e, dict) and e.get("function_name")]
            if names:
                return ", ".join(names)
        if isinstance(value, dict) and isinstance(value.get("entry_point"), str) and value["entry_point"]:
            return value["entry_point"]
    return None


def _text_field(row: dict[str, Any], names: tuple[str, ...], label: str) -> tuple[str, str | None]:
    """The field's text, or ("", reason) when it is missing, not text, or not UTF-8."""
    for name in names:
        value = row.get(name)
        if value is None:
            continue
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                return "", f"non-utf-8 {label}"
        if not isinstance(value, str):
            return "", f"{label} field {name!r} is {type(value).__name__}, not text"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "", f"non-utf-8 {label}"
        if not value.strip():
            return "", f"empty {label}"
        return value, None
    return "", f"missing field: {' or '.join(names)}"


def prepare_row(index: int, row: dict[str, Any] | RowError, fields: FieldMap) -> RowTask:
    """The task for one input row; a row that cannot run carries its reason in `problem`."""
    if isinstance(row, RowError):
        return RowTask(index=index, id=f"#{index}", problem=row.reason)
    raw_id = next((row[name] for name in fields.id if row.get(name) not in (None, "")), None)
    row_id = str(raw_id) if raw_id is not None else f"#{index}"
    solution, problem = _text_field(row, fields.solution, "solution")
    tests, test_problem = _text_field(row, fields.test, "tests")
    return RowTask(index=index, id=row_id, solution=solution, tests=tests, entry_point=_entry_point(row, fields),
                   recorded=recorded_verdict(row, fields), problem=problem or test_problem)


def _matches(row: dict[str, Any] | RowError, filters: tuple[tuple[str, frozenset[str]], ...]) -> bool:
    if not filters:
        return True
    if isinstance(row, RowError):
        return False
    return all(str(_filter_value(row, key)).lower() in values for key, values in filters)


def _filter_value(row: dict[str, Any], key: str) -> Any:
    # "difficulty" is what users say; KodCode calls the column gpt_difficulty.
    return row[key] if key in row else row.get(_FILTER_ALIASES.get(key, key))


def select_rows(source: InputSource, options: VerifyOptions) -> Iterator[RowTask]:
    """Filter, then a seeded sample, then the limit; ids made unique in input order so resume is stable."""
    wanted = options.fields.columns() | {name for key, _ in options.filters
                                         for name in (key, _FILTER_ALIASES.get(key, key))}
    rows: Iterator[tuple[int, dict[str, Any] | RowError]] = (
        (index, row) for index, row in source.rows(wanted) if _matches(row, options.filters))
    if options.sample is not None:
        rows = iter(_reservoir(rows, options.sample, options.seed))
    seen: Counter[str] = Counter()
    for taken, (index, row) in enumerate(rows):
        if options.limit is not None and taken >= options.limit:
            return
        task = prepare_row(index, row, options.fields)
        seen[task.id] += 1
        if seen[task.id] > 1:
            task = dataclasses.replace(task, id=f"{task.id}#{seen[task.id]}")
        yield task


def _reservoir(rows: Iterator[tuple[int, Any]], size: int, seed: int) -> list[tuple[int, Any]]:
    chooser = random.Random(seed)
    kept: list[tuple[int, Any]] = []
    for seen, item in enumerate(rows):
        if seen < size:
            kept.append(item)
        else:
            slot = chooser.randrange(seen + 1)
            if slot < size:
                kept[slot] = item
    return sorted(kept, key=lambda item: item[0])


def _check_columns(source: InputSource, options: VerifyOptions) -> None:
    """For tables the schema is known up front: a mapping to an absent column is a usage error."""
    if source.columns is None:
        return
    columns = source.columns
    listing = ", ".join(sorted(columns))[:300]
    for label, names, flag in (("solution", options.fields.solution, "--solution-field"),
                               ("tests", options.fields.test, "--test-field")):
        if not any(name in columns for name in names):
            raise ConfigError(f"{source.label} has no {label} column {' or '.join(map(repr, names))} "
                              f"(columns: {listing}); map one with {flag}")
    for key, _ in options.filters:
        if key not in columns and _FILTER_ALIASES.get(key) not in columns:
            raise ConfigError(f"--filter column {key!r} is not in {source.label} (columns: {listing})")


# -- results --------------------------------------------------------------------------------------


def _record(task: RowTask, verdict: Verdict | None) -> dict[str, Any]:
    if verdict is None:
        outcome, reason, tests, coverage, duration = "invalid", task.problem, [], None, 0.0
    else:
        outcome = "pass" if verdict.passed else "fail"
        reason, coverage, duration = verdict.reason, verdict.coverage, round(verdict.duration_s, 4)
        tests = [{"name": t.name, "outcome": t.outcome, **({"message": t.message} if t.message else {})}
                 for t in verdict.tests]
    recorded = None if task.recorded is None else ("pass" if task.recorded else "fail")
    return {"id": task.id, "index": task.index, "verdict": outcome, "passed": outcome == "pass", "reason": reason,
            "tests": tests, "coverage": coverage, "duration_s": duration, "entry_point": task.entry_point,
            "recorded": recorded, "disagrees": recorded is not None and (recorded == "pass") != (outcome == "pass")}


def _reason_kind(reason: str) -> str:
    """Reasons grouped for counting: "failed: test_a, test_b" -> "failed"; module names are kept."""
    if reason.startswith("missing module"):
        return reason
    return reason.split(":", 1)[0]


def _likely_cause(record: dict[str, Any]) -> str:
    reason = record.get("reason") or ""
    if record["verdict"] == "pass":
        return "passes here"
    if record["verdict"] == "invalid":
        return "invalid row"
    if reason.startswith(("missing module", "timeout", "memory")):
        return "environment"
    if reason.startswith("pytest rules"):
        return "environment differs (a rule of this pytest version)"
    if reason.startswith("tampering"):
        return "fake pass (tampering)"
    if reason.startswith(("failed", "missing tests")):
        return "tests fail"
    return "does not run"


def load_done(out: Path) -> dict[str, dict[str, Any]]:
    """Rows already in `out`, by id; a trailing partial line (a kill mid-write) is cut off first."""
    if not out.exists():
        return {}
    try:
        data = out.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {out}: {exc.strerror}") from None
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        with out.open("r+b") as handle:
            handle.truncate(complete)
    done: dict[str, dict[str, Any]] = {}
    for line in data[:complete].splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            raise ConfigError(f"{out} is not a kodcode.verify output (a line is not JSON)") from None
        if not isinstance(record, dict) or "id" not in record or "verdict" not in record:
            raise ConfigError(f"{out} is not a kodcode.verify output (a line has no id/verdict)")
        done[str(record["id"])] = record
    return done


class _ResultFile:
    """Appends each record as one write of one complete line, so readers and resumes never see half."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror}") from None

    def write(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, data)
        while written < len(data):          # regular files take it whole; this is for the odd FS that doesn't
            written += os.write(self._fd, data[written:])

    def close(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)


# -- progress -------------------------------------------------------------------------------------


class _Progress:
    """A rich bar on a terminal; plain periodic lines on stderr otherwise (CI logs, pipes)."""

    def __init__(self, total: int | None, done: int, stream: TextIO) -> None:
        self._total, self._done, self._stream = total, done, stream
        self._counts: Counter[str] = Counter()
        self._resumed = 0
        self._started = time.monotonic()
        self._last_line = self._started
        self._bar = None
        if stream.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bar = Progress(TextColumn("verify"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=Console(file=stream), transient=False)
            self._task = self._bar.add_task("verify", total=total, completed=done, counts="")
            self._bar.start()

    def advance(self, verdict: str, resumed: bool = False) -> None:
        self._done += 1
        self._counts[verdict] += 1
        self._resumed += resumed
        if self._bar is not None:
            counts = " ".join(f"{n} {v}" for v, n in sorted(self._counts.items()))
            self._bar.update(self._task, advance=1, counts=counts)
            return
        if time.monotonic() - self._last_line >= 10.0:
            self._line()

    def _line(self) -> None:
        now = self._last_line = time.monotonic()
        counts = " ".join(f"{n} {v}" for v, n in sorted(self._counts.items()))
        rate = (sum(self._counts.values()) - self._resumed) / max(now - self._started, 1e-9)
        of = f"/{self._total}" if self._total is not None else ""
        print(f"verify: {self._done}{of} rows ({counts}) {rate:.1f} rows/s", file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._done:
            self._line()


# -- the run --------------------------------------------------------------------------------------


def _limits(timeout_s: float, test_cpu_s: float | None = _DEFAULT_TEST_CPU_S) -> Limits:
    """KodCode's harness limits only the whole file's wall time (30 s); so does this, per file.

    A per-test *wall* limit below it would fail rows KodCode passed on a loaded machine. What ends
    hung solutions sooner is a limit on each test's CPU time (default 10 s): an infinite loop uses CPU
    time as fast as the machine allows, while load, which stretches wall time, does not add to it. The
    slowest legitimately passing real trial seen took about 7 s of wall time on a loaded 2-core machine,
    so at most 7 s of CPU time (single-threaded) for the whole file: 10 s for a single test sits above
    it. The first test out of time also ends its file. Sleeping hangs still run to the wall limit.
    """
    cpu = test_cpu_s if test_cpu_s and test_cpu_s < timeout_s else None
    return Limits(wall_s=timeout_s, per_test_s=timeout_s, per_test_cpu_s=cpu, cpu_s=max(10, math.ceil(timeout_s)))


def resolve_prelude(choice: str) -> tuple[str, str]:
    """The text to put above each test file, and how the summary names it: kodcode, none or FILE."""
    if choice == "kodcode":
        return KODCODE_PRELUDE, "kodcode (`from solution import *` above each test file, as KodCode's harness)"
    if choice == "none":
        return "", "none (test files run as they are)"
    path = Path(choice)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ConfigError(f"--test-prelude {choice!r} is not kodcode, none or a readable file ({detail})") from None
    if text and not text.endswith("\n"):
        text += "\n"
    return text, f"file {path.name} above each test file"


def _expected_total(source: InputSource, options: VerifyOptions) -> int | None:
    if options.filters:
        return options.sample if options.sample is not None and options.limit is None else options.limit
    count = source.count
    bounds = [b for b in (count, options.sample, options.limit) if b is not None]
    return min(bounds) if bounds else None


async def verify(options: VerifyOptions, progress_stream: TextIO | None = None) -> Summary:
    """Verify every selected row not already in `options.out`; returns totals over all selected rows."""
    if options.timeout_s <= 0:
        raise ConfigError("--timeout must be positive")
    if options.test_cpu_s is not None and options.test_cpu_s < 0:
        raise ConfigError("--test-cpu-limit must be 0 (off) or positive")
    source = open_input(options.input, options.split)
    _check_columns(source, options)
    prelude, prelude_label = resolve_prelude(options.test_prelude)
    done = load_done(options.out)
    summary = Summary(test_prelude=prelude_label)
    results = _ResultFile(options.out)
    progress = _Progress(_expected_total(source, options), 0, progress_stream or sys.stderr)
    limits = _limits(options.timeout_s, options.test_cpu_s)
    send, receive = anyio.create_memory_object_stream[RowTask](options.workers or os.cpu_count() or 1)

    def finish(task: RowTask, verdict: Verdict | None) -> None:
        record = _record(task, verdict)
        results.write(record)
        summary.add(record)
        progress.advance(record["verdict"])

    async def produce() -> None:
        async with send:
            for task in select_rows(source, options):
                summary.selected += 1
                if task.id in done:
                    summary.resumed += 1
                    summary.add(done[task.id])
                    progress.advance(done[task.id]["verdict"], resumed=True)
                elif task.problem is not None:
                    finish(task, None)
                else:
                    await send.send(task)

    async def consume(sandbox: Any, inbox: Any) -> None:
        async with inbox:
            async for task in inbox:
                finish(task, await sandbox.run(task.solution, prelude + task.tests, limits))

    try:
        async with open_sandbox(workers=options.workers, isolation=options.isolation, limits=limits,
                                backend=options.sandbox, ray_address=options.ray_address) as sandbox:
            try:
                async with anyio.create_task_group() as tg:
                    for _ in range(sandbox.workers):
                        tg.start_soon(consume, sandbox, receive.clone())
                    receive.close()
                    tg.start_soon(produce)
            except* KodcodeError as group:
                raise group.exceptions[0] from None
    finally:
        progress.close()
        results.close()
    return summary


# -- command line ---------------------------------------------------------------------------------


def _parse_filters(specs: list[str]) -> tuple[tuple[str, frozenset[str]], ...]:
    filters = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ConfigError(f"--filter {spec!r} is not COLUMN=VALUE[,VALUE...]")
        key = key.strip()
        filters.append((key, frozenset(v.strip().lower() for v in values.split(","))))
    return tuple(filters)


def _options(args: argparse.Namespace) -> VerifyOptions:
    defaults = FieldMap()
    fields = FieldMap(
        solution=(args.solution_field,) if args.solution_field else defaults.solution,
        test=(args.test_field,) if args.test_field else defaults.test,
        id=(args.id_field,) if args.id_field else defaults.id,
        entry=(args.entry_field,) if args.entry_field else defaults.entry,
        recorded=(args.recorded_field,) if args.recorded_field else defaults.recorded,
    )
    filters = _parse_filters(args.filter)
    for name, value in (("--sample", args.sample), ("--limit", args.limit), ("--workers", args.workers)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1")
    return VerifyOptions(input=args.input, out=args.out, fields=fields, filters=filters, sample=args.sample,
                         seed=args.seed, limit=args.limit, timeout_s=args.timeout, workers=args.workers,
                         isolation=not args.unsafe_no_isolation, split=args.split, test_prelude=args.test_prelude,
                         test_cpu_s=args.test_cpu_limit or None, sandbox=args.sandbox, ray_address=args.ray_address)


def _print_summary(summary: Summary, out: Path, stream: TextIO) -> None:
    verdicts = ", ".join(f"{summary.verdicts[v]} {v}" for v in ("pass", "fail", "invalid"))
    resumed = f" ({summary.resumed} from an earlier run)" if summary.resumed else ""
    print(f"verified {summary.selected} rows{resumed}: {verdicts}; details in {out}", file=stream)
    print(f"test prelude: {summary.test_prelude}", file=stream)
    if summary.reasons:
        print("reasons: " + ", ".join(f"{reason} {n}" for reason, n in summary.reasons.most_common()), file=stream)
    if summary.with_recorded == 0:
        print("the input records no verdicts to compare with", file=stream)
        return
    print(f"{len(summary.disagreements)} of {summary.with_recorded} recorded verdicts disagree", file=stream)
    for row in summary.disagreements:
        print(f"  {row['id']}: recorded {row['recorded']}, here {row['verdict']}"
              f"{': ' + row['reason'] if row['reason'] else ''} [{row['likely']}]", file=stream)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kodcode.verify",
        description="Re-verify a KodCode-format dataset (JSONL, Parquet, Arrow or a datasets.save_to_disk "
                    "directory) in the sandbox and report where recorded verdicts disagree.")
    parser.add_argument("input", type=Path, help="dataset file or directory")
    parser.add_argument("--out", type=Path, required=True, help="per-row verdicts (JSONL); rows already there are skipped")
    parser.add_argument("--split", help="split of a DatasetDict directory (default: train, or the only one)")
    parser.add_argument("--workers", type=int, help="rows run in parallel (default: one per CPU)")
    parser.add_argument("--timeout", type=float, default=_DEFAULT_TIMEOUT_S,
                        help=f"seconds per test file (default {_DEFAULT_TIMEOUT_S:g}, as KodCode's harness)")
    parser.add_argument("--test-cpu-limit", type=float, default=_DEFAULT_TEST_CPU_S, metavar="SECONDS",
                        help=f"CPU seconds one test may use before it counts as hung and its file stops "
                             f"(default {_DEFAULT_TEST_CPU_S:g}; 0: only --timeout per file, as KodCode's harness)")
    parser.add_argument("--limit", type=int, help="verify at most this many selected rows")
    parser.add_argument("--sample", type=int, help="a seeded random sample of this many rows")
    parser.add_argument("--seed", type=int, default=0, help="seed for --sample (default 0)")
    parser.add_argument("--filter", action="append", default=[], metavar="COLUMN=VALUE[,VALUE]",
                        help="keep rows whose column matches (case-insensitive); repeat to AND; "
                             "difficulty means gpt_difficulty")
    parser.add_argument("--solution-field", help="column holding the solution (default: solution)")
    parser.add_argument("--test-field", help="column holding the pytest file (default: test, then test_code)")
    parser.add_argument("--id-field", help="column holding the row id (default: question_id, task_id, ...)")
    parser.add_argument("--entry-field", help="column holding the entry point (default: test_info, ...)")
    parser.add_argument("--recorded-field", help="column holding the recorded verdict "
                                                 "(default: verdict, passed, gpt_pass_sequence + chosen_trial)")
    parser.add_argument("--test-prelude", default="kodcode", metavar="kodcode|none|FILE",
                        help="what goes above every test file: kodcode (default) writes `from solution import *` "
                             "as KodCode's harness did; none runs the files as they are; FILE puts its text there")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--unsafe-no-isolation", action="store_true",
                        help="run untrusted code WITHOUT bubblewrap (only where bubblewrap cannot run)")
    parser.add_argument("--sandbox", choices=("local", "ray"), default="local",
                        help="local fork servers (default) or worker actors on a Ray cluster "
                             "(then --workers counts fork servers per node)")
    parser.add_argument("--ray-address", help="Ray cluster for --sandbox ray (default: RAY_ADDRESS, else a local one)")
    return parser


class _Stderr:
    """Whatever sys.stderr is at each write (tests swap it), for the log's console."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def main(argv: list[str] | None = None) -> int:
    """Exit 0 once every selected row is in --out (whatever the verdicts), 2 on unusable input, 130 on Ctrl-C."""
    args = _parser().parse_args(argv)
    # Warnings (a slow machine, running unisolated) go to stderr: stdout carries the summary (--json).
    configure_logging(None, console_level="warning", console=_Stderr())
    try:
        options = _options(args)
        summary = anyio.run(verify, options)
    except KodcodeError as exc:
        print(f"kodcode: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kodcode: interrupted; finished rows are in {args.out}, rerun the same command to resume",
              file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps({"out": str(args.out), **summary.as_dict()}, ensure_ascii=False))
    else:
        _print_summary(summary, args.out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Turning what the fork server observed into a Verdict, on the trusted side."""

from __future__ import annotations

import json
import re
import signal

from kodcode.sandbox.base import TestOutcome, Verdict

__all__ = ["PHASES", "decide", "task_phases"]

# Where one task's time goes, in order: fork (server forks until the child runs), setup (limits, task
# files, fds), collection (importing the tests and solution), run (the tests), coverage (starting,
# stopping and measuring it), teardown (ending the pytest session, the last record), wait (the child's
# exit until it is reaped) and cleanup (the server's sweep of leftover processes and files).
PHASES = ("fork", "setup", "collection", "run", "coverage", "teardown", "wait", "cleanup")

_MISSING_MODULE = re.compile(r"No module named '([\w.]+)'")
_MAX_LISTED = 5


def _parse_records(report: str, nonce: str) -> list[dict]:
    records = []
    for line in report.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("nonce") == nonce:
            records.append(record)
    return records


_NOT_RUN = ("skipped", "xfailed")
# Rules of pytest itself that changed between versions: a row that trips one was written for another
# pytest (KodCode used 8.3), so "environment differs" rather than "the row is wrong". pytest 9 rejects
# a generator named test_* (even one imported: `from heapq import merge as test_merge`), which 8.x
# skipped; async tests without a plugin fail since 8.4 and were skipped before.
_PYTEST_RULES = ("'yield' keyword is allowed in fixtures, but not in tests", "yield tests were removed",
                 "async def functions are not natively supported")


def _pytest_rule(text: str) -> str | None:
    return next((rule for rule in _PYTEST_RULES if rule in text), None)


def _failure_reason(bad: list[TestOutcome]) -> str:
    if all(t.outcome in _NOT_RUN for t in bad):
        # Skipped or expected to fail: pytest's rc would be 0, but the test never showed it passes.
        names = list(dict.fromkeys(t.name.split("[")[0] for t in bad))
        return f"skipped: {', '.join(names[:_MAX_LISTED])}" + (", ..." if len(names) > _MAX_LISTED else "")
    bad = [t for t in bad if t.outcome not in _NOT_RUN]
    messages = " ".join(t.message for t in bad)
    rules = {_pytest_rule(t.message) for t in bad}
    if None not in rules:
        return f"pytest rules: {sorted(rules)[0]}"
    if "MemoryError" in messages:
        return "memory"
    if all("PerTestTimeout" in t.message for t in bad):
        return "timeout"
    missing = _MISSING_MODULE.search(messages)
    if missing and all("ModuleNotFoundError" in t.message for t in bad):
        return f"missing module: {missing.group(1).split('.')[0]}"
    names = list(dict.fromkeys(t.name.split("[")[0] for t in bad))
    listed = ", ".join(names[:_MAX_LISTED]) + (", ..." if len(names) > _MAX_LISTED else "")
    return f"failed: {listed}"


def _crash_reason(exit_code: int) -> str:
    if exit_code == -signal.SIGXCPU:
        return "timeout"
    return "crashed"


def task_phases(answer: dict, end: dict | None) -> dict[str, float]:
    """Seconds per phase (see PHASES), plus the child's minor page faults as `minflt`.

    The child's own phases come from its end record: the child could forge them, so they are for
    diagnosis only and never feed a verdict. A child that sent no end record shows only wait and cleanup.
    """
    timing = answer.get("timing")
    if not isinstance(timing, dict):
        return {}
    try:
        started, reaped, cleaned = (float(timing[k]) for k in ("started", "reaped", "cleaned"))
    except (KeyError, TypeError, ValueError):
        return {}
    phases: dict[str, float] = {}
    child = end.get("phases") if end else None
    last = started
    if isinstance(child, dict):
        for name in PHASES[:6]:
            value = child.get(name)
            if isinstance(value, (int, float)) and value >= 0:
                phases[name] = float(value)
        t_end = child.get("t_end")
        if isinstance(t_end, (int, float)) and started <= t_end <= reaped:
            last = float(t_end)
    phases["wait"] = reaped - last
    phases["cleanup"] = cleaned - reaped
    if isinstance(timing.get("minflt"), int):
        phases["minflt"] = float(timing["minflt"])
    return phases


def decide(expected: tuple[str, ...], answer: dict, nonce: str) -> Verdict:
    """Pass only if every expected test ran and passed, the sentinel arrived and the child exited cleanly."""
    records = _parse_records(answer.get("report", ""), nonce)
    tail = answer.get("output_tail", "")
    duration = float(answer.get("duration_s", 0.0))
    ends = [r for r in records if r.get("t") == "end"]
    ran = [r for r in records if r.get("t") == "test"]
    outcomes: list[TestOutcome] = [
        TestOutcome(name=str(r.get("item", r.get("name", "?"))), outcome=str(r.get("outcome", "error")),
                    message=str(r.get("msg", ""))[:300])
        for r in ran
    ]
    by_func: dict[str, list[str]] = {}
    for r in ran:
        by_func.setdefault(str(r.get("func")), []).append(str(r.get("outcome")))
    for name in expected:
        if name not in by_func:
            outcomes.append(TestOutcome(name=name, outcome="missing"))
    coverage = ends[-1].get("coverage") if ends else None
    coverage = float(coverage) if isinstance(coverage, (int, float)) else None

    def verdict(passed: bool, reason: str | None) -> Verdict:
        return Verdict(passed=passed, reason=reason, tests=tuple(outcomes), coverage=coverage,
                       duration_s=duration, output_tail=tail,
                       extra={"survivors": int(answer.get("survivors", 0)),
                              "phases": task_phases(answer, ends[-1] if ends else None)})

    if answer.get("timed_out"):
        return verdict(False, "timeout")
    collect_errors = [str(r.get("msg", "")) for r in records if r.get("t") == "collect_error"]
    if collect_errors:
        text = collect_errors[0]
        missing = _MISSING_MODULE.search(text)
        if missing and "ModuleNotFoundError" in text:
            return verdict(False, f"missing module: {missing.group(1).split('.')[0]}")
        if "MemoryError" in text:
            return verdict(False, "memory")
        last = (text.strip().splitlines() or ["unknown"])[-1].strip()
        if _pytest_rule(text) is not None:
            return verdict(False, f"pytest rules: {last[:200]}")
        last = (text.strip().splitlines() or ["unknown"])[-1].strip()
        return verdict(False, f"collection error: {last[:200]}")
    exit_code = int(answer.get("exit_code", -1))
    bad = [t for t in outcomes if t.outcome not in ("passed", "missing")]
    if bad:
        return verdict(False, _failure_reason(bad))
    if exit_code != 0:
        return verdict(False, _crash_reason(exit_code))
    if not ends or answer.get("report_truncated"):
        return verdict(False, "crashed")
    if not ran:
        code = ends[-1].get("exit")
        return verdict(False, "no tests" if code in (0, 5) else f"collection error: pytest exit status {code}")
    missing = [t for t in outcomes if t.outcome == "missing"]
    if missing:
        return verdict(False, "missing tests: " + ", ".join(t.name for t in missing[:_MAX_LISTED]))
    if ends[-1].get("exit") != 0:
        return verdict(False, f"pytest exit status {ends[-1].get('exit')}")
    return verdict(True, None)

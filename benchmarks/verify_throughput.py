"""Rows per second re-verifying a dataset: `python -m kodcode.verify` against one fresh `pytest` process
per row (KodCode's harness: `timeout 30 pytest --cov=solution`, parallel = CPU count), side by side.

Rows are HumanEval problems repeated under fresh ids, with a share of slow rows (an extra test that
sleeps 1 s), failing rows (a planted bug), a few hung rows (the solution loops forever, as ~2% of real
KodCode trials do), and a few legitimately CPU-heavy rows (a test that computes for --heavy-s seconds
and passes), written as KodCode-V1 JSON lines.

kodcode.verify runs twice: with KodCode's time policy (`--test-cpu-limit 0`: 30 s of wall time per
file, which every hung row uses up) and with the default one (a CPU-time limit per test, see
kodcode.verify._limits); verdicts must agree with the pytest-per-row baseline either way.

    .venv/bin/python benchmarks/verify_throughput.py [--rows 1000] [--slow 0.05] [--failing 0.1] [--hangs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kodcode.sandbox import bwrap_available
from kodcode.sandbox.humaneval import humaneval_triplets, plant_bug

__all__ = ["main"]

_SLOW_TEST = "\n\ndef test_takes_a_second():\n    import time\n    time.sleep(1)\n"
_HANG = "\n\ndef _kodcode_hang():\n    while True:\n        pass\n"
_HEAVY_TEST = ("\n\ndef test_heavy_but_fine():\n    import time\n    end = time.process_time() + {seconds}\n"
               "    n = 0\n    while time.process_time() < end:\n        n += 1\n    assert n > 0\n")


def _hung(solution: str, entry_point: str) -> str:
    """The solution, with its entry point looping forever before it would return."""
    return solution + _HANG + f"\n\n_kodcode_real = {entry_point}\n\n\ndef {entry_point}(*args, **kwargs):\n    _kodcode_hang()\n"


def make_rows(count: int, slow_share: float, failing_share: float, hangs: int = 0, heavy: int = 0,
              heavy_s: float = 5.0) -> list[dict[str, Any]]:
    """Deterministic mix: every 1/slow_share-th row is slow, every 1/failing_share-th row fails; `hangs`
    rows spread evenly hang, and `heavy` rows compute for heavy_s CPU seconds in one test and pass."""
    triplets = humaneval_triplets()
    slow_every = round(1 / slow_share) if slow_share > 0 else 0
    failing_every = round(1 / failing_share) if failing_share > 0 else 0
    rows = []
    for i in range(count):
        t = triplets[i % len(triplets)]
        failing = failing_every and i % failing_every == failing_every - 1
        slow = slow_every and i % slow_every == slow_every // 2
        hung = hangs and i % max(1, count // hangs) == 1 and i // max(1, count // hangs) < hangs
        heavy_row = heavy and i % max(1, count // heavy) == 3 and i // max(1, count // heavy) < heavy
        solution = plant_bug(t.solution, t.entry_point) if failing else t.solution
        if hung:
            solution = _hung(t.solution, t.entry_point)
        tests = t.tests + (_SLOW_TEST if slow else "") + (_HEAVY_TEST.format(seconds=heavy_s) if heavy_row else "")
        rows.append({"question_id": f"{t.task_id}/r{i}", "subset": "HumanEval",
                     "solution": solution,
                     "test": tests,
                     "test_info": [{"function_name": t.entry_point}],
                     "gpt_pass_sequence": [1], "chosen_trial": "trial_gpt4o_0"})
    return rows


def held_s(out: Path, ids: set[str]) -> float:
    """Mean seconds a slot was held by the rows in `ids` (their duration_s in kodcode.verify's output)."""
    durations = [r["duration_s"] for r in map(json.loads, out.read_text(encoding="utf-8").splitlines()) if r["id"] in ids]
    return sum(durations) / len(durations) if durations else 0.0


def run_verify(data: Path, out: Path, workers: int, extra: tuple[str, ...] = ()) -> tuple[float, dict[str, bool]]:
    argv = [sys.executable, "-m", "kodcode.verify", str(data), "--out", str(out), "--json",
            "--workers", str(workers), *extra]
    if not bwrap_available():
        argv.append("--unsafe-no-isolation")
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"kodcode.verify failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    verdicts = {}
    for line in out.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        verdicts[record["id"]] = record["passed"]
    return elapsed, verdicts


def run_pytest_per_row(rows: list[dict[str, Any]], root: Path, workers: int) -> tuple[float, dict[str, bool]]:
    """What KodCode's harness does per trial: `from solution import *` above the tests, a fresh dir,
    `timeout 30 pytest --cov=solution`, rc 0 = pass."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_DISABLE_PLUGIN_AUTOLOAD"}

    def one(index: int) -> tuple[str, bool]:
        row = rows[index]
        trial = root / f"trial-{index}"
        trial.mkdir()
        (trial / "solution.py").write_text(row["solution"], encoding="utf-8")
        (trial / "test_solution.py").write_text("from solution import *\n" + row["test"], encoding="utf-8")
        proc = subprocess.run(["timeout", "--kill-after=5s", "30", sys.executable, "-m", "pytest", "--rootdir=.",
                               "-q", "-p", "no:cacheprovider", "--cov=solution", "--cov-report", "term",
                               "test_solution.py"], cwd=trial, env=env, capture_output=True)
        return row["question_id"], proc.returncode == 0

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        verdicts = dict(pool.map(one, range(len(rows))))
    return time.monotonic() - started, verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--slow", type=float, default=0.05, help="share of rows with a 1 s test (default 0.05)")
    parser.add_argument("--failing", type=float, default=0.10, help="share of rows with a planted bug (default 0.1)")
    parser.add_argument("--hangs", type=int, default=4, help="rows whose solution loops forever (default 4)")
    parser.add_argument("--heavy", type=int, default=2, help="rows with a CPU-heavy passing test (default 2)")
    parser.add_argument("--heavy-s", type=float, default=5.0, help="CPU seconds of that test (default 5)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="both sides (default: CPU count)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the pytest-per-row side")
    args = parser.parse_args(argv)

    rows = make_rows(args.rows, args.slow, args.failing, args.hangs, args.heavy, args.heavy_s)
    slow = sum("test_takes_a_second" in r["test"] for r in rows)
    failing = sum("_kodcode_corrupt" in r["solution"] for r in rows)
    hung = sum("_kodcode_hang" in r["solution"] for r in rows)
    heavy = sum("test_heavy_but_fine" in r["test"] for r in rows)
    print(f"{len(rows)} rows ({slow} slow, {failing} failing, {hung} hung, {heavy} CPU-heavy), {args.workers} workers, "
          f"isolation={'bubblewrap' if bwrap_available() else 'none'}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="kodcode-verify-bench-") as tmp:
        root = Path(tmp)
        data = root / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        hung_ids = {r["question_id"] for r in rows if "_kodcode_hang" in r["solution"]}
        wall_s, wall_only = run_verify(data, root / "wall.jsonl", args.workers, ("--test-cpu-limit", "0"))
        wall_held = held_s(root / "wall.jsonl", hung_ids)
        verify_s, ours = run_verify(data, root / "verdicts.jsonl", args.workers)
        cpu_held = held_s(root / "verdicts.jsonl", hung_ids)
        theirs: dict[str, bool] | None = None
        if not args.no_baseline:
            baseline_dir = root / "pytest"
            baseline_dir.mkdir()
            pytest_s, theirs = run_pytest_per_row(rows, baseline_dir, args.workers)

    n = len(rows)
    print(f"kodcode.verify, wall per file only  {wall_s:8.1f} s  {n / wall_s:7.2f} rows/s  ({sum(wall_only.values())} pass)")
    print(f"kodcode.verify, CPU limit per test  {verify_s:8.1f} s  {n / verify_s:7.2f} rows/s  ({sum(ours.values())} pass)")
    print(f"time policies agree on {sum(ours[k] == v for k, v in wall_only.items())}/{n} rows; "
          f"CPU limit per test is {wall_s / verify_s:.2f}x faster; a hung row held its slot "
          f"{wall_held:.1f} s vs {cpu_held:.1f} s (load now {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    if theirs is not None:
        agree = sum(ours.get(key) == value for key, value in theirs.items())
        print(f"pytest per row                      {pytest_s:8.1f} s  {n / pytest_s:7.2f} rows/s  ({sum(theirs.values())} pass)")
        print(f"ratio                               {pytest_s / verify_s:8.2f}x  (verdicts agree on {agree}/{n} rows)")
        for key, value in theirs.items():
            if ours.get(key) != value:
                kind = ("hung" if key in hung_ids else "CPU-heavy" if any(r["question_id"] == key and "test_heavy_but_fine"
                                                                         in r["test"] for r in rows) else "other")
                print(f"  differs: {key} ({kind}): pytest per row {'pass' if value else 'fail'}, "
                      f"kodcode.verify {'pass' if ours.get(key) else 'fail'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

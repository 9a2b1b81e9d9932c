"""Rows per second re-verifying a dataset: `python -m kodcode.verify` against one fresh `pytest` process
per row (KodCode's harness: `timeout 30 pytest --cov=solution`, parallel = CPU count), side by side.

Rows are HumanEval problems repeated under fresh ids, with a share of slow rows (an extra test that
sleeps 1 s) and failing rows (a planted bug), written as KodCode-V1 JSON lines.

    .venv/bin/python benchmarks/verify_throughput.py [--rows 1000] [--slow 0.05] [--failing 0.1]
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


def make_rows(count: int, slow_share: float, failing_share: float) -> list[dict[str, Any]]:
    """Deterministic mix: every 1/slow_share-th row is slow, every 1/failing_share-th row fails."""
    triplets = humaneval_triplets()
    slow_every = round(1 / slow_share) if slow_share > 0 else 0
    failing_every = round(1 / failing_share) if failing_share > 0 else 0
    rows = []
    for i in range(count):
        t = triplets[i % len(triplets)]
        failing = failing_every and i % failing_every == failing_every - 1
        slow = slow_every and i % slow_every == slow_every // 2
        rows.append({"question_id": f"{t.task_id}/r{i}", "subset": "HumanEval",
                     "solution": plant_bug(t.solution, t.entry_point) if failing else t.solution,
                     "test": t.tests + (_SLOW_TEST if slow else ""),
                     "test_info": [{"function_name": t.entry_point}],
                     "gpt_pass_sequence": [1], "chosen_trial": "trial_gpt4o_0"})
    return rows


def run_verify(data: Path, out: Path, workers: int) -> tuple[float, dict[str, bool]]:
    argv = [sys.executable, "-m", "kodcode.verify", str(data), "--out", str(out), "--json",
            "--workers", str(workers)]
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
    """What KodCode's run_test.sh does per trial: a fresh dir, `timeout 30 pytest --cov=solution`, rc 0 = pass."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_DISABLE_PLUGIN_AUTOLOAD"}

    def one(index: int) -> tuple[str, bool]:
        row = rows[index]
        trial = root / f"trial-{index}"
        trial.mkdir()
        (trial / "solution.py").write_text(row["solution"], encoding="utf-8")
        (trial / "test_solution.py").write_text(row["test"], encoding="utf-8")
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
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="both sides (default: CPU count)")
    args = parser.parse_args(argv)

    rows = make_rows(args.rows, args.slow, args.failing)
    slow = sum("test_takes_a_second" in r["test"] for r in rows)
    failing = sum("_kodcode_corrupt" in r["solution"] for r in rows)
    print(f"{len(rows)} rows ({slow} slow, {failing} failing), {args.workers} workers, "
          f"isolation={'bubblewrap' if bwrap_available() else 'none'}")
    with tempfile.TemporaryDirectory(prefix="kodcode-verify-bench-") as tmp:
        root = Path(tmp)
        data = root / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        verify_s, ours = run_verify(data, root / "verdicts.jsonl", args.workers)
        baseline_dir = root / "pytest"
        baseline_dir.mkdir()
        pytest_s, theirs = run_pytest_per_row(rows, baseline_dir, args.workers)

    ours_rate, theirs_rate = len(rows) / verify_s, len(rows) / pytest_s
    agree = sum(ours.get(key) == value for key, value in theirs.items())
    print(f"kodcode.verify        {verify_s:8.1f} s  {ours_rate:7.2f} rows/s  ({sum(ours.values())} pass)")
    print(f"pytest per row        {pytest_s:8.1f} s  {theirs_rate:7.2f} rows/s  ({sum(theirs.values())} pass)")
    print(f"ratio                 {ours_rate / theirs_rate:8.2f}x  (verdicts agree on {agree}/{len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

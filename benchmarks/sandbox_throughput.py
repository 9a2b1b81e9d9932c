"""HumanEval triplets per second: KodCode's harness (one `timeout 30 pytest --cov=solution` per trial,
`parallel -j nproc`) against kodcode's fork-server sandbox with bubblewrap isolation, side by side.

    .venv/bin/python benchmarks/sandbox_throughput.py [--limit N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio

from kodcode.sandbox import open_sandbox
from kodcode.sandbox.humaneval import HumanEvalTriplet, humaneval_triplets

__all__ = ["main"]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_paper_harness(triplets: list[HumanEvalTriplet]) -> tuple[list[bool], list[float], float]:
    """What run_test.sh does per trial: a fresh dir and `timeout 30 pytest --cov=solution`, rc 0 = pass."""
    root = Path(tempfile.mkdtemp(prefix="kodcode-paper-"))
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_DISABLE_PLUGIN_AUTOLOAD"}

    def one(index: int) -> tuple[bool, float]:
        trial = root / f"trial-{index}"
        trial.mkdir()
        (trial / "solution.py").write_text(triplets[index].solution)
        (trial / "test_solution.py").write_text(triplets[index].tests)
        started = time.monotonic()
        done = subprocess.run(["timeout", "--kill-after=5s", "30", sys.executable, "-m", "pytest",
                               "--cov=solution", "test_solution.py"],
                              cwd=trial, env=env, capture_output=True)
        return done.returncode == 0, time.monotonic() - started

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(one, range(len(triplets))))
    elapsed = time.monotonic() - started
    subprocess.run(["rm", "-rf", str(root)], check=False)
    return [r[0] for r in results], [r[1] for r in results], elapsed


async def run_sandbox(triplets: list[HumanEvalTriplet]) -> tuple[list[bool], list[float], float]:
    passed: list[bool] = [False] * len(triplets)
    latencies: list[float] = [0.0] * len(triplets)
    async with open_sandbox(isolation=True) as sb:
        async def one(index: int) -> None:
            t0 = time.monotonic()
            verdict = await sb.run(triplets[index].solution, triplets[index].tests)
            passed[index], latencies[index] = verdict.passed, time.monotonic() - t0

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for index in range(len(triplets)):
                tg.start_soon(one, index)
        elapsed = time.monotonic() - started
    return passed, latencies, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="run only the first N HumanEval problems")
    args = parser.parse_args()
    triplets = humaneval_triplets()[: args.limit]
    n = len(triplets)
    print(f"{n} HumanEval triplets, {os.cpu_count()} CPUs")
    paper_pass, paper_lat, paper_s = run_paper_harness(triplets)
    box_pass, box_lat, box_s = anyio.run(run_sandbox, triplets)
    for label, passed, lat, secs in (("paper harness (pytest --cov per trial)", paper_pass, paper_lat, paper_s),
                                     ("kodcode sandbox (bwrap + fork server)", box_pass, box_lat, box_s)):
        print(f"{label:42s} {n / secs:7.2f} triplets/s  p50 {_percentile(lat, 0.5) * 1000:7.0f} ms  "
              f"p99 {_percentile(lat, 0.99) * 1000:7.0f} ms  passed {sum(passed)}/{n}  wall {secs:.1f} s")
    # Latency under a saturated queue includes waiting for a free server; the per-task cost is wall/n*workers.
    print(f"speed-up: {paper_s / box_s:.1f}x")
    print(f"identical verdicts: {paper_pass == box_pass}")


if __name__ == "__main__":
    main()

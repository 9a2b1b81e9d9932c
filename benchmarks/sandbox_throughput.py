"""HumanEval triplets per second: KodCode's harness (one `timeout 30 pytest --cov=solution` per trial,
`parallel -j nproc`) against kodcode's fork-server sandbox with bubblewrap isolation, side by side.

    .venv/bin/python benchmarks/sandbox_throughput.py [--limit N] [--rounds R] [--workers W]
    .venv/bin/python benchmarks/sandbox_throughput.py --sandbox ray [--ray-address HOST:PORT] [--limit N]

Beside the ratio it prints where a sandboxed task's time goes (median ms per phase: fork, setup,
collection, run, coverage, teardown, wait, cleanup) and its page faults, so a slow machine shows where it is slow.

Each round runs both sides on the same triplets, alternating which goes first, because the machine
may be shared: compare the ratios of one round, not absolute numbers across runs.
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
from typing import Any, NamedTuple

import anyio

from kodcode.sandbox import open_sandbox
from kodcode.sandbox.humaneval import HumanEvalTriplet, humaneval_triplets
from kodcode.sandbox.verdict import PHASES

__all__ = ["main"]

# KodCode's run_test.sh, `timeout --kill-after=5s 30 pytest --rootdir=. --cov=solution --cov-report term`,
# run in each trial directory by `parallel -j $(nproc)`.
_PAPER_TIMEOUT = ["timeout", "--kill-after=5s", "30"]
_PAPER_PYTEST_ARGS = ["--rootdir=.", "--cov=solution", "--cov-report", "term"]


class Side(NamedTuple):
    passed: list[bool]
    latencies: list[float]
    wall_s: float
    startup_s: float = 0.0
    phases: list[dict[str, float]] = []  # per task, sandbox side only (see kodcode.sandbox.verdict.PHASES)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_paper_harness(triplets: list[HumanEvalTriplet]) -> Side:
    """What run_test.sh does per trial: a fresh dir and `timeout 30 pytest --cov=solution`, rc 0 = pass."""
    root = Path(tempfile.mkdtemp(prefix="kodcode-paper-"))
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_DISABLE_PLUGIN_AUTOLOAD"}
    # The venv's pytest script, as `pytest` on PATH would be inside KodCode's test environment.
    command = [*_PAPER_TIMEOUT, str(Path(sys.executable).parent / "pytest"), *_PAPER_PYTEST_ARGS]

    def one(index: int) -> tuple[bool, float]:
        trial = root / f"trial-{index}"
        trial.mkdir()
        (trial / "solution.py").write_text(triplets[index].solution)
        (trial / "test_solution.py").write_text(triplets[index].tests)
        started = time.monotonic()
        done = subprocess.run(command, cwd=trial, env=env, capture_output=True)
        return done.returncode == 0, time.monotonic() - started

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(one, range(len(triplets))))
    elapsed = time.monotonic() - started
    subprocess.run(["rm", "-rf", str(root)], check=False)
    return Side([r[0] for r in results], [r[1] for r in results], elapsed)


async def run_sandbox(triplets: list[HumanEvalTriplet], workers: int | None) -> Side:
    passed: list[bool] = [False] * len(triplets)
    latencies: list[float] = [0.0] * len(triplets)
    phases: list[dict[str, float]] = [{} for _ in triplets]
    opened = time.monotonic()
    async with open_sandbox(isolation=True, workers=workers) as sb:
        async def one(index: int) -> None:
            t0 = time.monotonic()
            verdict = await sb.run(triplets[index].solution, triplets[index].tests)
            passed[index], latencies[index] = verdict.passed, time.monotonic() - t0
            phases[index] = verdict.extra.get("phases", {})

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for index in range(len(triplets)):
                tg.start_soon(one, index)
        elapsed = time.monotonic() - started
    return Side(passed, latencies, elapsed, started - opened, phases)


def _phase_line(side: Side) -> str:
    """Median ms per phase over the tasks, as measured in the children and the servers."""
    parts = []
    for name in (*PHASES, "total"):
        values = [sum(v for k, v in p.items() if k in PHASES) if name == "total" else p[name]
                  for p in side.phases if name in p or (name == "total" and p)]
        if values:
            parts.append(f"{name} {statistics.median(values) * 1000:.1f}")
    faults = [p["minflt"] for p in side.phases if "minflt" in p]
    if faults:
        parts.append(f"page faults {statistics.median(faults):.0f}")
    return "  per task (median ms): " + ", ".join(parts)


def _line(label: str, side: Side) -> str:
    n = len(side.passed)
    return (f"  {label:40s} {n / side.wall_s:7.2f} triplets/s  p50 {_percentile(side.latencies, 0.5) * 1000:6.0f} ms  "
            f"p99 {_percentile(side.latencies, 0.99) * 1000:6.0f} ms  passed {sum(side.passed)}/{n}  "
            f"wall {side.wall_s:.1f} s")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="run only the first N HumanEval problems")
    parser.add_argument("--rounds", type=int, default=1, help="repeat both sides, alternating their order")
    parser.add_argument("--workers", type=int, default=None, help="fork servers (default: the sandbox's, CPUs + 1)")
    parser.add_argument("--sandbox", choices=("local", "ray"), default="local",
                        help="ray: the local sandbox beside the Ray one (per-task overhead) instead of the paper's harness")
    parser.add_argument("--ray-address", default=None, help="Ray cluster (default: RAY_ADDRESS, else a local one)")
    args = parser.parse_args()
    triplets = humaneval_triplets()[: args.limit]
    if args.sandbox == "ray":
        return ray_main(triplets, args.rounds, args.workers, args.ray_address)
    n = len(triplets)
    print(f"{n} HumanEval triplets, {os.cpu_count()} CPUs ({_cpu_model()}), load {_load()}, {args.rounds} round(s)")
    ratios: list[float] = []
    identical = True
    for round_index in range(args.rounds):
        sides: dict[str, Side] = {}
        order = ("paper", "sandbox") if round_index % 2 == 0 else ("sandbox", "paper")
        for name in order:
            if name == "paper":
                sides[name] = run_paper_harness(triplets)
            else:
                sides[name] = anyio.run(run_sandbox, triplets, args.workers)
        paper, box = sides["paper"], sides["sandbox"]
        ratios.append(paper.wall_s / box.wall_s)
        identical = identical and paper.passed == box.passed
        print(f"round {round_index + 1} ({' then '.join(order)}):")
        print(_line("paper harness (pytest --cov per trial)", paper))
        # Latency under a saturated queue includes waiting for a free server.
        print(_line("kodcode sandbox (bwrap + fork server)", box) + f"  (+{box.startup_s:.1f} s pool start)")
        print(_phase_line(box))
        print(f"  speed-up: {ratios[-1]:.1f}x   identical verdicts: {paper.passed == box.passed}")
    if args.rounds > 1:
        print(f"speed-up per round: {', '.join(f'{r:.1f}x' for r in ratios)}; median {statistics.median(ratios):.1f}x")
    print(f"identical verdicts in every round: {identical}; load now {_load()}")


# -- --sandbox ray: the local fork-server pool beside the same pool behind Ray actors -----------------


async def _timed_runs(sb: Any, triplets: list[HumanEvalTriplet]) -> tuple[Side, float, list[float], list[float]]:
    """All triplets at once (throughput), the driver's CPU seconds meanwhile, 40 one at a time (latency),
    then 200 rejected before running (the round trip alone)."""
    passed: list[bool] = [False] * len(triplets)
    latencies: list[float] = [0.0] * len(triplets)

    async def one(index: int) -> None:
        t0 = time.monotonic()
        verdict = await sb.run(triplets[index].solution, triplets[index].tests)
        passed[index], latencies[index] = verdict.passed, time.monotonic() - t0

    cpu0, started = time.process_time(), time.monotonic()
    async with anyio.create_task_group() as tg:
        for index in range(len(triplets)):
            tg.start_soon(one, index)
    side = Side(passed, latencies, time.monotonic() - started)
    driver_cpu = time.process_time() - cpu0   # this process only: fork servers are other processes
    sequential = []
    for triplet in triplets[:40]:
        t0 = time.monotonic()
        await sb.run(triplet.solution, triplet.tests)
        sequential.append(time.monotonic() - t0)
    # A task the trusted side rejects before any fork server runs (a syntax error): what is left of its
    # latency is the path to the sandbox and back, which is where Ray adds its cost.
    rejected = []
    for _ in range(200):
        t0 = time.monotonic()
        await sb.run("def broken(:\n", triplets[0].tests)
        rejected.append(time.monotonic() - t0)
    return side, driver_cpu, sequential, rejected


async def _ray_round(triplets: list[HumanEvalTriplet], workers: int | None, address: str | None,
                     order: tuple[str, ...]) -> dict[str, tuple[Side, float, list[float], list[float]]]:
    results: dict[str, tuple[Side, float, list[float], list[float]]] = {}
    for name in order:
        opened = time.monotonic()
        async with open_sandbox(backend=name, ray_address=address, workers=workers) as sb:
            startup = time.monotonic() - opened
            side, cpu, sequential, rejected = await _timed_runs(sb, triplets)
            results[name] = (side._replace(startup_s=startup), cpu, sequential, rejected)
    return results


def ray_main(triplets: list[HumanEvalTriplet], rounds: int, workers: int | None, address: str | None) -> None:
    n = len(triplets)
    print(f"{n} HumanEval triplets, {os.cpu_count()} CPUs, Ray at {address or os.environ.get('RAY_ADDRESS') or 'a local cluster'}")
    for round_index in range(rounds):
        order = ("local", "ray") if round_index % 2 == 0 else ("ray", "local")
        results = anyio.run(_ray_round, triplets, workers, address, order)
        print(f"round {round_index + 1} ({' then '.join(order)}):")
        for name in ("local", "ray"):
            side, cpu, sequential, rejected = results[name]
            print(_line(f"{name} sandbox", side) + f"  (+{side.startup_s:.1f} s start)")
            print(f"  {'':40s} one at a time p50 {statistics.median(sequential) * 1000:6.1f} ms   "
                  f"driver CPU {cpu / n * 1000:5.2f} ms/task   rejected-task round trip p50 "
                  f"{statistics.median(rejected) * 1000:5.2f} ms")
        local, ray = results["local"], results["ray"]
        print(f"  per-task overhead of Ray: {(statistics.median(ray[3]) - statistics.median(local[3])) * 1000:+.2f} ms "
              f"round trip, {(statistics.median(ray[2]) - statistics.median(local[2])) * 1000:+.1f} ms "
              f"latency (one at a time), {(ray[0].wall_s - local[0].wall_s) / n * 1000:+.1f} ms of wall per task "
              f"(saturated), identical verdicts: {local[0].passed == ray[0].passed}")


if __name__ == "__main__":
    main()

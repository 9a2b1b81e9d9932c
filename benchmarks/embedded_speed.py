"""The embedded model's runtimes side by side: the prebuilt default (xllamacpp) vs a native llama-server build.

For each runtime, in one run of this script:
- generation tokens/s through the openai client with 1 request in flight and with --concurrency in flight
  (every request generates exactly --tokens tokens, so both do the same work);
- with --given FILE: the whole pipeline (`python -m kodcode.run --given FILE`, same seed, same flags) on the
  same questions: verified triplets, accuracy (verified / questions) and verified triplets per hour of
  pipeline time.

    .venv/bin/python benchmarks/embedded_speed.py [--native PATH] [--given benchmarks/data/given40.jsonl]
        [--questions 40] [--concurrency 4] [--tokens 200] [--rounds 1] [--variant 0.5b] [--runtimes default,native]

The native server is --native PATH (any llama-server binary), else the one `python -m kodcode.embedded
prepare --native` built for this CPU; without either, only the default runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from openai import AsyncOpenAI

from kodcode.models.files import default_cache_dir
from kodcode.models.llama_server import PREBUILT_RUNTIME, SERVER_BINARY_ENV, EmbeddedEndpoint, embedded_server
from kodcode.models.native_build import built_server_path

PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",
    "Write a Python function that checks whether a string is a palindrome, ignoring case and punctuation.",
    "Write a Python function that merges two sorted lists into one sorted list without using sort().",
    "Write a Python class implementing a stack with push, pop, peek and is_empty methods.",
    "Write a Python function that counts word frequencies in a text and returns the top k words.",
    "Write a Python function that flattens an arbitrarily nested list of integers.",
    "Write a Python function that parses an ISO date string and returns the weekday name.",
    "Write a Python function that finds the longest common prefix of a list of strings.",
]


@dataclass
class RuntimeResult:
    name: str
    runtime: str = ""
    one_in_flight: float = 0.0
    n_in_flight: float = 0.0
    questions: int = 0
    verified: int = 0
    pipeline_s: float = 0.0
    calls: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def verified_per_hour(self) -> float:
        return self.verified / self.pipeline_s * 3600 if self.pipeline_s else 0.0

    @property
    def accuracy(self) -> float:
        return self.verified / self.questions if self.questions else 0.0


async def one_request(client: AsyncOpenAI, endpoint: EmbeddedEndpoint, prompt: str, tokens: int) -> int:
    response = await client.chat.completions.create(
        model=endpoint.model, messages=[{"role": "user", "content": prompt}], max_tokens=tokens, temperature=0.3,
        seed=1, extra_body={"ignore_eos": True},   # exactly `tokens` tokens: both runtimes do the same work
    )
    assert response.usage is not None
    return response.usage.completion_tokens


async def generation_speed(binary: Path | None, variant: str, concurrency: int, tokens: int) -> tuple[str, float, float]:
    """(runtime, tok/s with 1 in flight, tok/s with `concurrency` in flight); binary None: the prebuilt runtime."""
    async with embedded_server(variant, concurrency=concurrency, server_binary=binary, prefer_native=False,
                               log_path=Path(tempfile.gettempdir()) / f"kodcode-speed.{os.getpid()}.log") as endpoint:
        client = AsyncOpenAI(base_url=endpoint.base_url, api_key="unused", timeout=1200)
        await one_request(client, endpoint, PROMPTS[0], 8)   # warm-up: page the weights in
        started = time.perf_counter()
        sequential = 0
        for index in range(concurrency):
            sequential += await one_request(client, endpoint, PROMPTS[index % len(PROMPTS)], tokens)
        one_rate = sequential / (time.perf_counter() - started)
        counts: list[int] = []

        async def run(prompt: str) -> None:
            counts.append(await one_request(client, endpoint, prompt, tokens))

        started = time.perf_counter()
        async with anyio.create_task_group() as task_group:
            for index in range(concurrency):
                task_group.start_soon(run, PROMPTS[index % len(PROMPTS)])
        n_rate = sum(counts) / (time.perf_counter() - started)
        await client.close()
        return endpoint.runtime, one_rate, n_rate


def pipeline(binary: Path | None, args: argparse.Namespace, given: Path, workdir: Path, name: str) -> RuntimeResult:
    """One `kodcode.run --given` on this runtime; verified triplets and pipeline time from its store and events."""
    run_dir = workdir / name
    run_dir.mkdir(parents=True)
    db = run_dir / "kc.db"
    command = [sys.executable, "-m", "kodcode.run", "--given", str(given), "--db", str(db), "--seed", str(args.seed),
               "--max-attempts", str(args.max_attempts), "--concurrency", str(args.concurrency),
               "--embedded-model", args.variant]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", SERVER_BINARY_ENV: str(binary) if binary else PREBUILT_RUNTIME}
    with open(run_dir / "stdout.txt", "w") as out, open(run_dir / "stderr.txt", "w") as err:
        returncode = subprocess.run(command, stdout=out, stderr=err, env=env).returncode
    result = RuntimeResult(name=name)
    finished: dict = {}
    for line in (run_dir / "events.jsonl").read_text(errors="replace").splitlines() if (run_dir / "events.jsonl").exists() else []:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "run_finished":
            finished = event
    result.verified = int(finished.get("verified_this_run") or 0)
    result.pipeline_s = float(finished.get("elapsed_s") or 0.0)
    result.questions = sum(1 for line in given.read_text().splitlines() if line.strip())
    if returncode != 0:
        result.errors.append(f"kodcode.run exited {returncode} (see {run_dir})")
    import sqlite3

    if db.exists():
        conn = sqlite3.connect(db)
        try:
            result.calls = int(conn.execute("SELECT COUNT(*) FROM llm_calls").fetchone()[0])
        finally:
            conn.close()
    return result


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native", type=Path, help="llama-server binary to compare (default: prepare --native's build)")
    parser.add_argument("--runtimes", default="default,native", help="which to run, in this order")
    parser.add_argument("--variant", choices=("0.5b", "1.5b"), default="0.5b")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1,
                        help="speed rounds, alternating the runtimes (on a shared machine, load drifts); the median is shown")
    parser.add_argument("--given", type=Path, help="questions for the pipeline comparison (JSONL, a question field)")
    parser.add_argument("--questions", type=int, default=40, help="use the first N questions of --given")
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the pipeline runs here instead of a temp dir")
    args = parser.parse_args()

    native = args.native or built_server_path(default_cache_dir())
    runtimes: list[tuple[str, Path | None]] = []
    for name in args.runtimes.split(","):
        if name == "default":
            runtimes.append(("default", None))
        elif name == "native" and native.exists():
            runtimes.append(("native", native))
        elif name == "native":
            print(f"no native build at {native} (run: python -m kodcode.embedded prepare --native); skipping it",
                  file=sys.stderr)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="kodcode-embedded-speed-"))
    given = None
    if args.given:
        lines = [line for line in args.given.read_text().splitlines() if line.strip()][: args.questions]
        given = workdir / "given.jsonl"
        workdir.mkdir(parents=True, exist_ok=True)
        given.write_text("\n".join(lines) + "\n")

    # Speed first, alternating runtimes round by round, so that a change in the machine's load hits both alike.
    speeds: dict[str, list[tuple[str, float, float]]] = {name: [] for name, _ in runtimes}
    for round_number in range(1, args.rounds + 1):
        for name, binary in runtimes:
            print(f"{name}: generation speed, round {round_number} ...", file=sys.stderr, flush=True)
            speeds[name].append(anyio.run(generation_speed, binary, args.variant, args.concurrency, args.tokens))
            print(f"  {speeds[name][-1][1]:.1f} tok/s 1 in flight, {speeds[name][-1][2]:.1f} tok/s "
                  f"{args.concurrency} in flight", file=sys.stderr, flush=True)
    results = []
    for name, binary in runtimes:
        runtime = speeds[name][0][0]
        result = RuntimeResult(name=name, runtime=runtime, one_in_flight=statistics.median(s[1] for s in speeds[name]),
                               n_in_flight=statistics.median(s[2] for s in speeds[name]))
        if given is not None:
            print(f"{name}: pipeline on {args.questions} given questions ...", file=sys.stderr, flush=True)
            run = pipeline(binary, args, given, workdir, name)
            result.questions, result.verified, result.pipeline_s = run.questions, run.verified, run.pipeline_s
            result.calls, result.errors = run.calls, run.errors
        results.append(result)

    print(f"model {args.variant}, {os.cpu_count()} CPUs, {args.tokens} tokens/request, median of {args.rounds} round(s)"
          + (f"; pipeline: {args.questions} given questions, max attempts {args.max_attempts}, concurrency "
             f"{args.concurrency}, seed {args.seed}, runs in {workdir}" if given else ""))
    header = ("runtime", "server", "tok/s 1 in flight", f"tok/s {args.concurrency} in flight")
    if given:
        header += ("verified", "accuracy", "LLM calls", "pipeline s", "verified/h")
    rows = [header]
    for r in results:
        row: tuple[str, ...] = (r.name, r.runtime if r.runtime == PREBUILT_RUNTIME else Path(r.runtime).name,
                                f"{r.one_in_flight:.1f}", f"{r.n_in_flight:.1f}")
        if given:
            row += (f"{r.verified}/{r.questions}", f"{r.accuracy:.0%}", str(r.calls), f"{r.pipeline_s:.0f}",
                    f"{r.verified_per_hour:.0f}")
        rows.append(row)
    print(_table(rows))
    if len(results) == 2:
        default, other = results
        ratios = [f"tok/s 1 in flight {default.one_in_flight / other.one_in_flight:.0%}",
                  f"tok/s {args.concurrency} in flight {default.n_in_flight / other.n_in_flight:.0%}"]
        if given and other.verified_per_hour:
            ratios.append(f"verified/h {default.verified_per_hour / other.verified_per_hour:.0%}")
        print(f"{default.name} as a share of {other.name}: " + ", ".join(ratios))
    for r in results:
        for error in r.errors:
            print(f"{r.name}: {error}", file=sys.stderr)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

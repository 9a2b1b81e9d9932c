"""The embedded model's configurations side by side: runtimes (the prebuilt default, xllamacpp, vs a native
llama-server build) and model variants (0.5b vs 1.5b).

For each (variant, runtime), in one run of this script:
- generation tokens/s through the openai client with 1 request in flight and with --concurrency in flight
  (every request generates exactly --tokens tokens, so all do the same work);
- with --given FILE: the whole pipeline (`python -m kodcode.run --given FILE`, same seed, same flags) on the
  same questions: verified triplets, their share of the questions, verified triplets per hour of pipeline
  time and, with --reference FILE, how many verified solutions are right by reference tests written apart
  from the model (accuracy, with a Wilson interval) and right triplets per hour.

    .venv/bin/python benchmarks/embedded_speed.py [--native PATH] [--given benchmarks/data/given40.jsonl]
        [--reference benchmarks/data/given40_reference.jsonl] [--questions 40] [--concurrency 4]
        [--tokens 200] [--rounds 1] [--variants 0.5b,1.5b] [--runtimes default,native]
        [--configs 0.5b:default,0.5b:native,1.5b:default]

The native server is --native PATH (any llama-server binary), else the one `python -m kodcode.embedded
prepare --native` built for this CPU; without either, only the default runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from openai import AsyncOpenAI

from kodcode.export import iter_v1_rows
from kodcode.models.files import VARIANTS, default_cache_dir
from kodcode.models.llama_server import PREBUILT_RUNTIME, SERVER_BINARY_ENV, EmbeddedEndpoint, embedded_server
from kodcode.models.native_build import built_server_path
from kodcode.report import wilson_interval
from kodcode.sandbox import bwrap_available, open_sandbox

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
class ConfigResult:
    name: str
    variant: str = "0.5b"
    runtime: str = ""
    one_in_flight: float = 0.0
    n_in_flight: float = 0.0
    questions: int = 0
    verified: int = 0
    pipeline_s: float = 0.0
    calls: int = 0
    completion_tokens: int = 0
    right: int | None = None   # verified solutions that pass the reference tests (None: no --reference)
    errors: list[str] = field(default_factory=list)

    @property
    def verified_per_hour(self) -> float:
        return self.verified / self.pipeline_s * 3600 if self.pipeline_s else 0.0

    @property
    def verified_share(self) -> float:
        return self.verified / self.questions if self.questions else 0.0

    @property
    def right_per_hour(self) -> float:
        return (self.right or 0) / self.pipeline_s * 3600 if self.pipeline_s else 0.0


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


def pipeline(binary: Path | None, variant: str, args: argparse.Namespace, given: Path, workdir: Path,
             name: str) -> ConfigResult:
    """One `kodcode.run --given` on this runtime; verified triplets and pipeline time from its store and events."""
    run_dir = workdir / name
    run_dir.mkdir(parents=True)
    db = run_dir / "kc.db"
    command = [sys.executable, "-m", "kodcode.run", "--given", str(given), "--db", str(db), "--seed", str(args.seed),
               "--max-attempts", str(args.max_attempts), "--concurrency", str(args.concurrency),
               "--embedded-model", variant]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", SERVER_BINARY_ENV: str(binary) if binary else PREBUILT_RUNTIME}
    with open(run_dir / "stdout.txt", "w") as out, open(run_dir / "stderr.txt", "w") as err:
        returncode = subprocess.run(command, stdout=out, stderr=err, env=env).returncode
    result = ConfigResult(name=name, variant=variant)
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
    if db.exists():
        conn = sqlite3.connect(db)
        try:
            calls, tokens = conn.execute("SELECT COUNT(*), COALESCE(SUM(completion_tokens), 0) FROM llm_calls").fetchone()
            result.calls, result.completion_tokens = int(calls), int(tokens)
        finally:
            conn.close()
    return result


@dataclass(frozen=True)
class Reference:
    entry_point: str
    test: str


def load_references(path: Path, given_lines: list[str]) -> dict[str, Reference]:
    """Reference tests by question text, matched to the given questions by `id`."""
    by_id = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_id[row["id"]] = Reference(row["entry_point"], row["test"])
    references = {}
    for line in given_lines:
        row = json.loads(line)
        if row.get("id") not in by_id:
            raise SystemExit(f"{path} has no reference tests for given question {row.get('id')!r}")
        references[row["question"].strip()] = by_id[row["id"]]
    return references


async def right_solutions(db: Path, references: dict[str, Reference]) -> tuple[int, list[str]]:
    """How many of the run's verified solutions pass the reference tests; and the questions that do not.
    A solution must define the function under the name the question gives: the question asks for it."""
    rows = [row for row in iter_v1_rows(db) if row["style"] == "instruct"]
    right, wrong = 0, []
    async with open_sandbox(workers=2, isolation=bwrap_available()) as sandbox:
        for row in rows:
            reference = references.get(row["question"].strip())
            if reference is None:
                continue
            if (await sandbox.run(row["solution"], reference.test)).passed:
                right += 1
            else:
                wrong.append(reference.entry_point)
    return right, wrong


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native", type=Path, help="llama-server binary to compare (default: prepare --native's build)")
    parser.add_argument("--runtimes", default="default,native", help="which to run, in this order")
    parser.add_argument("--configs",
                        help="explicit variant:runtime pairs instead of every variant with every runtime "
                             "(e.g. 0.5b:default,0.5b:native,1.5b:default)")
    parser.add_argument("--variants", default="0.5b", help="model variants to run, in this order (0.5b, 1.5b)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1,
                        help="speed rounds, alternating the runtimes (on a shared machine, load drifts); the median is shown")
    parser.add_argument("--given", type=Path, help="questions for the pipeline comparison (JSONL, a question field)")
    parser.add_argument("--reference", type=Path,
                        help="reference tests for --given (JSONL: id, entry_point, test): accuracy of what was verified")
    parser.add_argument("--questions", type=int, default=40, help="use the first N questions of --given")
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the pipeline runs here instead of a temp dir")
    args = parser.parse_args()

    variants = args.variants.split(",")
    for variant in variants:
        if variant not in VARIANTS:
            parser.error(f"--variants: unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
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
    configs = [(variant, name, binary) for variant in variants for name, binary in runtimes]
    if args.configs:
        known = dict(runtimes)
        pairs = [pair.split(":", 1) for pair in args.configs.split(",")]
        for pair in pairs:
            if len(pair) != 2 or pair[0] not in VARIANTS or pair[1] not in ("default", "native"):
                parser.error(f"--configs: {':'.join(pair)!r} is not VARIANT:default or VARIANT:native")
        configs = [(variant, name, known[name]) for variant, name in pairs if name in known]
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="kodcode-embedded-speed-"))
    given = None
    references: dict[str, Reference] = {}
    if args.given:
        lines = [line for line in args.given.read_text().splitlines() if line.strip()][: args.questions]
        given = workdir / "given.jsonl"
        workdir.mkdir(parents=True, exist_ok=True)
        given.write_text("\n".join(lines) + "\n")
        if args.reference:
            references = load_references(args.reference, lines)

    # Speed first, alternating configurations round by round, so that a change in the machine's load hits all alike.
    speeds: dict[tuple[str, str], list[tuple[str, float, float]]] = {(v, n): [] for v, n, _ in configs}
    for round_number in range(1, args.rounds + 1):
        for variant, name, binary in configs:
            print(f"{variant} {name}: generation speed, round {round_number} ...", file=sys.stderr, flush=True)
            speeds[variant, name].append(anyio.run(generation_speed, binary, variant, args.concurrency, args.tokens))
            print(f"  {speeds[variant, name][-1][1]:.1f} tok/s 1 in flight, {speeds[variant, name][-1][2]:.1f} tok/s "
                  f"{args.concurrency} in flight", file=sys.stderr, flush=True)
    results = []
    for variant, name, binary in configs:
        measured = speeds[variant, name]
        result = ConfigResult(name=name, variant=variant, runtime=measured[0][0],
                               one_in_flight=statistics.median(s[1] for s in measured),
                               n_in_flight=statistics.median(s[2] for s in measured))
        if given is not None:
            print(f"{variant} {name}: pipeline on {args.questions} given questions ...", file=sys.stderr, flush=True)
            run = pipeline(binary, variant, args, given, workdir, f"{variant}-{name}")
            result.questions, result.verified, result.pipeline_s = run.questions, run.verified, run.pipeline_s
            result.calls, result.completion_tokens, result.errors = run.calls, run.completion_tokens, run.errors
            db = workdir / f"{variant}-{name}" / "kc.db"
            if references and db.exists():
                result.right, wrong = anyio.run(right_solutions, db, references)
                if wrong:
                    print(f"  verified but wrong by the reference tests: {', '.join(wrong)}", file=sys.stderr)
        results.append(result)

    print(f"{os.cpu_count()} CPUs, {args.tokens} tokens/request, median of {args.rounds} round(s)"
          + (f"; pipeline: {args.questions} given questions, max attempts {args.max_attempts}, concurrency "
             f"{args.concurrency}, seed {args.seed}, runs in {workdir}" if given else ""))
    header = ("model", "runtime", "server", "tok/s 1 in flight", f"tok/s {args.concurrency} in flight")
    if given:
        header += ("verified", "LLM calls", "completion tokens", "pipeline s", "verified/h")
        if references:
            header += ("right (accuracy, 95% CI)", "right/h")
    rows = [header]
    for r in results:
        row: tuple[str, ...] = (r.variant, r.name, r.runtime if r.runtime == PREBUILT_RUNTIME else Path(r.runtime).name,
                                f"{r.one_in_flight:.1f}", f"{r.n_in_flight:.1f}")
        if given:
            row += (f"{r.verified}/{r.questions} ({r.verified_share:.0%})", str(r.calls), str(r.completion_tokens),
                    f"{r.pipeline_s:.0f}",
                    f"{r.verified_per_hour:.0f}")
            if references:
                low, high = wilson_interval(r.right or 0, r.verified)
                accuracy = f"{(r.right or 0) / r.verified:.3f}" if r.verified else "-"
                row += (f"{r.right}/{r.verified} ({accuracy}, {low:.2f}-{high:.2f})", f"{r.right_per_hour:.0f}")
        rows.append(row)
    print(_table(rows))
    # Pairs that differ in one thing only: the runtime (same model), or the model (same runtime).
    for attribute in ("variant", "name"):
        for value in dict.fromkeys(getattr(r, attribute) for r in results):
            pair = [r for r in results if getattr(r, attribute) == value]
            if len(pair) == 2:
                print(share(pair[0], pair[1], args.concurrency, bool(given)))
    for r in results:
        for error in r.errors:
            print(f"{r.variant} {r.name}: {error}", file=sys.stderr)
    return 1 if any(r.errors for r in results) else 0


def share(first: ConfigResult, second: ConfigResult, concurrency: int, with_pipeline: bool) -> str:
    """`first` as a share of `second`, measure by measure."""
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.0%}" if b else "-"

    parts = [f"tok/s 1 in flight {ratio(first.one_in_flight, second.one_in_flight)}",
             f"tok/s {concurrency} in flight {ratio(first.n_in_flight, second.n_in_flight)}"]
    if with_pipeline:
        parts.append(f"verified/h {ratio(first.verified_per_hour, second.verified_per_hour)}")
        if first.right is not None and second.right is not None:
            parts.append(f"right/h {ratio(first.right_per_hour, second.right_per_hour)}")
    return (f"{first.variant} {first.name} as a share of {second.variant} {second.name}: " + ", ".join(parts))


if __name__ == "__main__":
    sys.exit(main())

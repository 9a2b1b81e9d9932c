"""`python -m kodcode.iterate`: try a changed prompt on one stage, on a sample of stored items, and compare.

    python -m kodcode.iterate --db runs/kodcode.db --stage solver --prompts prompts-v2/ --sample 30

The sample is drawn (by --seed) from the store's verified items, whose verified triplet is the fixed
upstream: the solver stage writes new solutions that must pass the item's verified tests (in joint mode
it writes solutions and tests together), and the tester stage writes new tests for the item's verified
solution. Only the chosen stage calls the model; everything upstream comes from the store. Each new
trial is judged like a run's (sandbox, vacuous-test and mutation gates; no cross-check, which would
call the solver; no mutation gate for split-mode solutions, whose tests are the verified ones) and
stored in the `prompt_trials` table, apart from the run's own attempts, so the run's data and export
are untouched.

Two arms run on the same items and seeds: the baseline (the prompts the run used) and the candidate
(`--prompts DIR` laid over them). The baseline's calls are cached in the store, so iterating again on
the same sample pays only for the new candidate. `report --compare-prompts` shows every version tried.
The model and backend are the run's (from its stored config) unless flags say otherwise.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kodcode.errors import ConfigError, KodcodeError
from kodcode.store.queries import ItemSample, sample_items, stored_run_config

if TYPE_CHECKING:   # the run's machinery is imported only once there is something to run
    from kodcode.agents.context import AgentContext
    from kodcode.config import Config
    from kodcode.prompts import PromptLibrary
    from kodcode.store.trials import TrialRecords

__all__ = ["STAGES", "ItemSample", "TrialOutcome", "build_parser", "main", "sample_items"]

STAGES = ("solver", "tester")
DEFAULT_DB = Path("runs/kodcode.db")
_SALT = "iterate"


@dataclass
class TrialOutcome:
    arm: str
    item_id: str
    sample: int
    passed: bool
    reason: str | None


@dataclass
class ArmResult:
    arm: str
    template: str
    template_hash: str
    prompts_dir: str | None
    outcomes: list[TrialOutcome] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(o.passed for o in self.outcomes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kodcode.iterate",
        description="Re-run one stage with changed prompts on a sample of verified items; compare pass rates.")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"the run's SQLite store (default {DEFAULT_DB})")
    parser.add_argument("--stage", choices=STAGES, required=True,
                        help="solver: new solutions against the items' verified tests (joint mode: solutions and "
                             "tests); tester: new tests for the items' verified solutions")
    parser.add_argument("--prompts", type=Path, required=True,
                        help="directory of .j2 templates laid over the run's prompts: the candidate")
    parser.add_argument("--sample", type=int, default=20, help="verified items to try (default 20)")
    parser.add_argument("--samples-per-item", type=int, default=1, help="trials per item and arm (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="which items are drawn (default 0)")
    parser.add_argument("--no-baseline", action="store_true", help="run only the candidate")
    parser.add_argument("--concurrency", type=int, help="LLM requests in flight at most (default: the run's)")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint (default: the run's)")
    parser.add_argument("--model", help="model name for every role (default: the run's)")
    parser.add_argument("--backend", choices=("embedded", "vllm", "openai"), help="default: the run's")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--debug", action="store_true", help="debug logs on the console and full tracebacks")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.sample < 1 or args.samples_per_item < 1:
            raise ConfigError("--sample and --samples-per-item must be at least 1")
        return _iterate(args)
    except KodcodeError as exc:
        print(f"kodcode: error: {exc}", file=sys.stderr)
        return 2


def _iterate(args: argparse.Namespace) -> int:
    import anyio

    from kodcode.config import load_config
    from kodcode.prompts import PromptLibrary
    from kodcode.app.launch import user_error
    from kodcode.log import EVENTS_FILE, close_logging, configure_logging
    from kodcode.store.sqlite import open_readonly

    conn = open_readonly(args.db)
    try:
        base = stored_run_config(conn)
        items = sample_items(conn, args.sample, args.seed)
    finally:
        conn.close()
    if not items:
        raise ConfigError(f"store {args.db} has no verified items to iterate on; run kodcode.run first")
    overrides = {"concurrency": args.concurrency, "base_url": args.base_url, "model": args.model,
                 "backend": args.backend}
    if args.base_url and not args.backend:
        overrides["backend"] = "openai"
    config = load_config(None, overrides, base=base)
    template = _template(config.effective_mode, args.stage)
    # The cross-check asks the solver for another solution: a tester trial must touch the tester only.
    gates: dict[str, Any] = {"cross_check": False}
    if template == "solve":
        # The tests are the item's verified ones and passed the gates already; mutants of a new solution
        # that survive them would say nothing about the solver.
        gates["mutation"] = False
    # A trial is one cell judged on its own (as a run without the matrix): its tests have no other
    # solutions to meet, and its writes must not reach the run's items.
    config = config.model_copy(update={"gates": config.gates.model_copy(update=gates),
                                       "matrix": config.matrix.model_copy(update={"enabled": False})})
    baseline_dir = config.prompts_dir
    # The candidate's files over the run's own overlay (if it had one) over the packaged templates.
    candidate = PromptLibrary([args.prompts, *([baseline_dir] if baseline_dir else [])])
    baseline = PromptLibrary(baseline_dir)
    if candidate.template_hash(template) == baseline.template_hash(template):
        raise ConfigError(f"--prompts {args.prompts} does not change {template}.j2 (the {args.stage} stage's prompt "
                          f"in {config.effective_mode} mode): nothing to compare")
    candidate.render(template, **_PROBE)
    configure_logging(args.db.parent / EVENTS_FILE, console_level="debug" if args.debug else "warning")
    try:
        arms = anyio.run(_run_arms, args, config, items, template, baseline, candidate, backend="asyncio")
    except (KodcodeError, BaseExceptionGroup) as exc:
        error = user_error(exc)
        if error is None:
            raise
        raise error from None
    finally:
        close_logging()
    batch, results, llm_stats = arms
    summary = _summary(batch, args, config.effective_mode, template, results, llm_stats, len(items))
    print(json.dumps(summary, indent=2) if args.json else render(summary))
    return 0


def _template(mode: str, stage: str) -> str:
    if stage == "tester":
        if mode == "joint":
            raise ConfigError("--stage tester: the run used joint mode, where the solver writes the tests; "
                              "iterate on --stage solver")
        return "test_split"
    return "solve_and_test_joint" if mode == "joint" else "solve"


# Values for every variable the solver and tester templates use: rendering once shows a broken template
# (a misspelt variable, a missing block) before anything is paid for.
_PROBE = {"question": "Write a function f.", "solution": "def f():\n    return 1", "entry_point": "f"}


async def _run_arms(args: argparse.Namespace, config: Config, items: Sequence[ItemSample], template: str,
                    baseline: PromptLibrary, candidate: PromptLibrary) -> tuple[str, list[ArmResult], dict[str, int]]:
    import anyio

    from kodcode.app.build import assemble
    from kodcode.store.trials import TrialRecords

    batch = secrets.token_hex(6)
    arms = [] if args.no_baseline else [("baseline", baseline, str(config.prompts_dir) if config.prompts_dir else None)]
    arms.append(("candidate", candidate, str(args.prompts)))
    async with AsyncExitStack() as stack:
        # The run's own caps are not iterate's: its calls are counted (and cached) but not capped by them.
        parts = await assemble(config, args.db, stack, enforce_budget=False)
        log = parts.log
        log.info("iterate_started", batch=batch, stage=args.stage, template=template, items=len(items),
                 samples_per_item=args.samples_per_item, arms=[a[0] for a in arms])
        results: list[ArmResult] = []
        limiter = anyio.Semaphore(max(1, config.concurrency))
        for arm, prompts, prompts_dir in arms:
            result = ArmResult(arm, template, prompts.template_hash(template), prompts_dir)
            results.append(result)
            trials = TrialRecords(parts.store, batch=batch, arm=arm, stage=args.stage, template=template,
                                  template_hash=result.template_hash, model=parts.models[args.stage])
            ctx = parts.context(records=trials, prompts=prompts, seed_salt=_SALT)

            async def one(item: ItemSample, sample: int, ctx: AgentContext = ctx, trials: TrialRecords = trials,
                          result: ArmResult = result) -> None:
                async with limiter:
                    result.outcomes.append(await run_trial(ctx, trials, args.stage, item, sample))

            async with anyio.create_task_group() as tg:
                for item in items:
                    for sample in range(1, args.samples_per_item + 1):
                        tg.start_soon(one, item, sample)
        log.info("iterate_finished", batch=batch, **{r.arm: f"{r.passed}/{len(r.outcomes)}" for r in results})
        return batch, results, parts.llm.statistics()


async def run_trial(ctx: AgentContext, trials: TrialRecords, stage: str, item: ItemSample, sample: int) -> TrialOutcome:
    """One trial of `stage` on `item`: the stage's agent with the item's stored upstream, then the Judge.
    `trials` is the records port in `ctx` (the agents write through it; this keeps what they wrote)."""
    from kodcode.agents.judge import Judge
    from kodcode.agents.solver import Solver
    from kodcode.agents.tester import Tester
    from kodcode.messages import AttemptResult, AttemptTask

    records = trials
    if stage == "solver":
        task = AttemptTask(item.item_id, sample, item.question)
        out = await Solver(ctx).handle(task)
        if isinstance(out, AttemptTask) and out.tests is None:
            solution = out.solution or ""
            if out.entry_point and item.entry_point and out.entry_point != item.entry_point:
                solution += f"\n\n{item.entry_point} = {out.entry_point}\n"   # the verified tests import this name
            out = replace(out, solution=solution, entry_point=item.entry_point, tests=item.tests)
    else:
        task = AttemptTask(item.item_id, sample, item.question, solution=item.solution,
                           entry_point=item.entry_point)
        out = await Tester(ctx).handle(task)
    if isinstance(out, AttemptResult):
        return TrialOutcome(records.arm, item.item_id, sample, False, out.reason)
    records.remember(out)
    judgement = await Judge(ctx).judge(out)
    return TrialOutcome(records.arm, item.item_id, sample, judgement.passed, judgement.reason)


def _summary(batch: str, args: argparse.Namespace, mode: str, template: str, results: Sequence[ArmResult],
             llm_stats: dict[str, int], n_items: int) -> dict[str, Any]:
    from kodcode.report import wilson_interval

    arms = []
    for result in results:
        total = len(result.outcomes)
        low, high = wilson_interval(result.passed, total)
        reasons: dict[str, int] = {}
        for outcome in result.outcomes:
            if not outcome.passed and outcome.reason:
                key = outcome.reason.split(":")[0]
                reasons[key] = reasons.get(key, 0) + 1
        arms.append({"arm": result.arm, "template": result.template, "template_hash": result.template_hash,
                     "prompts_dir": result.prompts_dir, "trials": total, "passed": result.passed,
                     "pass_rate": result.passed / total if total else None, "ci95": [low, high],
                     "failure_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))})
    paired = None
    by_arm = {r.arm: {(o.item_id, o.sample): o.passed for o in r.outcomes} for r in results}
    if "baseline" in by_arm and "candidate" in by_arm:
        keys = by_arm["baseline"].keys() & by_arm["candidate"].keys()
        better = sum(by_arm["candidate"][k] and not by_arm["baseline"][k] for k in keys)
        worse = sum(by_arm["baseline"][k] and not by_arm["candidate"][k] for k in keys)
        paired = {"trials": len(keys), "candidate_better": better, "candidate_worse": worse,
                  "same": len(keys) - better - worse}
    return {"batch": batch, "stage": args.stage, "mode": mode, "template": template, "items": n_items,
            "samples_per_item": args.samples_per_item, "arms": arms, "paired": paired,
            "llm": {"calls": llm_stats.get("calls", 0), "cache_hits": llm_stats.get("cache_hits", 0),
                    "tokens": llm_stats.get("tokens", 0)}}


def render(summary: dict[str, Any]) -> str:
    from kodcode.report import render_table

    lines = [f"kodcode.iterate: {summary['stage']} stage ({summary['template']}.j2, {summary['mode']} mode) on "
             f"{summary['items']} verified items x {summary['samples_per_item']} (batch {summary['batch']})"]
    rows = [[a["arm"], a["template_hash"], str(a["trials"]), str(a["passed"]),
             "-" if a["pass_rate"] is None else f"{100 * a['pass_rate']:.1f}%",
             f"{100 * a['ci95'][0]:.1f}% - {100 * a['ci95'][1]:.1f}%",
             ", ".join(f"{k} {v}" for k, v in a["failure_reasons"].items()) or "-"] for a in summary["arms"]]
    lines += render_table(["arm", "hash", "trials", "passed", "rate", "95% CI", "failures"], rows, left=1)
    if summary["paired"]:
        p = summary["paired"]
        lines.append(f"  same items and seeds: candidate passes where baseline failed {p['candidate_better']}, "
                     f"fails where baseline passed {p['candidate_worse']}, agrees {p['same']}")
    llm = summary["llm"]
    lines.append(f"  llm: {llm['calls']} calls ({llm['cache_hits']} from cache), {llm['tokens']} tokens; "
                 "history of every version: python -m kodcode.report --compare-prompts")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Judge: runs an attempt's tests against its solution in the sandbox; the verdict is decided there, on
the trusted side, never from an exit code alone.

A trial whose solution passes its own tests then faces the data-quality gates (config `gates`), since a
pass is only evidence when the tests could have failed:

1. vacuous tests (static): tests that assert nothing about the entry point's result, only its type,
   `is not None` or truthiness, or duplicate another test. Flagged; the trial is rejected when every
   test is vacuous (or when any is, with `gates.vacuous = "reject"`).
2. mutation: small bugs planted in the solution must make the tests fail; too few kills and the trial
   is not verified ("weak tests: killed 1 of 6 mutants ...").
3. cross-check (off by default): an independently sampled solution must pass the tests as well, or
   the disagreement sends the item to a further attempt.

Every outcome is stored with the attempt (`gates` JSON, `mutation_score`) and logged as event "gates".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import anyio

from kodcode.agents.context import AgentContext
from kodcode.messages import AttemptResult, AttemptTask
from kodcode.parsing import ParseFailure, extract_code, solution_entry_point
from kodcode.quality.consensus import function_outcomes
from kodcode.quality.mutation import MutationReport, generate_mutants, mutant_limits, run_mutation_gate
from kodcode.quality.vacuous import VacuityReport, find_vacuous_tests
from kodcode.llm.client import stable_seed
from kodcode.sandbox.base import Verdict

__all__ = ["Judge", "Judgement"]


@dataclass(frozen=True)
class Judgement:
    """One trial's outcome: the sandbox's verdict on its own tests, then the gates' say."""

    verdict: Verdict                          # the sandbox's verdict, as it came
    passed: bool                              # final: the tests passed and no gate objected
    reason: str | None
    gates: dict[str, Any] | None = None       # None when the tests failed, so no gate ran
    mutation: MutationReport | None = None
    vacuity: VacuityReport | None = None

    @property
    def tests_passed(self) -> bool:
        return self.verdict.passed

    def result(self, item_id: str, attempt: int, question: str = "") -> AttemptResult:
        return AttemptResult(item_id, attempt, self.passed, self.reason, self.verdict.coverage, question)


class Judge:
    def __init__(self, ctx: AgentContext, slots: anyio.CapacityLimiter | None = None) -> None:
        """`slots`: sandbox runs in flight at most, shared with the Matrix agent (the pipeline's judge width)."""
        self.ctx = ctx
        self._slots = slots

    async def _run(self, solution: str, tests: str) -> Verdict:
        if self._slots is None:
            return await self.ctx.sandbox.run(solution, tests)
        async with self._slots:
            return await self.ctx.sandbox.run(solution, tests)

    async def handle(self, task: AttemptTask) -> AttemptResult:
        return (await self.judge(task)).result(task.item_id, task.attempt, task.question)

    async def judge(self, task: AttemptTask) -> Judgement:
        """Run, gate, store and log one trial."""
        assert task.solution is not None and task.tests is not None
        ctx = self.ctx
        verdict = await self._run(task.solution, task.tests)
        judgement = Judgement(verdict, verdict.passed, verdict.reason)
        if ctx.config.matrix.enabled:
            # The diagonal cell of the execution matrix; the gates judge the consensus triplet instead
            # (kodcode.agents.matrix), which need not be this attempt's solution with its own tests.
            await ctx.records.save_matrix_cells(task.item_id, [{
                "solution_attempt": task.attempt, "tests_attempt": task.attempt, "passed": verdict.passed,
                "outcomes": function_outcomes((t.name, t.outcome) for t in verdict.tests),
                "reason": verdict.reason, "duration_s": round(verdict.duration_s, 4)}])
        elif verdict.passed:
            judgement = await self.gate(task, verdict)
        final = verdict if judgement.passed == verdict.passed else replace(verdict, passed=False, reason=judgement.reason)
        score = judgement.mutation.score if judgement.mutation is not None else None
        await ctx.records.save_verdict(task.item_id, task.attempt, final, gates=judgement.gates, mutation_score=score)
        if judgement.gates is not None:
            ctx.log.info("gates", item_id=task.item_id, attempt=task.attempt, passed=judgement.passed,
                         reason=judgement.reason, mutation_score=None if score is None else round(score, 3),
                         mutants_killed=judgement.mutation.killed if judgement.mutation else None,
                         mutants_run=judgement.mutation.run if judgement.mutation else None,
                         vacuous=len(judgement.vacuity.findings) if judgement.vacuity else None,
                         cross_check=(judgement.gates.get("cross_check") or {}).get("agreed"))
        ctx.log.info("attempt_judged", item_id=task.item_id, attempt=task.attempt, passed=judgement.passed,
                     reason=judgement.reason, coverage=verdict.coverage, tests=len(verdict.tests),
                     duration_s=round(verdict.duration_s, 3))
        return judgement

    async def judge_against(self, task: AttemptTask, tests: str, *, judged_by: str = "accepted tests",
                            verdict: Verdict | None = None) -> AttemptResult:
        """A solution-only attempt (no Tester call was paid: the matrix has accepted tests already, or an
        earlier attempt's test file passes this solution whole): its verdict is that file's on it (`verdict`
        when it was run already). The attempt keeps no tests of its own, so it adds a row to the matrix and
        no column."""
        assert task.solution is not None
        if verdict is None:
            verdict = await self._run(task.solution, tests)
        await self.ctx.records.save_verdict(task.item_id, task.attempt, verdict, gates={"judged_by": judged_by})
        self.ctx.log.info("attempt_judged", item_id=task.item_id, attempt=task.attempt, passed=verdict.passed,
                          reason=verdict.reason, coverage=verdict.coverage, tests=len(verdict.tests),
                          duration_s=round(verdict.duration_s, 3), against=judged_by)
        return AttemptResult(task.item_id, task.attempt, verdict.passed, verdict.reason, verdict.coverage)

    async def gate(self, task: AttemptTask, verdict: Verdict) -> Judgement:
        """The gates (vacuous tests, mutation) on a trial whose tests passed; stores nothing."""
        assert task.solution is not None and task.tests is not None
        settings = self.ctx.config.gates
        entry_point = task.entry_point or _entry_point(task.solution, task.question)
        gates: dict[str, Any] = {"tests_passed": True}
        reason: str | None = None

        vacuity = find_vacuous_tests(task.tests, entry_point) if entry_point else None
        if vacuity is not None:
            gates["vacuous"] = vacuity.as_dict()
            rejects = vacuity.all_vacuous if settings.vacuous == "flag" else vacuity.flagged
            if rejects and vacuity.parse_error is None:
                reason = vacuity.reason()

        mutation: MutationReport | None = None
        if not settings.mutation:
            gates["mutation"] = {"skipped": "disabled"}
        elif reason is not None:
            gates["mutation"] = {"skipped": "rejected by an earlier gate"}
        else:
            mutation = await self._mutation(task, verdict, entry_point)
            gates["mutation"] = mutation.as_dict()
            reason = mutation.reason

        if settings.cross_check:
            if reason is None:
                cross_check = await self._cross_check(task, entry_point)
                gates["cross_check"] = cross_check
                if cross_check["agreed"] is False:
                    reason = f"cross-check: an independent solution fails the tests ({cross_check['reason']})"
            else:
                gates["cross_check"] = {"skipped": "rejected by an earlier gate", "agreed": None}

        gates["passed"] = reason is None
        gates["reason"] = reason
        return Judgement(verdict, reason is None, reason, gates, mutation, vacuity)

    async def _mutation(self, task: AttemptTask, verdict: Verdict, entry_point: str | None) -> MutationReport:
        assert task.solution is not None and task.tests is not None
        config = self.ctx.config
        settings = config.gates
        seed = stable_seed(settings.seed if settings.seed is not None else config.seed, "mutation",
                           task.item_id, task.attempt)
        mutants = generate_mutants(task.solution, seed=seed, limit=settings.max_mutants, entry_point=entry_point)
        return await run_mutation_gate(
            self.ctx.sandbox, task.tests, mutants, threshold=settings.mutation_threshold,
            concurrency=settings.mutation_concurrency, limits=mutant_limits(verdict, config.sandbox.timeout_s),
            seed=seed)

    async def _cross_check(self, task: AttemptTask, entry_point: str | None) -> dict[str, Any]:
        """A second solution, sampled independently (its own seed), run against this trial's tests."""
        assert task.tests is not None
        ctx = self.ctx
        prompt = ctx.prompts.render("solve", question=task.question)
        request = ctx.request("solver", prompt, item_id=task.item_id, attempt=task.attempt, salt="crosscheck")
        response = await ctx.llm.complete(request)
        try:
            solution = extract_code(response.text)
            own_name = solution_entry_point(solution, task.question)
        except (ParseFailure, SyntaxError) as exc:
            # No evidence either way: an unusable answer says nothing about the tests.
            return {"agreed": None, "reason": f"cross-check output unusable: {exc}", "request": response.request_hash}
        if entry_point and own_name != entry_point:
            solution += f"\n\n{entry_point} = {own_name}\n"   # the tests import the trial's name
        verdict = await ctx.sandbox.run(solution, task.tests)
        return {"agreed": verdict.passed, "reason": verdict.reason, "request": response.request_hash,
                "solution": solution}


def _entry_point(solution: str, question: str) -> str | None:
    try:
        return solution_entry_point(solution, question)
    except (ParseFailure, SyntaxError):
        return None

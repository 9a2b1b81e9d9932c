"""Judge: runs an attempt's tests against its solution in the sandbox; the verdict is decided there, on
the trusted side, never from an exit code alone."""

from __future__ import annotations

from kodcode.agents.context import AgentContext
from kodcode.messages import AttemptResult, AttemptTask

__all__ = ["Judge"]


class Judge:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    async def handle(self, task: AttemptTask) -> AttemptResult:
        assert task.solution is not None and task.tests is not None
        verdict = await self.ctx.sandbox.run(task.solution, task.tests)
        await self.ctx.records.save_verdict(task.item_id, task.attempt, verdict)
        self.ctx.log.info("attempt_judged", item_id=task.item_id, attempt=task.attempt, passed=verdict.passed,
                          reason=verdict.reason, coverage=verdict.coverage, tests=len(verdict.tests),
                          duration_s=round(verdict.duration_s, 3))
        return AttemptResult(task.item_id, task.attempt, verdict.passed, verdict.reason, verdict.coverage)

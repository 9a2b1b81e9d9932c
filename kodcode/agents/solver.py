"""Solver: writes a solution for one attempt (split mode), or solution and tests in one call (joint mode,
the paper's tagged contract)."""

from __future__ import annotations

from dataclasses import replace

from kodcode.agents.context import AgentContext
from kodcode.agents.tester import prepare_tests
from kodcode.messages import AttemptResult, AttemptTask
from kodcode.parsing import ParseFailure, extract_code, extract_joint, solution_entry_point, test_info

__all__ = ["Solver"]


class Solver:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    async def handle(self, task: AttemptTask) -> AttemptTask | AttemptResult:
        ctx = self.ctx
        joint = ctx.config.effective_mode == "joint"
        # With the matrix, every solution must answer every attempt's tests: the first solution fixes the
        # entry point's signature, and later attempts are asked to keep it.
        fixed = await ctx.records.first_solution(task.item_id) if ctx.config.matrix.enabled else None
        signature = _declaration(*fixed) if fixed is not None else None
        if joint:
            prompt = ctx.prompts.render("solve_and_test_joint", question=task.question)
        else:
            prompt = ctx.prompts.render("solve", question=task.question, signature=signature)
        request = ctx.request("solver", prompt, item_id=task.item_id, attempt=task.attempt)
        response = await ctx.llm.complete(request)
        lineage = response.lineage(request)
        try:
            if joint:
                solution, tests = extract_joint(response.text)
            else:
                solution, tests = extract_code(response.text), None
            entry_point = solution_entry_point(solution, task.question)
            if fixed is not None and entry_point != fixed[1]:
                # Another name for the same function: alias it, so earlier tests can import it.
                solution = f"{solution.rstrip()}\n\n{fixed[1]} = {entry_point}\n"
                entry_point = fixed[1]
        except (ParseFailure, SyntaxError) as exc:
            reason = f"solver output unusable: {exc}"
            await ctx.records.fail_attempt(task.item_id, task.attempt, reason, role="solver", lineage=lineage,
                                           raw_output=response.text)
            return AttemptResult(task.item_id, task.attempt, False, reason, question=task.question)
        if tests is not None:
            tests = prepare_tests(ctx.config, tests, entry_point)
            await ctx.records.save_tests(task.item_id, task.attempt, tests, lineage, solution, entry_point)
        else:
            await ctx.records.save_solution(task.item_id, task.attempt, solution, entry_point, lineage)
        return replace(task, solution=solution, entry_point=entry_point, tests=tests)


def _declaration(solution: str, entry_point: str) -> str | None:
    """`def name(params):` of the entry point in `solution` (KodCode's test_info declaration)."""
    try:
        infos = test_info(solution)
    except SyntaxError:
        return None
    return next((info.function_declaration for info in infos or () if info.function_name == entry_point), None)

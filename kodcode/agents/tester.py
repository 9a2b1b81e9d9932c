"""Tester (split mode): pytest unit tests for the solution's entry point, in their own call."""

from __future__ import annotations

from dataclasses import replace

from kodcode.agents.context import AgentContext
from kodcode.messages import AttemptResult, AttemptTask
from kodcode.config import Config
from kodcode.parsing import ParseFailure, TestInfo, clean_tests, ensure_solution_import, extract_code, test_info
from kodcode.quality.consensus import split_assert_functions

__all__ = ["Tester", "prepare_tests"]


def prepare_tests(config: Config, tests: str, entry_point: str) -> str:
    """A model's test file as it is stored and run: what would lie or crash dropped, the solution imported,
    and, for the execution matrix, one function per assert (see split_assert_functions)."""
    tests = ensure_solution_import(clean_tests(tests, entry_point), entry_point)
    return split_assert_functions(tests) if config.matrix.enabled else tests


class Tester:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    async def handle(self, task: AttemptTask) -> AttemptTask | AttemptResult:
        assert task.solution is not None and task.entry_point is not None
        ctx = self.ctx
        info = None
        if ctx.config.matrix.enabled:
            fixed = await ctx.records.first_solution(task.item_id)   # the first solution fixes the signature
            info = _signature(*fixed) if fixed is not None else _signature(task.solution, task.entry_point)
        if info is not None:
            # Tests for every solution of the item (the matrix), so from the signature, not this body.
            prompt = ctx.prompts.render("test_signature", question=task.question, entry_point=task.entry_point,
                                        signature=info.function_declaration, docstring=info.docstring)
        else:
            prompt = ctx.prompts.render("test_split", question=task.question, solution=task.solution.rstrip(),
                                        entry_point=task.entry_point)
        request = ctx.request("tester", prompt, item_id=task.item_id, attempt=task.attempt)
        response = await ctx.llm.complete(request)
        lineage = response.lineage(request)
        try:
            tests = extract_code(response.text, prefer=r"^\s*def test_",
                                 truncated=response.finish_reasons[:1] == ("length",))
        except ParseFailure as exc:
            reason = f"tester output unusable: {exc}"
            await ctx.records.fail_attempt(task.item_id, task.attempt, reason, role="tester", lineage=lineage,
                                           raw_output=response.text)
            return AttemptResult(task.item_id, task.attempt, False, reason, question=task.question)
        tests = prepare_tests(ctx.config, tests, task.entry_point)
        await ctx.records.save_tests(task.item_id, task.attempt, tests, lineage)
        return replace(task, tests=tests)


def _signature(solution: str, entry_point: str) -> TestInfo | None:
    """The entry point's test_info (declaration, docstring); None when it cannot be read off the solution
    (a class, an alias), and the tests are written from the solution as in split mode."""
    try:
        infos = test_info(solution)
    except SyntaxError:
        return None
    return next((info for info in infos or () if info.function_name == entry_point), None)

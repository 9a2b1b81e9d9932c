"""Rewriter: turns a verified instruct question into a function-completion question (signature, imports,
docstring with examples, no solution) and verifies the variant again — the paper reused the original
verdict without re-running anything."""

from __future__ import annotations

import ast

from kodcode.agents.context import AgentContext
from kodcode.messages import RewriteTask
from kodcode.parsing import ParseFailure, extract_completion, function_signature, tested_names

__all__ = ["Rewriter", "completion_question"]


def _entry_function(source: str, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    return None


def completion_question(model_output: str, solution: str, entry_point: str) -> str:
    """The completion question from the model's answer, checked against the reference solution.

    Keeps the model's imports, signature and docstring and drops any body it wrote, so a leaked solution
    can never end up in the question. Raises ParseFailure with the reason when the variant drifts."""
    code = extract_completion(model_output)
    reference = _entry_function(solution, entry_point)
    if reference is None:
        raise ParseFailure(f"reference solution has no function {entry_point!r}")
    tree = ast.parse(code)
    variant = _entry_function(code, entry_point)
    if variant is None:
        names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        raise ParseFailure(f"signature drift: completion defines {names or 'no function'}, tests call {entry_point!r}")
    if ast.dump(variant.args) != ast.dump(reference.args):
        raise ParseFailure(
            f"signature drift: {function_signature(variant)} != {function_signature(reference)}")
    docstring = ast.get_docstring(variant)
    if not docstring or len(docstring.split()) < 4:
        raise ParseFailure("completion has no usable docstring")
    imports = [ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    # The signature is the reference's own text, so annotations and defaults match the tests exactly.
    body_indent = "    "
    quoted = '"""' + docstring.replace('"""', r'\"\"\"').replace("\n", "\n" + body_indent) + "\n" + body_indent + '"""'
    header = "\n".join(imports) + "\n\n" if imports else ""
    question = f"{header}{function_signature(reference)}\n{body_indent}{quoted}\n"
    ast.parse(question)
    return question


class Rewriter:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    async def handle(self, task: RewriteTask) -> str | None:
        """Returns the verified variant's question, or None when it was rejected (recorded with the reason)."""
        ctx = self.ctx
        reference = _entry_function(task.solution, task.entry_point)
        signature = function_signature(reference) if reference else f"def {task.entry_point}(...):"
        prompt = ctx.prompts.render(f"rewrite_{task.style}", question=task.question, solution=task.solution.rstrip(),
                                    tests=task.tests.rstrip(), signature=signature.removesuffix(":"))
        request = ctx.request("rewriter", prompt, item_id=task.item_id, salt=task.style)
        response = await ctx.llm.complete(request)
        lineage = {"rewriter": response.lineage(request)}
        try:
            question = completion_question(response.text, task.solution, task.entry_point)
        except (ParseFailure, SyntaxError) as exc:
            await ctx.records.save_rewrite(task.item_id, task.style, "rejected", None, False, str(exc), lineage)
            ctx.log.info("rewrite_rejected", item_id=task.item_id, style=task.style, reason=str(exc))
            return None
        imported = tested_names(task.tests)
        if imported and task.entry_point not in imported:
            reason = f"signature drift: tests import {imported}, variant defines {task.entry_point!r}"
            await ctx.records.save_rewrite(task.item_id, task.style, "rejected", question, False, reason, lineage)
            return None
        # Re-verify: the reference solution must still pass the tests the variant is paired with.
        verdict = await ctx.sandbox.run(task.solution, task.tests)
        state = "verified" if verdict.passed else "rejected"
        await ctx.records.save_rewrite(task.item_id, task.style, state, question, verdict.passed,
                                       verdict.reason, {**lineage, "coverage": verdict.coverage})
        ctx.log.info("rewrite_done", item_id=task.item_id, style=task.style, state=state, reason=verdict.reason)
        return question if verdict.passed else None

"""Reasoner: reasoning-model responses kept by test-based reject sampling (the paper's step 3b).

The model sees only the question. Its code (after `</think>`) is matched to the tests' entry point by
the AST and renamed only when that is unambiguous — the reference code renamed only when there was
exactly one function, and failed otherwise (KodCode issue #7) — then run against the verified tests.
"""

from __future__ import annotations

import ast
import re

from kodcode.agents.context import AgentContext
from kodcode.messages import ReasonTask
from kodcode.parsing import ParseFailure, extract_code, split_reasoning

__all__ = ["Reasoner", "align_entry_point"]


def _defined_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def align_entry_point(code: str, entry_point: str, arity: int | None = None) -> tuple[str, str | None]:
    """(code defining `entry_point`, the name it was renamed from or None).

    Renames only when one candidate is left: the only top-level function; else the only function no
    other top-level function calls (helpers are called, the answer is not); else the only one taking
    `arity` positional parameters. Anything else is a recorded mismatch, never a guess."""
    tree = ast.parse(code)
    if entry_point in _defined_names(tree):
        return code, None
    functions = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    candidates = functions
    if len(candidates) > 1:
        called = {node.func.id for f in functions for node in ast.walk(f)
                  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id != f.name}
        candidates = [f for f in functions if f.name not in called and not f.name.startswith("_")]
    if len(candidates) > 1 and arity is not None:
        candidates = [f for f in candidates if len(f.args.posonlyargs) + len(f.args.args) == arity]
    if len(candidates) != 1:
        names = ", ".join(f.name for f in functions) or "no function"
        raise ParseFailure(f"entry point mismatch: response defines {names}; tests call {entry_point!r}")
    old = candidates[0].name
    if re.search(rf"\b{re.escape(entry_point)}\b", code):
        raise ParseFailure(f"entry point mismatch: cannot rename {old!r}, {entry_point!r} is already used")
    renamed = re.sub(rf"\b{re.escape(old)}\b", entry_point, code)
    if entry_point not in _defined_names(ast.parse(renamed)):
        raise ParseFailure(f"entry point mismatch: renaming {old!r} did not define {entry_point!r}")
    return renamed, old


def entry_arity(solution: str, entry_point: str) -> int | None:
    for node in ast.parse(solution).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
            return len(node.args.posonlyargs) + len(node.args.args)
    return None


class Reasoner:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    async def handle(self, task: ReasonTask) -> None:
        ctx = self.ctx
        prompt = ctx.prompts.render("reason_answer", question=task.question)
        request = ctx.request("reasoning", prompt, item_id=task.item_id, salt=f"{task.style}:{task.sample}")
        response = await ctx.llm.complete(request)
        lineage = response.lineage(request)
        reasoning, answer = split_reasoning(response.text)
        code: str | None = None
        renamed_from: str | None = None
        try:
            code = extract_code(answer) if answer.strip() else None
            if code is None:
                raise ParseFailure("no answer after the reasoning trace")
            code, renamed_from = align_entry_point(code, task.entry_point, entry_arity(task.solution, task.entry_point))
        except (ParseFailure, SyntaxError) as exc:
            await ctx.records.save_response(task, request.model, response.text, reasoning, code, None, False,
                                            str(exc), None, lineage)
            ctx.log.info("response_judged", item_id=task.item_id, style=task.style, sample=task.sample,
                         passed=False, reason=str(exc))
            return
        verdict = await ctx.sandbox.run(code, task.tests)
        # The kept answer must be the code that was tested: rename in the answer, never in the trace.
        text = response.text
        if renamed_from is not None:
            text = text[:len(text) - len(answer)] + re.sub(rf"\b{re.escape(renamed_from)}\b", task.entry_point, answer)
        await ctx.records.save_response(task, request.model, text, reasoning, code, renamed_from,
                                        verdict.passed, verdict.reason, verdict.coverage, lineage)
        ctx.log.info("response_judged", item_id=task.item_id, style=task.style, sample=task.sample,
                     passed=verdict.passed, reason=verdict.reason, renamed_from=renamed_from)

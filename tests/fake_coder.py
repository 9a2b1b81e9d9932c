"""A scripted "model" that answers kodcode's prompts over the OpenAI protocol, for end-to-end tests.

It recognises each prompt kind from the prompt text (as a real model would read it), picks a problem
from a small catalogue of distinct coding tasks, and answers: questions for proposals, solutions
(right or wrong, per a script), pytest files, joint tagged answers, completion rewrites. It counts
requests per kind so tests can assert which stage was called and how often.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from scripted_openai import Reply, ScriptedRequest


@dataclass(frozen=True)
class Problem:
    name: str
    question: str
    params: str
    body: str                       # correct implementation body (indented 4 spaces)
    cases: tuple[tuple[str, str], ...]   # (call args, expected repr)
    wrong_body: str = "    return None\n"

    def solution(self, wrong: bool = False) -> str:
        return f"def {self.name}({self.params}):\n{self.wrong_body if wrong else self.body}"

    def tests(self, weak: bool = False) -> str:
        lines = [f"from solution import {self.name}", ""]
        cases = self.cases[:1] if weak else self.cases
        for number, (args, expected) in enumerate(cases):
            lines += [f"def test_{self.name}_{number}():", f"    assert {self.name}({args}) == {expected}", ""]
        return "\n".join(lines)


CATALOGUE: tuple[Problem, ...] = (
    Problem("sum_of_evens", "Write a python function to return the sum of all even integers in a list.",
            "numbers", "    return sum(n for n in numbers if n % 2 == 0)\n",
            (("[1, 2, 3, 4]", "6"), ("[]", "0"), ("[-2, 5]", "-2"))),
    Problem("reverse_words", "Write a python function to reverse the order of words in a sentence separated by spaces.",
            "sentence", "    return ' '.join(sentence.split()[::-1])\n",
            (("'hello world'", "'world hello'"), ("'a'", "'a'"), ("''", "''"))),
    Problem("count_vowels", "Write a python function to count how many vowels appear in a given string, ignoring case.",
            "text", "    return sum(1 for ch in text.lower() if ch in 'aeiou')\n",
            (("'Hello'", "2"), ("'xyz'", "0"), ("'AEIOU'", "5"))),
    Problem("is_palindrome", "Write a python function to check whether a string reads the same forwards and backwards.",
            "s", "    return s == s[::-1]\n",
            (("'abba'", "True"), ("'abc'", "False"), ("''", "True"))),
    Problem("factorial", "Write a python function to compute the factorial of a non-negative integer n iteratively.",
            "n", "    result = 1\n    for k in range(2, n + 1):\n        result *= k\n    return result\n",
            (("0", "1"), ("5", "120"), ("3", "6"))),
    Problem("fibonacci", "Write a python function to return the n-th Fibonacci number where fib(0) is 0 and fib(1) is 1.",
            "n", "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
            (("0", "0"), ("1", "1"), ("10", "55"))),
    Problem("max_gap", "Write a python function to find the largest difference between two consecutive elements of a sorted copy of a list.",
            "values", "    ordered = sorted(values)\n    return max((b - a for a, b in zip(ordered, ordered[1:])), default=0)\n",
            (("[1, 10, 4]", "6"), ("[5]", "0"), ("[3, 3]", "0"))),
    Problem("char_histogram", "Write a python function to build a dictionary mapping each character of a word to its number of occurrences.",
            "word", "    counts = {}\n    for ch in word:\n        counts[ch] = counts.get(ch, 0) + 1\n    return counts\n",
            (("'aab'", "{'a': 2, 'b': 1}"), ("''", "{}"))),
    Problem("flatten_once", "Write a python function to flatten a list of lists by exactly one level of nesting.",
            "nested", "    return [x for inner in nested for x in inner]\n",
            (("[[1, 2], [3]]", "[1, 2, 3]"), ("[]", "[]"), ("[[], [4]]", "[4]"))),
    Problem("gcd_pair", "Write a python function to compute the greatest common divisor of two positive integers using Euclid's algorithm.",
            "a, b", "    while b:\n        a, b = b, a % b\n    return a\n",
            (("12, 18", "6"), ("7, 3", "1"), ("10, 5", "5"))),
    Problem("celsius_to_fahrenheit", "Write a python function to convert a temperature from Celsius degrees to Fahrenheit degrees.",
            "celsius", "    return celsius * 9 / 5 + 32\n",
            (("0", "32.0"), ("100", "212.0"), ("-40", "-40.0"))),
    Problem("unique_sorted", "Write a python function to return the distinct elements of an iterable in ascending order.",
            "items", "    return sorted(set(items))\n",
            (("[3, 1, 3, 2]", "[1, 2, 3]"), ("[]", "[]"))),
    Problem("binary_digits", "Write a python function to produce the binary representation of a non-negative integer as a string without prefix.",
            "number", "    return bin(number)[2:]\n",
            (("5", "'101'"), ("0", "'0'"), ("8", "'1000'"))),
    Problem("second_largest", "Write a python function to find the second largest distinct value in a list, or None when it does not exist.",
            "values", "    distinct = sorted(set(values))\n    return distinct[-2] if len(distinct) > 1 else None\n",
            (("[4, 1, 4, 3]", "3"), ("[2, 2]", "None"), ("[]", "None"))),
    Problem("capitalize_words", "Write a python function to make the first letter of every word in a phrase uppercase.",
            "phrase", "    return ' '.join(w[:1].upper() + w[1:] for w in phrase.split(' '))\n",
            (("'hello big world'", "'Hello Big World'"), ("'x'", "'X'"))),
    Problem("digit_sum", "Write a python function to add up the decimal digits of a non-negative integer.",
            "number", "    return sum(int(d) for d in str(number))\n",
            (("123", "6"), ("0", "0"), ("9999", "36"))),
    Problem("rotate_left", "Write a python function to rotate the elements of an array to the left by k positions.",
            "items, k", "    if not items:\n        return []\n    k %= len(items)\n    return items[k:] + items[:k]\n",
            (("[1, 2, 3, 4], 1", "[2, 3, 4, 1]"), ("[], 3", "[]"), ("[1, 2], 4", "[1, 2]"))),
    Problem("is_anagram", "Write a python function to decide whether two strings are anagrams of each other.",
            "first, second", "    return sorted(first) == sorted(second)\n",
            (("'listen', 'silent'", "True"), ("'ab', 'abc'", "False"))),
    Problem("chunk_list", "Write a python function to split a sequence into consecutive chunks of a given size, the last chunk possibly shorter.",
            "seq, size", "    return [seq[i:i + size] for i in range(0, len(seq), size)]\n",
            (("[1, 2, 3, 4, 5], 2", "[[1, 2], [3, 4], [5]]"), ("[], 3", "[]"))),
    Problem("prime_check", "Write a python function to test whether an integer greater than one is a prime number.",
            "n", "    if n < 2:\n        return False\n    k = 2\n    while k * k <= n:\n        if n % k == 0:\n            return False\n        k += 1\n    return True\n",
            (("2", "True"), ("15", "False"), ("13", "True"), ("1", "False"))),
    Problem("run_length", "Write a python function to run-length encode a string into letter-count pairs such as a3b1.",
            "text", "    out = []\n    i = 0\n    while i < len(text):\n        j = i\n        while j < len(text) and text[j] == text[i]:\n            j += 1\n        out.append(f'{text[i]}{j - i}')\n        i = j\n    return ''.join(out)\n",
            (("'aaab'", "'a3b1'"), ("''", "''"), ("'xy'", "'x1y1'"))),
    Problem("matrix_transpose", "Write a python function to transpose a rectangular matrix given as a list of rows.",
            "matrix", "    return [list(row) for row in zip(*matrix)]\n",
            (("[[1, 2], [3, 4]]", "[[1, 3], [2, 4]]"), ("[]", "[]"))),
    Problem("count_words", "Write a python function to count the whitespace separated tokens in a paragraph of text.",
            "paragraph", "    return len(paragraph.split())\n",
            (("'one two  three'", "3"), ("''", "0"))),
    Problem("merge_sorted", "Write a python function to merge two already sorted lists into one sorted list without using sort.",
            "left, right", "    out, i, j = [], 0, 0\n    while i < len(left) and j < len(right):\n        if left[i] <= right[j]:\n            out.append(left[i]); i += 1\n        else:\n            out.append(right[j]); j += 1\n    return out + left[i:] + right[j:]\n",
            (("[1, 3], [2, 4]", "[1, 2, 3, 4]"), ("[], [1]", "[1]"))),
)

PROPOSE_KINDS = ("propose_prefill", "propose_from_seeds", "propose_free", "propose_from_snippet",
                 "propose_from_docs", "propose_evolve")

_BY_QUESTION = {problem.question: problem for problem in CATALOGUE}


def problem_for(text: str, problems: tuple[Problem, ...] = CATALOGUE) -> Problem | None:
    """The problem a prompt is about; `problems` other than the catalogue serve a FakeCoder's own list."""
    by_question = _BY_QUESTION if problems is CATALOGUE else {problem.question: problem for problem in problems}
    for question, problem in by_question.items():
        if question in text:
            return problem
    # Questions that went through a prefill keep the prefix; match on the distinctive tail too.
    for problem in problems:
        tail = problem.question.removeprefix("Write a python function to ").rstrip(".")
        if tail in text:
            return problem
    return None


def reasoning_answer(problem: Problem, mode: str) -> str:
    """An R1-style answer: a trace in <think>, then the code in one of several shapes."""
    body = problem.body
    code = {
        "ok": problem.solution(),
        "renamed": f"def solve({problem.params}):\n{body}",
        "helpers": f"def _helper(x):\n    return x\n\n\ndef answer({problem.params}):\n{body}",
        "ambiguous": f"def first({problem.params}):\n{body}\n\ndef second({problem.params}):\n{body}",
        "wrong": f"def solve({problem.params}):\n{problem.wrong_body}",
    }.get(mode)
    if mode == "unfinished":
        return "<think>Let me think about this for a very long time and never finish"
    return f"<think>\nThe task: {problem.question} I will write a function.\n</think>\n\n```python\n{code}```\n"


def fenced(code: str) -> str:
    return f"Here is the code:\n```python\n{code.rstrip()}\n```\nThis works."


@dataclass
class FakeCoder:
    """The responder. `fail_first[name] = k`: the first k solutions for that problem are wrong.
    `weak_tests`: names whose tests assert only one case. `broken_format`: names whose first solve
    answer has no code at all."""

    fail_first: dict[str, int] = field(default_factory=dict)
    weak_tests: set[str] = field(default_factory=set)
    broken_format: set[str] = field(default_factory=set)
    problems: tuple[Problem, ...] = CATALOGUE
    kinds: Counter = field(default_factory=Counter)
    solves: Counter = field(default_factory=Counter)
    proposals: int = 0
    # Per problem, the reasoning answers in order: ok | renamed | helpers | ambiguous | wrong | unfinished.
    reasoning_script: dict[str, list[str]] = field(default_factory=dict)
    reasonings: Counter = field(default_factory=Counter)
    drift_rewrite: set[str] = field(default_factory=set)   # names whose completion rewrite changes the signature
    # A prompt containing this text gets wrong solutions and one-case tests (a worse prompt, for iteration).
    worse_when: str | None = None
    on_request: Callable[[str, ScriptedRequest], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def kind(self, request: ScriptedRequest) -> str:
        text = request.text
        if request.endpoint == "completions":
            # Plain Magpie (Filter) opens an empty user turn; prefill puts a prefix after it.
            return "propose_free" if text.endswith("<|im_start|>user\n") else "propose_prefill"
        if "[Question 1]:" in text:
            return "propose_from_seeds"
        if "<|Analysis Begin|>" in text and "## Snippet" in text:
            return "propose_from_snippet"
        if "BAD_DOCUMENT" in text:
            return "propose_from_docs"
        if "into a more difficult version" in text:
            return "propose_evolve"
        if '"input_quality"' in text:
            return "tag"
        if "<|Solution Begin|>" in text:
            return "joint"
        if "Convert the coding question below into a Python code completion task" in text:
            return "rewrite"
        if "Write pytest unit tests for `" in text:
            return "tests"
        if "Write a Python solution for the question below" in text:
            return "solve"
        if not request.system and problem_for(request.user, self.problems) is not None:
            return "reason"
        return "unknown"

    def __call__(self, request: ScriptedRequest) -> Reply | str:
        kind = self.kind(request)
        with self._lock:
            self.kinds[kind] += 1
        if self.on_request is not None:
            self.on_request(kind, request)
        if kind in PROPOSE_KINDS:
            return self._propose(request, kind)
        if kind == "tag":
            return ('{"explanation": "A clear function task.", "input_quality": "good", '
                    '"task_category": "Function Generation"}')
        problem = problem_for(request.user, self.problems)
        if problem is None:
            return "I cannot help with that."
        if kind in ("solve", "joint"):
            with self._lock:
                self.solves[problem.name] += 1
                number = self.solves[problem.name]
            if problem.name in self.broken_format and number == 1:
                return "Sure! The answer is to loop over the values and add them."
            wrong = number <= self.fail_first.get(problem.name, 0) or self._worse(request)
            solution = problem.solution(wrong=wrong)
            if kind == "solve":
                return fenced(solution)
            tests = problem.tests(weak=problem.name in self.weak_tests)
            return (f"<|Solution Begin|>\n```python\n{solution}```\n<|Solution End|>\n"
                    f"<|Test Begin|>\n```python\n{tests}```\n<|Test End|>")
        if kind == "reason":
            with self._lock:
                number = self.reasonings[problem.name]
                self.reasonings[problem.name] += 1
            script = self.reasoning_script.get(problem.name, ["renamed"])
            return reasoning_answer(problem, script[number % len(script)])
        if kind == "tests":
            return fenced(problem.tests(weak=problem.name in self.weak_tests or self._worse(request)))
        if kind == "rewrite":
            signature = re.search(r"the function signature `([^`]*)`", request.user)
            header = signature.group(1) if signature else f"def {problem.name}({problem.params})"
            if problem.name in self.drift_rewrite:
                header = f"def {problem.name}_v2({problem.params}, extra=None)"
            return (f"<|Completion Begin|>\n```python\n{header}:\n    \"\"\"{problem.question}\n\n"
                    f"    >>> {problem.name}({problem.cases[0][0]})\n    {problem.cases[0][1]}\n    \"\"\"\n```\n"
                    "<|Completion End|>")
        return "unknown request"

    def _worse(self, request: ScriptedRequest) -> bool:
        return self.worse_when is not None and self.worse_when in request.text

    def _propose(self, request: ScriptedRequest, kind: str) -> str:
        # Distinct problems in the order requests arrive is not deterministic under concurrency; derive the
        # problem from the request's seed instead, so the same request always gets the same question.
        index = (request.seed or 0) % len(self.problems)
        problem = self.problems[index]
        if kind == "propose_prefill":
            prefix = "Write a python function to"
            return " " + problem.question.removeprefix(prefix).strip() + "\nextra line that the stop string cuts"
        if kind == "propose_free":
            return f"{problem.question}\nextra line that the stop string cuts"
        if kind in ("propose_from_snippet", "propose_from_docs", "propose_evolve"):
            analysis = "<|Analysis Begin|>\nCore idea: a loop; O(n) time.\n<|Analysis End|>\n" \
                if kind == "propose_from_snippet" else ""
            return f"{analysis}<|Question Begin|>\n{problem.question}\n<|Question End|>"
        return f"{problem.question}\n\n[Question 3]: another one"

"""Tolerant, pure parsing of LLM output: questions, code blocks, tagged sections, entry points.

Every parser returns a value or raises `ParseFailure` whose message becomes the recorded reason of a
failed attempt: malformed model output is data, never a crash.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass

__all__ = [
    "ParseFailure",
    "TestInfo",
    "clean_question",
    "clean_tests",
    "ensure_solution_import",
    "extract_code",
    "extract_completion",
    "extract_joint",
    "function_signature",
    "solution_entry_point",
    "split_reasoning",
    "test_info",
    "tested_names",
]


class ParseFailure(ValueError):
    """The model's output does not contain what the prompt asked for; the message is the reason."""


_PYTHON_LANGS = ("python", "py", "python3")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_THINK_END = "</think>"
_TAG = r"<\|{name} Begin\|>(.*?)(?:<\|{name} End\|>|\Z)"


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning trace, answer). R1-style models put their trace before `</think>`."""
    if _THINK_END in text:
        head, _, tail = text.rpartition(_THINK_END)
        return head.replace("<think>", "", 1).strip(), tail
    if "<think>" in text:
        # The trace never ended (ran out of tokens): there is no answer.
        return text.replace("<think>", "", 1).strip(), ""
    return None, text


def _tagged(text: str, name: str) -> str | None:
    match = re.search(_TAG.format(name=name), text, re.DOTALL)
    return match.group(1) if match else None


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


def _complete_prefix(code: str) -> str | None:
    """The longest run of whole lines from the top that parses: what a model wrote before it was cut off
    by its token limit (small models repeat asserts until then)."""
    lines = code.splitlines()
    for end in range(len(lines) - 1, max(0, len(lines) // 2) - 1, -1):
        candidate = "\n".join(lines[:end]).rstrip()
        if candidate and _parses(candidate):
            return candidate
    return None


def extract_code(text: str, *, prefer: str | None = None, truncated: bool = False) -> str:
    """The Python code in a model answer: the first python fence, else any fence, else the whole text
    when it parses as Python. Prose around the code is ignored. With `prefer`, the first block that
    matches that regex wins (a tester often repeats the solution in a block before its tests). With
    `truncated` (the answer hit its token limit), an unfinished tail is dropped, whole lines at a time,
    keeping at least half of the code."""
    _, answer = split_reasoning(text)
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(answer)]
    python_blocks = [body for lang, body in blocks if lang in _PYTHON_LANGS]
    candidates = python_blocks or [body for lang, body in blocks if lang == ""]
    if not candidates:
        stripped = answer.strip()
        if stripped and _parses(stripped) and _looks_like_code(stripped):
            candidates = [stripped]
    if not candidates:
        raise ParseFailure("no python code block in the answer")
    if prefer is not None:
        candidates.sort(key=lambda body: re.search(prefer, body, re.MULTILINE) is None)   # stable: order kept
    # A fence inside a markdown list is indented as a whole; the code itself is not.
    code = textwrap.dedent(candidates[0]).strip("\n")
    if not code.strip():
        raise ParseFailure("empty code block")
    if truncated and not _parses(code) and (whole := _complete_prefix(code)) is not None:
        code = whole
    try:
        ast.parse(code)
    except SyntaxError as exc:
        where = f"line {exc.lineno}: " if exc.lineno else ""  # NUL bytes are a SyntaxError without a line
        raise ParseFailure(f"syntax error in code: {where}{exc.msg}") from None
    except ValueError as exc:  # e.g. NUL bytes
        raise ParseFailure(f"unparseable code: {exc}") from None
    return code + "\n"


def _looks_like_code(source: str) -> bool:
    tree = ast.parse(source)
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom))
               for node in tree.body)


def extract_joint(text: str) -> tuple[str, str]:
    """(solution, tests) from the paper's `<|Solution Begin|>`…`<|Test Begin|>` contract. Falls back to
    the first two python blocks when the tags are missing."""
    _, answer = split_reasoning(text)
    solution_part, test_part = _tagged(answer, "Solution"), _tagged(answer, "Test")
    if solution_part is not None and test_part is not None:
        try:
            solution = extract_code(solution_part)
        except ParseFailure as exc:
            raise ParseFailure(f"solution section: {exc}") from None
        try:
            tests = extract_code(test_part)
        except ParseFailure as exc:
            raise ParseFailure(f"test section: {exc}") from None
        return solution, tests
    blocks = [body for lang, body in _FENCE.findall(answer) if lang.lower() in (*_PYTHON_LANGS, "")]
    if len(blocks) < 2:
        raise ParseFailure("missing <|Solution Begin|>/<|Test Begin|> sections")
    return extract_code(f"```python\n{blocks[0]}```"), extract_code(f"```python\n{blocks[1]}```")


def extract_completion(text: str) -> str:
    """The function-completion question between `<|Completion Begin|>` tags (or the first python block)."""
    _, answer = split_reasoning(text)
    tagged = _tagged(answer, "Completion")
    source = tagged if tagged is not None else answer
    if "```" not in source and tagged is not None:
        source = f"```python\n{source.strip()}\n```"
    return extract_code(source)


_QUESTION_NOISE = [
    re.compile(r"<\|Question (Begin|End)\|>"),
    re.compile(r"<\|Analysis Begin\|>.*?<\|Analysis End\|>", re.DOTALL),
    re.compile(r"^\s*\[?\s*(New\s+)?Question\s*(\d+|N\+1)?\s*\]?\s*[:.]\s*", re.IGNORECASE),
    re.compile(r"^\s*#+\s*(New\s+)?(Coding\s+)?(Assessment\s+)?Question\s*:?\s*$", re.IGNORECASE | re.MULTILINE),
    re.compile(r"^\s*\*\*\s*(New\s+)?Question\s*\d*\s*:?\s*\*\*\s*:?\s*", re.IGNORECASE),
]


def clean_question(text: str, *, min_chars: int = 15) -> str:
    """Strip the headers and tags models wrap around a generated question."""
    _, answer = split_reasoning(text)
    tagged = re.search(r"<\|Question Begin\|>(.*?)(?:<\|Question End\|>|\Z)", answer, re.DOTALL)
    question = tagged.group(1) if tagged else answer
    for pattern in _QUESTION_NOISE:
        question = pattern.sub("", question)
    # A following "[Question N+2]" means the model went on inventing questions: keep only the first.
    question = re.split(r"\n\s*\[Question \d+\]", question)[0]
    question = question.strip().strip('"').strip()
    # Checked before the length: a bare "BAD_DOCUMENT" is short too, but the reason must say what the model meant.
    if "BAD_DOCUMENT" in question:
        raise ParseFailure("model marked the document unusable (BAD_DOCUMENT)")
    if len(question) < min_chars:
        raise ParseFailure(f"question too short ({len(question)} chars)")
    return question


def _top_level_functions(source: str) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(source)
    return [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def tested_names(tests: str) -> list[str]:
    """Names the test file imports from `solution` (in order), e.g. ['add']."""
    names: list[str] = []
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError):
        return names
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "solution":
            names.extend(alias.name for alias in node.names if alias.name != "*")
    return list(dict.fromkeys(names))


def solution_entry_point(solution: str, question: str = "") -> str:
    """The function the tests should target: the public top-level function that the question names,
    else the last public one that no other top-level function calls (helpers come first, usually)."""
    functions = [f for f in _top_level_functions(solution) if not f.name.startswith("_")]
    if not functions:
        classes = [n.name for n in ast.parse(solution).body if isinstance(n, ast.ClassDef)]
        if classes:
            return classes[-1]
        raise ParseFailure("solution defines no top-level function")
    named = [f.name for f in functions if re.search(rf"\b{re.escape(f.name)}\b", question)]
    if len(named) == 1:
        return named[0]
    called = {
        node.func.id
        for f in functions
        for node in ast.walk(f)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id != f.name
    }
    roots = [f.name for f in functions if f.name not in called]
    return (roots or [f.name for f in functions])[-1]


def _is_runner_statement(node: ast.stmt) -> bool:
    """Top-level code that runs tests or prints instead of defining them (`test_x()`, `print(...)`,
    `pytest.main()`, an `if __name__ == "__main__":` block)."""
    if isinstance(node, ast.If):
        test = node.test
        return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__")
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        func = node.value.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return name.startswith("test") or name in ("print", "main", "unittest_main")
    return False


def clean_tests(tests: str, entry_point: str) -> str:
    """Drop what would make a test file lie or crash at collection: top-level calls of its own tests and
    prints, and any definition that shadows the imported entry point (tests of a copy of the solution
    pasted into the test file would pass whatever the real solution does)."""
    tree = ast.parse(tests)
    lines = tests.splitlines(keepends=True)
    drop: list[tuple[int, int]] = []
    for node in tree.body:
        shadows = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == entry_point
        if shadows or _is_runner_statement(node):
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            drop.append((start, node.end_lineno or node.lineno))
    if not drop:
        return tests
    kept = [line for number, line in enumerate(lines, 1) if not any(a <= number <= b for a, b in drop)]
    return "".join(kept)


def ensure_solution_import(tests: str, entry_point: str) -> str:
    """The paper prepends `from solution import *`; do it only when the tests forgot to import."""
    if tested_names(tests) or re.search(r"^\s*(from solution import|import solution)", tests, re.MULTILINE):
        return tests
    return f"from solution import *\n{tests}"


@dataclass(frozen=True)
class TestInfo:
    function_name: str
    parameter_list: str
    function_declaration: str
    docstring: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "function_name": self.function_name,
            "parameter_list": self.parameter_list,
            "function_declaration": self.function_declaration,
            "docstring": self.docstring,
        }


def function_signature(function: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    prefix = "async def" if isinstance(function, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(function.returns)}" if function.returns else ""
    return f"{prefix} {function.name}({ast.unparse(function.args)}){returns}:"


def test_info(solution: str) -> list[TestInfo] | None:
    """KodCode's `test_info`: one entry per top-level function; None when the solution contains a class,
    as the reference pipeline does. Declarations keep their colon, as in KodCode's rows ("def f(x):")."""
    tree = ast.parse(solution)
    if any(isinstance(node, ast.ClassDef) for node in ast.walk(tree)):
        return None
    infos = []
    for function in _top_level_functions(solution):
        infos.append(TestInfo(
            function_name=function.name,
            parameter_list=f"({ast.unparse(function.args)})",
            function_declaration=function_signature(function),
            docstring=ast.get_docstring(function),
        ))
    return infos


test_info.__test__ = False  # type: ignore[attr-defined]  # keep pytest from collecting it
TestInfo.__test__ = False  # type: ignore[attr-defined]

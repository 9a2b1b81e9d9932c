"""Trusted-side checks run before any code executes: input sanity, tampering screen, expected tests.

Code in the test process can forge anything the child reports, so this static screen is the main
defence against fake passes; the fork server's phase recording and sentinel back it up.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

__all__ = ["ScreenResult", "expected_tests", "screen"]

# Modules whose mere use lets code reach into the test runner or the interpreter's bookkeeping.
_FORBIDDEN_MODULES = {"_pytest", "pluggy", "ctypes", "gc", "atexit", "posix", "_posixsubprocess",
                      "sitecustomize", "usercustomize", "conftest", "_thread", "cffi"}
# Names that only a dynamic import (importlib, __import__) would spell out as a string.
_FORBIDDEN_MODULE_STRINGS = {"_pytest", "pluggy", "ctypes", "atexit", "_posixsubprocess", "cffi"}
_FORBIDDEN_ATTRS = {
    "_exit": "os._exit", "_getframe": "frame tricks", "f_back": "frame tricks",
    "f_globals": "frame tricks", "f_locals": "frame tricks", "f_builtins": "frame tricks",
    "tb_frame": "frame tricks", "gi_frame": "frame tricks", "cr_frame": "frame tricks",
    "ag_frame": "frame tricks", "__subclasses__": "__subclasses__", "__globals__": "frame tricks",
    "settrace": "sys.settrace", "setprofile": "sys.setprofile", "addaudithook": "audit hooks",
    "_current_frames": "frame tricks", "__code__": "code objects",
}
_FORBIDDEN_STRINGS = ("_pytest", "conftest", "pytest.ini", "sitecustomize", "pytest_plugins",
                      "PYTEST_ADDOPTS", "os._exit")
_SKIP_CALLS = {"skip", "xfail", "skipif", "importorskip", "exit"}
_ALWAYS_EQUAL = {"__eq__": True, "__ne__": False, "__bool__": True, "__contains__": True}


@dataclass(frozen=True)
class ScreenResult:
    reason: str | None              # "tampering: ..." or None
    expected: tuple[str, ...] = ()  # test functions the test file must run: "test_x" or "TestC::test_x"


def _module_name(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return []


def _constant_return(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> object:
    """The constant every return of fn yields, or a sentinel when returns vary."""
    if isinstance(fn, ast.Lambda):
        body = fn.body
        return body.value if isinstance(body, ast.Constant) else _VARIES
    values = {repr(r.value.value) if isinstance(r.value, ast.Constant) else None
              for r in ast.walk(fn) if isinstance(r, ast.Return) and r.value is not None}
    if len(values) == 1 and None not in values:
        return ast.literal_eval(values.pop())
    return _VARIES


_VARIES = object()


def _scan(tree: ast.AST, *, is_solution: bool) -> str | None:
    for node in ast.walk(tree):
        for name in _module_name(node):
            top = name.split(".")[0]
            if top in _FORBIDDEN_MODULES:
                return top
            if is_solution and top == "pytest":
                return "pytest in solution"
            if top == "os" and isinstance(node, ast.ImportFrom) and any(a.name == "_exit" for a in node.names):
                return "os._exit"
            if top == "sys" and isinstance(node, ast.ImportFrom) and any(a.name == "modules" for a in node.names):
                return "sys.modules"
        if (isinstance(node, ast.Attribute) and node.attr == "modules"
                and isinstance(node.value, ast.Name) and node.value.id == "sys"):
            return "sys.modules"
        if isinstance(node, ast.Attribute) and node.attr in _FORBIDDEN_ATTRS:
            return _FORBIDDEN_ATTRS[node.attr]
        if isinstance(node, ast.Name) and node.id in ("__import__", "__builtins__"):
            return node.id
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in _FORBIDDEN_MODULE_STRINGS:
                return node.value
            for needle in _FORBIDDEN_STRINGS:
                if needle in node.value:
                    return needle
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name.startswith("pytest_"):
                return "pytest hook"
            if node.name in _ALWAYS_EQUAL and _constant_return(node) == _ALWAYS_EQUAL[node.name]:
                return f"{node.name} returns a constant"
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == "pytest_plugins":
                    return "pytest_plugins"
                if (isinstance(target, ast.Name) and target.id in _ALWAYS_EQUAL
                        and isinstance(node.value, ast.Lambda)
                        and _constant_return(node.value) == _ALWAYS_EQUAL[target.id]):
                    return f"{target.id} returns a constant"
        if isinstance(node, ast.Attribute) and node.attr in _SKIP_CALLS:
            base = node.value
            # pytest.skip(...), pytest.xfail(...), pytest.mark.skip, pytest.mark.xfail, pytest.exit(...)
            if (isinstance(base, ast.Name) and base.id in ("pytest", "mark")) or (
                    isinstance(base, ast.Attribute) and base.attr == "mark"):
                return "skip/xfail"
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pytest"):
            if any(a.name in _SKIP_CALLS for a in node.names):
                return "skip/xfail"
    return None


def _is_fixture(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for deco in fn.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        if isinstance(target, ast.Attribute) and target.attr == "fixture":
            return True
        if isinstance(target, ast.Name) and target.id == "fixture":
            return True
    return False


def expected_tests(tree: ast.Module) -> tuple[str, ...]:
    """Module-level test_* functions and test_* methods of Test* classes, as pytest collects them."""
    found: dict[str, None] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name.startswith("test") and not _is_fixture(node):
                found[node.name] = None
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            has_init = any(isinstance(n, ast.FunctionDef) and n.name == "__init__" for n in node.body)
            if has_init:
                continue
            for member in node.body:
                if (isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and member.name.startswith("test") and not _is_fixture(member)):
                    found[f"{node.name}::{member.name}"] = None
        elif isinstance(node, ast.Assign):
            # `test_x = something` rebinds a name pytest would otherwise have collected.
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found.pop(target.id, None)
    return tuple(found)


def screen(solution_tree: ast.Module, tests_tree: ast.Module) -> ScreenResult:
    """Reject tampering in either file; otherwise return the tests the test file must run."""
    hit = _scan(solution_tree, is_solution=True)
    if hit is None:
        hit = _scan(tests_tree, is_solution=False)
    if hit is not None:
        return ScreenResult(reason=f"tampering: {hit}")
    return ScreenResult(reason=None, expected=expected_tests(tests_tree))

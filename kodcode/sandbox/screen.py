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


_TESTCASE_BASES = {"TestCase", "IsolatedAsyncioTestCase", "unittest.TestCase", "unittest.IsolatedAsyncioTestCase"}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _own_test_flag(cls: ast.ClassDef) -> bool | None:
    """The class body's own `__test__ = <constant>`, or None when it sets none."""
    flag = None
    for node in cls.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__test__" for t in node.targets):
            flag = bool(node.value.value) if isinstance(node.value, ast.Constant) else True
    return flag


def expected_tests(tree: ast.Module) -> tuple[str, ...]:
    """The tests pytest (default python_functions/python_classes) collects from this module.

    Module-level `test*` functions; `test*` methods (own and inherited from classes of this file) of
    `Test*` classes without `__init__`; and every unittest.TestCase subclass whatever its name, with
    the `test*` methods unittest's loader finds. Names are "test_x" or "Class::test_x".
    """
    found: dict[str, None] = {}
    classes: dict[str, ast.ClassDef] = {}
    testcases: set[str] = set()

    def test_flag(cls: ast.ClassDef, seen: frozenset[str] = frozenset()) -> bool:
        """`__test__` as the class would inherit it from classes of this file (pytest skips False)."""
        own = _own_test_flag(cls)
        if own is not None:
            return own
        for base in cls.bases:
            local = classes.get(_dotted(base))
            if local is not None and local.name not in seen and not test_flag(local, seen | {cls.name}):
                return False
        return True

    def methods(cls: ast.ClassDef, seen: frozenset[str] = frozenset()) -> dict[str, bool]:
        """Method name -> is a test, base classes first so the class's own definitions win."""
        names: dict[str, bool] = {}
        for base in cls.bases:
            local = classes.get(_dotted(base))
            if local is not None and local.name not in seen:
                names.update(methods(local, seen | {cls.name}))
        for member in cls.body:
            if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names[member.name] = member.name.startswith("test") and not _is_fixture(member)
            elif isinstance(member, ast.Assign):
                for target in member.targets:
                    if isinstance(target, ast.Name):
                        names[target.id] = False
        return names

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.pop(node.name, None)
            if node.name.startswith("test") and not _is_fixture(node):
                found[node.name] = None
        elif isinstance(node, ast.ClassDef):
            for key in [k for k in found if k.startswith(f"{node.name}::")]:
                del found[key]   # a later class of the same name replaces the earlier one
            classes[node.name] = node
            bases = {_dotted(b) for b in node.bases}
            is_testcase = bool(bases & _TESTCASE_BASES) or bool(bases & testcases)
            if is_testcase:
                testcases.add(node.name)
            else:
                testcases.discard(node.name)
            if not test_flag(node):
                continue
            members = methods(node)
            if not is_testcase and (not node.name.startswith("Test") or "__init__" in members):
                continue
            for name, is_test in members.items():
                if is_test:
                    found[f"{node.name}::{name}"] = None
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

"""Vacuous-test detection: pytest tests that would pass whatever the entry point returns.

Pure and static (AST only, nothing runs). A test is flagged, with its reasons, when:

- no assertion looks at the entry point's result: no `assert` that refers to a call of the entry point,
  directly or through a variable assigned from one (followed through chains of assignments), no
  `pytest.raises` around such a call, and no call of a helper in the test file that asserts on it;
- its assertions on the result only check the type (`isinstance`, `type(x) == T`), `is not None`, or
  truthiness of one polarity (`assert f(x)` everywhere, or `assert not f(x)` everywhere; a suite with
  both polarities is a real check of a predicate and is not flagged for it);
- an assertion compares the result with itself (`assert f(x) == f(x)`) and nothing better is asserted;
- its body is identical to an earlier test's (decorators included, docstrings ignored).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

__all__ = ["TestFinding", "VacuityReport", "find_vacuous_tests"]

_NO_ASSERTION = "no assertion on the result of {entry_point}"
_DUPLICATE = "duplicate of {name}"
_SELF_COMPARISON = "compares the result with itself"
_TRUTHY = "only checks truthiness"
_FALSY = "only checks falsiness"


@dataclass(frozen=True)
class TestFinding:
    name: str
    reasons: tuple[str, ...]

    __test__ = False   # not a pytest test class, despite the name


@dataclass(frozen=True)
class VacuityReport:
    tests: tuple[str, ...]                  # every test found, in file order
    findings: tuple[TestFinding, ...]       # the vacuous ones
    parse_error: str | None = None

    @property
    def flagged(self) -> bool:
        return bool(self.findings)

    @property
    def all_vacuous(self) -> bool:
        """No test checks anything (a file with no tests at all counts as all vacuous)."""
        return len(self.findings) >= len(self.tests)

    def reason(self) -> str | None:
        if not self.findings:
            return None
        first = self.findings[0]
        return f"vacuous tests: {len(self.findings)} of {len(self.tests)} ({first.name}: {'; '.join(first.reasons)})"

    def as_dict(self) -> dict[str, Any]:
        return {"tests": len(self.tests), "vacuous": len(self.findings), "all_vacuous": self.all_vacuous,
                "findings": {finding.name: list(finding.reasons) for finding in self.findings},
                **({"parse_error": self.parse_error} if self.parse_error else {})}


def find_vacuous_tests(tests: str, entry_point: str) -> VacuityReport:
    """Flag the vacuous tests of a pytest file that tests `entry_point`."""
    try:
        tree = ast.parse(tests)
    except SyntaxError as exc:
        return VacuityReport((), (), parse_error=f"tests do not parse: {exc.msg} (line {exc.lineno})")
    names = _entry_point_names(tree, entry_point)
    functions = _test_functions(tree)
    helpers = _asserting_helpers(tree, names)
    analyses = {function.name: _analyse(function, names, helpers) for function in functions}
    # Truthiness of both polarities across the suite is a real check of a predicate.
    polarities = {analysis.polarity for analysis in analyses.values() if analysis.polarity}
    both_polarities = polarities == {_TRUTHY, _FALSY}
    seen_bodies: dict[str, str] = {}
    findings: list[TestFinding] = []
    for function in functions:
        analysis = analyses[function.name]
        reasons: list[str] = []
        if not analysis.checks_result:
            reasons.append(_NO_ASSERTION.format(entry_point=entry_point))
        elif not analysis.strong:
            weak = [kind for kind in analysis.weak_kinds if not (both_polarities and kind in (_TRUTHY, _FALSY))]
            if weak:
                reasons.append(_describe_weak(weak))
        body = _body_key(function)
        if body in seen_bodies:
            reasons.append(_DUPLICATE.format(name=seen_bodies[body]))
        else:
            seen_bodies[body] = function.name
        if reasons:
            findings.append(TestFinding(function.name, tuple(reasons)))
    return VacuityReport(tuple(function.name for function in functions), tuple(findings))


def _describe_weak(kinds: list[str]) -> str:
    if kinds == [_SELF_COMPARISON]:
        return _SELF_COMPARISON
    checks = [kind.removeprefix("only checks ") for kind in kinds if kind != _SELF_COMPARISON]
    described = "only checks " + " and ".join(checks)
    return described + ("; " + _SELF_COMPARISON if _SELF_COMPARISON in kinds else "")


# -- finding tests and the entry point's names -----------------------------------------------------------

def _entry_point_names(tree: ast.Module, entry_point: str) -> set[str]:
    """Names the entry point goes by in the test file: itself, `from solution import f as g` aliases.
    Attribute access (`solution.f(...)`) is matched by attribute name."""
    names = {entry_point}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name == entry_point and alias.asname:
                    names.add(alias.asname)
    return names


def _test_functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    found: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            found.append(node)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            found.extend(child for child in node.body if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                         and child.name.startswith("test"))
    return found


def _body_key(function: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str) and len(body) > 1:
        body = body[1:]
    return "\n".join([*(ast.dump(d) for d in function.decorator_list), *(ast.dump(s) for s in body)])


def _asserting_helpers(tree: ast.Module, names: set[str]) -> set[str]:
    """Non-test functions in the file that assert on a call of the entry point or of a parameter
    (HumanEval's `check(candidate)` style): a test calling one with the entry point delegates to it."""
    helpers: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("test"):
            parameters = {arg.arg for arg in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)}
            analysis = _analyse(node, names | parameters, set())
            if analysis.checks_result and analysis.strong:
                helpers.add(node.name)
    return helpers


# -- one test ----------------------------------------------------------------------------------------------

@dataclass
class _Analysis:
    checks_result: bool = False          # some assertion looks at the entry point's result
    strong: bool = False                 # some such assertion is more than a weak check
    weak_kinds: tuple[str, ...] = ()
    polarity: str | None = None          # _TRUTHY / _FALSY when every result check is that one kind


def _analyse(function: ast.FunctionDef | ast.AsyncFunctionDef, names: set[str], helpers: set[str]) -> _Analysis:
    tainted = _tainted_variables(function, names)

    def depends(expr: ast.AST) -> bool:
        for node in ast.walk(expr):
            if isinstance(node, ast.Call) and _calls_entry_point(node, names):
                return True
            if isinstance(node, ast.Name) and node.id in tainted and isinstance(node.ctx, ast.Load):
                return True
        return False

    analysis = _Analysis()
    kinds: list[str] = []
    for node in ast.walk(function):
        if isinstance(node, ast.Assert) and depends(node.test):
            analysis.checks_result = True
            kind = _weak_kind(node.test, depends)
            if kind is None:
                analysis.strong = True
            elif kind not in kinds:
                kinds.append(kind)
        elif isinstance(node, (ast.With, ast.AsyncWith)) and any(_is_raises(item.context_expr) for item in node.items):
            if any(depends(statement) for statement in node.body):
                analysis.checks_result = analysis.strong = True
        elif isinstance(node, ast.Call) and _is_assert_call(node, helpers) and any(
                depends(arg) or _names_entry_point(arg, names) for arg in (*node.args, *(k.value for k in node.keywords))):
            analysis.checks_result = analysis.strong = True
    analysis.weak_kinds = tuple(kinds)
    if not analysis.strong and kinds in ([_TRUTHY], [_FALSY]):
        analysis.polarity = kinds[0]
    return analysis


def _tainted_variables(function: ast.AST, names: set[str]) -> set[str]:
    """Variables holding (something computed from) the entry point's result, to a fixed point."""
    tainted: set[str] = set()
    assignments: list[tuple[list[ast.expr], ast.AST]] = []
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            assignments.append((node.targets, node.value))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and node.value is not None:
            assignments.append(([node.target], node.value))
        elif isinstance(node, ast.NamedExpr):
            assignments.append(([node.target], node.value))
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            assignments.append(([node.target], node.iter))
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            assignments.extend(([item.optional_vars], item.context_expr) for item in node.items if item.optional_vars)
    changed = True
    while changed:
        changed = False
        for targets, value in assignments:
            if not _refers(value, names, tainted):
                continue
            for target in targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name) and leaf.id not in tainted:
                        tainted.add(leaf.id)
                        changed = True
    return tainted


def _refers(expr: ast.AST, names: set[str], tainted: set[str]) -> bool:
    for node in ast.walk(expr):
        if isinstance(node, ast.Call) and _calls_entry_point(node, names):
            return True
        if isinstance(node, ast.Name) and node.id in tainted:
            return True
    return False


def _calls_entry_point(call: ast.Call, names: set[str]) -> bool:
    func = call.func
    return (isinstance(func, ast.Name) and func.id in names) or (isinstance(func, ast.Attribute) and func.attr in names)


def _names_entry_point(expr: ast.AST, names: set[str]) -> bool:
    return any(isinstance(node, ast.Name) and node.id in names for node in ast.walk(expr))


def _is_raises(expr: ast.expr) -> bool:
    call = expr.func if isinstance(expr, ast.Call) else expr
    return (isinstance(call, ast.Attribute) and call.attr in ("raises", "assertRaises", "assertRaisesRegex")) or \
        (isinstance(call, ast.Name) and call.id == "raises")


def _is_assert_call(call: ast.Call, helpers: set[str]) -> bool:
    """unittest's self.assertEqual, numpy.testing.assert_allclose, or an asserting helper in the file."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name in helpers:
        return True
    if name in ("assertTrue", "assertFalse", "assertIsNotNone", "assertIsInstance"):
        return False   # weak checks, the same as their bare-assert forms
    return name.startswith(("assert", "assert_"))


def _weak_kind(test: ast.expr, depends: Any) -> str | None:
    """What a weak assertion checks, or None when it pins down the result more than that."""
    if isinstance(test, ast.BoolOp):
        kinds = {_weak_kind(value, depends) for value in test.values if depends(value)}
        return None if None in kinds or not kinds else sorted(k for k in kinds if k)[0]
    if isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id in ("isinstance", "callable"):
        return "only checks the type"
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = test.operand
        if isinstance(inner, (ast.Name, ast.Call, ast.Attribute, ast.Subscript)) and not _is_type_check(inner):
            return _FALSY
        return _weak_kind(inner, depends)
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, op, right = test.left, test.ops[0], test.comparators[0]
        if isinstance(op, (ast.IsNot, ast.NotEq)) and (_is_none(right) or _is_none(left)):
            return "only checks is not None"
        if _is_type_of(left) or _is_type_of(right):
            return "only checks the type"
        if ast.dump(left) == ast.dump(right):
            return _SELF_COMPARISON
        return None
    if isinstance(test, (ast.Name, ast.Call, ast.Attribute, ast.Subscript)):
        return _TRUTHY
    return None


def _is_type_check(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "isinstance"


def _is_none(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Constant) and expr.value is None


def _is_type_of(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "type"

"""Mutation testing of a trial's tests: do they notice when the solution is made subtly wrong?

A trial whose solution passes its own tests is only evidence if the tests would have failed on a wrong
solution. We make a handful of small, plausible bugs in the solution (mutants: an operator, a comparison,
a constant, an off-by-one boundary, a return value), run the same tests against each in the sandbox, and
count how many the tests kill. Generation is pure and deterministic by seed; running goes through the
public sandbox port only, so a mutant is exactly as contained as any other untrusted code.

Mutants that are equivalent by construction are never generated: mutations in docstrings, annotations,
dead code (after a return, under `if False:` / `if __name__ == "__main__":`, functions the entry point
never reaches), identity operands (`x * 1` → `x // 1`, `x + 0` → `x - 0`), exception messages, and any
mutant whose source unparses identically to the original or to an earlier mutant. Mutants that do not
compile are dropped too.
"""

from __future__ import annotations

import ast
import copy
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from kodcode.sandbox.base import Limits, Sandbox, Verdict

__all__ = [
    "OPERATORS",
    "Mutant",
    "MutantRun",
    "MutationReport",
    "generate_mutants",
    "mutant_limits",
    "run_mutation_gate",
]

# Kinds of mutation, in the order a round-robin pick visits them (so a small cap still mixes kinds).
OPERATORS = ("comparison", "boundary", "arithmetic", "return", "constant", "logical")

_ARITHMETIC_SWAP: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
    ast.BitXor: ast.BitOr, ast.LShift: ast.RShift, ast.RShift: ast.LShift,
}
# Comparison mutations negate the test; boundary mutations move its edge by one (the off-by-one bug).
_COMPARISON_NEGATE: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.LtE: ast.Gt, ast.Gt: ast.LtE, ast.GtE: ast.Lt,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}
_COMPARISON_BOUNDARY: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
}
_SYMBOL = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
    ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>",
    ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
    ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not", ast.And: "and", ast.Or: "or",
}


@dataclass(frozen=True)
class Mutant:
    operator: str          # one of OPERATORS
    line: int              # line of the mutated node in the solution
    description: str       # e.g. "line 3: < → <="
    source: str            # the whole mutated solution


@dataclass(frozen=True)
class MutantRun:
    mutant: Mutant
    killed: bool
    outcome: str           # "survived", or the mutant's verdict reason ("failed: test_a", "timeout", ...)


@dataclass(frozen=True)
class MutationReport:
    """What the tests did to the mutants. `passed` is decided exactly as if every mutant had run, even
    when the run stopped early: once `needed` are killed, or too many survived to ever reach it."""

    threshold: float
    generated: int
    needed: int                                  # kills needed out of `generated`
    runs: tuple[MutantRun, ...] = ()
    seed: int = 0

    @property
    def run(self) -> int:
        return len(self.runs)

    @property
    def killed(self) -> int:
        return sum(r.killed for r in self.runs)

    @property
    def survived(self) -> int:
        return self.run - self.killed

    @property
    def score(self) -> float | None:
        """Killed / run over the mutants actually run; None when there was nothing to run."""
        return self.killed / self.run if self.run else None

    @property
    def passed(self) -> bool:
        return self.killed >= self.needed

    @property
    def reason(self) -> str | None:
        if self.passed:
            return None
        return (f"weak tests: killed {self.killed} of {self.run} mutants "
                f"(threshold {self.threshold:g}, needed {self.needed} of {self.generated})")

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "score": None if self.score is None else round(self.score, 4),
            "killed": self.killed, "run": self.run, "generated": self.generated, "needed": self.needed,
            "threshold": self.threshold, "seed": self.seed,
            "survivors": [r.mutant.description for r in self.runs if not r.killed],
            "operators": sorted({r.mutant.operator for r in self.runs}),
        }


# -- generation ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Site:
    operator: str
    index: int                                   # position of the node in ast.walk order of a fresh parse
    line: int
    describe: str
    apply: Callable[[ast.AST], None] = field(compare=False)   # edits that node in place


def generate_mutants(solution: str, *, seed: int, limit: int, entry_point: str | None = None) -> list[Mutant]:
    """Up to `limit` distinct, compilable, non-equivalent-by-construction mutants of `solution`.

    Deterministic: the same solution, seed and limit give the same mutants in the same order. Kinds are
    mixed round-robin (a shuffled order within each kind), so a small cap still tests several kinds.
    An unparseable solution has no mutants.
    """
    try:
        original_tree = ast.parse(solution)
    except SyntaxError:
        return []
    original = ast.unparse(original_tree)
    sites = _collect_sites(original_tree, entry_point)
    rng = random.Random(seed)
    by_kind: dict[str, list[_Site]] = {kind: [] for kind in OPERATORS}
    for site in sites:
        by_kind[site.operator].append(site)
    for group in by_kind.values():
        rng.shuffle(group)
    seen = {original}
    mutants: list[Mutant] = []
    for site in _round_robin([by_kind[kind] for kind in OPERATORS]):
        if len(mutants) >= limit:
            break
        tree = copy.deepcopy(original_tree)
        site.apply(_node_at(tree, site.index))
        try:
            source = ast.unparse(ast.fix_missing_locations(tree))
            compile(source, "solution.py", "exec")
        except (SyntaxError, ValueError, RecursionError):
            continue
        if source in seen:
            continue   # equivalent by construction: the same program text as the original or another mutant
        seen.add(source)
        mutants.append(Mutant(site.operator, site.line, f"line {site.line}: {site.describe}", source + "\n"))
    return mutants


def _round_robin(groups: list[list[_Site]]) -> Iterator[_Site]:
    position = 0
    while any(position < len(group) for group in groups):
        for group in groups:
            if position < len(group):
                yield group[position]
        position += 1


def _node_at(tree: ast.AST, index: int) -> ast.AST:
    for position, node in enumerate(ast.walk(tree)):
        if position == index:
            return node
    raise IndexError(index)


def _collect_sites(tree: ast.Module, entry_point: str | None) -> list[_Site]:
    skipped = _inert_nodes(tree, entry_point)
    sites: list[_Site] = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skipped:
            continue
        sites.extend(_sites_for(node, index))
    return sites


def _sites_for(node: ast.AST, index: int) -> Iterator[_Site]:
    line = getattr(node, "lineno", 0)
    if isinstance(node, (ast.BinOp, ast.AugAssign)):
        new_op = _ARITHMETIC_SWAP.get(type(node.op))
        if new_op is not None and not _identity_operand(node, new_op):
            yield _Site("arithmetic", index, line, f"{_SYMBOL[type(node.op)]} → {_SYMBOL[new_op]}",
                        _set_attr("op", new_op))
    elif isinstance(node, ast.Compare):
        for position, op in enumerate(node.ops):
            negated = _COMPARISON_NEGATE.get(type(op))
            if negated is not None:
                yield _Site("comparison", index, line, f"{_SYMBOL[type(op)]} → {_SYMBOL[negated]}",
                            _set_compare_op(position, negated))
            shifted = _COMPARISON_BOUNDARY.get(type(op))
            if shifted is not None:
                yield _Site("boundary", index, line, f"{_SYMBOL[type(op)]} → {_SYMBOL[shifted]}",
                            _set_compare_op(position, shifted))
    elif isinstance(node, ast.BoolOp):
        swapped = ast.Or if isinstance(node.op, ast.And) else ast.And
        yield _Site("logical", index, line, f"{_SYMBOL[type(node.op)]} → {_SYMBOL[swapped]}", _set_attr("op", swapped))
    elif isinstance(node, ast.Constant):
        mutated = _mutate_constant(node.value)
        if mutated is not _NO_MUTATION:
            yield _Site("constant", index, line, f"{node.value!r} → {mutated!r}", _set_value(mutated))
    elif isinstance(node, ast.Return) and node.value is not None:
        if not (isinstance(node.value, ast.Constant) and node.value.value is None):
            yield _Site("return", index, line, "return value → None", _return_none)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
            and 1 <= len(node.args) <= 3 and not node.keywords:
        stop = 0 if len(node.args) == 1 else 1
        yield _Site("boundary", index, line, "range stop + 1", _shift_arg(stop))
        if len(node.args) >= 2:
            yield _Site("boundary", index, line, "range start + 1", _shift_arg(0))
    elif isinstance(node, ast.Slice):
        if node.upper is not None:
            yield _Site("boundary", index, line, "slice upper bound + 1", _shift_slice("upper"))
        if node.lower is not None:
            yield _Site("boundary", index, line, "slice lower bound + 1", _shift_slice("lower"))


_NO_MUTATION = object()


def _mutate_constant(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 1.0 if math.isfinite(value) else _NO_MUTATION
    if isinstance(value, str):
        return "" if value else "kodcode"
    return _NO_MUTATION   # None, bytes, Ellipsis, complex: nothing plausible to change them into


def _identity_operand(node: ast.BinOp | ast.AugAssign, new_op: type[ast.operator]) -> bool:
    """`x + 0` → `x - 0`, `x * 1` → `x // 1`, `x ** 1` → `x * 1`: the same value either way."""
    right = node.value if isinstance(node, ast.AugAssign) else node.right
    left = None if isinstance(node, ast.AugAssign) else node.left
    old_op = type(node.op)

    def is_const(expr: ast.expr | None, value: int) -> bool:
        return isinstance(expr, ast.Constant) and not isinstance(expr.value, bool) and expr.value == value

    if {old_op, new_op} <= {ast.Add, ast.Sub}:
        return is_const(right, 0)
    if {old_op, new_op} <= {ast.Mult, ast.FloorDiv, ast.Div, ast.Pow}:
        return is_const(right, 1) or (old_op is ast.Mult and new_op is ast.Pow and is_const(left, 1))
    if {old_op, new_op} <= {ast.BitOr, ast.BitXor}:
        return is_const(right, 0)
    return False


def _set_attr(name: str, op: type[ast.AST]) -> Callable[[ast.AST], None]:
    def apply(node: ast.AST) -> None:
        setattr(node, name, op())
    return apply


def _set_compare_op(position: int, op: type[ast.cmpop]) -> Callable[[ast.AST], None]:
    def apply(node: ast.AST) -> None:
        assert isinstance(node, ast.Compare)
        node.ops[position] = op()
    return apply


def _set_value(value: object) -> Callable[[ast.AST], None]:
    def apply(node: ast.AST) -> None:
        assert isinstance(node, ast.Constant)
        node.value = value
        node.kind = None
    return apply


def _return_none(node: ast.AST) -> None:
    assert isinstance(node, ast.Return)
    node.value = ast.Constant(None)


def _plus_one(expr: ast.expr) -> ast.expr:
    return ast.BinOp(left=expr, op=ast.Add(), right=ast.Constant(1))


def _shift_arg(position: int) -> Callable[[ast.AST], None]:
    def apply(node: ast.AST) -> None:
        assert isinstance(node, ast.Call)
        node.args[position] = _plus_one(node.args[position])
    return apply


def _shift_slice(bound: str) -> Callable[[ast.AST], None]:
    def apply(node: ast.AST) -> None:
        setattr(node, bound, _plus_one(getattr(node, bound)))
    return apply


# -- what not to mutate ----------------------------------------------------------------------------------

def _inert_nodes(tree: ast.Module, entry_point: str | None) -> set[int]:
    """ids of nodes whose mutation cannot change what the tests observe (by construction)."""
    inert: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            inert.update(id(child) for child in ast.walk(node))

    for function in _unreached_functions(tree, entry_point):
        mark(function)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                mark(body[0])                                       # docstring
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mark(node.returns)
            for arg in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs,
                        node.args.vararg, node.args.kwarg):
                if arg is not None:
                    mark(arg.annotation)
            for decorator in node.decorator_list:
                mark(decorator)
        elif isinstance(node, ast.AnnAssign):
            mark(node.annotation)
        elif isinstance(node, ast.Raise):
            mark(node.exc)                                          # exception messages and types
            mark(node.cause)
        elif isinstance(node, ast.Assert):
            mark(node.msg)
        elif isinstance(node, ast.JoinedStr):
            mark(node)                                              # f-string pieces: cosmetic, fragile to unparse
        elif isinstance(node, (ast.If, ast.While)) and _never_true(node.test):
            mark(node.test)
            for statement in node.body:
                mark(statement)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            mark(node)                                              # bare string/number statements
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            mark(node)                                              # output the tests cannot see
        for body_name in ("body", "orelse", "finalbody"):
            statements = getattr(node, body_name, None)
            if isinstance(statements, list):
                for dead in _after_jump(statements):
                    mark(dead)
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                for dead in _after_jump(handler.body):
                    mark(dead)
    for statement in tree.body:
        if isinstance(statement, ast.If) and _is_main_guard(statement.test):
            mark(statement.test)
            for inner in statement.body:
                mark(inner)
    return inert


def _after_jump(statements: list[ast.stmt]) -> list[ast.stmt]:
    for position, statement in enumerate(statements):
        if isinstance(statement, (ast.Return, ast.Raise, ast.Continue, ast.Break)):
            return statements[position + 1:]
    return []


def _never_true(test: ast.expr) -> bool:
    if isinstance(test, ast.Constant):
        return not test.value
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def _is_main_guard(test: ast.expr) -> bool:
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and len(test.comparators) == 1 and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


def _unreached_functions(tree: ast.Module, entry_point: str | None) -> list[ast.AST]:
    """Top-level functions and classes the entry point never refers to, directly or through others.
    Module-level statements run at import, so whatever they name is reached too."""
    definitions = {node.name: node for node in tree.body
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    if entry_point is None or entry_point not in definitions:
        return []
    reached: set[str] = set()
    pending = [entry_point]
    for statement in tree.body:
        if not isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            pending.extend(_names_in(statement))
    while pending:
        name = pending.pop()
        if name in reached or name not in definitions:
            continue
        reached.add(name)
        pending.extend(_names_in(definitions[name]))
    return [node for name, node in definitions.items() if name not in reached]


def _names_in(node: ast.AST) -> list[str]:
    names = [child.id for child in ast.walk(node) if isinstance(child, ast.Name)]
    names += [child.attr for child in ast.walk(node) if isinstance(child, ast.Attribute)]
    return names


# -- running ---------------------------------------------------------------------------------------------

def mutant_limits(original: Verdict, timeout_s: float) -> Limits:
    """Tighter limits than the trial's own: a mutant that loops forever is a kill, not a 10 s wait."""
    wall = min(timeout_s, max(2.0, 5.0 * original.duration_s + 1.0))
    base = Limits()
    return replace(base, wall_s=wall, per_test_s=min(base.per_test_s, wall), cpu_s=max(1, math.ceil(wall)),
                   coverage=False)


async def run_mutation_gate(sandbox: Sandbox, tests: str, mutants: list[Mutant], *, threshold: float,
                            concurrency: int = 4, limits: Limits | None = None, seed: int = 0) -> MutationReport:
    """Run `tests` against the mutants through `sandbox` until the outcome is decided.

    A mutant is killed by any verdict other than a pass (failed test, error, timeout, crash). Mutants
    start in order, `concurrency` at a time; no new one starts once enough were killed to reach the
    threshold, or enough survived that it can never be reached. Runs already started finish (they are
    not cancelled mid-sandbox), and their outcomes are kept.
    """
    generated = len(mutants)
    needed = math.ceil(threshold * generated - 1e-9)
    report = MutationReport(threshold=threshold, generated=generated, needed=needed, seed=seed)
    runs: list[MutantRun | None] = [None] * generated
    counts = {"killed": 0, "survived": 0}

    def decided() -> bool:
        return counts["killed"] >= needed or counts["survived"] > generated - needed

    async def one(position: int, slot: anyio.Semaphore) -> None:
        async with slot:
            if decided():
                return
            verdict = await sandbox.run(mutants[position].source, tests, limits)
        killed = not verdict.passed
        counts["killed" if killed else "survived"] += 1
        outcome = (verdict.reason or "killed") if killed else "survived"
        runs[position] = MutantRun(mutants[position], killed, outcome)

    if generated and not decided():
        slot = anyio.Semaphore(max(1, concurrency))
        async with anyio.create_task_group() as group:
            for position in range(generated):
                group.start_soon(one, position, slot)
    return replace(report, runs=tuple(run for run in runs if run is not None))

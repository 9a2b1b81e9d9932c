"""Which acceptance rule over the execution matrix? A synthetic world with ground truth, every rule on it.

Each question gets K attempts. A solution is right with the question's probability p_s (drawn per
question), else a wrong program of one of a few *mistake classes* (small models share mistakes: class
0 is the common one), or a crash. Each attempt's test file has N functions; a function is right with
probability p_t, else it encodes a mistake class (it passes that class's programs and fails right
ones; "tests written with a solution encode its mistake") or is garbage (fails everything). A right
function passes right programs and catches a given mistake class with probability `cover`. Copies of
the common mistake are often the same program (identical code). The same matrices go to every rule:

  diagonal     the paper: the first attempt whose solution passes all of its own tests;
  majority     the largest group of identical pass patterns, with a test file it passes whole;
  codet        kodcode.quality.consensus.candidates()[0]: CodeT's |group| x |pattern|, dropping a
               wrong-looking function only on >= n distinct agreeing programs (or never) and only a
               minority of the file;
  codet+detect the same, trying candidates in order until the accepted file rejects every
               detectable wrong solution (the detection gate). kodcode's default: drop on 3.

Printed: yield (questions accepted) and precision (accepted solutions that are right), per K.

    .venv/bin/python benchmarks/consensus_sim.py [--questions N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from dataclasses import dataclass

from kodcode.quality.consensus import Cell, candidates

Truth = tuple[str, int]          # ("right", 0) | ("wrong", class) | ("crash", 0)


@dataclass(frozen=True)
class Function:
    kind: str                    # right | encodes | garbage
    mistake: int = -1            # encodes: which class it passes
    catches: frozenset[int] = frozenset()   # right: mistake classes it catches


@dataclass(frozen=True)
class World:
    classes: int = 3
    functions: int = 4
    p_test_right: float = 0.8
    p_encodes: float = 0.5       # a wrong function encodes a mistake (else it is garbage)
    cover: float = 0.5
    p_crash: float = 0.2
    p_same_code: float = 0.6     # a wrong program of a class is the same code as an earlier one


def draw_question(world: World, attempts: int, rng: random.Random) -> tuple[list[Truth], list[str], list[list[Function]]]:
    p_right = rng.uniform(0.1, 0.9)
    truths: list[Truth] = []
    codes: list[str] = []
    files: list[list[Function]] = []
    for attempt in range(attempts):
        roll = rng.random()
        if roll < p_right:
            truths.append(("right", 0))
            codes.append(f"right{attempt}")
        elif rng.random() < world.p_crash:
            truths.append(("crash", 0))
            codes.append(f"crash{attempt}")
        else:
            mistake = 0 if rng.random() < 0.6 else rng.randrange(1, world.classes)
            truths.append(("wrong", mistake))
            earlier = [c for c, t in zip(codes, truths) if t == ("wrong", mistake)]
            codes.append(earlier[0] if earlier and rng.random() < world.p_same_code else f"wrong{mistake}.{attempt}")
        own = truths[-1]
        file = []
        for _ in range(world.functions):
            if rng.random() < world.p_test_right:
                catches = frozenset(m for m in range(world.classes) if rng.random() < world.cover)
                file.append(Function("right", catches=catches))
            elif rng.random() < world.p_encodes:
                # Written beside a wrong solution, a wrong test tends to encode that very mistake.
                mistake = own[1] if own[0] == "wrong" else rng.randrange(world.classes)
                file.append(Function("encodes", mistake=mistake))
            else:
                file.append(Function("garbage"))
        files.append(file)
    return truths, codes, files


def passes(truth: Truth, function: Function) -> bool:
    kind, mistake = truth
    if kind == "crash" or function.kind == "garbage":
        return False
    if function.kind == "encodes":
        return kind == "wrong" and mistake == function.mistake
    return kind == "right" or mistake not in function.catches


def cells_for(truths: list[Truth], files: list[list[Function]]) -> list[Cell]:
    out = []
    for s, truth in enumerate(truths, 1):
        for t, file in enumerate(files, 1):
            outcomes = {f"test_{i}": "passed" if passes(truth, f) else "failed" for i, f in enumerate(file)}
            out.append(Cell(s, t, all(o == "passed" for o in outcomes.values()), outcomes))
    return out


def diagonal(cells: list[Cell], codes: dict[int, str]) -> int | None:
    return next((c.solution for c in sorted(cells, key=lambda c: c.solution) if c.solution == c.tests and c.passed), None)


def majority(cells: list[Cell], codes: dict[int, str]) -> int | None:
    patterns: dict[int, frozenset[tuple[int, str]]] = {}
    for c in cells:
        patterns.setdefault(c.solution, frozenset())
        patterns[c.solution] |= {(c.tests, n) for n in c.passed_functions()}
    groups: dict[frozenset[tuple[int, str]], list[int]] = {}
    for s, p in patterns.items():
        groups.setdefault(p, []).append(s)
    best = max(groups.items(), key=lambda g: (len(g[1]), len(g[0]), -min(g[1])))
    whole = {c.tests for c in cells if c.solution == best[1][0] and c.passed}
    return best[1][0] if best[0] and whole else None


def codet_rule(drop: int, detect: bool) -> Callable[[list[Cell], dict[int, str]], int | None]:
    """CodeT's candidates with dropping on >= `drop` distinct agreeing programs; with `detect`, the
    first of the top 3 candidates whose file rejects every detectable wrong solution."""
    def rule(cells: list[Cell], codes: dict[int, str]) -> int | None:
        ranked = candidates(cells, code_keys=codes, min_agree_to_drop=drop)
        for candidate in ranked[:3] if detect else ranked[:1]:
            if not detect or candidate.gated_detection in (None, 1.0):
                return candidate.solution
        return None
    return rule


NEVER = 10**6
RULES: dict[str, Callable[[list[Cell], dict[int, str]], int | None]] = {
    "diagonal (paper)": diagonal, "majority": majority,
    "codet, drop on 2": codet_rule(2, False), "codet, no drop": codet_rule(NEVER, False),
    "codet+detect, drop on 2": codet_rule(2, True), "codet+detect, no drop": codet_rule(NEVER, True),
    "codet+detect, drop on 3": codet_rule(3, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    world = World()
    print(f"{world}\n{'attempts':>8}  {'rule':<26}{'accepted':>10}{'yield':>8}{'right':>8}{'precision':>11}")
    for attempts in (1, 3, 5):
        rng = random.Random(args.seed)
        tallies = {name: [0, 0] for name in RULES}
        for _ in range(args.questions):
            truths, code_list, files = draw_question(world, attempts, rng)
            cells = cells_for(truths, files)
            codes = {s: code for s, code in enumerate(code_list, 1)}
            for name, rule in RULES.items():
                chosen = rule(cells, codes)
                if chosen is not None:
                    tallies[name][0] += 1
                    tallies[name][1] += truths[chosen - 1][0] == "right"
        for name, (accepted, right) in tallies.items():
            print(f"{attempts:>8}  {name:<26}{accepted:>10}{accepted / args.questions:>8.3f}{right:>8}"
                  f"{right / max(1, accepted):>11.4f}")


if __name__ == "__main__":
    main()

"""Consensus over the execution matrix (kodcode.quality.consensus): pure, on hand-made cells."""

from __future__ import annotations

from kodcode.quality.consensus import (Cell, candidates, code_key, drop_test_functions, function_outcomes, pass_sequence,
                                       split_assert_functions)


def cell(solution: int, tests: int, **outcomes: str) -> Cell:
    return Cell(solution, tests, all(o == "passed" for o in outcomes.values()), outcomes)


P, F = "passed", "failed"


def wrong_tests_and_right_solutions() -> list[Cell]:
    """Attempt 1: a wrong solution and tests that encode its mistake (they pass each other). Attempts 2
    and 3: right solutions (distinct programs); 2's tests are right, 3's tests have one wrong function."""
    return [
        cell(1, 1, test_a=P, test_b=P, test_c=P), cell(1, 2, test_x=F, test_y=P, test_z=F),
        cell(1, 3, test_p=F, test_q=P, test_bad=F),
        cell(2, 1, test_a=F, test_b=P, test_c=P), cell(2, 2, test_x=P, test_y=P, test_z=P),
        cell(2, 3, test_p=P, test_q=P, test_bad=F),
        cell(3, 1, test_a=F, test_b=P, test_c=P), cell(3, 2, test_x=P, test_y=P, test_z=P),
        cell(3, 3, test_p=P, test_q=P, test_bad=F),
    ]


def test_consensus_prefers_agreeing_solutions_over_a_self_consistent_wrong_pair() -> None:
    cells = wrong_tests_and_right_solutions()
    ranked = candidates(cells, code_keys={1: "w", 2: "r1", 3: "r2"}, min_agree_to_drop=2)
    best = ranked[0]
    # The diagonal (1, 1) passes in full, yet the two agreeing solutions outrank it: 2 x 7 > 1 x 5.
    assert best.group == (2, 3) and best.score == 2 * 7
    assert (best.solution, best.tests, best.dropped) == (2, 2, ())
    assert best.wrong == (1,) and best.rejected == (1,) and best.detection_rate == 1.0
    assert pass_sequence(cells, [1, 2, 3], best) == [False, True, True]


def test_a_wrong_test_function_is_dropped_only_on_distinct_agreement_and_recorded() -> None:
    cells = wrong_tests_and_right_solutions()
    by_file = {c.tests: c for c in candidates(cells, code_keys={1: "w", 2: "r1", 3: "r2"}, min_agree_to_drop=2)}
    assert by_file[3].dropped == ("test_bad",) and by_file[3].kept == ("test_p", "test_q")
    # File 1 would keep 2 of 3 functions: allowed too, but it does not reject the wrong solution.
    assert by_file[1].dropped == ("test_a",) and by_file[1].rejected == ()
    # The same program twice is one opinion: nothing may be dropped on its word.
    same = {c.tests for c in candidates(cells, code_keys={1: "w", 2: "r", 3: "r"}, min_agree_to_drop=2)}
    assert same == {2}
    # The default asks three distinct programs: two are not enough either.
    assert {c.tests for c in candidates(cells, code_keys={1: "w", 2: "r1", 3: "r2"})} == {2}


def test_a_file_the_consensus_mostly_fails_is_not_trimmed_into_acceptance() -> None:
    # Every solution is the same mistake written three ways; only the tests' edge case passes.
    cells = [cell(s, 1, test_typical=F, test_other=F, test_edge=P) for s in (1, 2, 3)]
    assert candidates(cells, code_keys={1: "a", 2: "b", 3: "c"}) == []


def test_detectable_and_undetectable_wrong_solutions() -> None:
    # Solution 3 passes everything the group passes plus the test the group deems wrong: no consensus
    # test can reject it, so it counts in the metric but not in the gate.
    cells = [
        cell(1, 1, test_a=P, test_b=P, test_bad=F), cell(2, 1, test_a=P, test_b=P, test_bad=F),
        cell(3, 1, test_a=P, test_b=P, test_bad=P), cell(4, 1, test_a=F, test_b=P, test_bad=F),
    ]
    best = candidates(cells, code_keys={1: "x", 2: "y", 3: "z", 4: "w"}, min_agree_to_drop=2)[0]
    assert best.group == (1, 2) and best.wrong == (3, 4)
    assert best.detectable == (4,) and best.rejected == (4,)
    assert best.detection_rate == 0.5 and best.gated_detection == 1.0


def test_no_candidate_when_nothing_passes() -> None:
    assert candidates([cell(1, 1, test_a=F)]) == []
    assert pass_sequence([cell(1, 1, test_a=F)], [1, 2], None) == [False, False]


def test_function_outcomes_fold_parametrized_cases() -> None:
    folded = function_outcomes([("test_a[1]", P), ("test_a[2]", F), ("test_a[3]", P), ("test_b", P)])
    assert folded == {"test_a": F, "test_b": P}


def test_drop_test_functions_keeps_the_rest_verbatim() -> None:
    tests = ("from solution import f\n\n\n@pytest.mark.slow\ndef test_bad():\n    assert f(1) == 3\n\n"
             "def test_good():\n    assert f(1) == 2\n")
    trimmed = drop_test_functions(tests, ["test_bad"])
    assert "test_bad" not in trimmed and "pytest.mark.slow" not in trimmed
    assert "def test_good():\n    assert f(1) == 2\n" in trimmed and trimmed.startswith("from solution import f")
    assert drop_test_functions(tests, []) == tests


def test_code_key_ignores_formatting_and_comments() -> None:
    assert code_key("def f(x):\n    return x+1  # add\n") == code_key("def f( x ):\n\n    return x + 1\n")
    assert code_key("def f(x):\n    return x+1\n") != code_key("def f(x):\n    return x+2\n")


ONE_FUNCTION = '''from solution import below_zero


def test_below_zero():
    """Every check in one function, as small models write them."""
    assert below_zero([1, 2, 3]) is False, "no dip"
    assert below_zero([1, 2,
                       -4, 5]) is True
    assert below_zero([10, -10, 20, -20]) is True   # wrong: the balance never goes below zero


@pytest.fixture
def ops():
    return [1, -2]


def test_with_fixture(ops):
    assert below_zero(ops) is True
    assert below_zero([]) is False


def test_with_setup():
    ops = [1, -2]
    assert below_zero(ops) is True
    assert ops == [1, -2]


@pytest.mark.parametrize("x", [1])
def test_marked(x):
    assert below_zero([x]) is False
    assert below_zero([-x]) is True


def test_below_zero_2():
    assert below_zero([-1]) is True
'''


def test_one_function_of_asserts_becomes_one_function_per_assert() -> None:
    import ast

    split = split_assert_functions(ONE_FUNCTION)
    tree = ast.parse(split)
    names = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    # The asserts-only function is split (a name already taken gets a suffix); fixtures, parameters,
    # setup statements and marks keep their function whole.
    assert names == ["test_below_zero_1", "test_below_zero_2_", "test_below_zero_3", "ops", "test_with_fixture",
                     "test_with_setup", "test_marked", "test_below_zero_2"]
    assert 'def test_below_zero_1():\n    assert below_zero([1, 2, 3]) is False, "no dip"\n' in split
    assert "assert below_zero([1, 2,\n                       -4, 5]) is True" in split
    assert split[split.index("@pytest.fixture"):] == ONE_FUNCTION[ONE_FUNCTION.index("@pytest.fixture"):]
    assert split_assert_functions(split) == split          # nothing left to split
    assert split_assert_functions("def broken(:\n") == "def broken(:\n"


def test_split_asserts_let_the_consensus_drop_one_wrong_check() -> None:
    # Two distinct right programs fail only the third check; a wrong one fails the first two.
    right = {"test_below_zero_1": "passed", "test_below_zero_2": "passed", "test_below_zero_3": "failed"}
    wrong = {"test_below_zero_1": "failed", "test_below_zero_2": "failed", "test_below_zero_3": "passed"}
    cells = [Cell(1, 1, False, right), Cell(2, 1, False, right), Cell(3, 1, False, wrong)]
    best = candidates(cells, min_agree_to_drop=2, code_keys={1: "a", 2: "b", 3: "c"})[0]
    assert best.group == (1, 2) and best.dropped == ("test_below_zero_3",) and best.rejected == (3,)
    # Unsplit, the same evidence is one function every solution fails: nothing to accept.
    whole = [Cell(s, 1, False, {"test_below_zero": "failed"}) for s in (1, 2, 3)]
    assert candidates(whole, min_agree_to_drop=2, code_keys={1: "a", 2: "b", 3: "c"}) == []

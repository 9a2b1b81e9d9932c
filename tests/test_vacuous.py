"""Vacuous-test detection: each kind of test that cannot fail on a wrong result is flagged with its reason;
real checks (direct, through variables, aliases, pytest.raises, helpers, predicates) are not."""

from __future__ import annotations

from kodcode.quality.vacuous import find_vacuous_tests

SUITE = '''\
import pytest
from solution import area
from solution import area as compute


def check(candidate):
    assert candidate(2, 3) == 6


def test_direct():
    assert area(2, 3) == 6


def test_through_variables():
    result = area(4, 5)
    doubled = result * 2
    assert doubled == 40


def test_alias():
    assert compute(1, 1) == 1


def test_raises():
    with pytest.raises(ValueError):
        area(-1, 2)


def test_delegates_to_helper():
    check(area)


def test_calls_but_asserts_nothing():
    area(2, 3)
    assert True


def test_only_type():
    result = area(2, 3)
    assert isinstance(result, int)


def test_only_not_none():
    assert area(2, 3) is not None


def test_only_truthy():
    assert area(2, 3)


def test_self_comparison():
    assert area(2, 3) == area(2, 3)


def test_copy_of_direct():
    assert area(2, 3) == 6


class TestArea:
    def test_unittest_style(self):
        self.assertEqual(area(2, 2), 4)

    def test_type_of(self):
        assert type(area(2, 2)) == int
'''


def test_each_vacuous_kind_is_flagged_with_its_reason() -> None:
    report = find_vacuous_tests(SUITE, "area")
    findings = {finding.name: finding.reasons for finding in report.findings}
    assert findings == {
        "test_calls_but_asserts_nothing": ("no assertion on the result of area",),
        "test_only_type": ("only checks the type",),
        "test_only_not_none": ("only checks is not None",),
        "test_only_truthy": ("only checks truthiness",),
        "test_self_comparison": ("compares the result with itself",),
        "test_copy_of_direct": ("duplicate of test_direct",),
        "test_type_of": ("only checks the type",),
    }
    assert len(report.tests) == 13
    assert report.flagged and not report.all_vacuous
    assert report.reason() == "vacuous tests: 7 of 13 (test_calls_but_asserts_nothing: no assertion on the result of area)"


def test_predicate_checked_both_ways_is_not_vacuous() -> None:
    tests = '''\
from solution import is_even

def test_even():
    assert is_even(4)

def test_odd():
    assert not is_even(3)
'''
    assert find_vacuous_tests(tests, "is_even").findings == ()
    one_way = tests.split("def test_odd")[0]
    report = find_vacuous_tests(one_way, "is_even")
    assert report.all_vacuous and report.findings[0].reasons == ("only checks truthiness",)


def test_a_suite_of_only_weak_tests_is_all_vacuous() -> None:
    tests = '''\
from solution import parse

def test_runs():
    parse("1,2")

def test_type():
    assert isinstance(parse("1,2"), list)
'''
    report = find_vacuous_tests(tests, "parse")
    assert report.all_vacuous
    assert report.as_dict()["vacuous"] == 2


def test_tests_that_do_not_parse_are_reported_not_flagged() -> None:
    report = find_vacuous_tests("def test_x(:\n", "f")
    assert report.parse_error is not None and report.findings == ()

"""The scheduler's estimate of the true difficulty band (pure; no I/O, no timing)."""

from __future__ import annotations

import math
import random

import pytest

from kodcode.runtime.scheduler import (
    BAND_CONFIDENCE,
    DEFAULT_PRIOR,
    AdaptivePolicy,
    PassPrior,
    _beta_cdf,
    band_distribution,
    label_for_count,
    paper_band_agreement,
    true_band,
)


@pytest.mark.parametrize("p, band", [(0.0, "fail"), (0.01, "hard"), (0.3333, "hard"), (1 / 3, "medium"),
                                     (0.5, "medium"), (2 / 3, "easy"), (1.0, "easy")])
def test_true_band_uses_the_papers_thresholds(p: float, band: str) -> None:
    assert true_band(p) == band


@pytest.mark.parametrize("x, a, b", [(0.3, 1.0, 1.0), (0.5, 2.0, 3.0), (1 / 3, 1.31, 0.8028), (0.9, 5.3, 0.8)])
def test_beta_cdf_matches_numeric_integration(x: float, a: float, b: float) -> None:
    # Midpoint rule on the density over [0, x]; x < 1 keeps clear of a b < 1 singularity at 1.
    n = 200_000
    log_norm = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    h = x / n
    total = sum(math.exp((a - 1) * math.log((i + 0.5) * h) + (b - 1) * math.log1p(-(i + 0.5) * h) - log_norm)
                for i in range(n)) * h
    assert _beta_cdf(x, a, b) == pytest.approx(total, abs=2e-3)


def test_band_posterior_is_a_distribution_and_moves_with_evidence() -> None:
    for attempts in range(0, 8):
        for passes in range(attempts + 1):
            probs = band_distribution(attempts, passes)
            assert sum(probs.values()) == pytest.approx(1.0)
    assert band_distribution(0, 0)["fail"] == pytest.approx(DEFAULT_PRIOR.zero_mass)
    assert "fail" not in band_distribution(3, 1)                   # a pass rules out p = 0
    assert band_distribution(5, 5)["easy"] > 0.9
    assert band_distribution(6, 1)["hard"] > band_distribution(6, 1)["easy"]
    assert band_distribution(4, 0)["fail"] > band_distribution(1, 0)["fail"]


def test_band_posterior_agrees_with_simulation() -> None:
    rng = random.Random(7)
    seen: dict[str, int] = {}
    total = 0
    for _ in range(60_000):
        p = DEFAULT_PRIOR.sample(rng)
        if sum(rng.random() < p for _ in range(4)) == 2:          # condition on 2 passes in 4
            total += 1
            seen[true_band(p)] = seen.get(true_band(p), 0) + 1
    for band, prob in band_distribution(4, 2).items():
        assert seen.get(band, 0) / total == pytest.approx(prob, abs=0.02)


def test_paper_labels_match_the_true_band_about_83_percent() -> None:
    exact = paper_band_agreement()
    rng = random.Random(3)
    n, agree = 40_000, 0
    for _ in range(n):
        p = DEFAULT_PRIOR.sample(rng)
        agree += label_for_count(sum(rng.random() < p for _ in range(10)), 10) == true_band(p)
    assert exact == pytest.approx(0.829, abs=0.005)
    assert agree / n == pytest.approx(exact, abs=0.01)


def test_band_policy_stops_when_the_band_is_settled() -> None:
    policy = AdaptivePolicy(confidence=BAND_CONFIDENCE, target="band")
    assert policy.expected_agreement >= BAND_CONFIDENCE - 1e-6
    assert policy.expected_attempts < 6.0                         # the paper spends 10 on every question
    settled = policy.decide([True, True, True])
    assert (settled.action, settled.label) == ("stop", "easy") and "band easy settled" in settled.reason
    assert policy.decide([True, False]).action == "retry"         # medium or easy: not settled yet
    assert policy.decide([]).action == "retry"
    # Beyond 10 attempts the band can still be refined (the paper's label is final at 10).
    longer = AdaptivePolicy(max_attempts=20, confidence=0.83, target="band")
    assert longer.expected_attempts < AdaptivePolicy(max_attempts=10, confidence=0.829, target="band").expected_attempts


def test_band_policy_labels_a_question_with_no_pass_fail() -> None:
    policy = AdaptivePolicy(max_attempts=3, confidence=0.5, target="band", cap_confidence=True,
                            prior=PassPrior(0.3, 1.3, 0.8))
    history: list[bool] = []
    while (decision := policy.decide(history)).action == "retry":
        history.append(False)
    assert decision.action == "give_up" and decision.label == "fail"

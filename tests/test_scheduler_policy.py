"""The attempt scheduler's pure parts: labels, the prior, the policies, the queue and the budget."""

from __future__ import annotations

import asyncio
import itertools
import random

import anyio
import pytest

from kodcode.errors import BudgetExhausted, ConfigError
from kodcode.runtime import scheduler
from kodcode.llm.budget import Budget
from kodcode.runtime.mailbox import AttemptQueue
from kodcode.runtime.scheduler import (
    DEFAULT_PRIOR,
    PAPER_PASS_AT,
    AdaptivePolicy,
    FirstPassPolicy,
    FixedPolicy,
    PassPrior,
    fit_pass_prior,
    label_distribution,
    label_for_count,
    paper_label,
)

T, F = True, False


def run(policy, outcomes):
    """Feed the policy verdicts from a fixed outcome list until it stops; return (decision, history)."""
    history: list[bool] = []
    while (decision := policy.decide(history)).action == "retry":
        history.append(outcomes[len(history)])
    return decision, history


# -- labels and prior --------------------------------------------------------------------------


def test_paper_label_on_ten_trials_matches_get_gpt_difficulty():
    labels = [paper_label([T] * k + [F] * (10 - k)) for k in range(11)]
    assert labels == ["fail", "hard", "hard", "hard", "medium", "medium", "medium",
                      "easy", "easy", "easy", "easy"]


def test_paper_label_uses_exact_thirds():
    assert paper_label([T, T, F]) == "easy"      # 2/3 is easy (>=)
    assert paper_label([T, F, F]) == "medium"    # 1/3 is not < 1/3
    assert paper_label([T, F, F, F]) == "hard"
    with pytest.raises(ValueError):
        paper_label([])


def test_default_prior_reproduces_the_paper_curve_and_the_fit():
    for k, target in PAPER_PASS_AT.items():
        assert DEFAULT_PRIOR.pass_at(k) == pytest.approx(target, abs=0.005)
    assert fit_pass_prior(PAPER_PASS_AT) == DEFAULT_PRIOR


def test_label_distribution_is_a_distribution_and_settles_at_ten():
    for m in range(10):
        for k in range(m + 1):
            assert sum(label_distribution(m, k).values()) == pytest.approx(1.0)
    assert label_distribution(10, 3) == {"hard": 1.0}
    assert label_distribution(3, 0)["fail"] > label_distribution(1, 0)["fail"]
    # After a pass the question can no longer be "fail".
    assert "fail" not in label_distribution(4, 1)


def test_label_distribution_matches_brute_force_enumeration():
    # With no point mass the beta-binomial is checked against a direct sum over Beta draws' law:
    # P(K) for a uniform prior and no data is 1/(n+1) for every count.
    uniform = PassPrior(0.0, 1.0, 1.0)
    probs = label_distribution(0, 0, uniform, trials=10)
    assert probs["fail"] == pytest.approx(1 / 11)
    assert probs["hard"] == pytest.approx(3 / 11)
    assert probs["medium"] == pytest.approx(3 / 11)
    assert probs["easy"] == pytest.approx(4 / 11)


# -- baseline policies -------------------------------------------------------------------------


def test_fixed_policy_uses_every_attempt():
    decision, history = run(FixedPolicy(10), [T] * 10)
    assert len(history) == 10 and decision.action == "stop" and decision.label == "easy"
    decision, history = run(FixedPolicy(10), [F] * 10)
    assert len(history) == 10 and decision.action == "give_up" and decision.label == "fail"


def test_first_pass_policy_stops_at_the_first_pass():
    decision, history = run(FirstPassPolicy(10), [F, F, F, F, T, T])
    assert history == [F, F, F, F, T]
    assert decision.action == "stop" and decision.label == "hard"
    decision, history = run(FirstPassPolicy(4), [F] * 10)
    assert len(history) == 4 and decision.action == "give_up"


def test_history_longer_than_max_attempts_is_rejected():
    with pytest.raises(ValueError):
        AdaptivePolicy(max_attempts=3, confidence=0.7).decide([F, F, F, F])


# -- the adaptive policy -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy() -> AdaptivePolicy:
    return AdaptivePolicy()


def test_first_attempt_has_pass_at_1_priority(policy):
    decision = policy.decide([])
    assert decision.action == "retry"
    assert decision.priority == pytest.approx(DEFAULT_PRIOR.pass_at(1))


def test_stops_after_settled_passes_without_burning_ten(policy):
    decision, history = run(policy, [T] * 10)
    assert decision.action == "stop" and decision.label == "easy"
    assert len(history) <= 4
    # Per question the stop needs only enough confidence for the expected agreement to reach 0.95.
    assert decision.confidence >= 0.9
    assert "easy" in decision.reason and f"{len(history)}/{len(history)}" in decision.reason


def test_retries_after_early_failures(policy):
    for history in ([F], [F, F], [F, F, F]):
        decision = policy.decide(history)
        assert decision.action == "retry", history
        assert decision.label is None and "no pass yet" in decision.reason


def test_gives_up_at_max_attempts():
    tenacious = AdaptivePolicy(max_attempts=10, confidence=0.999)
    decision, history = run(tenacious, [F] * 10)
    assert len(history) == 10 and decision.action == "give_up" and decision.label == "fail"
    assert "max_attempts" in decision.reason


def test_gives_up_early_on_hopeless_questions(policy):
    decision, history = run(policy, [F] * 10)
    assert decision.action == "give_up" and decision.label == "fail"
    assert 3 <= len(history) < 10
    assert decision.p_next_pass < 0.05


def test_triplet_value_buys_more_attempts_for_failing_questions():
    give_up_at = [len(run(AdaptivePolicy(max_attempts=14, triplet_value=v), [F] * 14)[1])
                  for v in (0.0, 20.0, 1000.0)]
    assert give_up_at == sorted(give_up_at) and give_up_at[0] < give_up_at[-1] == 14
    patient = AdaptivePolicy(max_attempts=14, triplet_value=1000.0)
    decision, history = run(patient, [F] * 12 + [T, T])
    assert history == [F] * 12 + [T]
    assert decision.action == "stop" and decision.label == "hard"


def test_labels_at_stop_match_full_histories_where_determined(policy):
    # Every 10-outcome world: when the policy stops, its label must be the full history's label
    # whenever the observed prefix already determines it (every completion gives the same label).
    for outcomes in itertools.product([F, T], repeat=10):
        decision, history = run(policy, list(outcomes))
        m = len(history)
        completions = {label_for_count(sum(history) + j, 10) for j in range(10 - m + 1)}
        if len(completions) == 1:
            assert decision.label == paper_label(outcomes)
        if m == 10:
            assert decision.label == paper_label(outcomes) and decision.confidence == 1.0


def test_expected_agreement_reaches_confidence_and_costs_fewer_calls(policy):
    assert policy.expected_agreement >= 0.95
    assert policy.expected_attempts < 7.0
    looser = AdaptivePolicy(confidence=0.85)
    assert looser.expected_attempts < policy.expected_attempts


def test_empirical_agreement_matches_the_10_trial_protocol():
    rng = random.Random(7)
    policy = AdaptivePolicy(confidence=0.95)
    agree = calls = 0
    n = 3000
    for _ in range(n):
        p = DEFAULT_PRIOR.sample(rng)
        outcomes = [rng.random() < p for _ in range(10)]
        decision, history = run(policy, outcomes)
        agree += decision.label == paper_label(outcomes)
        calls += len(history)
    assert agree / n >= 0.93
    assert calls / n < 7.0


def test_monotone_beliefs_and_priorities(policy):
    # More passes in the same number of attempts: "easy" more likely, "hard" less.
    for m in range(1, 10):
        easy = [label_distribution(m, k).get("easy", 0.0) for k in range(m + 1)]
        hard = [label_distribution(m, k).get("hard", 0.0) for k in range(1, m + 1)]
        assert all(x <= y + 1e-9 for x, y in zip(easy, easy[1:]))
        assert all(x >= y - 1e-9 for x, y in zip(hard, hard[1:]))
    # Each failure lowers the value of trying an unsolved question again.
    priorities = [policy.decide([F] * m).priority for m in range(3)]
    assert priorities == sorted(priorities, reverse=True) and priorities[-1] > 0
    # A banked (verified) question ranks below a fresh one.
    assert policy.decide([F, T]).action == "retry"
    assert policy.decide([F, T]).priority < policy.decide([]).priority


def test_decision_carries_the_numbers(policy):
    decision = policy.decide([T, F])
    assert (decision.attempts, decision.passes) == (2, 1)
    assert decision.p_next_pass == pytest.approx(DEFAULT_PRIOR.next_pass_probability(2, 1))
    assert sum(p for _, p in decision.label_probs) == pytest.approx(1.0)
    assert decision.confidence == pytest.approx(max(p for _, p in decision.label_probs))


def test_unreachable_confidence_is_a_config_error():
    with pytest.raises(ConfigError, match="not reachable"):
        AdaptivePolicy(max_attempts=2, confidence=0.99)
    with pytest.raises(ConfigError):
        AdaptivePolicy(confidence=0.0)


# -- the queue ---------------------------------------------------------------------------------


async def test_queue_orders_by_priority_then_fifo():
    queue: AttemptQueue[str] = AttemptQueue()
    # Equal priorities come out in insertion order, not in the items' own order.
    for priority, item in [(0.1, "z-low"), (0.9, "y-high"), (0.5, "mid"), (0.9, "b-high"), (0.1, "a-low")]:
        await queue.put(priority, item)
    assert queue.qsize() == 5
    got = [await queue.get() for _ in range(5)]
    assert got == ["y-high", "b-high", "mid", "z-low", "a-low"]
    stats = queue.statistics()
    assert (stats.queued, stats.total_put, stats.total_got, stats.closed) == (0, 5, 5, False)


async def test_queue_close_drains_then_ends():
    queue: AttemptQueue[int] = AttemptQueue()
    queue.put_nowait(1.0, 1)
    queue.put_nowait(2.0, 2)
    queue.close()
    with pytest.raises(anyio.ClosedResourceError):
        queue.put_nowait(3.0, 3)
    assert [item async for item in queue] == [2, 1]
    with pytest.raises(anyio.EndOfStream):
        await queue.get()
    with pytest.raises(anyio.WouldBlock):
        AttemptQueue().get_nowait()
    with pytest.raises(ValueError):
        AttemptQueue().put_nowait(float("nan"), 0)


async def test_close_wakes_blocked_getters():
    queue: AttemptQueue[int] = AttemptQueue()
    ended = []

    async def consumer():
        async for _ in queue:
            pass
        ended.append(True)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(consumer)
        await wait_until(lambda: queue.statistics().waiting_getters == 3)
        queue.close()
    assert ended == [True, True, True]


async def test_concurrent_consumers_get_every_item_once_highest_first():
    queue: AttemptQueue[int] = AttemptQueue()
    taken: list[int] = []

    async def consumer():
        async for item in queue:
            taken.append(item)
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(consumer()) for _ in range(4)]
    await wait_until(lambda: queue.statistics().waiting_getters == 4)
    for i in range(200):
        queue.put_nowait(float(i % 7), i)
    queue.close()
    await asyncio.gather(*tasks)
    assert sorted(taken) == list(range(200))
    # Getters were already waiting for the first 4 puts; after that the heap orders what is left.
    rest = taken[4:]
    assert [i % 7 for i in rest] == sorted((i % 7 for i in rest), reverse=True)


async def test_cancelled_getter_does_not_lose_an_item():
    queue: AttemptQueue[str] = AttemptQueue()
    with anyio.move_on_after(0.01):
        await queue.get()
    assert queue.statistics().waiting_getters == 0
    queue.put_nowait(1.0, "kept")
    assert await queue.get() == "kept"


async def wait_until(predicate) -> None:
    with anyio.fail_after(5):
        while not predicate():
            await asyncio.sleep(0)


# -- the budget --------------------------------------------------------------------------------


PRICES = {"gpt-4o": (2.5, 10.0), "local": (0.0, 0.0)}


def test_costs_are_summed_per_model_prices():
    budget = Budget(prices=PRICES)
    assert budget.cost_usd("gpt-4o", 1_000_000, 0) == pytest.approx(2.5)
    budget.charge("gpt-4o", 2000, 500)
    budget.charge("gpt-4o", 1000, 1000)
    budget.charge("local", 10_000, 10_000)
    spent = budget.spent
    assert (spent.calls, spent.prompt_tokens, spent.completion_tokens, spent.tokens) == (3, 13_000, 11_500, 24_500)
    assert spent.usd == pytest.approx((3000 * 2.5 + 1500 * 10.0) / 1e6)
    assert budget.exhausted() is None


def test_calls_limit_trips_with_message():
    budget = Budget(calls=2)
    budget.charge("m", 1, 1)
    assert budget.exhausted() is None
    budget.charge("m", 1, 1)
    assert budget.exhausted() == "budget-calls reached: 2 of 2"
    with pytest.raises(BudgetExhausted, match="budget-calls reached: 2 of 2"):
        budget.check()


def test_tokens_limit_trips_with_message():
    budget = Budget(tokens=1000)
    budget.charge("m", 600, 300)
    assert budget.exhausted() is None
    budget.charge("m", 50, 60)
    assert budget.exhausted() == "budget-tokens reached: 1010 of 1000"


def test_usd_limit_trips_with_message_and_needs_prices():
    budget = Budget(usd=0.05, prices=PRICES)
    budget.charge("gpt-4o", 10_000, 1_000)   # $0.035
    assert budget.exhausted() is None
    budget.charge("gpt-4o", 4_000, 1_000)    # +$0.02
    assert budget.exhausted() == "budget-usd reached: $0.0550 of $0.05"
    with pytest.raises(ConfigError, match="no price for model 'other'"):
        budget.charge("other", 1, 1)


def test_target_verified_trips_first():
    budget = Budget(calls=1, target_verified=2)
    budget.charge("m", 1, 1)
    budget.record_verified(2)
    assert budget.exhausted() == "target-verified reached: 2 of 2"


def test_invalid_budget_is_a_config_error():
    with pytest.raises(ConfigError):
        Budget(calls=-1)
    with pytest.raises(ConfigError):
        Budget(prices={"m": (-1.0, 1.0)})


def test_public_api_is_exported():
    for name in scheduler.__all__:
        assert hasattr(scheduler, name), name

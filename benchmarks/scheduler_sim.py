"""Simulate attempt policies against a synthetic solver fitted to the paper's Pass@k curve.

Each question gets a hidden pass probability drawn from the prior fitted to Pass@1 = 42%,
Pass@5 = 62%, Pass@10 = 65% (a point mass at 0 plus a Beta), and its attempt outcomes are drawn
once, up front, so every policy sees the same world: attempt i of question q always gives the same
verdict. Policies compared:
  (a) the paper: 10 attempts for every question (its labels are the reference labels);
  (b) retry until the first pass, up to 10, labelled by the paper's rule on that short history;
  (c) AdaptivePolicy aimed at the paper's 10-trial label;
  (d) AdaptivePolicy aimed at the true band (target="band", the kodcode default): easy p >= 2/3,
      medium 1/3 <= p < 2/3, hard 0 < p < 1/3, fail p = 0.
Part 1 runs them over the same questions. Part 1b scores every policy against the true band of the
hidden p (the paper's own labels match it ~83% of the time) and sweeps the band policy's confidence:
the frontier of calls against agreement. Part 2 gives (b) and (c) the same call budget over a
stream of fresh questions, driven through the real AttemptQueue and Budget with concurrent workers.
Part 3 sweeps AdaptivePolicy's confidence to show the calls/agreement trade-off.

    .venv/bin/python benchmarks/scheduler_sim.py [--questions N] [--seed S]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass, field

from kodcode.llm.budget import Budget
from kodcode.runtime.mailbox import AttemptQueue
from kodcode.runtime.scheduler import (
    DEFAULT_PRIOR,
    PAPER_PASS_AT,
    PAPER_TRIALS,
    AdaptivePolicy,
    AttemptPolicy,
    FirstPassPolicy,
    FixedPolicy,
    Label,
    PassPrior,
    fit_pass_prior,
    label_for_count,
    paper_band_agreement,
    true_band,
)

MAX_ATTEMPTS = PAPER_TRIALS
DRAWN = 3 * PAPER_TRIALS        # outcomes drawn per question: band policies may go past 10 attempts


@dataclass(frozen=True)
class Question:
    outcomes: tuple[bool, ...]  # the verdicts attempts 1..DRAWN would get
    p: float = 0.0              # the hidden pass probability

    @property
    def paper_label(self) -> Label:
        return label_for_count(sum(self.outcomes[:PAPER_TRIALS]), PAPER_TRIALS)

    @property
    def band(self) -> Label:
        return true_band(self.p)


def draw_questions(prior: PassPrior, n: int, rng: random.Random) -> list[Question]:
    questions = []
    for _ in range(n):
        p = prior.sample(rng)
        questions.append(Question(tuple(rng.random() < p for _ in range(DRAWN)), p))
    return questions


@dataclass
class Tally:
    questions: int = 0
    calls: int = 0
    verified: int = 0
    agree: int = 0              # final label == the paper's 10-trial label (fail included)
    verified_agree: int = 0     # same, over verified questions only (the labels that ship)
    hard_labelled: int = 0      # verified and labelled hard by the policy
    hard_correct: int = 0       # ... and hard by the 10-trial label too
    hard_true: int = 0          # verified and hard by the 10-trial label, whatever the policy said
    band_agree: int = 0         # final label == the true band of the hidden p (fail = unsolvable)
    band_verified_agree: int = 0
    verified_ids: set[int] = field(default_factory=set)

    def finish(self, qid: int, question: Question, label: Label | None, attempts: int) -> None:
        truth = question.paper_label
        verified = any(question.outcomes[:attempts])
        self.questions += 1
        self.agree += label == truth
        self.band_agree += label == question.band
        if verified:
            self.verified += 1
            self.verified_ids.add(qid)
            self.verified_agree += label == truth
            self.band_verified_agree += label == question.band
            self.hard_labelled += label == "hard"
            self.hard_correct += label == "hard" and truth == "hard"
            self.hard_true += truth == "hard"


def run_one(policy: AttemptPolicy, question: Question) -> tuple[Label | None, int]:
    history: list[bool] = []
    while (decision := policy.decide(history)).action == "retry":
        history.append(question.outcomes[len(history)])
    return decision.label, len(history)


def run_all(policy: AttemptPolicy, questions: list[Question]) -> Tally:
    tally = Tally()
    for qid, question in enumerate(questions):
        label, attempts = run_one(policy, question)
        tally.calls += attempts
        tally.finish(qid, question, label, attempts)
    return tally


async def run_budgeted(policy: AttemptPolicy, stream: list[Question], calls: int,
                       workers: int = 8, window: int = 32) -> tuple[Tally, str]:
    """Solver slots take the most valuable attempt from one AttemptQueue until the budget trips."""
    budget = Budget(calls=calls, prices={"sim-solver": (2.5, 10.0)})
    queue: AttemptQueue[int] = AttemptQueue()
    histories: dict[int, list[bool]] = {}
    tally = Tally()
    next_qid = 0
    stop_reason = "stream exhausted"

    def admit() -> None:
        nonlocal next_qid
        if next_qid < len(stream) and not queue.closed:
            histories[next_qid] = []
            queue.put_nowait(policy.decide([]).priority, next_qid)
            next_qid += 1

    async def worker() -> None:
        nonlocal stop_reason
        async for qid in queue:
            if (reason := budget.exhausted()) is not None:
                stop_reason = reason
                queue.close()
                return
            history = histories[qid]
            history.append(stream[qid].outcomes[len(history)])
            budget.charge("sim-solver", 1200, 400)
            tally.calls += 1
            await asyncio.sleep(0)  # let other slots interleave, as real LLM calls would
            decision = policy.decide(history)
            if decision.action == "retry":
                if not queue.closed:  # else another slot hit the budget; the question stays in flight
                    await queue.put(decision.priority, qid)
            else:
                tally.finish(qid, stream[qid], decision.label, len(history))
                del histories[qid]
                admit()
            if queue.qsize() == 0 and not histories:
                queue.close()

    for _ in range(window):
        admit()
    await asyncio.gather(*(worker() for _ in range(workers)))
    # Questions still in flight at the cutoff: a pass there is a verified triplet without a label.
    for qid, history in histories.items():
        if any(history):
            tally.verified += 1
            tally.hard_true += stream[qid].paper_label == "hard"
    return tally, stop_reason


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    started = time.perf_counter()

    prior = fit_pass_prior(PAPER_PASS_AT)
    curve = ", ".join(f"pass@{k}={prior.pass_at(k):.3f} (paper {v:.2f})" for k, v in PAPER_PASS_AT.items())
    print(f"fitted prior: P(p=0)={prior.zero_mass:.4f}, p~Beta({prior.alpha:.4f}, {prior.beta:.4f}); {curve}; "
          f"fail after 10 = {1 - prior.pass_at(10):.3f}")
    if prior != DEFAULT_PRIOR:
        print(f"note: scheduler.DEFAULT_PRIOR is {DEFAULT_PRIOR}, the fit gives {prior}")

    rng = random.Random(args.seed)
    questions = draw_questions(prior, args.questions, rng)
    adaptive = AdaptivePolicy(prior=prior)
    bar = paper_band_agreement(prior)
    band = AdaptivePolicy(prior=prior, confidence=bar, target="band", cap_confidence=True)
    policies: dict[str, AttemptPolicy] = {
        "(a) paper, 10 each": FixedPolicy(MAX_ATTEMPTS),
        "(b) until first pass": FirstPassPolicy(MAX_ATTEMPTS, prior=prior),
        f"(c) adaptive c={adaptive.confidence}": adaptive,
    }
    tallies = {name: run_all(policy, questions) for name, policy in policies.items()}
    a, b, c = tallies.values()
    band_tallies = {**tallies, f"(d) band c={band.confidence:.3f}": run_all(band, questions)}

    print(f"\nPart 1: the same {args.questions} questions (seed {args.seed})")
    header = (f"{'policy':<26}{'calls':>8}{'calls/q':>9}{'verified':>10}{'recall':>8}{'calls/verif':>12}"
              f"{'hard/1k calls':>15}{'label agree':>13}{'agree|verif':>13}")
    print(header)
    print("-" * len(header))
    for name, t in tallies.items():
        recall = len(t.verified_ids & a.verified_ids) / max(1, a.verified)
        print(f"{name:<26}{t.calls:>8}{t.calls / t.questions:>9.2f}{t.verified:>10}{recall:>8.3f}"
              f"{t.calls / max(1, t.verified):>12.2f}{1000 * t.hard_labelled / t.calls:>15.2f}"
              f"{t.agree / t.questions:>13.3f}{t.verified_agree / max(1, t.verified):>13.3f}")

    print(f"\nPart 1b: agreement with the true band of the hidden pass probability (exact bar for (a) under "
          f"the prior: {bar:.4f}); (d) is the kodcode default, max_attempts {MAX_ATTEMPTS}")
    header = f"{'policy':<26}{'calls':>8}{'calls/q':>9}{'vs (a)':>8}{'band agree':>12}{'agree|verif':>13}{'verified':>10}"
    print(header)
    print("-" * len(header))
    for name, t in band_tallies.items():
        print(f"{name:<26}{t.calls:>8}{t.calls / t.questions:>9.2f}{t.calls / a.calls:>8.3f}"
              f"{t.band_agree / t.questions:>12.4f}{t.band_verified_agree / max(1, t.verified):>13.4f}{t.verified:>10}")
    d = band_tallies[f"(d) band c={band.confidence:.3f}"]
    print("  frontier of the band policy (Bayes-optimal for each weight: no policy under this prior gets more"
          " agreement for fewer expected calls):")
    print(f"  {'max_att':>7}{'confidence':>11}{'E[calls]':>10}{'E[agree]':>10}{'calls/q':>9}{'vs (a)':>8}{'band agree':>12}")
    for max_attempts in (10, 20, 30):
        for confidence in (0.70, 0.75, 0.78, 0.80, 0.82, bar):
            policy = AdaptivePolicy(max_attempts, confidence=confidence, prior=prior, target="band", cap_confidence=True)
            t = run_all(policy, questions)
            print(f"  {max_attempts:>7}{policy.confidence:>11.4f}{policy.expected_attempts:>10.2f}"
                  f"{policy.expected_agreement:>10.4f}{t.calls / t.questions:>9.2f}{t.calls / a.calls:>8.3f}"
                  f"{t.band_agree / t.questions:>12.4f}")

    budget_calls = 4 * args.questions
    stream = draw_questions(prior, 2 * args.questions, random.Random(args.seed + 1))
    print(f"\nPart 2: equal calls, {budget_calls} solver calls over a stream of fresh questions "
          f"(8 slots, 32 questions in flight, one AttemptQueue)")
    header2 = (f"{'policy':<26}{'calls':>7}{'questions':>10}{'verified':>10}{'hard (own label)':>18}"
               f"{'hard, label right':>19}{'hard by 10 trials':>19}  stop")
    print(header2)
    print("-" * len(header2))
    budgeted: dict[str, Tally] = {}
    for name in list(policies)[1:]:
        tally, reason = asyncio.run(run_budgeted(policies[name], stream, budget_calls))
        budgeted[name] = tally
        print(f"{name:<26}{tally.calls:>7}{tally.questions:>10}{tally.verified:>10}{tally.hard_labelled:>18}"
              f"{tally.hard_correct:>19}{tally.hard_true:>19}  {reason}")
    b2, c2 = budgeted.values()

    print("\nPart 3: AdaptivePolicy confidence sweep on the Part 1 questions "
          "(the stopping rule is Bayes-optimal for each weight, so this is the trade-off frontier)")
    print(f"{'confidence':>10}{'calls vs (a)':>14}{'label agree':>13}{'recall':>8}{'hard/1k calls':>15}"
          f"{'expected agree':>16}")
    for confidence in (0.8, 0.85, 0.9, 0.95, 0.98):
        policy = AdaptivePolicy(confidence=confidence, prior=prior)
        t = run_all(policy, questions)
        print(f"{confidence:>10.2f}{t.calls / a.calls:>14.3f}{t.agree / t.questions:>13.3f}"
              f"{len(t.verified_ids & a.verified_ids) / a.verified:>8.3f}{1000 * t.hard_labelled / t.calls:>15.2f}"
              f"{policy.expected_agreement:>16.3f}")

    print("\nTargets")
    rows = [
        ("(c) calls <= 50% of (a)'s, same questions", f"{c.calls / a.calls:.3f} of (a)", c.calls <= 0.5 * a.calls),
        ("(c) label agreement with (a) >= 95% (fail incl.)", f"{c.agree / c.questions:.3f}",
         c.agree >= 0.95 * c.questions),
        ("(c) hard triplets >= (b)'s at equal calls", f"{c2.hard_labelled} vs {b2.hard_labelled}",
         c2.hard_labelled >= b2.hard_labelled),
    ]
    rows.append(("(d) band agreement >= (a)'s, at <= 50% of its calls",
                 f"{d.band_agree / d.questions:.4f} vs {a.band_agree / a.questions:.4f} at "
                 f"{d.calls / a.calls:.3f} of (a)'s calls",
                 d.band_agree >= a.band_agree and d.calls <= 0.5 * a.calls))
    for text, value, ok in rows:
        print(f"  {verdict(ok)}  {text:<52} {value}")
    print("\n(hard triplets = verified and labelled hard by the policy; the columns beside them in Part 2 "
          "count those whose label is right, and all verified questions hard by their 10 trials)")
    print(f"elapsed {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

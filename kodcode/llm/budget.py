"""LLM spend: what a run has paid for (calls, tokens, dollars) and the limits it may not pass.

The budget is the one owner of spend during a run: the LLM client charges every finished call here,
seeded with what earlier runs on the same store spent; progress and the summary read it from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kodcode.errors import BudgetExhausted, ConfigError

__all__ = ["Budget", "BudgetSpent"]


@dataclass(frozen=True)
class BudgetSpent:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float = 0.0
    verified: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Budget:
    """Run limits: a target of verified triplets and caps on LLM calls, tokens and dollars.

    prices maps a model name to (USD per 1M input tokens, USD per 1M output tokens). A dollar cap
    needs a price for every model charged. Limits are checked by the caller between calls
    (exhausted() / check()); calls already in flight when a limit trips still get charged, so a cap
    can be overshot by at most the calls in flight.
    """

    def __init__(
        self,
        calls: int | None = None,
        tokens: int | None = None,
        usd: float | None = None,
        prices: Mapping[str, tuple[float, float]] | None = None,
        *,
        target_verified: int | None = None,
        spent: "BudgetSpent | None" = None,
    ) -> None:
        for name, limit in (("calls", calls), ("tokens", tokens), ("usd", usd),
                            ("target_verified", target_verified)):
            if limit is not None and limit < 0:
                raise ConfigError(f"budget {name} must be >= 0, got {limit}")
        self.calls, self.tokens, self.usd, self.target_verified = calls, tokens, usd, target_verified
        self.prices: dict[str, tuple[float, float]] = {}
        for model, price in (prices or {}).items():
            if len(price) != 2 or min(price) < 0:
                raise ConfigError(f"price for {model} must be (usd_per_1M_input, usd_per_1M_output) >= 0")
            self.prices[model] = (float(price[0]), float(price[1]))
        # What earlier runs on the same store already spent counts against the same limits.
        self._spent = spent or BudgetSpent()

    def cost_usd(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        try:
            per_in, per_out = self.prices[model]
        except KeyError:
            raise ConfigError(f"no price for model {model!r}; add it to the budget prices") from None
        return (prompt_tokens * per_in + completion_tokens * per_out) / 1_000_000

    def price(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """What a call costs, 0.0 for a model without a price (charge() refuses those under a dollar cap)."""
        return self.cost_usd(model, prompt_tokens, completion_tokens) if model in self.prices else 0.0

    def charge(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Record one finished LLM call."""
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError(f"token counts must be >= 0, got {prompt_tokens}, {completion_tokens}")
        if model in self.prices or self.usd is not None:
            cost = self.cost_usd(model, prompt_tokens, completion_tokens)
        else:
            cost = 0.0
        s = self._spent
        self._spent = BudgetSpent(s.calls + 1, s.prompt_tokens + prompt_tokens,
                                  s.completion_tokens + completion_tokens, s.usd + cost, s.verified)

    def record_verified(self, count: int = 1) -> None:
        s = self._spent
        self._spent = BudgetSpent(s.calls, s.prompt_tokens, s.completion_tokens, s.usd, s.verified + count)

    @property
    def spent(self) -> BudgetSpent:
        return self._spent

    def exhausted(self) -> str | None:
        """Which limit is reached, as a one-line message, or None while the run may go on."""
        s = self._spent
        if self.target_verified is not None and s.verified >= self.target_verified:
            return f"target-verified reached: {s.verified} of {self.target_verified}"
        if self.calls is not None and s.calls >= self.calls:
            return f"budget-calls reached: {s.calls} of {self.calls}"
        if self.tokens is not None and s.tokens >= self.tokens:
            return f"budget-tokens reached: {s.tokens} of {self.tokens}"
        if self.usd is not None and s.usd >= self.usd:
            return f"budget-usd reached: ${s.usd:.4f} of ${self.usd:.2f}"
        return None

    def check(self) -> None:
        """Raise BudgetExhausted with the message of the first limit reached."""
        if (message := self.exhausted()) is not None:
            raise BudgetExhausted(message)

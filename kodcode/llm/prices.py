"""Default prices of common hosted models, merged with the run's own [prices] table for Budget.

Prices are USD per 1M tokens, (input, output), as the providers listed them for standard (non-batch,
non-cached) requests in mid-2025. Prices change: a [prices] entry in the config always wins over
this table, and a model found in neither costs 0 (a self-hosted vLLM model, for instance).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["DEFAULT_PRICES", "PRICES_AS_OF", "merged_prices", "price_for"]

PRICES_AS_OF = "2025-06"

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    # OpenAI
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o1": (15.00, 60.00),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    # Anthropic
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-opus-4": (15.00, 75.00),
    # DeepSeek (standard hours)
    "deepseek-chat": (0.27, 1.10),
    "deepseek-reasoner": (0.55, 2.19),
}

# Names people write for the same model.
_ALIASES = {
    "claude-3.5-sonnet": "claude-3-5-sonnet",
    "claude-3.5-haiku": "claude-3-5-haiku",
    "claude-3.7-sonnet": "claude-3-7-sonnet",
}


def price_for(model: str, overrides: Mapping[str, tuple[float, float]] | None = None) -> tuple[float, float] | None:
    """(USD per 1M input, per 1M output) for `model`, or None when unknown.

    An exact override wins; then the default table by exact name, then by the longest known name the
    model starts with, so dated snapshots ("gpt-4o-2024-08-06", "claude-3-5-haiku-20241022") and
    provider prefixes ("openai/gpt-4o-mini") find their family."""
    if overrides and model in overrides:
        return overrides[model]
    name = model.rsplit("/", 1)[-1].lower()
    for alias, canonical in _ALIASES.items():
        if name.startswith(alias):
            name = canonical + name[len(alias):]
    if name in DEFAULT_PRICES:
        return DEFAULT_PRICES[name]
    family = max((known for known in DEFAULT_PRICES if name.startswith(known + "-")), key=len, default=None)
    return DEFAULT_PRICES[family] if family is not None else None


def merged_prices(overrides: Mapping[str, tuple[float, float]], models: Iterable[str]) -> dict[str, tuple[float, float]]:
    """The price map to give Budget: every override, plus a default price for each of `models` that has one.

    Budget keys prices by the exact model name a request carries, so the defaults are resolved here
    for the models the run actually uses."""
    prices = {model: (float(price[0]), float(price[1])) for model, price in overrides.items()}
    for model in models:
        if model not in prices and (price := price_for(model)) is not None:
            prices[model] = price
    return prices

"""One exception hierarchy for kodcode.

KodcodeError
 ├── ConfigError        bad flags, config files, seed files: fatal, exit code 2
 ├── StoreError         the SQLite store cannot be opened or written
 │    └── SchemaError   the store was written by a newer kodcode
 ├── LLMError           an LLM endpoint failed after every retry
 │    ├── BudgetExhausted  a budget (calls, tokens, money) is spent
 │    └── EndpointUnavailable  an endpoint stayed down longer than --max-outage: the run stops (exit 75)
 ├── SandboxError       the sandbox itself (not the code under test) failed
 └── EmbeddedModelError the embedded model or its server cannot be used
"""

from __future__ import annotations

__all__ = [
    "BudgetExhausted",
    "ConfigError",
    "EmbeddedModelError",
    "EndpointUnavailable",
    "KodcodeError",
    "LLMError",
    "SandboxError",
    "SchemaError",
    "StoreError",
]


class KodcodeError(Exception):
    """Base of every error kodcode raises on purpose; its message is one line meant for a user."""


class ConfigError(KodcodeError):
    pass


class StoreError(KodcodeError):
    pass


class SchemaError(StoreError):
    pass


class LLMError(KodcodeError):
    pass


class BudgetExhausted(LLMError):
    pass


class EndpointUnavailable(LLMError):
    """Not the item's fault: the endpoint was down for longer than the run may wait. Like BudgetExhausted it
    stops the run and leaves every item where the store has it."""


class SandboxError(KodcodeError):
    pass


class EmbeddedModelError(KodcodeError):
    pass

"""Typed messages that flow between the agents. Frozen: a message is a fact, not a mutable work item."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AttemptResult", "AttemptTask", "ProposeTask", "ReasonTask", "RewriteTask"]


@dataclass(frozen=True)
class ProposeTask:
    """Make question number `seq` from `source`; the item row already exists in state `proposing`."""

    item_id: str
    seq: int
    source: str                      # prefill | seeds | snippets | docs | evol | filter
    subset: str                      # KodCode subset name, e.g. "Prefill"
    seeds: tuple[str, ...] = ()      # seed question texts (source "seeds"; evol: the parent question)
    seed_ids: tuple[str, ...] = ()   # evol: the parent's item id (stored with the item, for resume)
    prefix: str = ""                 # prefill prefix (source "prefill")
    material: str = ""               # snippets: the code; docs: the document; evol: the evolution method
    origin: str = ""                 # where the material is from: "path::qualname:first-last", "json.dumps", parent id


@dataclass(frozen=True)
class AttemptTask:
    """One attempt at a question; fields fill in as it passes Solver → Tester → Judge."""

    item_id: str
    attempt: int                     # 1-based
    question: str
    solution: str | None = None
    entry_point: str | None = None
    tests: str | None = None

    @property
    def stage(self) -> str:
        """Which agent takes it next: the one place that reads the stage off the fields (the store keeps
        the same fact durably as attempts.state: queued → solved → tested → judged)."""
        if self.solution is None:
            return "solve"
        return "test" if self.tests is None else "judge"


@dataclass(frozen=True)
class AttemptResult:
    """The end of one attempt (a verdict, or a failure before the sandbox with its reason)."""

    item_id: str
    attempt: int
    passed: bool
    reason: str | None
    coverage: float | None = None
    question: str = ""               # carried from the attempt, so the scheduler's turn needs no read-back


@dataclass(frozen=True)
class RewriteTask:
    """Rewrite a verified question into another style and verify the variant."""

    item_id: str
    style: str
    question: str
    solution: str
    tests: str
    entry_point: str


@dataclass(frozen=True)
class ReasonTask:
    """Sample one reasoning-model response to a verified question (of a given style) and test it."""

    item_id: str
    style: str                       # instruct, or a rewrite style such as complete
    sample: int                      # 0-based sample number
    question: str
    solution: str                    # the reference solution (for the entry point's signature)
    tests: str
    entry_point: str

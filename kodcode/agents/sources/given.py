"""Given questions (the user's own, or a benchmark's): fed to the Solver, Tester and Judge exactly as
written, one item per question, in file order. No model call makes them; they still pass the
duplicate and contamination gate. The run ends when every given question has settled (without --target,
the target is their number; an explicit --target can end it sooner)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, ClassVar

from kodcode.messages import ProposeTask
from kodcode.parsing import ParseFailure
from kodcode.agents.sources.seeds import Seed

if TYPE_CHECKING:
    from kodcode.agents.context import AgentContext

__all__ = ["GivenSource"]


class GivenSource:
    name: ClassVar[str] = "given"

    def __init__(self, questions: list[Seed], subset: str = "Given") -> None:
        self.questions = questions
        self.subset = subset

    def task(self, seq: int, rng: random.Random) -> ProposeTask | None:
        """Slot `seq` is question number `seq`; past the last one the source is exhausted (None)."""
        if seq >= len(self.questions):
            return None
        given = self.questions[seq]
        return ProposeTask(item_id=f"{self.subset}_{seq}", seq=seq, source=self.name, subset=self.subset,
                           material=given.question, origin=given.seed_id)

    @classmethod
    async def propose(cls, ctx: AgentContext, task: ProposeTask, lineage: dict[str, Any]) -> str:
        lineage["given_id"] = task.origin
        if not task.material.strip():
            raise ParseFailure("empty given question")
        return task.material

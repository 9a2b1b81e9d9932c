"""Evol (Evol-Instruct style): a harder variant of a question this store already verified.

The parent comes from a provider of verified (item_id, question) rows. A slot's parent is a function of
(run seed, seq, the rows the provider returns at that moment); its id is stored with the item
(items.seed_ids), so `SourceMix.restore` rebuilds the same request on resume. With no verified question
yet the source makes no task, and the mix gives the slot to another source (see SourceMix)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from kodcode.messages import ProposeTask
from kodcode.parsing import clean_question
from kodcode.agents.sources.base import ask

if TYPE_CHECKING:
    from kodcode.agents.context import AgentContext
    from kodcode.store.port import Records

__all__ = ["EVOLVE_METHODS", "EvolSource", "VerifiedPool", "VerifiedProvider"]

VerifiedProvider = Callable[[], Sequence[tuple[str, str]]]

# The in-depth evolution operations of Evol-Instruct (WizardCoder), minus "add erroneous code", which
# only misleads a solver without making the task itself harder.
EVOLVE_METHODS = (
    "Add new constraints and requirements to the original problem, adding approximately 10 additional words.",
    "Replace a commonly used requirement in the programming task with a less common and more specific one.",
    "If the original problem can be solved with only a few logical steps, add more reasoning steps.",
    "Require a better time or space complexity than the straightforward approach, and state the bound.",
)


class VerifiedPool:
    """Verified questions in the order they were verified: the pipeline adds each as it verifies, and a
    resumed run loads the store's. Calling it returns the rows, so it is a VerifiedProvider."""

    def __init__(self) -> None:
        self._rows: list[tuple[str, str]] = []
        self._ids: set[str] = set()

    def add(self, item_id: str, question: str) -> None:
        if item_id not in self._ids:
            self._ids.add(item_id)
            self._rows.append((item_id, question))

    async def load(self, records: Records) -> None:
        for item_id, question in await records.verified_questions():
            self.add(item_id, question)

    def __call__(self) -> Sequence[tuple[str, str]]:
        return self._rows

    def __len__(self) -> int:
        return len(self._rows)


class EvolSource:
    name: ClassVar[str] = "evol"

    def __init__(self, verified: VerifiedProvider) -> None:
        self.verified = verified

    def task(self, seq: int, rng: random.Random) -> ProposeTask | None:
        rows = self.verified()
        method = rng.choice(EVOLVE_METHODS)
        if not rows:
            return None
        parent_id, parent = rows[rng.randrange(len(rows))]
        return self._task(seq, parent_id, parent, method)

    def restore(self, seq: int, rng: random.Random, parent_ids: tuple[str, ...]) -> ProposeTask | None:
        """The task a slot had when it was first proposed: same parent (by id), same method."""
        method = rng.choice(EVOLVE_METHODS)
        rows = dict(self.verified())
        if not parent_ids or parent_ids[0] not in rows:
            return None
        return self._task(seq, parent_ids[0], rows[parent_ids[0]], method)

    def _task(self, seq: int, parent_id: str, parent: str, method: str) -> ProposeTask:
        return ProposeTask(item_id=f"Evol_{seq}", seq=seq, source=self.name, subset="Evol", seeds=(parent,),
                           seed_ids=(parent_id,), material=method, origin=parent_id)

    @classmethod
    async def propose(cls, ctx: AgentContext, task: ProposeTask, lineage: dict[str, Any]) -> str:
        prompt = ctx.prompts.render("propose_evolve", question=task.seeds[0], method=task.material)
        request, response = await ask(ctx, prompt, task, min_tokens=ctx.config.sources.analysis_max_tokens)
        lineage["proposer"] = response.lineage(request)
        lineage["parent"] = task.origin
        lineage["evolve_by"] = task.material
        return clean_question(response.text)

"""Filter (the paper's Filter subset): free-form Magpie questions with no prefix, tagged by a second LLM
call for input quality and task category (KodCode P Figs. 14-15, after Magpie's unitag); only the
configured qualities and categories are kept, the rest are dropped with reason "filter: <quality>/<category>"."""

from __future__ import annotations

import json
import random
import re
from typing import TYPE_CHECKING, Any, ClassVar

from kodcode.messages import ProposeTask
from kodcode.parsing import ParseFailure, clean_question, split_reasoning
from kodcode.agents.sources.base import ask, chatml_prefill, first_line

if TYPE_CHECKING:
    from kodcode.agents.context import AgentContext

__all__ = ["QUALITIES", "TASK_CATEGORIES", "FilterSource", "parse_tags"]

QUALITIES = ("very poor", "poor", "average", "good", "excellent")
TASK_CATEGORIES = (
    "Algorithm Implementation",
    "Function Generation",
    "Data Processing",
    "Debugging",
    "Code Optimization",
    "Code Explanation",
    "Code Translation",
    "System Design",
    "Conceptual Question",
    "Others",
)
_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def _field(text: str, key: str) -> str | None:
    match = re.search(rf'"?{key}"?\s*[:=]\s*"?([A-Za-z][A-Za-z ]*[A-Za-z])"?', text)
    return match.group(1) if match else None


def parse_tags(text: str) -> tuple[str, str]:
    """(quality, category) from the tagger's answer: a JSON object, or failing that "key": value pairs.
    The category is matched to TASK_CATEGORIES case-insensitively and kept as written if unknown."""
    _, answer = split_reasoning(text)
    quality = category = None
    if (match := _JSON_OBJECT.search(answer)) is not None:
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            quality = data.get("input_quality") if isinstance(data.get("input_quality"), str) else None
            category = data.get("task_category") if isinstance(data.get("task_category"), str) else None
    quality = (quality or _field(answer, "input_quality") or "").strip().lower()
    category = (category or _field(answer, "task_category") or "").strip()
    if quality not in QUALITIES:
        raise ParseFailure(f"filter: tagger gave no input_quality ({quality or 'missing'})")
    if not category:
        raise ParseFailure("filter: tagger gave no task_category")
    known = {name.lower(): name for name in TASK_CATEGORIES}
    return quality, known.get(category.lower(), category)


class FilterSource:
    name: ClassVar[str] = "filter"

    def task(self, seq: int, rng: random.Random) -> ProposeTask:
        return ProposeTask(item_id=f"Filter_{seq}", seq=seq, source=self.name, subset="Filter")

    @classmethod
    async def propose(cls, ctx: AgentContext, task: ProposeTask, lineage: dict[str, Any]) -> str:
        # Plain Magpie: the model sees only the pre-query template (a system message, then an open user
        # turn) and writes the user's question itself.
        prompt = ctx.prompts.render("propose_free")
        request, response = await ask(ctx, prompt, task, raw_prompt=chatml_prefill(prompt.user, ""),
                                      stop=("\n", "<|im_end|>"))
        lineage["proposer"] = response.lineage(request)
        question = clean_question(first_line(response.text))
        settings = ctx.config.sources
        tag_prompt = ctx.prompts.render("tag_question", question=question, categories=list(TASK_CATEGORIES))
        # Judging is not creative: greedy decoding, as Magpie's tagger.
        tag_request, tag_response = await ask(ctx, tag_prompt, task, salt="tag", temperature=0.0, min_tokens=256)
        lineage["tagger"] = {**tag_response.lineage(tag_request), "question": question}
        quality, category = parse_tags(tag_response.text)
        lineage["tagger"].update(quality=quality, category=category)
        if quality not in settings.filter_qualities or category not in settings.filter_categories:
            raise ParseFailure(f"filter: {quality}/{category}")
        return question

"""The mix of question sources. The proposal for slot `seq` is a pure function of (run seed, seq) — and,
for evol, of the verified questions at that moment — so a resumed run rebuilds exactly the proposal it
had started, and its LLM call is served from the cache."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from kodcode.config import Config
from kodcode.errors import ConfigError
from kodcode.messages import ProposeTask
from kodcode.agents.sources.base import QuestionSource
from kodcode.agents.sources.docs import DocIndex, DocSource
from kodcode.agents.sources.evol import EvolSource, VerifiedPool, VerifiedProvider
from kodcode.agents.sources.filter import FilterSource
from kodcode.agents.sources.given import GivenSource
from kodcode.agents.sources.prefill import PrefillSource
from kodcode.agents.sources.seeds import SeedSource, load_seeds
from kodcode.agents.sources.snippets import SnippetIndex, SnippetSource, default_snippets_dir

if TYPE_CHECKING:
    from kodcode.store.port import Records

__all__ = ["SOURCE_TYPES", "SourceMix", "source_type"]

SOURCE_TYPES: dict[str, type[QuestionSource]] = {
    cls.name: cls for cls in (PrefillSource, SeedSource, SnippetSource, DocSource, EvolSource, FilterSource,
                              GivenSource)
}


def source_type(name: str) -> type[QuestionSource]:
    """The class that prompts and parses for items of source `name` (what the Proposer runs)."""
    try:
        return SOURCE_TYPES[name]
    except KeyError:
        raise ConfigError(f"unknown question source {name!r} (known: {', '.join(sorted(SOURCE_TYPES))})") from None


class SourceMix:
    """Picks a source per slot by `sources.weights`, then lets the source pick its material.

    Each source draws from its own generator, seeded by (run seed, seq, source name), so what a source
    makes for a slot does not depend on how the slot was assigned. Evol needs verified questions: with
    none yet, the slot goes to another weighted source, drawn from the same slot generator (so the same
    seed, slot and "no verified question yet" always give the same fallback). `verified` provides the
    verified (item_id, question) rows; by default the mix keeps its own pool, fed by `note_verified` and
    `load_verified`.
    """

    def __init__(self, config: Config, verified: VerifiedProvider | None = None) -> None:
        settings = config.sources
        self._seed = config.seed
        weights = {name: weight for name, weight in settings.weights.items() if weight > 0}
        if "seeds" in weights and settings.seeds_file is None:
            weights.pop("seeds")
            if not weights:
                raise ConfigError("sources.weights asks for seed questions but no seed file is given (--seeds FILE)")
        if "given" in weights and settings.given_file is None:
            raise ConfigError("sources.weights asks for given questions but no file is given (--given FILE)")
        if "given" in weights and len(weights) > 1:
            raise ConfigError("given questions are solved as written, one item each, and end the run when all are "
                              f"settled: they cannot be mixed with other sources ({', '.join(sorted(weights))})")
        if set(weights) == {"evol"}:
            raise ConfigError("sources.weights: evol rewrites verified questions, so it needs another source "
                              "with a positive weight to make the first ones")
        self.pool = VerifiedPool() if verified is None else None
        self._verified: VerifiedProvider = verified if verified is not None else self.pool  # type: ignore[assignment]
        self.sources: dict[str, QuestionSource] = {name: self._build(name, config) for name in sorted(weights)}
        self._names = sorted(weights)
        self._weights = [weights[name] for name in self._names]

    def _build(self, name: str, config: Config) -> QuestionSource:
        settings = config.sources
        if name == "prefill":
            return PrefillSource(settings.prefill_prefixes)
        if name == "seeds":
            assert settings.seeds_file is not None
            seeds = load_seeds(settings.seeds_file, field=settings.seeds_field, split=settings.seeds_split)
            return SeedSource(seeds, settings.seeds_per_prompt, settings.subset or "Seeds")
        if name == "snippets":
            index = SnippetIndex(settings.snippets_dir or default_snippets_dir(),
                                 min_lines=settings.snippet_lines[0], max_lines=settings.snippet_lines[1])
            return SnippetSource(index, settings.snippets_subset)
        if name == "docs":
            return DocSource(DocIndex(settings.docs_modules))
        if name == "evol":
            return EvolSource(self._verified)
        if name == "filter":
            return FilterSource()
        if name == "given":
            assert settings.given_file is not None
            questions = load_seeds(settings.given_file, field=settings.seeds_field, split=settings.seeds_split)
            return GivenSource(questions, settings.subset or "Given")
        raise ConfigError(f"unknown question source {name!r} in sources.weights")

    @property
    def kinds(self) -> list[str]:
        return list(self._names)

    def _source_rng(self, seq: int, name: str) -> random.Random:
        return random.Random(f"{self._seed}:{seq}:{name}")

    def task_for(self, seq: int) -> ProposeTask | None:
        """The proposal for slot `seq`; None once the sources are exhausted (every given question used)."""
        rng = random.Random(f"{self._seed}:{seq}")
        name = rng.choices(self._names, self._weights)[0]
        task = self.sources[name].task(seq, self._source_rng(seq, name))
        if task is not None:
            return task
        if name == "given":
            return None
        others = [(other, weight) for other, weight in zip(self._names, self._weights) if other != name]
        fallback = rng.choices([other for other, _ in others], [weight for _, weight in others])[0]
        task = self.sources[fallback].task(seq, self._source_rng(seq, fallback))
        assert task is not None, "evol declines a slot only while it has nothing to evolve, and is never its own fallback"
        return task

    def restore(self, stored: ProposeTask) -> ProposeTask:
        """The full task for a proposal the store holds (only ids survive in the items row): rebuilt by the
        source that made it, so an evol slot keeps its parent and a fallback slot keeps its source."""
        source = self.sources.get(stored.source)
        rng = self._source_rng(stored.seq, stored.source)
        if isinstance(source, EvolSource):
            task = source.restore(stored.seq, rng, stored.seed_ids)
        elif source is not None:
            task = source.task(stored.seq, rng)
        else:
            task = None     # the source is no longer weighted in this run's config
        if task is None:
            task = self.task_for(stored.seq)
        if task is None:
            raise ConfigError(f"item {stored.item_id} was given question #{stored.seq + 1}, which the given file no "
                              "longer has; resume with the file the run started with")
        return task

    def note_verified(self, item_id: str, question: str) -> None:
        """A question was verified: evol may now evolve it (no-op with an external provider)."""
        if self.pool is not None:
            self.pool.add(item_id, question)

    async def load_verified(self, records: Records) -> None:
        """Fill the pool from the store (on resume, before any task_for/restore)."""
        if self.pool is not None:
            await self.pool.load(records)

"""Question sources and their mix. The proposal for slot `seq` is a pure function of (run seed, seq), so
a resumed run rebuilds exactly the proposal it had started, and its LLM call is served from the cache."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from kodcode.config import Config
from kodcode.errors import ConfigError
from kodcode.messages import ProposeTask

__all__ = ["Seed", "SourceMix", "load_seeds"]


@dataclass(frozen=True)
class Seed:
    seed_id: str
    question: str


def load_seeds(path: Path) -> list[Seed]:
    """Seed questions from JSONL: one object per line with a "question" (or "text"/"problem") field and an
    optional "id"."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"seed file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"seed file {path} cannot be read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"seed file {path} is not UTF-8 (byte {exc.start}); convert it with iconv") from None
    seeds: list[Seed] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"seed file {path} line {number}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ConfigError(f"seed file {path} line {number}: expected a JSON object")
        question = next((record[key] for key in ("question", "text", "problem") if isinstance(record.get(key), str)), None)
        if not question or not question.strip():
            raise ConfigError(f"seed file {path} line {number}: no \"question\" text")
        seeds.append(Seed(str(record.get("id", f"seed-{number}")), question.strip()))
    if not seeds:
        raise ConfigError(f"seed file {path} has no seed questions")
    return seeds


class SourceMix:
    def __init__(self, config: Config) -> None:
        settings = config.sources
        self._seed = config.seed
        self._prefixes = settings.prefill_prefixes or ("Write a python function to",)
        self._seeds = load_seeds(settings.seeds_file) if settings.seeds_file is not None else []
        self._per_prompt = min(settings.seeds_per_prompt, max(1, len(self._seeds)))
        self._seed_subset = settings.subset or "Seeds"
        weights = {name: w for name, w in settings.weights.items() if w > 0}
        if "seeds" in weights and not self._seeds:
            if settings.weights.get("prefill", 0) <= 0:
                raise ConfigError("sources.weights asks for seed questions but no seed file is given (--seeds FILE)")
            weights.pop("seeds")
        self._names = sorted(weights)
        self._weights = [weights[name] for name in self._names]

    @property
    def kinds(self) -> list[str]:
        return list(self._names)

    def task_for(self, seq: int) -> ProposeTask:
        rng = random.Random(f"{self._seed}:{seq}")
        source = rng.choices(self._names, self._weights)[0]
        if source == "prefill":
            return ProposeTask(item_id=f"Prefill_{seq}", seq=seq, source="prefill", subset="Prefill",
                               prefix=rng.choice(self._prefixes))
        picked = rng.sample(self._seeds, self._per_prompt)
        return ProposeTask(item_id=f"{self._seed_subset}_{seq}", seq=seq, source="seeds", subset=self._seed_subset,
                           seeds=tuple(seed.question for seed in picked),
                           seed_ids=tuple(seed.seed_id for seed in picked))

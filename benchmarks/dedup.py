"""Inline dedup benchmark: synthetic coding questions with planted light-edit near-duplicates.

    .venv/bin/python benchmarks/dedup.py [--n 100000] [--planted 5000] [--compare-n 20000]

Prints, for the default DedupIndex settings on all --n questions: wall time, process max
RSS (ru_maxrss), and precision/recall on the planted pairs. A second table
runs alternative shingle sizes and thresholds side by side on the first --compare-n
questions so the default can be judged against them. False positives are split into
"true" near-duplicates (the generator happened to make two questions whose real shingle
Jaccard passes the threshold) and LSH/estimate errors.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
from dataclasses import dataclass

from kodcode.quality.dedup import DedupConfig, DedupIndex, shingles, tokens

__all__ = ["Corpus", "make_corpus", "main"]

OPENERS = [
    "Write a Python function", "Write a function", "Create a function", "Implement a function",
    "Write a python function", "Design a function", "Develop a Python function", "Write a program",
    "Create a Python utility", "Implement a Python routine",
]
STATS = ["sum", "product", "count", "average", "maximum", "minimum", "median", "range", "variance", "mode"]
PROPS = ["even", "odd", "prime", "negative", "positive", "unique", "duplicated", "palindromic", "perfect square",
         "non-zero", "multiple-of-three", "Fibonacci", "two-digit", "sorted", "first", "last", "largest k"]
ELEMS = ["numbers", "integers", "elements", "values", "keys", "entries", "digits", "floats", "items", "scores"]
CONTAINERS = ["a list", "a nested list", "a dictionary", "a 2D matrix", "a linked list", "a binary tree",
              "a tuple", "a deque", "a set", "a stream of readings", "a CSV row", "a JSON array", "a heap"]
STR_OPS = ["reverses", "capitalizes", "counts the vowels in", "removes duplicate characters from",
           "compresses using run-length encoding", "checks if it is an anagram of another word in",
           "finds the longest palindromic substring of", "splits into chunks of size k",
           "converts to snake_case", "converts to camelCase", "strips punctuation from",
           "finds the first non-repeating character of", "rotates by k positions", "encodes with a Caesar shift of",
           "validates as an IPv4 address", "checks balanced brackets in", "extracts all email addresses from",
           "counts distinct substrings of", "computes the edit distance to a target word from"]
STR_OBJS = ["a string", "each word of a sentence", "a list of strings", "a paragraph", "a file name",
            "every line of a text file", "a URL", "a DNA sequence", "a user name", "a log message"]
GRAPH_TASKS = ["the shortest path between two nodes", "the number of connected components",
               "whether the graph contains a cycle", "a topological ordering", "the minimum spanning tree weight",
               "all nodes reachable within k steps", "the diameter", "whether it is bipartite",
               "the strongly connected components", "the node with the highest degree"]
GRAPH_REPR = ["an adjacency list", "an adjacency matrix", "a list of weighted edges", "a grid of 0s and 1s",
              "a dictionary mapping cities to neighbours", "a list of prerequisite pairs"]
ALGOS = ["binary search", "dynamic programming", "a sliding window", "two pointers", "a min-heap", "recursion",
         "memoization", "a stack", "breadth-first search", "depth-first search", "a greedy strategy", "bit manipulation"]
DOMAINS = ["inventory", "bank account", "student grade", "temperature sensor", "library", "parking lot",
           "shopping cart", "employee payroll", "weather station", "flight booking", "chess board", "playlist",
           "recipe", "sports league", "hotel reservation", "stock price", "traffic light", "voting"]
DOMAIN_TASKS = ["computes the total cost", "finds the busiest day", "detects overlapping intervals",
                "ranks the top k entries", "merges records with the same id", "validates every entry",
                "groups entries by category", "computes a running balance", "finds missing ids",
                "schedules tasks without conflicts", "summarises the data per month", "removes expired records"]
CONSTRAINTS = [
    "The input can contain up to {n} elements.", "Your solution should run in O(n log n) time.",
    "Do not use any built-in sorting functions.", "If the input is empty, return {empty}.",
    "Ignore case when comparing strings.", "Raise a ValueError for invalid input.",
    "The function must not modify its argument.", "Use only constant extra space.",
    "Values are in the range -{n} to {n}.", "Return the result rounded to {k} decimal places.",
    "Handle negative numbers correctly.", "The solution should be iterative, not recursive.",
    "Include type hints in the signature.", "Assume the input always has at least {k} items.",
    "If several answers exist, return the one that appears first.", "Time limit is {k} seconds for {n} queries.",
    "The output must be sorted in descending order.", "Treat None values as missing and skip them.",
    "Duplicate entries should be counted once.", "Return a tuple of (result, count).",
]
SYNONYMS = {
    "write": "create", "function": "method", "returns": "outputs", "return": "give back", "list": "array",
    "finds": "locates", "computes": "calculates", "checks": "verifies", "number": "count", "input": "argument",
    "given": "provided", "largest": "biggest", "smallest": "tiniest", "empty": "blank", "solution": "answer",
    "determine": "decide", "each": "every", "contains": "holds", "should": "must", "using": "with",
}


COMPONENTS = ["service", "dashboard", "command-line tool", "data pipeline", "game", "report generator", "library",
              "REST API", "mobile app", "batch job", "plugin", "simulation", "notebook", "microservice", "scheduler"]
VARS = ["nums", "arr", "values", "items", "data", "records", "words", "text", "grid", "matrix", "edges", "target",
        "limit", "k", "n", "threshold", "window", "prices", "scores", "names", "queries", "events", "tokens", "pairs"]
TYPES = ["list[int]", "list[str]", "str", "int", "float", "dict[str, int]", "list[list[int]]", "tuple[int, int]",
         "list[float]", "set[str]", "list[tuple[str, int]]", "bytes"]


def _context(rng: random.Random) -> str:
    first, second = rng.sample(VARS, 2)
    return (f"It is part of a {rng.choice(DOMAINS)} {rng.choice(COMPONENTS)}. The function receives "
            f"`{first}` ({rng.choice(TYPES)}) and `{second}` ({rng.choice(TYPES)}).")


def _example(rng: random.Random) -> str:
    nums = ", ".join(str(rng.randint(-99, 999)) for _ in range(rng.randint(3, 7)))
    return f"For example, given [{nums}] the function should return {rng.randint(-50, 500)}."


def _name(rng: random.Random) -> str:
    words = rng.sample(["get", "count", "find", "max", "min", "sum", "total", "best", "valid", "merge", "split",
                        "path", "node", "score", "item", "record", "window", "pair", "range", "char"], 3)
    return "_".join(words)


def _question(rng: random.Random) -> str:
    kind = rng.randrange(5)
    opener = rng.choice(OPENERS)
    if kind == 0:
        core = (f"{opener} that returns the {rng.choice(STATS)} of the {rng.choice(PROPS)} "
                f"{rng.choice(ELEMS)} in {rng.choice(CONTAINERS)}.")
    elif kind == 1:
        core = f"{opener} that takes {rng.choice(STR_OBJS)} and {rng.choice(STR_OPS)} it."
    elif kind == 2:
        core = (f"Given a graph represented as {rng.choice(GRAPH_REPR)}, {opener[0].lower() + opener[1:]} "
                f"that finds {rng.choice(GRAPH_TASKS)} using {rng.choice(ALGOS)}.")
    elif kind == 3:
        core = (f"You are building a {rng.choice(DOMAINS)} system. {opener} that {rng.choice(DOMAIN_TASKS)} "
                f"for a list of {rng.choice(DOMAINS)} records, using {rng.choice(ALGOS)} where helpful.")
    else:
        core = (f"{opener} named `{_name(rng)}` that {rng.choice(DOMAIN_TASKS)} in {rng.choice(CONTAINERS)} "
                f"of {rng.choice(PROPS)} {rng.choice(ELEMS)}.")
    parts = [core]
    if rng.random() < 0.8:
        parts.append(_context(rng))
    for template in rng.sample(CONSTRAINTS, rng.randint(1, 3)):
        parts.append(template.format(n=rng.choice([10, 100, 1000, 10**5, 10**6]), k=rng.randint(1, 9),
                                     empty=rng.choice(["0", "None", "an empty list", "-1"])))
    if rng.random() < 0.7:
        parts.append(_example(rng))
    return " ".join(parts)


def _light_edit(text: str, rng: random.Random) -> str:
    """1-3 edits a second generator sample or a resubmission would make."""
    words = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        edit = rng.randrange(5)
        i = rng.randrange(len(words))
        if edit == 0 and i + 1 < len(words):
            words[i], words[i + 1] = words[i + 1], words[i]
        elif edit == 1:
            words[i] = words[i].rstrip(".,") + rng.choice([",", ";", "", "!"])
        elif edit == 2:
            digits = [j for j, w in enumerate(words) if any(c.isdigit() for c in w)]
            j = rng.choice(digits) if digits else i
            words[j] = "".join(str(rng.randint(0, 9)) if c.isdigit() else c for c in words[j])
        elif edit == 3:
            keys = [j for j, w in enumerate(words) if w.lower().strip(".,") in SYNONYMS]
            j = rng.choice(keys) if keys else i
            words[j] = SYNONYMS.get(words[j].lower().strip(".,"), words[j])
        else:
            words[i] = words[i].upper() if rng.random() < 0.5 else words[i].lower()
    edited = " ".join(words)
    if rng.random() < 0.2:
        edited = f"Question {rng.randint(1, 300)}: {edited}"
    return edited


@dataclass
class Corpus:
    items: list[tuple[str, str]]  # (item_id, text) in arrival order
    planted: dict[str, str]  # duplicate item_id -> the original it was made from


def make_corpus(n: int, planted: int, seed: int = 7) -> Corpus:
    rng = random.Random(seed)
    originals = [(f"q{i}", _question(rng)) for i in range(n - planted)]
    after: list[list[tuple[str, str]]] = [[] for _ in originals]
    pairs: dict[str, str] = {}
    for k in range(planted):
        source = rng.randrange(len(originals))
        orig_id, text = originals[source]
        # Place the copy after the original so keep-first means the copy is the one rejected.
        dup_id = f"d{k}"
        after[rng.randint(source, len(originals) - 1)].append((dup_id, _light_edit(text, rng)))
        pairs[dup_id] = orig_id
    items = [entry for original, copies in zip(originals, after) for entry in (original, *copies)]
    return Corpus(items, pairs)


def _true_jaccard(a: str, b: str, sizes: tuple[int, ...]) -> float:
    wa, wb = tokens(a), tokens(b)
    sa = set().union(*(shingles(wa, k) for k in sizes))
    sb = set().union(*(shingles(wb, k) for k in sizes))
    return len(sa & sb) / max(1, len(sa | sb))


@dataclass
class RunResult:
    seconds: float
    cpu_seconds: float  # this process's CPU time: wall time overstates it when the cores are shared
    flagged: int
    true_positive: int
    collisions: int  # false positives whose real Jaccard passes: real near-duplicates in the data
    exact: int


def run(corpus: Corpus, config: DedupConfig) -> RunResult:
    texts = dict(corpus.items)
    index = DedupIndex(config)
    flagged = true_positive = collisions = exact = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    matches = [(item_id, index.check_and_add(item_id, text)) for item_id, text in corpus.items]
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    # Keep-first sends every rejected item to the kept representative of its group; if an
    # original was itself rejected (the generator made it twice by chance), its copy is right
    # to match that representative.
    kept_root: dict[str, str] = {}
    for item_id, match in matches:
        kept_root[item_id] = item_id if match is None else kept_root.get(match.other_item_id, match.other_item_id)
    for item_id, match in matches:
        if match is None:
            continue
        flagged += 1
        exact += match.kind == "exact"
        origin = corpus.planted.get(item_id)
        if origin is not None and kept_root[item_id] == kept_root[origin]:
            true_positive += 1
        elif _true_jaccard(texts[item_id], texts[match.other_item_id], config.ngram_sizes) >= config.threshold:
            collisions += 1
    return RunResult(seconds, cpu_seconds, flagged, true_positive, collisions, exact)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="questions in total, planted copies included")
    parser.add_argument("--planted", type=int, default=5_000, help="light-edit near-duplicates to plant")
    parser.add_argument("--compare-n", type=int, default=20_000, help="questions for the settings comparison (0: skip)")
    args = parser.parse_args(argv)
    if not 0 <= args.planted < args.n:
        parser.error("--planted must be smaller than --n")

    t0 = time.perf_counter()
    corpus = make_corpus(args.n, args.planted)
    print(f"corpus: {args.n} questions, {args.planted} planted copies, built in {time.perf_counter() - t0:.1f}s")
    texts = dict(corpus.items)
    sample = list(corpus.planted.items())[:2000]
    default = DedupConfig()
    planted_ok = sum(_true_jaccard(texts[d], texts[o], default.ngram_sizes) >= default.threshold for d, o in sample)
    print(f"planted copies whose true Jaccard passes the default threshold (first 2000): {planted_ok}/{len(sample)}")

    rss_before = _maxrss_mib()
    result = run(corpus, default)
    _report("default " + _label(default), default, result, args.planted)
    print(f"  wall {result.seconds:.1f}s, CPU {result.cpu_seconds:.1f}s ({args.n / result.cpu_seconds:,.0f} questions "
          f"per CPU-second; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores); process max RSS "
          f"{_maxrss_mib():.0f} MiB ({rss_before:.0f} MiB before indexing: interpreter + corpus)")

    if args.compare_n:
        small = make_corpus(args.compare_n, max(1, args.planted * args.compare_n // args.n), seed=11)
        planted_small = len(small.planted)
        print(f"\nsettings side by side on {args.compare_n} questions ({planted_small} planted), untraced:")
        baseline: float | None = None
        for config in (
            DedupConfig(),
            DedupConfig(threshold=0.6),
            DedupConfig(threshold=0.8),
            DedupConfig(ngram_sizes=(2,), threshold=0.7),
            DedupConfig(ngram_sizes=(3,), threshold=0.7),
            DedupConfig(ngram_sizes=(3,), threshold=0.6),
            DedupConfig(ngram_sizes=(5,), threshold=0.7),
            DedupConfig(num_perm=64),
            DedupConfig(num_perm=256),
        ):
            res = run(small, config)
            baseline = baseline or res.cpu_seconds
            _report(_label(config), config, res, planted_small, time_ratio=res.cpu_seconds / baseline)
    return 0


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _label(config: DedupConfig) -> str:
    grams = "+".join(map(str, config.ngram_sizes))
    return f"grams={grams} t={config.threshold} perm={config.num_perm}"


def _report(label: str, config: DedupConfig, res: RunResult, planted: int, time_ratio: float | None = None) -> None:
    precision = res.true_positive / res.flagged if res.flagged else 1.0
    recall = res.true_positive / planted if planted else 1.0
    # Collisions are real near-duplicates the generator made by chance: right to flag.
    precision_real = (res.true_positive + res.collisions) / res.flagged if res.flagged else 1.0
    timing = f" CPU x{time_ratio:.2f} ({res.cpu_seconds:.1f}s)" if time_ratio is not None else ""
    print(f"{label:<40} flagged {res.flagged:>6} (exact {res.exact:>5}) recall {recall:.3f} "
          f"precision {precision:.3f} (counting real chance near-dups: {precision_real:.3f}){timing}")


if __name__ == "__main__":
    sys.exit(main())

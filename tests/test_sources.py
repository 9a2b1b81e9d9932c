"""Question sources: each source's request (prompt contents) against the scripted OpenAI-protocol server,
what the Proposer stores (question, subset, lineage, rejection reasons), determinism of the mix, and the
one-line errors for bad sources."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pytest

from kodcode.agents.context import AgentContext
from kodcode.agents.proposer import Proposer
from kodcode.config import Config, load_config
from kodcode.errors import ConfigError
from kodcode.messages import ProposeTask
from kodcode.prompts import PromptLibrary
from kodcode.llm.client import LLMClient, OpenAITransport
from kodcode.log import configure_logging, get_logger
from kodcode.runtime.pipeline import Pipeline
from kodcode.sandbox.fake import FakeSandbox
from kodcode.store.records import SqliteRecords
from kodcode.runtime.scheduler import AdaptivePolicy
from kodcode.store.sqlite import Store
from kodcode.agents.sources import (
    EVOLVE_METHODS,
    DocIndex,
    SnippetIndex,
    SourceMix,
    default_snippets_dir,
    load_seeds,
    parse_tags,
)
from kodcode.parsing import ParseFailure
from scripted_openai import ScriptedRequest

from fake_coder import CATALOGUE

ALL_WEIGHTS = {"prefill": 1.0, "seeds": 1.0, "snippets": 1.0, "docs": 1.0, "evol": 1.0, "filter": 1.0}

ALGORITHM_FILE = '''"""Sorting helpers."""

LIMIT = 10


def insertion_sort(values):
    """Sort a list in place by insertion."""
    for i in range(1, len(values)):
        key = values[i]
        j = i - 1
        while j >= 0 and values[j] > key:
            values[j + 1] = values[j]
            j -= 1
        values[j + 1] = key
    return values


def tiny(x):
    return x
'''


@dataclass
class Recorder:
    """A responder that answers with `answer(request)` and keeps every request, in arrival order."""

    answer: Callable[[ScriptedRequest], str]
    requests: list[ScriptedRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: ScriptedRequest) -> str:
        with self._lock:
            self.requests.append(request)
        return self.answer(request)


@dataclass
class Harness:
    config: Config
    ctx: AgentContext
    records: SqliteRecords
    store: Store
    proposer: Proposer

    async def propose(self, task: ProposeTask) -> str | None:
        await self.records.add_proposal(task)
        return (await self.proposer.handle(task)).admitted

    async def item(self, item_id: str) -> dict[str, Any]:
        rows = await self.store.rows("SELECT * FROM items WHERE item_id=?", (item_id,))
        row = dict(rows[0])
        row["lineage"] = json.loads(row["lineage"] or "{}")
        row["seed_ids"] = json.loads(row["seed_ids"] or "[]")
        return row


@pytest.fixture
def harness(scripted_server, tmp_path: Path):
    @asynccontextmanager
    async def start(responder: Recorder, **overrides: Any) -> AsyncIterator[Harness]:
        server = scripted_server(responder)
        config = load_config(None, {"base_url": server.base_url, **overrides})
        configure_logging(tmp_path / "events.jsonl", console_level="warning")
        store = await Store.open(tmp_path / "kc.db")
        records = SqliteRecords(store)
        await records.start_run({})
        llm = LLMClient({"default": OpenAITransport(server.base_url)}, records, concurrency=4, max_retries=0)
        ctx = AgentContext(config, llm, records, FakeSandbox(), PromptLibrary(),
                           {role: "scripted-model" for role in ("proposer", "solver", "tester", "rewriter")},
                           get_logger())
        try:
            yield Harness(config, ctx, records, store, Proposer(ctx))
        finally:
            await llm.aclose()
            await store.aclose()

    return start


def tagged(question: str, analysis: str | None = None) -> str:
    head = f"<|Analysis Begin|>\n{analysis}\n<|Analysis End|>\n" if analysis else ""
    return f"{head}<|Question Begin|>\n{question}\n<|Question End|>"


def write_seeds(tmp_path: Path) -> Path:
    path = tmp_path / "seeds.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"lc-{n}", "question": problem.question})
                              for n, problem in enumerate(CATALOGUE[:5])) + "\n")
    return path


def first_seq(mix: SourceMix, source: str, start: int = 0) -> int:
    return next(seq for seq in range(start, start + 500) if mix.task_for(seq).source == source)


# -- prefill and seeds --------------------------------------------------------------------------------


async def test_prefill_completes_a_raw_user_turn_and_keeps_the_first_line(harness) -> None:
    responder = Recorder(lambda request: " reverse a linked list in place.\nAnd then some chatter")
    async with harness(responder, **{"sources.weights": {"prefill": 1.0}}) as h:
        task = SourceMix(h.config).task_for(0)
        assert await h.propose(task) == "Write a python function to reverse a linked list in place."
        item = await h.item(task.item_id)
    request = responder.requests[0]
    assert request.endpoint == "completions"
    assert request.prompt.endswith("<|im_start|>user\nWrite a python function to")
    assert "\n" in request.stop
    assert (item["state"], item["subset"], item["source"]) == ("open", "Prefill", "prefill")
    assert item["lineage"]["prefix"] == "Write a python function to"
    assert item["lineage"]["proposer"]["template"] == "propose_prefill"


async def test_prefill_with_an_empty_completion_is_rejected(harness) -> None:
    async with harness(Recorder(lambda request: "\n"), **{"sources.weights": {"prefill": 1.0}}) as h:
        task = SourceMix(h.config).task_for(0)
        assert await h.propose(task) is None
        item = await h.item(task.item_id)
    assert (item["state"], item["reason"]) == ("rejected", "empty prefill completion")


async def test_seeds_prompt_lists_the_seed_questions(harness, tmp_path: Path) -> None:
    responder = Recorder(lambda request: "[Question 3]: Write a function that merges overlapping intervals.")
    seeds = write_seeds(tmp_path)
    async with harness(responder, **{"sources.weights": {"seeds": 1.0}, "sources.seeds_file": seeds,
                                     "sources.seeds_per_prompt": 2, "sources.subset": "Leetcode"}) as h:
        task = SourceMix(h.config).task_for(7)
        assert await h.propose(task) == "Write a function that merges overlapping intervals."
        item = await h.item(task.item_id)
    user = responder.requests[0].user
    assert f"[Question 1]: {task.seeds[0]}" in user and f"[Question 2]: {task.seeds[1]}" in user
    assert user.rstrip().endswith("[Question 3]:")
    assert item["subset"] == "Leetcode" and item["item_id"] == "Leetcode_7"
    assert item["seed_ids"] == list(task.seed_ids) and all(s.startswith("lc-") for s in task.seed_ids)


def save_to_disk_layout(directory: Path, rows: dict[str, list[Any]], *, shards: int = 1) -> None:
    """What `datasets.Dataset.save_to_disk` writes: Arrow IPC stream shards, state.json, dataset_info.json."""
    directory.mkdir(parents=True)
    table = pa.table(rows)
    per_shard = -(-table.num_rows // shards)
    names = []
    for shard in range(shards):
        name = f"data-{shard:05d}-of-{shards:05d}.arrow"
        part = table.slice(shard * per_shard, per_shard)
        with pa.OSFile(str(directory / name), "wb") as sink, pa.ipc.new_stream(sink, part.schema) as writer:
            writer.write_table(part)
        names.append(name)
    (directory / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names]}))
    (directory / "dataset_info.json").write_text("{}")


def test_seeds_load_from_a_saved_hugging_face_dataset(tmp_path: Path) -> None:
    problems = [p.question for p in CATALOGUE[:5]]
    save_to_disk_layout(tmp_path / "ds", {"task_id": [f"t{n}" for n in range(5)], "prompt": problems}, shards=2)
    seeds = load_seeds(tmp_path / "ds", field="prompt")
    assert [seed.question for seed in seeds] == problems     # every shard, in the recorded order
    assert [seed.seed_id for seed in seeds] == [f"row-{n}" for n in range(5)]  # no known id column

    # A DatasetDict: splits in subdirectories; "train" by default, another by name.
    root = tmp_path / "dd"
    save_to_disk_layout(root / "train", {"id": ["a", "b"], "question": problems[:2]})
    save_to_disk_layout(root / "test", {"id": ["c"], "question": problems[2:3]})
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert [(s.seed_id, s.question) for s in load_seeds(root)] == [("a", problems[0]), ("b", problems[1])]
    assert [s.seed_id for s in load_seeds(root, split="test")] == ["c"]

    with pytest.raises(ConfigError, match=r"no text field 'statement' \(columns: task_id, prompt\)"):
        load_seeds(tmp_path / "ds", field="statement")
    with pytest.raises(ConfigError, match="no split 'validation'"):
        load_seeds(root, split="validation")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .arrow files"):
        load_seeds(tmp_path / "empty")


async def test_seeds_source_reads_a_saved_dataset_through_the_config(harness, tmp_path: Path) -> None:
    save_to_disk_layout(tmp_path / "ds", {"problem_id": ["p1", "p2"], "statement": [CATALOGUE[0].question,
                                                                                     CATALOGUE[1].question]})
    responder = Recorder(lambda request: "Write a python function to count the set bits of an integer.")
    async with harness(responder, **{"sources.weights": {"seeds": 1.0}, "sources.seeds_file": tmp_path / "ds",
                                     "sources.seeds_field": "statement"}) as h:
        task = SourceMix(h.config).task_for(0)
        await h.propose(task)
        item = await h.item(task.item_id)
    assert item["seed_ids"][0] in ("p1", "p2")
    assert task.seeds[0] in responder.requests[0].user


# -- snippets -----------------------------------------------------------------------------------------


def snippet_dir(tmp_path: Path) -> Path:
    root = tmp_path / "algos"
    (root / "sorting").mkdir(parents=True)
    (root / "sorting" / "insertion.py").write_text(ALGORITHM_FILE)
    (root / "broken.py").write_text("def nope(:\n    pass\n")                      # not Python: skipped
    (root / "long.py").write_text("def long_one(x):\n" + "    if x:\n        x += 1\n" * 60 + "    return x\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_sorting.py").write_text(ALGORITHM_FILE.replace("insertion_sort", "test_sort"))
    return root


async def test_snippets_source_asks_for_analysis_then_question(harness, tmp_path: Path) -> None:
    question = "Write a function `gnome_sort(values)` that sorts a list of integers with gnome sort."
    responder = Recorder(lambda request: tagged(question, "Core: insertion sort, O(n^2) time, O(1) space."))
    root = snippet_dir(tmp_path)
    async with harness(responder, **{"sources.weights": {"snippets": 1.0}, "sources.snippets_dir": root,
                                     "sources.snippets_subset": "Data_Structure"}) as h:
        task = SourceMix(h.config).task_for(3)
        assert await h.propose(task) == question
        item = await h.item(task.item_id)
    # Only insertion_sort qualifies: tiny() is too short, long_one too long, tests/ and broken.py are skipped.
    assert task.material.startswith("def insertion_sort(values):") and task.material.rstrip().endswith("return values")
    request = responder.requests[0]
    assert "def insertion_sort(values):" in request.user
    assert "<|Analysis Begin|>" in request.user and "<|Question Begin|>" in request.user
    assert request.max_tokens == h.config.sources.analysis_max_tokens   # the proposer's 256 would cut the analysis
    assert (item["subset"], item["source"], item["item_id"]) == ("Data_Structure", "snippets", "Data_Structure_3")
    assert item["lineage"]["snippet"] == {"path": "sorting/insertion.py", "qualname": "insertion_sort",
                                          "lines": "6-15"}
    assert item["question"] == question and "Analysis" not in item["question"]


async def test_snippet_answer_cut_off_in_the_analysis_is_rejected(harness, tmp_path: Path) -> None:
    responder = Recorder(lambda request: "<|Analysis Begin|>\nThe snippet implements insertion sort, whose")
    async with harness(responder, **{"sources.weights": {"snippets": 1.0},
                                     "sources.snippets_dir": snippet_dir(tmp_path)}) as h:
        task = SourceMix(h.config).task_for(0)
        assert await h.propose(task) is None
        item = await h.item(task.item_id)
    assert item["state"] == "rejected"
    assert item["reason"] == "no <|Question Begin|> section after the analysis"
    assert item["subset"] == "Algorithm"


def test_snippets_default_to_the_standard_library() -> None:
    mix = SourceMix(load_config(None, {"sources.weights": {"snippets": 1.0}}))
    root = default_snippets_dir()
    seen = set()
    for seq in range(12):
        task = mix.task_for(seq)
        location, _, lines = task.origin.rpartition(":")
        path, _, qualname = location.partition("::")
        first, last = map(int, lines.split("-"))
        source_lines = (root / path).read_text(encoding="utf-8").splitlines()
        assert "\n".join(source_lines[first - 1:last]) == task.material      # the real code, cut at its lines
        assert 5 <= last - first + 1 <= 80
        assert f"def {qualname}" in task.material or f"class {qualname}" in task.material
        assert not {"test", "tests", "site-packages"} & set(Path(path).parts)
        seen.add(task.origin)
    assert len(seen) > 6, "different slots get different snippets"


def test_bad_snippet_directories_are_one_line_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        SnippetIndex(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no Python files"):
        SnippetIndex(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "consts.py").write_text("A = 1\n\ndef f(x):\n    return x\n")
    with pytest.raises(ConfigError, match="no top-level function or class of 5-80 lines"):
        SourceMix(load_config(None, {"sources.weights": {"snippets": 1.0}, "sources.snippets_dir": tmp_path / "flat"}))


# -- docs ---------------------------------------------------------------------------------------------


async def test_docs_source_turns_a_docstring_into_a_question(harness) -> None:
    question = "Write a function `pretty(data)` that serialises a dict to JSON with sorted keys and 2-space indent."
    responder = Recorder(lambda request: tagged(question))
    async with harness(responder, **{"sources.weights": {"docs": 1.0}, "sources.docs_modules": ["json"]}) as h:
        mix = SourceMix(h.config)
        task = mix.task_for(0)
        assert await h.propose(task) == question
        item = await h.item(task.item_id)
    assert task.origin.startswith("json.")
    user = responder.requests[0].user
    assert f"`{task.origin}`" in user and task.material in user and "BAD_DOCUMENT" in user
    assert (item["subset"], item["source"], item["lineage"]["document"]) == ("Docs", "docs", task.origin)


async def test_docs_marked_bad_document_are_dropped_with_the_reason(harness) -> None:
    async with harness(Recorder(lambda request: "BAD_DOCUMENT"), **{"sources.weights": {"docs": 1.0}}) as h:
        task = SourceMix(h.config).task_for(1)
        assert await h.propose(task) is None
        item = await h.item(task.item_id)
    assert (item["state"], item["question"]) == ("rejected", None)
    assert item["reason"] == "model marked the document unusable (BAD_DOCUMENT)"
    assert item["lineage"]["document"] == task.origin


def test_doc_index_reads_public_docstrings_of_the_default_modules() -> None:
    names = {document.name: document.text for document in DocIndex().documents}
    assert {"json.dumps", "itertools.groupby", "collections.Counter", "re.sub", "textwrap.dedent"} <= names.keys()
    assert names["json.dumps"].startswith("json.dumps(obj, *,")            # signature first, then the docstring
    assert "Serialize ``obj`` to a JSON formatted ``str``" in names["json.dumps"]
    assert not any(name.split(".")[-1].startswith("_") for name in names)


def test_missing_doc_module_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match=r"cannot import 'no_such_module_kc' \(ModuleNotFoundError") as caught:
        SourceMix(load_config(None, {"sources.weights": {"docs": 1.0},
                                     "sources.docs_modules": ["json", "no_such_module_kc"]}))
    assert "\n" not in str(caught.value)


# -- evol ---------------------------------------------------------------------------------------------


async def test_evol_waits_for_verified_questions_then_evolves_them(harness) -> None:
    harder = "Write a python function to return the sum of even integers in a list in one pass using O(1) memory."
    responder = Recorder(lambda request: tagged(harder))
    async with harness(responder, **{"sources.weights": {"evol": 3.0, "prefill": 1.0}}) as h:
        mix = SourceMix(h.config)
        # No verified question yet: every slot goes to the other source, and always the same way.
        assert {mix.task_for(seq).source for seq in range(40)} == {"prefill"}
        mix.note_verified("Prefill_0", CATALOGUE[0].question)
        mix.note_verified("Prefill_1", CATALOGUE[1].question)
        seq = first_seq(mix, "evol")
        task = mix.task_for(seq)
        assert task.seed_ids[0] in ("Prefill_0", "Prefill_1") and task.material in EVOLVE_METHODS
        assert await h.propose(task) == harder
        item = await h.item(task.item_id)
    user = responder.requests[0].user
    assert task.seeds[0] in user and task.material in user
    assert (item["subset"], item["source"]) == ("Evol", "evol")
    assert item["seed_ids"] == list(task.seed_ids)      # the parent survives in the items row
    assert item["lineage"]["parent"] == task.seed_ids[0] and item["lineage"]["evolve_by"] == task.material


async def test_restore_rebuilds_an_evol_task_from_its_stored_parent(harness) -> None:
    async with harness(Recorder(lambda request: "x"), **{"sources.weights": {"evol": 1.0, "prefill": 1.0}}) as h:
        mix = SourceMix(h.config)
        mix.note_verified("Prefill_0", CATALOGUE[0].question)
        seq = first_seq(mix, "evol")
        original = mix.task_for(seq)
        await h.records.add_proposal(original)
        # Time passes: more questions verify, so a fresh draw for this slot could pick another parent.
        for n, problem in enumerate(CATALOGUE[1:8], 1):
            mix.note_verified(f"Prefill_{n}", problem.question)
        # A resumed run: only ids survive in the store; the pool is reloaded from verified items.
        for n, problem in enumerate(CATALOGUE[:8]):
            await h.records.add_proposal(ProposeTask(item_id=f"Prefill_{n}", seq=1000 + n, source="prefill",
                                                     subset="Prefill"))
            await h.records.set_question(f"Prefill_{n}", problem.question, {}, "open")
            await h.store.write([("UPDATE items SET state='verified' WHERE item_id=?", (f"Prefill_{n}",))])
        resumed = SourceMix(h.config)
        await resumed.load_verified(h.records)
        stored = (await h.records.resume_state(())).proposing[0]
        assert resumed.restore(stored) == original


def test_evol_alone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="evol rewrites verified questions"):
        SourceMix(load_config(None, {"sources.weights": {"evol": 1.0}}))


def test_evol_uses_an_external_provider() -> None:
    rows = [("Leetcode_4", CATALOGUE[3].question)]
    mix = SourceMix(load_config(None, {"sources.weights": {"evol": 1.0, "prefill": 0.01}}), verified=lambda: rows)
    task = mix.task_for(first_seq(mix, "evol"))
    assert (task.seed_ids, task.seeds) == (("Leetcode_4",), (CATALOGUE[3].question,))


# -- filter -------------------------------------------------------------------------------------------


def filter_responder(tags: str, question: str = CATALOGUE[2].question) -> Recorder:
    return Recorder(lambda request: f"{question}\nmore text" if request.endpoint == "completions" else tags)


async def test_filter_keeps_good_function_questions(harness) -> None:
    responder = filter_responder('Sure: {"explanation": "clear", "input_quality": "excellent", '
                                 '"task_category": "function generation"}')
    async with harness(responder, **{"sources.weights": {"filter": 1.0}}) as h:
        task = SourceMix(h.config).task_for(5)
        assert await h.propose(task) == CATALOGUE[2].question
        item = await h.item(task.item_id)
    magpie, tagger = responder.requests
    assert magpie.endpoint == "completions" and magpie.prompt.endswith("<|im_start|>user\n")   # no prefix at all
    assert "\n" in magpie.stop
    assert tagger.endpoint == "chat" and CATALOGUE[2].question in tagger.user
    assert "Algorithm Implementation" in tagger.user and tagger.temperature == 0.0
    assert (item["subset"], item["source"], item["state"]) == ("Filter", "filter", "open")
    assert item["lineage"]["tagger"]["quality"] == "excellent"
    assert item["lineage"]["tagger"]["category"] == "Function Generation"


@pytest.mark.parametrize(("tags", "reason"), [
    ('{"input_quality": "poor", "task_category": "Function Generation"}', "filter: poor/Function Generation"),
    ('{"input_quality": "good", "task_category": "Debugging"}', "filter: good/Debugging"),
    ('"input_quality": "average", "task_category": "Code Explanation"', "filter: average/Code Explanation"),
    ("I think this is a nice question.", "filter: tagger gave no input_quality (missing)"),
])
async def test_filter_drops_other_qualities_and_categories_with_a_reason(harness, tags: str, reason: str) -> None:
    async with harness(filter_responder(tags), **{"sources.weights": {"filter": 1.0}}) as h:
        task = SourceMix(h.config).task_for(0)
        assert await h.propose(task) is None
        item = await h.item(task.item_id)
    assert (item["state"], item["reason"]) == ("rejected", reason)
    assert item["lineage"]["tagger"]["question"] == CATALOGUE[2].question    # kept for inspection


def test_filter_keep_lists_are_configurable() -> None:
    config = load_config(None, {"sources.filter_qualities": ["average", "good"],
                                "sources.filter_categories": ["Debugging"]})
    assert config.sources.filter_qualities == ("average", "good")
    with pytest.raises(ConfigError, match="filter_qualities"):
        load_config(None, {"sources.filter_qualities": ["great"]})
    assert parse_tags('{"input_quality": "Good", "task_category": "algorithm implementation"}') == \
        ("good", "Algorithm Implementation")
    with pytest.raises(ParseFailure):
        parse_tags('{"input_quality": "good"}')


# -- the mix ------------------------------------------------------------------------------------------


def test_task_for_is_a_pure_function_of_seed_and_seq(tmp_path: Path) -> None:
    overrides = {"sources.weights": ALL_WEIGHTS, "sources.seeds_file": write_seeds(tmp_path),
                 "sources.snippets_dir": snippet_dir(tmp_path)}
    first = SourceMix(load_config(None, overrides))
    second = SourceMix(load_config(None, overrides))
    for mix in (first, second):
        mix.note_verified("Prefill_0", CATALOGUE[0].question)
    seqs = [0, 5, 17, 3, 99, 5]
    assert [first.task_for(seq) for seq in seqs] == [second.task_for(seq) for seq in reversed(seqs)][::-1]
    assert first.task_for(17) == first.task_for(17)
    other_seed = SourceMix(load_config(None, {**overrides, "seed": 1}))
    other_seed.note_verified("Prefill_0", CATALOGUE[0].question)
    assert [first.task_for(seq) for seq in range(30)] != [other_seed.task_for(seq) for seq in range(30)]
    # Resume rebuilds every kind of slot from what the items row keeps.
    for seq in range(30):
        task = first.task_for(seq)
        stored = ProposeTask(item_id=task.item_id, seq=seq, source=task.source, subset=task.subset,
                             seed_ids=task.seed_ids)
        assert second.restore(stored) == task


def test_weights_mix_every_source_and_follow_their_ratio(tmp_path: Path) -> None:
    config = load_config(None, {"sources.weights": {**ALL_WEIGHTS, "prefill": 4.0},
                                "sources.seeds_file": write_seeds(tmp_path),
                                "sources.snippets_dir": snippet_dir(tmp_path)})
    mix = SourceMix(config)
    mix.note_verified("Prefill_0", CATALOGUE[0].question)
    tasks = [mix.task_for(seq) for seq in range(400)]
    counts = {name: sum(task.source == name for task in tasks) for name in ALL_WEIGHTS}
    assert all(counts[name] > 0 for name in ALL_WEIGHTS), counts
    assert counts["prefill"] > 2 * max(counts[name] for name in ALL_WEIGHTS if name != "prefill")
    subsets = {task.source: task.subset for task in tasks}
    assert subsets == {"prefill": "Prefill", "seeds": "Seeds", "snippets": "Algorithm", "docs": "Docs",
                       "evol": "Evol", "filter": "Filter"}
    assert all(task.item_id == f"{task.subset}_{task.seq}" for task in tasks)


def test_seed_weight_without_a_seed_file() -> None:
    # The default weights name seeds; without a seed file the other sources carry the run...
    assert SourceMix(load_config(None, {"sources.weights": {"seeds": 1.0, "docs": 1.0}})).kinds == ["docs"]
    # ...but seeds alone cannot.
    with pytest.raises(ConfigError, match="no seed file is given"):
        SourceMix(load_config(None, {"sources.weights": {"seeds": 1.0}}))


async def test_pipeline_verifies_questions_from_every_source(fake_coder_server, tmp_path: Path) -> None:
    """The scripted model answers every source's prompt kind, and the questions flow through the pipeline."""
    coder, server = fake_coder_server()
    config = load_config(None, {"base_url": server.base_url, "target": 16, "concurrency": 4, "mode": "split",
                                "styles": [], "gates.mutation": False,   # the stand-in sandbox passes mutants too
                                "sources.weights": ALL_WEIGHTS,
                                "sources.seeds_file": write_seeds(tmp_path),
                                "sources.snippets_dir": snippet_dir(tmp_path)})
    configure_logging(tmp_path / "events.jsonl", console_level="warning")
    store = await Store.open(tmp_path / "kc.db")
    records = SqliteRecords(store)
    await records.start_run({})
    llm = LLMClient({"default": OpenAITransport(server.base_url)}, records, concurrency=4)
    ctx = AgentContext(config, llm, records, FakeSandbox(), PromptLibrary(),
                       {role: "scripted-model" for role in ("proposer", "solver", "tester", "rewriter")}, get_logger())
    pipeline = Pipeline(ctx, policy=AdaptivePolicy(), sources=SourceMix(config))
    try:
        with anyio.fail_after(120):
            await pipeline.run()
        rows = await store.rows("SELECT source, subset, state FROM items")
    finally:
        await llm.aclose()
        await store.aclose()
    assert sum(row["state"] == "verified" for row in rows) >= 16
    proposed = {row["source"] for row in rows if row["state"] != "rejected"}
    assert {"prefill", "seeds", "snippets", "docs", "filter"} <= proposed
    assert coder.kinds["unknown"] == 0
    assert coder.kinds["tag"] == coder.kinds["propose_free"] > 0
    assert server.responder_errors == [] and server.internal_errors == []


def test_given_questions_are_solved_as_written_and_end_the_run(fake_coder_server, run_dir: Path) -> None:
    from fake_coder import CATALOGUE

    from helpers import query, run_kodcode

    coder, server = fake_coder_server(fail_first={CATALOGUE[1].name: 99})
    given = run_dir / "mine.jsonl"
    chosen = CATALOGUE[:3]
    given.write_text("".join(json.dumps({"id": f"q{n}", "question": p.question}) + "\n" for n, p in enumerate(chosen)))
    db = run_dir / "kc.db"
    result = run_kodcode("run", "--base-url", server.base_url, "--given", str(given), "--target", "10",
                         "--max-attempts", "2", "--concurrency", "2", "--db", str(db), "--no-mutation-gate")
    assert result.returncode == 0, result.stderr
    # Three questions, so the run ends when they are settled, short of the target.
    assert "questions exhausted" in result.stdout
    rows = query(db, "SELECT subset, source, question, state, json_extract(lineage, '$.given_id') FROM items ORDER BY seq")
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [("Given", "given", p.question, f"q{n}")
                                                        for n, p in enumerate(chosen)]
    assert [r[3] for r in rows] == ["verified", "failed", "verified"]
    assert not any(kind.startswith("propose") or kind == "tag" for kind in coder.kinds), coder.kinds

    mixed = run_kodcode("run", "--base-url", server.base_url, "--given", str(given), "--sources", "prefill=1",
                        "--db", str(run_dir / "other.db"))
    assert mixed.returncode == 2 and "--given and --sources conflict" in mixed.stderr


def test_given_questions_without_a_target_are_all_settled_past_the_default_target(fake_coder_server,
                                                                                  run_dir: Path) -> None:
    from fake_coder import CATALOGUE

    from helpers import query, run_kodcode

    _coder, server = fake_coder_server()
    chosen = CATALOGUE[:12]
    assert len(chosen) == 12   # more than the default target of 10
    given = run_dir / "mine.jsonl"
    given.write_text("".join(json.dumps({"id": f"q{n}", "question": p.question}) + "\n" for n, p in enumerate(chosen)))
    db = run_dir / "kc.db"
    result = run_kodcode("run", "--base-url", server.base_url, "--given", str(given), "--max-attempts", "2",
                         "--concurrency", "4", "--db", str(db), "--no-mutation-gate")
    assert result.returncode == 0, result.stderr
    assert "questions exhausted" in result.stdout and "target reached" not in result.stdout
    states = [row[0] for row in query(db, "SELECT state FROM items ORDER BY seq")]
    assert len(states) == 12 and "open" not in states
    assert states.count("verified") >= 10   # the old default target, passed without stopping there

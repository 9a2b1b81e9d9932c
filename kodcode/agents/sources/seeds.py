"""Seeds (the paper's Leetcode/Codeforces/Apps/Taco/Code_Contests/Package subsets): a new question from k
seed questions with the genq_from_seed prompt. Seeds come from a JSONL file or from a Hugging Face
dataset saved with `datasets.save_to_disk` (its .arrow files are read with pyarrow; `datasets` itself is
not needed)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from kodcode.errors import ConfigError
from kodcode.jsonl import json_objects
from kodcode.messages import ProposeTask
from kodcode.parsing import clean_question
from kodcode.agents.sources.base import ask

if TYPE_CHECKING:
    from kodcode.agents.context import AgentContext

__all__ = ["Seed", "SeedSource", "load_seeds"]

TEXT_FIELDS = ("question", "text", "problem")   # tried in order when no field is configured
ID_FIELDS = ("id", "question_id", "problem_id")


@dataclass(frozen=True)
class Seed:
    seed_id: str
    question: str


def load_seeds(path: Path, *, field: str | None = None, split: str | None = None) -> list[Seed]:
    """Seed questions from JSONL (one object per line with a text field and an optional "id") or from a
    directory written by `datasets.save_to_disk` (a Dataset, or a DatasetDict whose `split` is used,
    "train" by default). `field` names the text field; by default the first of question/text/problem."""
    if path.is_dir():
        return _load_saved_dataset(path, field=field, split=split)
    seeds: list[Seed] = []
    for number, record in json_objects(path, "seed file"):
        question = _text_of(record, field)
        if not question:
            wanted = f'"{field}"' if field else '"question"'
            raise ConfigError(f"seed file {path} line {number}: no {wanted} text")
        seeds.append(Seed(str(record.get("id", f"seed-{number}")), question))
    if not seeds:
        raise ConfigError(f"seed file {path} has no seed questions")
    return seeds


def _text_of(record: dict[str, Any], field: str | None) -> str | None:
    keys = (field,) if field else TEXT_FIELDS
    value = next((record[key] for key in keys if isinstance(record.get(key), str)), None)
    return value.strip() if value and value.strip() else None


def _load_saved_dataset(path: Path, *, field: str | None, split: str | None) -> list[Seed]:
    data_dir = path
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(f"seed dataset {path}: unreadable dataset_dict.json") from None
        chosen = split or ("train" if "train" in splits else splits[0] if splits else None)
        if chosen not in splits:
            raise ConfigError(f"seed dataset {path}: no split {chosen!r} (splits: {', '.join(map(str, splits))})")
        data_dir = path / chosen
    elif split is not None:
        raise ConfigError(f"seed dataset {path}: split {split!r} given, but this is a single dataset without splits")
    files = _arrow_files(data_dir)
    if not files:
        raise ConfigError(f"seed dataset {data_dir}: no .arrow files (expected a datasets.save_to_disk directory)")
    tables = [_read_arrow(file) for file in files]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    columns = table.column_names
    text_field = field or next((name for name in TEXT_FIELDS if name in columns), None)
    if text_field is None or text_field not in columns:
        raise ConfigError(f"seed dataset {data_dir}: no text field {field or '/'.join(TEXT_FIELDS)!r} "
                          f"(columns: {', '.join(columns)}); name one with sources.seeds_field")
    id_field = next((name for name in ID_FIELDS if name in columns), None)
    texts = table.column(text_field).to_pylist()
    ids = table.column(id_field).to_pylist() if id_field else [None] * len(texts)
    seeds = [Seed(str(seed_id) if seed_id is not None else f"row-{row}", text.strip())
             for row, (seed_id, text) in enumerate(zip(ids, texts)) if isinstance(text, str) and text.strip()]
    if not seeds:
        raise ConfigError(f"seed dataset {data_dir}: field {text_field!r} holds no text")
    return seeds


def _arrow_files(data_dir: Path) -> list[Path]:
    """The shard order save_to_disk recorded in state.json, else the files in name order."""
    try:
        state = json.loads((data_dir / "state.json").read_text(encoding="utf-8"))
        files = [data_dir / entry["filename"] for entry in state["_data_files"]]
        if files and all(file.is_file() for file in files):
            return files
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return sorted(data_dir.glob("*.arrow"))


def _read_arrow(file: Path) -> pa.Table:
    # save_to_disk writes the Arrow IPC stream format; plain Arrow files (IPC file format) work too.
    errors: list[str] = []
    for opener in (pa.ipc.open_stream, pa.ipc.open_file):
        try:
            with pa.memory_map(str(file)) as source:
                return opener(source).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            errors.append(str(exc))
    raise ConfigError(f"seed dataset file {file} is not Arrow data ({errors[0].splitlines()[0]})")


class SeedSource:
    name: ClassVar[str] = "seeds"

    def __init__(self, seeds: list[Seed], per_prompt: int, subset: str) -> None:
        self.seeds = seeds
        self.per_prompt = min(per_prompt, len(seeds))
        self.subset = subset

    def task(self, seq: int, rng: random.Random) -> ProposeTask:
        picked = rng.sample(self.seeds, self.per_prompt)
        return ProposeTask(item_id=f"{self.subset}_{seq}", seq=seq, source=self.name, subset=self.subset,
                           seeds=tuple(seed.question for seed in picked),
                           seed_ids=tuple(seed.seed_id for seed in picked))

    @classmethod
    async def propose(cls, ctx: AgentContext, task: ProposeTask, lineage: dict[str, Any]) -> str:
        prompt = ctx.prompts.render("propose_from_seeds", seeds=list(task.seeds))
        request, response = await ask(ctx, prompt, task)
        lineage["proposer"] = response.lineage(request)
        lineage["seed_ids"] = list(task.seed_ids)
        return clean_question(response.text)

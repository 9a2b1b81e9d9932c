"""`python -m kodcode.export`: verified data for training, in three shapes.

- `v1`  — KodCode-V1 rows (style, subset, question_id, question, solution, test, test_info,
          gpt_pass_sequence, gpt_pass_trial_num, gpt_difficulty, gpt_pass_percentage, trials,
          chosen_trial, metadata), concatenable with the published dataset; plus reasoning_* fields
          when a reasoning role answered the question.
- `sft` — chat conversations in the OpenAI `messages` format: the question, and either a reasoning
          response that passed the tests (with or without its trace) or the verified solution.
- `rl`  — question + tests + entry point, what a reward function needs.

JSONL or Parquet (by the --out suffix); filters by subset, difficulty, style and correctness; a dataset
card (README.md) beside the output. Every file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kodcode import __version__
from kodcode.errors import KodcodeError
from kodcode.parsing import test_info
from kodcode.store import queries
from kodcode.store.queries import Row, open_readonly

__all__ = ["ExportFilter", "export", "iter_v1_rows", "main", "rl_rows", "sft_rows", "write_rows"]


def _nick(model: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", model.rsplit("/", 1)[-1]).strip("_").lower() or "model"


@dataclass(frozen=True)
class ExportFilter:
    subsets: frozenset[str] = frozenset()
    difficulties: frozenset[str] = frozenset()
    styles: frozenset[str] = frozenset()
    correct_only: bool = False      # keep only rows whose reasoning responses include a passing one

    def keep(self, row: dict[str, Any]) -> bool:
        if self.subsets and row["subset"] not in self.subsets:
            return False
        if self.difficulties and row["gpt_difficulty"] not in self.difficulties:
            return False
        if self.styles and row["style"] not in self.styles:
            return False
        return not (self.correct_only and not row.get("reasoning_correctness"))


def iter_v1_rows(db: Path, keep: ExportFilter = ExportFilter()) -> Iterator[dict[str, Any]]:
    """One row per verified item (style instruct) and one per verified rewrite (its style)."""
    conn = open_readonly(db)
    try:
        for item in queries.verified_items(conn):
            attempts = queries.judged_attempts(conn, item["item_id"])
            chosen = next((a for a in attempts if a["attempt"] == item["chosen_attempt"]), None)
            if chosen is None:
                continue
            base = _base_row(item, attempts, chosen, _consensus(item), queries.matrix_cells(conn, item["item_id"]))
            variants = [("instruct", f"{item['item_id']}_I", item["question"], base["metadata"])]
            for rewrite in queries.verified_rewrites(conn, item["item_id"]):
                metadata = {**base["metadata"], "original_instruction": item["question"],
                            "rewrite": json.loads(rewrite["lineage"] or "{}")}
                variants.append((rewrite["style"], f"{item['item_id']}_{rewrite['style'][:1].upper()}",
                                 rewrite["question"], metadata))
            for style, question_id, question, metadata in variants:
                row = _row(base, style, question_id, question, metadata)
                row.update(_reasoning_fields(queries.responses(conn, item["item_id"], style)))
                if keep.keep(row):
                    yield row
    finally:
        conn.close()


def _row(base: dict[str, Any], style: str, question_id: str, question: str,
         metadata: dict[str, Any]) -> dict[str, Any]:
    """The published dataset's column order: version, style, subset, question_id, question, solution, ..."""
    return {"version": base["version"], "style": style, "subset": base["subset"], "question_id": question_id,
            "question": question, **{k: v for k, v in base.items() if k not in ("version", "subset", "metadata")},
            "metadata": metadata}


def _reasoning_fields(responses: list[Row]) -> dict[str, Any]:
    """The SFT-R1 card's r1_* fields, named for any reasoning model; the kept response is the passing one
    with the highest coverage, else the first sample (as the paper's step 3.3)."""
    if not responses:
        return {}
    passing = [r for r in responses if r["passed"]]
    best = max(passing, key=lambda r: (r["coverage"] or 0.0, -r["sample"])) if passing else responses[0]
    return {
        "reasoning_model": best["model"],
        "reasoning_pass_sequence": [int(r["passed"]) for r in responses],
        "reasoning_pass_trial_num": len(passing),
        "reasoning_correctness": bool(passing),
        "reasoning_response": best["response"],
        "reasoning_solution": best["code"],
        "reasoning_reasons": [r["reason"] for r in responses],
        "reasoning_renamed_from": best["renamed_from"],
    }


def _consensus(item: Row) -> dict[str, Any] | None:
    """The execution matrix's accepted triplet (None: a run without the matrix, or a store before it)."""
    if "consensus" not in item.keys() or not item["consensus"]:
        return None
    consensus = json.loads(item["consensus"])
    return consensus if consensus.get("accepted") else None


def _base_row(item: Row, attempts: list[Row], chosen: Row, consensus: dict[str, Any] | None = None,
              cells: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    own = [int(a["passed"] or 0) for a in attempts]
    passes = own
    if consensus is not None and len(consensus.get("pass_sequence", [])) == len(attempts):
        # Same meaning as the paper's column (did trial k's solution pass the verifying tests?), with the
        # verifying tests being the accepted ones rather than each trial's own.
        passes = [int(p) for p in consensus["pass_sequence"]]
    trials: dict[str, Any] = {}
    chosen_name = ""
    models: dict[str, str] = {}
    prompts: dict[str, str] = {}
    for attempt in attempts:
        lineage = json.loads(attempt["lineage"] or "{}")
        solver_model = (lineage.get("solver") or lineage.get("tester") or {}).get("model", "model")
        name = f"trial_{_nick(solver_model)}_{attempt['attempt'] - 1}"
        trials[name] = {
            "solution_code": attempt["solution"],
            "test_code": attempt["tests"],
            "test_result": "Pass" if passes[len(trials)] else "Fail",
            "test_coverage": attempt["coverage"],
            "file_source": None,
            "reason": attempt["reason"],
        }
        if attempt["attempt"] == chosen["attempt"]:
            chosen_name = name
            for role, info in lineage.items():
                if isinstance(info, dict) and "model" in info:
                    models[role] = info["model"]
                    prompts[info.get("template") or role] = info.get("template_hash", "")
    proposal = json.loads(item["lineage"] or "{}").get("proposer", {})
    if proposal:
        models["proposer"] = proposal.get("model", "")
        prompts[proposal.get("template") or "proposer"] = proposal.get("template_hash", "")
    try:
        info = test_info(chosen["solution"])
    except SyntaxError:
        info = None
    return {
        "version": f"kodcode-{__version__}",
        "subset": item["subset"],
        "solution": chosen["solution"],
        "test": item["accepted_tests"] if consensus is not None and item["accepted_tests"] else chosen["tests"],
        "test_info": [entry.as_dict() for entry in info] if info is not None else None,
        "gpt_pass_sequence": passes,
        "gpt_pass_trial_num": sum(passes),
        "gpt_difficulty": item["difficulty"],
        "gpt_pass_percentage": sum(passes) / len(passes) if passes else 0.0,
        "trials": trials,
        "chosen_trial": chosen_name,
        "metadata": {
            "prompt_id": item["item_id"],
            "row_id": item["seq"],
            "seed_ids": json.loads(item["seed_ids"] or "[]"),
            "mode": item["source"],
            "entry_point": item["entry_point"],
            "attempt_mode": chosen["mode"],
            "models": models,
            "prompt_hashes": prompts,
            "coverage": chosen["coverage"],
            "gates": _gates(chosen),
            **({"matrix": _matrix_metadata(consensus, own, cells or [])} if consensus is not None else {}),
        },
    }


def _matrix_metadata(consensus: dict[str, Any], own: list[int], cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The execution matrix behind the row: which attempts' solution and tests were accepted, the consensus
    score, the tests dropped, the real wrong solutions and the share the accepted tests reject."""
    accepted = consensus["accepted"]
    return {
        "rule": consensus.get("rule"),
        "solution_attempt": accepted["solution_attempt"],
        "tests_attempt": accepted["tests_attempt"],
        "consensus_score": accepted["score"],
        "agreeing_attempts": accepted["group"],
        "dropped_tests": accepted["dropped"],
        "wrong_attempts": accepted["wrong"],
        "rejected_attempts": accepted["rejected"],
        "detection_rate": accepted["detection_rate"],
        "mutation_score": accepted.get("mutation_score"),
        "own_tests_pass_sequence": own,     # the paper's diagonal: each trial against its own tests
        "cells": [[c["solution_attempt"], c["tests_attempt"], sum(o == "passed" for o in c["outcomes"].values()),
                   len(c["outcomes"])] for c in cells],   # [solution, tests, functions passed, functions]
    }


def _gates(attempt: Row) -> dict[str, Any] | None:
    """The quality gates' outcome for the chosen trial (mutation score, vacuous tests, cross-check)."""
    keys = attempt.keys()
    if "gates" not in keys or attempt["gates"] is None:
        return None
    gates = json.loads(attempt["gates"])
    mutation = gates.get("mutation") or {}
    return {
        "mutation_score": attempt["mutation_score"],
        "mutants_killed": mutation.get("killed"),
        "mutants_run": mutation.get("run"),
        "vacuous_tests": (gates.get("vacuous") or {}).get("vacuous"),
        "cross_check_agreed": (gates.get("cross_check") or {}).get("agreed"),
    }


def _answer(row: dict[str, Any], with_reasoning: bool) -> str:
    if row.get("reasoning_correctness"):
        text = row["reasoning_response"]
        if with_reasoning:
            return text
        return text.rpartition("</think>")[2].strip() if "</think>" in text else text.strip()
    return f"```python\n{row['solution'].rstrip()}\n```"


def sft_rows(rows: Iterable[dict[str, Any]], *, with_reasoning: bool = True) -> Iterator[dict[str, Any]]:
    """Conversations for supervised fine-tuning. A row with reasoning responses contributes only when one
    passed (test-based reject sampling); without a reasoning stage, the verified solution is the answer."""
    for row in rows:
        if "reasoning_correctness" in row and not row["reasoning_correctness"]:
            continue
        source = "reasoning" if row.get("reasoning_correctness") else "solution"
        yield {
            "question_id": row["question_id"],
            "subset": row["subset"],
            "style": row["style"],
            "difficulty": row["gpt_difficulty"],
            "source": source,
            "messages": [{"role": "user", "content": row["question"]},
                         {"role": "assistant", "content": _answer(row, with_reasoning)}],
        }


def rl_rows(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """What a unit-test reward function needs: the prompt, the tests and the function they call."""
    for row in rows:
        yield {
            "question_id": row["question_id"],
            "subset": row["subset"],
            "style": row["style"],
            "difficulty": row["gpt_difficulty"],
            "prompt": row["question"],
            "tests": row["test"],
            "entry_point": row["metadata"]["entry_point"],
            "test_info": row["test_info"],
            "pass_percentage": row["gpt_pass_percentage"],
        }


# Parquet needs one schema for every row: nested records of varying shape go in as JSON text.
_JSON_COLUMNS = ("trials", "metadata", "test_info", "messages", "reasoning_reasons")


def write_rows(rows: list[dict[str, Any]], out: Path, fmt: str) -> None:
    """Write atomically: a crash mid-export never leaves a truncated dataset behind."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    except OSError as exc:
        raise KodcodeError(f"cannot write {out}: {exc.strerror}; choose another --out") from None
    tmp = Path(tmp_name)
    try:
        if fmt == "jsonl":
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        else:
            os.close(fd)
            import pyarrow as pa
            import pyarrow.parquet as pq

            flat = [{k: (json.dumps(v, ensure_ascii=False) if k in _JSON_COLUMNS and v is not None else v)
                     for k, v in row.items()} for row in rows]
            pq.write_table(pa.Table.from_pylist(flat), tmp)
        os.replace(tmp, out)
    except OSError as exc:   # a full disk, or --out naming a directory: one line, and no temp file left
        tmp.unlink(missing_ok=True)
        raise KodcodeError(f"cannot write {out}: {exc.strerror or exc}; choose another --out") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


FORMATS = {".jsonl": "jsonl", ".parquet": "parquet"}


def format_for(out: Path) -> str:
    """The format an --out suffix asks for; a suffix we do not write (.csv) is refused rather than filled
    with JSON lines under a name that promises something else. No suffix: JSON lines."""
    if not out.suffix:
        return "jsonl"
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise KodcodeError(f"--out {out}: cannot write {out.suffix} files; the formats are "
                           f"{', '.join(FORMATS)} (or give --format jsonl|parquet)")
    return fmt


@dataclass
class ExportResult:
    rows: int
    out: Path
    counts: dict[str, Counter] = field(default_factory=dict)


def export(db: Path, out: Path, *, kind: str = "v1", fmt: str | None = None, keep: ExportFilter = ExportFilter(),
           with_reasoning: bool = True, card: bool = False) -> ExportResult:
    fmt = fmt or format_for(out)
    v1 = list(iter_v1_rows(db, keep))
    if kind == "v1":
        rows = v1
    elif kind == "sft":
        rows = list(sft_rows(v1, with_reasoning=with_reasoning))
    else:
        rows = list(rl_rows(v1))
    write_rows(rows, out, fmt)
    counts = {name: Counter(row[name] for row in v1) for name in ("subset", "gpt_difficulty", "style")}
    result = ExportResult(len(rows), out, counts)
    if card:
        _write_card(db, out, kind, fmt, v1, rows, counts)
    return result


def _write_card(db: Path, out: Path, kind: str, fmt: str, v1: list[dict[str, Any]], rows: list[dict[str, Any]],
                counts: dict[str, Counter]) -> None:
    conn = open_readonly(db)
    try:
        states = queries.state_counts(conn)
    finally:
        conn.close()
    settled = sum(n for s, n in states.items() if s not in ("proposing", "open"))
    models = Counter(m for row in v1 for m in row["metadata"]["models"].values())
    prompts = sorted({(t, h) for row in v1 for t, h in row["metadata"]["prompt_hashes"].items()})
    reasoning = [row for row in v1 if "reasoning_correctness" in row]

    def table(title: str, counter: Counter) -> str:
        lines = [f"| {title} | rows |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))]
        return "\n".join(lines)

    data_file = out.name
    text = "\n\n".join([
        "---\nlicense: other\ntask_categories:\n- text-generation\ntags:\n- code\n- synthetic\n- kodcode\n"
        f"configs:\n- config_name: default\n  data_files: {data_file}\n---",
        f"# {out.stem}",
        f"Verified coding data made by [kodcode](https://arxiv.org/abs/2503.02951)-style agents (kodcode {__version__}). "
        f"Format: `{kind}` ({fmt}), {len(rows)} rows. Every triplet's tests passed in an isolated sandbox; "
        "rewritten styles were verified again.",
        "```python\nfrom datasets import load_dataset\nds = load_dataset("
        f"\"{'parquet' if fmt == 'parquet' else 'json'}\", data_files=\"{data_file}\", split=\"train\")\n```",
        "## Yield\n" + f"{states.get('verified', 0)} verified of {settled} settled questions "
        f"({states.get('verified', 0) / settled:.1%}); " if settled else "## Yield\nno settled questions; ",
        ", ".join(f"{state}: {n}" for state, n in sorted(states.items())),
        table("subset", counts["subset"]),
        table("difficulty", counts["gpt_difficulty"]),
        table("style", counts["style"]),
        (f"Reasoning responses: {len(reasoning)} questions answered, "
         f"{sum(1 for r in reasoning if r['reasoning_correctness'])} with at least one passing response.")
        if reasoning else "No reasoning-model responses.",
        "## Models\n" + "\n".join(f"- `{m}` ({n} row-roles)" for m, n in models.most_common()),
        "## Prompt templates (sha256 prefix)\n" + "\n".join(f"- `{t}`: `{h}`" for t, h in prompts),
    ])
    card = out.parent / "README.md"
    tmp = card.with_name(".README.md.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, card)


def _set(values: str | None) -> frozenset[str]:
    return frozenset(v.strip() for v in values.split(",") if v.strip()) if values else frozenset()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kodcode.export",
                                     description="Export verified data from a kodcode store for SFT or RL.")
    parser.add_argument("--db", type=Path, required=True, help="the run's SQLite store")
    parser.add_argument("--out", type=Path, required=True,
                        help="output file: .jsonl or .parquet (another suffix is refused unless --format is given)")
    parser.add_argument("--kind", choices=("v1", "sft", "rl"), default="v1",
                        help="v1: KodCode-V1 rows; sft: chat messages; rl: question + tests + entry point")
    parser.add_argument("--format", choices=("jsonl", "parquet"), help="default: from the --out suffix")
    parser.add_argument("--subset", help="comma-separated subsets to keep")
    parser.add_argument("--difficulty", help="comma-separated difficulties to keep (easy, medium, hard)")
    parser.add_argument("--style", help="comma-separated styles to keep (instruct, complete)")
    parser.add_argument("--correct-only", action="store_true",
                        help="only questions with a reasoning response that passed the tests")
    parser.add_argument("--no-reasoning-trace", action="store_true",
                        help="sft: drop the <think> trace from reasoning responses")
    parser.add_argument("--card", action="store_true", help="write a dataset card (README.md) beside --out")
    args = parser.parse_args(argv)
    keep = ExportFilter(_set(args.subset), _set(args.difficulty), _set(args.style), args.correct_only)
    try:
        result = export(args.db, args.out, kind=args.kind, fmt=args.format, keep=keep,
                        with_reasoning=not args.no_reasoning_trace, card=args.card)
    except KodcodeError as exc:
        print(f"kodcode: error: {exc}", file=sys.stderr)
        return 2
    print(f"kodcode: wrote {result.rows} {args.kind} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m kodcode.export`: verified triplets as KodCode-V1 rows (JSONL or Parquet).

Field names follow the published KodCode-V1 dataset (style, subset, question_id, question, solution,
test, test_info, gpt_pass_sequence, gpt_pass_trial_num, gpt_difficulty, gpt_pass_percentage, trials,
chosen_trial, metadata), so output can be concatenated with it; `metadata` names the real models and
prompt-template hashes behind each row.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kodcode import __version__
from kodcode.errors import KodcodeError, StoreError
from kodcode.parsing import test_info

__all__ = ["export_rows", "iter_rows", "main", "write_rows"]


def _nick(model: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", model.rsplit("/", 1)[-1]).strip("_").lower() or "model"


def _open_readonly(db: Path) -> sqlite3.Connection:
    if not db.exists():
        raise StoreError(f"store {db} does not exist")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        conn.execute("SELECT 1 FROM items LIMIT 1")
    except sqlite3.Error as exc:
        raise StoreError(f"store {db} cannot be read: {exc}") from None
    return conn


def iter_rows(db: Path) -> Iterator[dict[str, Any]]:
    """Yield one row per verified item (style instruct) and one per verified rewrite (its style)."""
    conn = _open_readonly(db)
    try:
        items = conn.execute(
            "SELECT * FROM items WHERE state='verified' ORDER BY seq").fetchall()
        for item in items:
            attempts = conn.execute(
                "SELECT * FROM attempts WHERE item_id=? AND state='judged' ORDER BY attempt", (item["item_id"],)).fetchall()
            chosen = next((a for a in attempts if a["attempt"] == item["chosen_attempt"]), None)
            if chosen is None:
                continue
            base = _base_row(item, attempts, chosen)
            yield _row(base, "instruct", f"{item['item_id']}_I", item["question"], base["metadata"])
            for rewrite in conn.execute(
                    "SELECT * FROM rewrites WHERE item_id=? AND state='verified' ORDER BY style", (item["item_id"],)):
                metadata = {**base["metadata"], "original_instruction": item["question"],
                            "rewrite": json.loads(rewrite["lineage"] or "{}")}
                yield _row(base, rewrite["style"], f"{item['item_id']}_{rewrite['style'][:1].upper()}",
                           rewrite["question"], metadata)
    finally:
        conn.close()


def _row(base: dict[str, Any], style: str, question_id: str, question: str,
         metadata: dict[str, Any]) -> dict[str, Any]:
    """The published dataset's column order: version, style, subset, question_id, question, solution, ..."""
    return {"version": base["version"], "style": style, "subset": base["subset"], "question_id": question_id,
            "question": question, **{k: v for k, v in base.items() if k not in ("version", "subset", "metadata")},
            "metadata": metadata}


def _base_row(item: sqlite3.Row, attempts: list[sqlite3.Row], chosen: sqlite3.Row) -> dict[str, Any]:
    passes = [int(a["passed"] or 0) for a in attempts]
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
            "test_result": "Pass" if attempt["passed"] else "Fail",
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
        "test": chosen["tests"],
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
        },
    }


def write_rows(rows: list[dict[str, Any]], out: Path, fmt: str) -> None:
    """Write atomically: a crash mid-export never leaves a truncated dataset behind."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    except OSError as exc:
        raise KodcodeError(f"cannot write {out}: {exc.strerror}") from None
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

            # Trials differ in count per row: store them as JSON text so every row has one schema.
            flat = [{**row, "trials": json.dumps(row["trials"]), "metadata": json.dumps(row["metadata"])} for row in rows]
            pq.write_table(pa.Table.from_pylist(flat), tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_rows(db: Path, out: Path, fmt: str | None = None) -> int:
    fmt = fmt or ("parquet" if out.suffix == ".parquet" else "jsonl")
    rows = list(iter_rows(db))
    write_rows(rows, out, fmt)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kodcode.export",
                                     description="Export verified triplets from a kodcode store as KodCode-V1 rows.")
    parser.add_argument("--db", type=Path, required=True, help="the run's SQLite store")
    parser.add_argument("--out", type=Path, required=True, help="output file (.jsonl or .parquet)")
    parser.add_argument("--format", choices=("jsonl", "parquet"), help="default: from the --out suffix")
    args = parser.parse_args(argv)
    try:
        count = export_rows(args.db, args.out, args.format)
    except KodcodeError as exc:
        print(f"kodcode: error: {exc}", file=sys.stderr)
        return 2
    print(f"kodcode: wrote {count} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The question gate between Proposer and Solver: benchmark decontamination, then exact and near-duplicate
removal (keeping the first item). Its index lives in the store, so a resumed run rejects the same
duplicates an uninterrupted one would."""

from __future__ import annotations

from pathlib import Path

from kodcode.agents.proposer import GateVerdict
from kodcode.quality import Decontaminator, DedupIndex
from kodcode.store.port import Records

__all__ = ["QualityGate", "build_gate"]


class QualityGate:
    def __init__(self, dedup: DedupIndex, decontaminator: Decontaminator | None) -> None:
        self.dedup = dedup
        self.decontaminator = decontaminator

    def admit(self, item_id: str, question: str) -> GateVerdict:
        if self.decontaminator is not None and (hit := self.decontaminator.check(question)) is not None:
            return GateVerdict("contaminated",
                               f"contaminated: matches {hit.benchmark} {hit.item_id} ({hit.method} {hit.score:.2f})")
        signature = self.dedup.signature(question)
        row = (signature.exact_hash, signature.minhash)
        if item_id in self.dedup:
            return GateVerdict("open", dedup_row=row)   # admitted before a retried write; still the same item
        if (match := self.dedup.check(signature)) is not None:
            return GateVerdict("duplicate", f"duplicate of {match.other_item_id} ({match.kind} {match.similarity:.2f})")
        self.dedup.add(item_id, signature)
        return GateVerdict("open", dedup_row=row)


async def build_gate(records: Records, *, humaneval: bool = True,
                     benchmarks: tuple[tuple[Path, str, str, str], ...] = ()) -> QualityGate:
    """The gate with its index rebuilt from the store. `benchmarks`: (jsonl path, name, text field, id field)."""
    dedup = DedupIndex.from_rows([row for row in await records.dedup_rows() if row[2] is not None])
    decontaminator = Decontaminator.with_humaneval() if humaneval else (Decontaminator() if benchmarks else None)
    for path, name, text_field, id_field in benchmarks:
        assert decontaminator is not None
        decontaminator.add_benchmark_jsonl(path, name, text_field=text_field, id_field=id_field)
    return QualityGate(dedup, decontaminator)

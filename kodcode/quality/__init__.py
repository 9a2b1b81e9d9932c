"""Question quality gates that run before any solver token is spent: dedup and decontamination."""

from __future__ import annotations

from kodcode.quality.decontam import BenchmarkItem, ContamMatch, Decontaminator
from kodcode.quality.dedup import (
    DedupConfig,
    DedupIndex,
    DupMatch,
    Embedder,
    MiniLMEmbedder,
    SemanticIndex,
    SemanticSignature,
    Signature,
    normalise,
)

__all__ = [
    "BenchmarkItem",
    "ContamMatch",
    "DedupConfig",
    "DedupIndex",
    "Decontaminator",
    "DupMatch",
    "Embedder",
    "MiniLMEmbedder",
    "SemanticIndex",
    "SemanticSignature",
    "Signature",
    "normalise",
]

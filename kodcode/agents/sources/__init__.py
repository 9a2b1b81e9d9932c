"""Question sources (the KodCode paper's subsets) and their mix; see `mix.SourceMix`."""

from kodcode.agents.sources.base import QuestionSource, chatml_prefill
from kodcode.agents.sources.docs import DEFAULT_DOC_MODULES, DocIndex, DocSource, Document
from kodcode.agents.sources.evol import EVOLVE_METHODS, EvolSource, VerifiedPool, VerifiedProvider
from kodcode.agents.sources.filter import QUALITIES, TASK_CATEGORIES, FilterSource, parse_tags
from kodcode.agents.sources.given import GivenSource
from kodcode.agents.sources.mix import SOURCE_TYPES, SourceMix, source_type
from kodcode.agents.sources.prefill import PrefillSource
from kodcode.agents.sources.seeds import Seed, SeedSource, load_seeds
from kodcode.agents.sources.snippets import Snippet, SnippetIndex, SnippetSource, default_snippets_dir

__all__ = [
    "DEFAULT_DOC_MODULES",
    "EVOLVE_METHODS",
    "QUALITIES",
    "SOURCE_TYPES",
    "TASK_CATEGORIES",
    "DocIndex",
    "DocSource",
    "Document",
    "EvolSource",
    "FilterSource",
    "GivenSource",
    "PrefillSource",
    "QuestionSource",
    "Seed",
    "SeedSource",
    "Snippet",
    "SnippetIndex",
    "SnippetSource",
    "SourceMix",
    "VerifiedPool",
    "VerifiedProvider",
    "chatml_prefill",
    "default_snippets_dir",
    "load_seeds",
    "parse_tags",
    "source_type",
]

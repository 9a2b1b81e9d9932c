"""Run configuration: a TOML file (optional) overlaid by command-line flags, validated in one place.

Unknown keys and wrong types are errors with one line that names the key, never silently ignored:
a typo in a budget or a model name would otherwise cost real money.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kodcode.errors import ConfigError

__all__ = [
    "ROLES",
    "Config",
    "EndpointSettings",
    "GateSettings",
    "MatrixSettings",
    "RoleSettings",
    "SandboxSettings",
    "SourceSettings",
    "VLLMSettings",
    "load_config",
]

ROLES = ("proposer", "solver", "tester", "rewriter", "reasoning")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointSettings(_Strict):
    """One server of an endpoint pool ([[endpoints]] in the config file); limits are optional."""

    base_url: str
    api_key_env: str | None = None       # environment variable with this server's key; default: the run's
    rpm: int | None = Field(None, ge=1)  # requests per minute
    tpm: int | None = Field(None, ge=1)  # tokens per minute (prompt + completion)
    max_concurrency: int | None = Field(None, ge=1)
    kind: Literal["vllm", "openai", "auto"] = "auto"   # auto: vllm when /metrics has vLLM's gauges


class RoleSettings(_Strict):
    """Model and sampling for one agent role. Empty fields fall back to the run's defaults."""

    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None   # name of the environment variable holding the key; keys are never stored
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(1024, ge=16)
    stop: tuple[str, ...] = ()


class SourceSettings(_Strict):
    """Where questions come from; weights mix the sources (a missing source weighs 0)."""

    prefill_prefixes: tuple[str, ...] = ("Write a python function to",)
    seeds_file: Path | None = None       # JSONL with a "question" field per line, or a datasets.save_to_disk directory
    seeds_field: str | None = None       # the seed text field; default: the first of question/text/problem
    seeds_split: str | None = None       # split of a saved DatasetDict; default "train"
    seeds_per_prompt: int = Field(1, ge=1, le=10)
    subset: str | None = None             # subset name for seed (default "Seeds") or given (default "Given") questions
    given_file: Path | None = None        # questions taken as given (JSONL or save_to_disk dir), solved as written
    snippets_dir: Path | None = None      # Python files to cut snippets from; default: the standard library
    snippets_subset: str = "Algorithm"    # or "Data_Structure"
    snippet_lines: tuple[int, int] = (5, 80)   # snippet size range, in lines
    docs_modules: tuple[str, ...] = ("json", "itertools", "collections", "re", "datetime", "textwrap")
    filter_qualities: tuple[Literal["very poor", "poor", "average", "good", "excellent"], ...] = ("good", "excellent")
    filter_categories: tuple[str, ...] = ("Algorithm Implementation", "Function Generation")
    # Snippet, doc and evol prompts reason before the question: the proposer's max_tokens is raised to this.
    analysis_max_tokens: int = Field(1024, ge=64)
    weights: dict[Literal["prefill", "seeds", "snippets", "docs", "evol", "filter", "given"], float] = Field(
        default_factory=lambda: {"prefill": 1.0, "seeds": 1.0})

    @model_validator(mode="after")
    def _check_sources(self) -> "SourceSettings":
        low, high = self.snippet_lines
        if not 1 <= low <= high:
            raise ValueError(f"snippet_lines must be (min, max) with 1 <= min <= max, not {self.snippet_lines}")
        return self


class SandboxSettings(_Strict):
    isolation: bool = True                # False only with --unsafe-no-isolation
    workers: int | None = Field(None, ge=1)
    timeout_s: float = Field(10.0, gt=0)
    backend: Literal["local", "ray"] = "local"   # ray: worker actors on a Ray cluster (kodcode[ray])
    ray_address: str | None = None               # None: RAY_ADDRESS, else a private local cluster


class GateSettings(_Strict):
    """Data-quality gates the Judge applies to a trial whose solution passed its own tests."""

    mutation: bool = True
    # Kills needed out of the mutants generated. 0.5 because some mutants are equivalent in ways no
    # construction rule catches (`<` vs `<=` where equality never happens, a changed constant in a
    # branch the tests cannot reach): 10-30% of a small function's mutants. Tests that check real
    # behaviour kill most of the rest; tests that pin one value of one call leave half alive.
    mutation_threshold: float = Field(0.5, ge=0.0, le=1.0)
    max_mutants: int = Field(6, ge=1, le=64)
    mutation_concurrency: int = Field(4, ge=1, le=64)   # mutants in the sandbox at once, per trial
    seed: int | None = None                              # None: the run's seed
    cross_check: bool = False                            # an independent solution must pass the tests too
    vacuous: Literal["flag", "reject"] = "flag"          # flag: reject only when every test is vacuous


class MatrixSettings(_Strict):
    """The execution matrix (kodcode.agents.matrix): every solution of an item against every test file of it,
    a triplet accepted by consensus (kodcode.quality.consensus). Off: each attempt is judged on its own
    tests alone, the paper's way."""

    enabled: bool = True
    # Distinct agreeing programs needed before a test function they all fail is dropped from the accepted
    # file. benchmarks/consensus_sim.py: dropping on 2 buys yield with precision (0.882 at 3 attempts, the
    # paper's diagonal 0.884); on 3, +32% right triplets over the diagonal at precision 0.924. On the
    # embedded 0.5B model with 3 attempts (benchmarks/value_per_call.py, n = 5) the two drops made on 2
    # were right, and 3 needs every attempt to agree: set 2 for yield at small max_attempts.
    min_agree_to_drop: int = Field(3, ge=1)
    # Share of the detectable real wrong solutions the accepted tests must reject.
    detection_threshold: float = Field(1.0, ge=0.0, le=1.0)
    # Candidate triplets put through the gates per update at most (each costs a mutation run).
    max_gated: int = Field(3, ge=1, le=20)
    # A new solution first runs against the item's earlier test files (sandbox runs, no LLM call); when one
    # passes it whole, that file judges the attempt and its own Tester call is not paid. It never costs a
    # call; how many it saves depends on how often a later solution passes earlier tests: on 18 recorded
    # HumanEval questions (benchmarks/matrix_replay.py, "reused + consensus") 81 calls against 82, with
    # the same triplets verified.
    reuse_tests: bool = True


class VLLMSettings(_Strict):
    """The in-process vLLM engine (--backend vllm)."""

    model_dir: Path | None = None         # a Hugging Face checkpoint; None: the embedded GGUF, converted once to bf16
    max_model_len: int = Field(4096, ge=256)   # prompt + completion tokens per sequence
    kv_cache_gib: int = Field(1, ge=1)         # CPU only (VLLM_CPU_KVCACHE_SPACE, whole GiB); a GPU sizes its own cache
    enforce_eager: bool | None = None     # None: eager on the CPU (compiling costs ~40 s and gains nothing there)


class Config(_Strict):
    target: int = Field(10, ge=1)
    max_attempts: int = Field(10, ge=1, le=100)
    concurrency: int = Field(8, ge=1, le=4096)
    mode: Literal["split", "joint"] | None = None   # None: split for the embedded model, joint otherwise
    styles: tuple[Literal["complete"], ...] = ("complete",)
    seed: int = 0
    grace_s: float = Field(30.0, ge=0)
    model: str | None = None              # default model for every role
    base_url: str | None = None           # None: start the embedded model
    # Where answers come from: the embedded llama.cpp server, vLLM in this process, or base_url.
    # None: openai when base_url is set, else embedded.
    backend: Literal["embedded", "vllm", "openai"] | None = None
    vllm: VLLMSettings = VLLMSettings()
    api_key_env: str | None = None
    embedded_variant: Literal["0.5b", "1.5b"] = "0.5b"
    chat_template: Literal["chatml"] = "chatml"   # how a raw prefill prompt is built for Magpie-style proposals
    llm_timeout_s: float = Field(300.0, gt=0)
    llm_max_retries: int = Field(6, ge=0)
    # An endpoint that is down (refused connections, 502/503/504) pauses its roles instead of failing items;
    # past this many seconds without an answer the run stops cleanly (exit 75) and resumes later.
    max_outage_s: float = Field(1800.0, ge=0)
    outage_probe_s: float = Field(1.0, gt=0)          # first probe delay of a down endpoint; doubles up to 30 s
    item_retries: int = Field(2, ge=0)    # supervision: re-handle a message this many times after an exception
    roles: dict[Literal["proposer", "solver", "tester", "rewriter", "reasoning"], RoleSettings] = Field(default_factory=dict)
    reasoning_samples: int = Field(0, ge=0, le=64)   # responses per verified question from the reasoning role; 0 = off
    sources: SourceSettings = SourceSettings()
    sandbox: SandboxSettings = SandboxSettings()
    gates: GateSettings = GateSettings()
    matrix: MatrixSettings = MatrixSettings()
    prompts_dir: Path | None = None
    budget_calls: int | None = Field(None, ge=1)
    budget_tokens: int | None = Field(None, ge=1)
    budget_usd: float | None = Field(None, gt=0)
    prices: dict[str, tuple[float, float]] = Field(default_factory=dict)  # model -> (USD per 1M input, per 1M output)
    # Several servers for the default endpoint, with per-server limits; --base-url may also list
    # several comma-separated URLs. Both build an endpoint pool (kodcode.llm.pool).
    endpoints: tuple[EndpointSettings, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if all(weight <= 0 for weight in self.sources.weights.values()):
            raise ValueError("sources.weights: at least one source needs a positive weight")
        if self.backend == "openai" and self.base_url is None and not self.endpoints:
            raise ValueError("backend 'openai' needs a base_url (--base-url)")
        if self.backend in ("embedded", "vllm") and self.base_url is not None:
            raise ValueError(f"backend {self.backend!r} runs its own model: drop base_url (--base-url) or use backend 'openai'")
        return self

    @property
    def effective_backend(self) -> Literal["embedded", "vllm", "openai"]:
        if self.backend is not None:
            return self.backend
        return "embedded" if self.base_url is None and not self.endpoints else "openai"

    @property
    def runs_embedded_model(self) -> bool:
        """The small embedded model, under llama.cpp or (converted) under vLLM: the same limits suit both."""
        backend = self.effective_backend
        return backend == "embedded" or (backend == "vllm" and self.vllm.model_dir is None)

    def role(self, name: str) -> RoleSettings:
        """The role's settings: what the user set, over the role's own defaults."""
        default = _DEFAULT_ROLES[name]
        if self.runs_embedded_model and name in _EMBEDDED_ROLE_LIMITS:
            default = default.model_copy(update=_EMBEDDED_ROLE_LIMITS[name])
        given = self.roles.get(name)  # type: ignore[call-overload]
        if given is None:
            return default
        return default.model_copy(update=given.model_dump(exclude_unset=True))

    @property
    def effective_mode(self) -> Literal["split", "joint"]:
        if self.mode is not None:
            return self.mode
        return "split" if self.effective_backend != "openai" else "joint"


# Defaults per role. Low temperatures for code: a 0.5B model's answers fall apart above ~0.5, and
# greedy decoding makes it repeat asserts until the token limit (embedded-llm.md). Measured on
# Qwen2.5-Coder-0.5B Q4_K_M, one function per call checked by its asserts: T=0 3/4 passed, T=0.3 3/4,
# T=0.7 2/4. Questions by prefill at T=0.7-1.2 were all distinct and on topic.
_DEFAULT_ROLES: dict[str, RoleSettings] = {
    "proposer": RoleSettings(temperature=1.0, top_p=1.0, max_tokens=256),
    "solver": RoleSettings(temperature=0.3, max_tokens=1024),
    "tester": RoleSettings(temperature=0.3, max_tokens=1024),
    "rewriter": RoleSettings(temperature=0.3, max_tokens=1024),
    # The paper sampled DeepSeek-R1 at T=1.0 with 16k tokens: reasoning traces are long.
    "reasoning": RoleSettings(temperature=1.0, top_p=0.95, max_tokens=16384),
}


# The embedded 0.5B model sometimes repeats asserts until its token limit; 3-5 short tests fit in far
# fewer tokens, and at ~50 tok/s on two cores every runaway token is time (measured: testers spent 76% of
# a run's completion tokens at max_tokens 1024). A tail cut off by the limit is trimmed, not failed.
_EMBEDDED_ROLE_LIMITS: dict[str, dict[str, int]] = {"solver": {"max_tokens": 768}, "tester": {"max_tokens": 512}}


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"unknown config key {where!r}"
    return f"config key {where!r}: {first['msg']}"


def load_config(path: Path | None, overrides: dict[str, Any], *, base: dict[str, Any] | None = None) -> Config:
    """Config from an optional TOML file (or `base`, e.g. a stored run's settings), with flag values
    (None = not given) laid over it."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        except OSError as exc:  # a directory, no permission, ...
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    for key, value in overrides.items():
        if value is None:
            continue
        *sections, leaf = key.split(".")
        table = data
        for depth, section in enumerate(sections):
            table = table.setdefault(section, {})
            if not isinstance(table, dict):
                raise ConfigError(f"config key {'.'.join(sections[:depth + 1])!r} must be a table to set {key!r}")
        table[leaf] = value
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None

"""The composition root: the one place that builds a run's parts from a config.

`kodcode.run` (app.launch), `kodcode.iterate`, the tests and the benchmarks all assemble runs here, so a
run has one shape whoever starts it: the store and its records, the LLM budget (seeded with what the
store already spent), the transports (the configured endpoint, the embedded model, or vLLM in process;
or a fake handed in), the LLM client, the sandbox (or a fake), the prompts, and on request the pipeline
with its question sources, gate and attempt policy. Everything opened is closed by the caller's
AsyncExitStack, in reverse order.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from kodcode.agents.context import AgentContext
from kodcode.agents.sources import SourceMix
from kodcode.config import ROLES, Config
from kodcode.errors import ConfigError
from kodcode.llm.budget import Budget, BudgetSpent
from kodcode.llm.client import LLMClient, LLMTransport, OpenAITransport
from kodcode.llm.pool import endpoint_specs, open_transport, preflight_pool
from kodcode.llm.prices import merged_prices
from kodcode.log import get_logger
from kodcode.prompts import PromptLibrary
from kodcode.runtime.gate import build_gate
from kodcode.runtime.pipeline import Pipeline
from kodcode.runtime.scheduler import BAND_CONFIDENCE, AdaptivePolicy
from kodcode.sandbox import open_sandbox
from kodcode.sandbox.base import Limits, Sandbox
from kodcode.store.port import Records
from kodcode.store.records import SqliteRecords
from kodcode.store.sqlite import Store

__all__ = ["RunParts", "assemble", "role_models", "start_endpoint"]


@dataclass
class RunParts:
    """A run's ports and settings, open until the AsyncExitStack that assemble() was given closes."""

    config: Config
    store: Store
    records: SqliteRecords
    budget: Budget
    llm: LLMClient
    sandbox: Sandbox
    prompts: PromptLibrary
    prompt_hashes: dict[str, str]
    models: dict[str, str]       # role -> model actually used
    endpoint: str                # where the default role's requests go (URL, "vllm:...", embedded URL)
    log: Any

    def context(self, *, records: Records | None = None, prompts: PromptLibrary | None = None,
                seed_salt: str = "") -> AgentContext:
        """What every agent gets; `records`/`prompts` replace the run's (kodcode.iterate's trial arms)."""
        return AgentContext(self.config, self.llm, records or self.records, self.sandbox, prompts or self.prompts,
                            self.models, self.log, seed_salt=seed_salt)

    async def pipeline(self, sources: SourceMix | None = None, *, question_gate: bool = True) -> Pipeline:
        """The five agents wired on actors, with the dedup/decontamination gate rebuilt from the store
        (`question_gate=False` admits every question: the runtime-overhead benchmark's synthetic ones)."""
        config = self.config
        # Labels aim at the true difficulty band of the question's pass probability (pass/fail of each
        # attempt judged against the accepted tests when the matrix is on), stopping once it is settled.
        policy = AdaptivePolicy(max_attempts=config.max_attempts, confidence=BAND_CONFIDENCE, target="band",
                                cap_confidence=True)
        if policy.confidence < BAND_CONFIDENCE:
            self.log.warning("label_confidence_capped", max_attempts=config.max_attempts,
                             expected_band_agreement=round(policy.confidence, 3))
        return Pipeline(self.context(), policy=policy, sources=sources or SourceMix(config),
                        gate=await build_gate(self.records) if question_gate else None)


async def assemble(config: Config, db_path: Path | str, stack: AsyncExitStack, *,
                   transport: LLMTransport | None = None, sandbox: Sandbox | None = None,
                   enforce_budget: bool = True) -> RunParts:
    """Open a run's parts, in the order that keeps mistakes cheap: templates are rendered and a configured
    endpoint is checked before the store is created or touched, and the embedded model starts only once
    the store is open (a store in use costs no model start). `transport`/`sandbox` replace the real ones
    (fakes, in tests and benchmarks). `enforce_budget=False` keeps the run's caps out (kodcode.iterate
    spends on its own terms), while spend is still counted."""
    log = get_logger()
    prompts = PromptLibrary(config.prompts_dir)
    prompt_hashes = prompts.hashes()           # a broken template fails here, before anything is paid for
    endpoint: tuple[str, str, LLMTransport] | None = None
    if transport is not None:
        endpoint = ("fake", config.model or "fake-model", transport)
        stack.push_async_callback(transport.aclose)
    elif config.effective_backend == "openai":
        endpoint = await start_endpoint(config, Path(db_path).parent, stack)
        if enforce_budget:
            _prices(config, role_models(config, endpoint[1]))   # an unpriced --budget-usd must not create the store
    store = await Store.open(db_path)
    stack.push_async_callback(store.aclose)
    records = SqliteRecords(store)
    if endpoint is None:
        endpoint = await start_endpoint(config, Path(db_path).parent, stack)
    where, default_model, default_transport = endpoint
    models = role_models(config, default_model)
    spent = await records.spent()
    already = BudgetSpent(calls=int(spent["calls"]), prompt_tokens=int(spent["tokens"]), usd=spent["usd"])
    if enforce_budget:
        budget = Budget(calls=config.budget_calls, tokens=config.budget_tokens, usd=config.budget_usd,
                        prices=_prices(config, models), spent=already)
    else:
        budget = Budget(prices=merged_prices(config.prices, models.values()), spent=already)
    transports: dict[str, LLMTransport] = {"default": default_transport}
    for role in ROLES:
        settings = config.role(role)
        if settings.base_url and transport is None:
            specs = endpoint_specs(settings.base_url, settings.api_key_env or config.api_key_env)
            await preflight_pool(specs, models[role])
            transports[role] = await stack.enter_async_context(open_transport(
                specs, timeout_s=config.llm_timeout_s, ceiling=config.concurrency, logger=log))
    llm = LLMClient(transports, records, concurrency=config.concurrency, max_retries=config.llm_max_retries,
                    budget=budget, max_outage_s=config.max_outage_s, probe_base_s=config.outage_probe_s,
                    probe_cap_s=max(30.0, config.outage_probe_s), logger=log)
    if sandbox is None:
        sandbox = await stack.enter_async_context(open_sandbox(
            workers=config.sandbox.workers, isolation=config.sandbox.isolation,
            limits=Limits(wall_s=config.sandbox.timeout_s), backend=config.sandbox.backend,
            ray_address=config.sandbox.ray_address))
    return RunParts(config=config, store=store, records=records, budget=budget, llm=llm, sandbox=sandbox,
                    prompts=prompts, prompt_hashes=prompt_hashes, models=models, endpoint=where, log=log)


def role_models(config: Config, default_model: str) -> dict[str, str]:
    return {role: config.role(role).model or default_model for role in ROLES}


def _prices(config: Config, models: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Built-in prices for common hosted models, overridden by the config's [prices]; with --budget-usd every
    model in use needs one."""
    prices = merged_prices(config.prices, models.values())
    if config.budget_usd is not None:
        unpriced = sorted({m for m in models.values() if m not in prices})
        if unpriced:
            raise ConfigError(f"--budget-usd: no price for model(s) {', '.join(unpriced)}; add them to [prices] "
                              "in the config (model = [usd_per_1M_in, usd_per_1M_out])")
    return prices


async def start_endpoint(config: Config, run_dir: Path, stack: AsyncExitStack) -> tuple[str, str, LLMTransport]:
    """(where, default model, transport): the configured endpoint, checked; the embedded model; or vLLM in
    process. The transport is closed by `stack`."""
    backend = config.effective_backend
    if backend == "vllm":
        from kodcode.llm.vllm_inprocess import engine_settings, vllm_transport   # vllm only when chosen

        settings = await anyio.to_thread.run_sync(engine_settings, config)   # may convert the model (once)
        transport = await stack.enter_async_context(vllm_transport(settings))
        return transport.label, transport.model, transport
    if backend == "embedded":
        from kodcode.models.llama_server import embedded_server   # only the embedded path needs its packages

        endpoint = await stack.enter_async_context(embedded_server(
            config.embedded_variant, concurrency=config.concurrency, log_path=run_dir / "llama-server.log"))
        transport = OpenAITransport(endpoint.base_url, None, timeout_s=config.llm_timeout_s)
        stack.push_async_callback(transport.aclose)
        return endpoint.base_url, endpoint.model, transport
    # One URL, several comma-separated URLs, or [[endpoints]] with limits: several become a pool with
    # least-outstanding routing, ejection, rate limits and per-endpoint adaptive concurrency.
    specs = endpoint_specs(config.base_url, config.api_key_env, config.endpoints)
    served = await preflight_pool(specs, config.model)
    where = ",".join(spec.base_url for spec in specs)
    model = config.model or (served[0] if served else None)
    if model is None:
        raise ConfigError(f"{where} lists no models; pass --model")
    transport = await stack.enter_async_context(open_transport(
        specs, timeout_s=config.llm_timeout_s, ceiling=config.concurrency, logger=get_logger()))
    return where, model, transport

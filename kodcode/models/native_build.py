"""A llama-server built on this machine, for this CPU: the opt-in `python -m kodcode.embedded prepare --native`.

The default runtime (the xllamacpp wheel) is compiled for any x86-64 CPU with AVX2, so it leaves AVX-512,
VNNI and AMX unused; a build for this CPU gains speed there (and is the way out on a CPU without AVX2).
The llama.cpp sources ship inside the pinned
`llama-cpp-python` source package on PyPI, so the same server (with `--parallel` continuous batching) can
be compiled here with nothing but cmake and a C++ compiler. The result is cached per CPU feature set, so
a home directory shared between different machines never runs a binary built for another CPU.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from kodcode.errors import EmbeddedModelError

__all__ = ["LLAMA_CPP_PYTHON", "SDIST_SHA256", "build_server", "built_server_path", "cpu_fingerprint"]

LLAMA_CPP_PYTHON = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
_CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",              # for this CPU: the cache path is keyed by its feature flags
    "-DBUILD_SHARED_LIBS=OFF",       # one self-contained binary
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
)


def cpu_fingerprint() -> str:
    """A short hash of the CPU's feature flags (what decides whether a native build runs)."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                break
    except OSError:
        pass
    return hashlib.sha256(f"{os.uname().machine} {flags}".encode()).hexdigest()[:12]


def built_server_path(cache_dir: Path) -> Path:
    return cache_dir / "llama-server" / f"llama.cpp-{LLAMA_CPP_PYTHON}-{cpu_fingerprint()}" / "llama-server"


def _run(command: list[str], log: Path, cwd: Path | None = None) -> None:
    with open(log, "ab") as sink:
        sink.write(f"\n$ {' '.join(command)}\n".encode())
        sink.flush()
        result = subprocess.run(command, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise EmbeddedModelError(f"building llama-server failed at `{command[0]} {command[1]}` "
                                 f"(log {log}): {' | '.join(tail)}")


def build_server(cache_dir: Path, *, jobs: int | None = None, log=print) -> Path:
    """Download the pinned llama-cpp-python sources, check their hash, compile llama-server; return its path.
    The binary appears atomically: an interrupted build leaves nothing at the final path."""
    target = built_server_path(cache_dir)
    if target.exists():
        return target
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise EmbeddedModelError(f"building llama-server needs {tool}; install it (apt-get install -y cmake g++)")
    target.parent.mkdir(parents=True, exist_ok=True)
    build_log = target.parent / "build.log"
    jobs = jobs or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="kodcode-llama-build-", dir=target.parent) as tmp:
        work = Path(tmp)
        log(f"kodcode: downloading llama-cpp-python=={LLAMA_CPP_PYTHON} sources (llama.cpp) from PyPI")
        # The source package only: `--no-binary :all:` would also build its build backend's own dependencies
        # (cmake, ninja, ...) from source just to read its metadata, which takes longer than llama.cpp itself.
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
              "-d", str(work), f"llama-cpp-python=={LLAMA_CPP_PYTHON}"], build_log)
        archives = list(work.glob("llama_cpp_python-*.tar.gz"))
        if len(archives) != 1:
            raise EmbeddedModelError(f"pip did not download the llama-cpp-python source package (log {build_log})")
        digest = hashlib.sha256(archives[0].read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise EmbeddedModelError(f"llama-cpp-python source package has sha256 {digest}, expected {SDIST_SHA256}; "
                                     "refusing to build it")
        with tarfile.open(archives[0]) as archive:
            archive.extractall(work, filter="data")
        source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        log(f"kodcode: compiling llama-server for this CPU with {jobs} jobs (tens of CPU-minutes; log {build_log})")
        _run(["cmake", "-S", str(source), "-B", str(work / "build"), *_CMAKE_OPTIONS], build_log)
        _run(["cmake", "--build", str(work / "build"), "--target", "llama-server", "-j", str(jobs)], build_log)
        built = work / "build" / "bin" / "llama-server"
        staged = target.with_name(".llama-server.tmp")
        shutil.copy2(built, staged)
        os.replace(staged, target)
    log(f"kodcode: built {target}")
    return target

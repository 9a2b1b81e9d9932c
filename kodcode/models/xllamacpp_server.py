"""`python -m kodcode.models.xllamacpp_server --model M --port P ...`: llama.cpp's server from the xllamacpp wheel.

The default runtime of the embedded model. The `xllamacpp` wheel on PyPI carries llama.cpp (the same server
code as `llama-server`: continuous batching over `--parallel` slots, prompt cache, OpenAI-compatible routes,
chat template, seeds, usage counts, a request whose client disconnects is cancelled) compiled for any x86-64
CPU with AVX2 (no AVX-512, no VNNI, no `-march=native`), so nothing is compiled on the user's machine.

It runs in this small child process rather than inside kodcode, so the rest of kodcode is unchanged: the
parent starts it exactly like a `llama-server` binary (the same flags, the same HTTP endpoint on 127.0.0.1),
stops it with SIGTERM, and the kernel kills it with its parent (PR_SET_PDEATHSIG survives exec). No
llama.cpp thread ever lives in kodcode's process, so none can block its event loop or outlive a run.

Only the flags kodcode passes (see `llama_server.server_command`) are accepted.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys

__all__ = ["main"]

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kodcode.models.xllamacpp_server", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--alias", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--parallel", type=int, required=True)
    parser.add_argument("--ctx-size", type=int, required=True)
    parser.add_argument("--cont-batching", action="store_true")
    parser.add_argument("--no-webui", action="store_true")
    return parser


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Block the stop signals before llama.cpp starts its threads (they inherit the mask), so they reach only
    # the sigwait below, never a worker thread in the middle of a computation.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        import xllamacpp as xlc
    except ImportError as exc:
        # The wheel links the system's OpenMP runtime; a minimal OS image may lack it.
        hint = " (install the libgomp1 package)" if "libgomp" in str(exc) else ""
        print(f"error: cannot load xllamacpp: {exc}{hint}", file=sys.stderr, flush=True)
        return 1

    params = xlc.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}
    if hasattr(params, "hostnames"):   # xllamacpp 2026.10 on; earlier versions have one hostname
        params.hostnames = [args.host]
    else:
        params.hostname = args.host
    params.port = args.port
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx_size
    params.cont_batching = args.cont_batching
    params.ui = not args.no_webui
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    try:
        server = xlc.Server(params)
    except RuntimeError as exc:
        # xllamacpp says only "Failed to init server"; the caller retries another port when it lost the race
        # for this one, and recognises that case by llama-server's own wording.
        if _port_in_use(args.host, args.port):
            print(f"couldn't bind HTTP server socket, hostname: {args.host}, port: {args.port}", flush=True)
        else:
            print(f"error: llama.cpp server did not start ({exc}); see the log above", flush=True)
        return 1
    print(f"kodcode: xllamacpp server listening on {server.listening_address}", flush=True)
    signal.sigwait(_STOP_SIGNALS)
    # Nothing is kept on disk, so there is nothing to flush: leave at once rather than wait for the server's
    # destructor to drain slots that are still generating.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

"""`python -m kodcode.view [--db runs/kodcode.db] [--port 8765] [--host 127.0.0.1]`."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from kodcode.errors import StoreError
from kodcode.store.sqlite import open_readonly

__all__ = ["DEFAULT_PORT", "build_parser", "main"]

DEFAULT_DB = Path("runs/kodcode.db")
DEFAULT_PORT = 8765
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kodcode.view",
        description="A local web page over a kodcode store: the run, its items, their attempts and LLM calls. "
                    "Read-only: it never writes to the store or takes the run's lock, so it can watch a running run.")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"the run's SQLite store (default: {DEFAULT_DB})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: only this machine; anything else shows "
                             "every prompt and answer of the run to whoever can reach it)")
    parser.add_argument("--refresh", type=float, default=2.0, help="seconds between live updates (default 2)")
    return parser


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"kodcode: error: --port {args.port} is not a TCP port (0-65535)", file=sys.stderr)
        return 2
    if args.refresh <= 0:
        print("kodcode: error: --refresh must be a positive number of seconds", file=sys.stderr)
        return 2
    try:
        open_readonly(args.db).close()      # a wrong --db is one line now, not an error page later
    except StoreError as exc:
        print(f"kodcode: error: {exc}", file=sys.stderr)
        return 2
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"kodcode: error: cannot listen on {args.host}:{args.port}: {exc.strerror}; choose another --port",
              file=sys.stderr)
        return 2

    import uvicorn                      # the server only once the arguments are known to be good

    from kodcode.view.app import create_app

    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    hosts = [h if ":" not in h else f"[{h}]" for h in {*LOCAL_HOSTS, args.host}]
    if args.host in ("0.0.0.0", "::"):
        hosts = ["*"]                   # listening everywhere: the user chose to be reached by any name
    app = create_app(args.db, allowed_hosts=hosts, refresh_ms=int(args.refresh * 1000))
    print(f"kodcode view: http://{shown}:{port}/ (store {args.db}, read-only; Ctrl-C stops)", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=2)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reading user-supplied JSONL files (seed questions, benchmarks) with one clear error per problem."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kodcode.errors import ConfigError

__all__ = ["json_objects"]


def json_objects(path: Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file (or .jsonl.gz). Anything else is a
    one-line ConfigError that names `what` ("seed file", "benchmark file"), the path and the line."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except (OSError, EOFError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 (byte {exc.start}); convert it with iconv") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{what} {path} line {number}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{what} {path} line {number}: expected a JSON object")
        yield number, record

"""Reading dataset rows for `python -m kodcode.verify`: JSON lines, Parquet, Arrow, saved-to-disk datasets.

A source yields `(index, row)` pairs where `row` is a dict, or a `RowError` for a line that could not
be read (invalid JSON, non-UTF-8 bytes): one bad line is that row's problem, never the whole run's.
A wholly unusable input (missing, not a dataset, unreadable format) raises ConfigError.
`datasets` is not needed: its `save_to_disk` layout is Arrow IPC stream files named in `state.json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kodcode.errors import ConfigError

__all__ = ["InputSource", "RowError", "open_input"]

_BATCH_ROWS = 256
_SNIFF_LINES = 20
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_TABLE_SUFFIXES = (".parquet", ".arrow")


@dataclass(frozen=True)
class RowError:
    """A row that could not even be read; `reason` becomes its verdict reason."""

    reason: str


@dataclass(frozen=True)
class _Part:
    path: Path
    kind: str          # jsonl | json-array | parquet | arrow-stream | arrow-file


class InputSource:
    """One or more files read as a single sequence of rows."""

    def __init__(self, label: str, parts: list[_Part]) -> None:
        self.label = label
        self._parts = parts
        self.columns: frozenset[str] | None = self._table_columns()

    @property
    def count(self) -> int | None:
        """The number of rows where the format records it (tables), else None."""
        total = 0
        for part in self._parts:
            rows = _table_rows(part)
            if rows is None:
                return None
            total += rows
        return total

    def rows(self, wanted: set[str] | None = None) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
        """Every row in order; for tables only `wanted` columns are read (None: all of them)."""
        index = 0
        for part in self._parts:
            for row in _part_rows(part, wanted):
                yield index, row
                index += 1

    def _table_columns(self) -> frozenset[str] | None:
        names: set[str] | None = None
        for part in self._parts:
            schema = _table_schema(part)
            if schema is None:
                return None
            names = set(schema.names) if names is None else names & set(schema.names)
        return frozenset(names or ())


def open_input(path: Path, split: str | None = None) -> InputSource:
    """The rows at `path`: a file, a `save_to_disk` directory (Dataset or DatasetDict), or a folder of files."""
    if not path.exists():
        raise ConfigError(f"input {path} does not exist")
    if path.is_dir():
        return InputSource(str(path), _directory_parts(path, split))
    if split is not None:
        raise ConfigError(f"--split applies to a dataset directory, and {path} is a file")
    return InputSource(str(path), [_file_part(path)])


def _directory_parts(path: Path, split: str | None) -> list[_Part]:
    dict_file = path / "dataset_dict.json"
    if dict_file.is_file():
        splits = _read_json(dict_file).get("splits") or []
        if split is None:
            split = "train" if "train" in splits else (splits[0] if len(splits) == 1 else None)
            if split is None:
                raise ConfigError(f"{path} holds splits {', '.join(map(str, splits))}; choose one with --split")
        if split not in splits:
            raise ConfigError(f"{path} has no split {split!r} (splits: {', '.join(map(str, splits))})")
        return _directory_parts(path / split, None)
    if split is not None:
        raise ConfigError(f"{path} is not a dataset with splits (no dataset_dict.json)")
    state_file = path / "state.json"
    if state_file.is_file():
        files = _read_json(state_file).get("_data_files")
        if not isinstance(files, list) or not files:
            raise ConfigError(f"{state_file} names no data files")
        parts = []
        for entry in files:
            name = entry.get("filename") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not (path / name).is_file():
                raise ConfigError(f"{state_file} names data file {name!r}, which is missing")
            parts.append(_file_part(path / name))
        return parts
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _JSONL_SUFFIXES + _TABLE_SUFFIXES
                   and not p.name.startswith(".") and p.name not in ("dataset_info.json", "state.json"))
    if not files:
        raise ConfigError(f"{path} is not a dataset directory (no state.json, dataset_dict.json, "
                          ".jsonl, .parquet or .arrow files)")
    return [_file_part(p) for p in files]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} is not a JSON object")
    return value


def _file_part(path: Path) -> _Part:
    """Decide a file's format from its first bytes (a suffix can lie), then check it opens."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        raise ConfigError(f"input {path} cannot be read: {exc.strerror}") from None
    if head.startswith(b"PAR1"):
        part = _Part(path, "parquet")
    elif head.startswith(b"ARROW1"):
        part = _Part(path, "arrow-file")
    elif head.startswith(b"\xff\xff\xff\xff"):
        part = _Part(path, "arrow-stream")
    else:
        stripped = head.lstrip()
        if not stripped:
            raise ConfigError(f"input {path} is empty")
        part = _Part(path, "json-array" if stripped.startswith(b"[") else "jsonl")
    if part.kind == "jsonl":
        _check_jsonl(path)
    else:
        _table_schema(part)   # raises ConfigError when the file does not open
    return part


def _check_jsonl(path: Path) -> None:
    """A file none of whose first lines is a JSON object is not JSON lines (binary, CSV, ...)."""
    seen = 0
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            seen += 1
            try:
                if isinstance(json.loads(raw.decode("utf-8")), dict):
                    return
            except (UnicodeDecodeError, ValueError):
                pass
            if seen >= _SNIFF_LINES:
                break
    raise ConfigError(f"input {path} is not JSON lines, Parquet or Arrow (its first lines are not JSON objects)")


def _table_schema(part: _Part) -> Any:
    if part.kind in ("jsonl", "json-array"):
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if part.kind == "parquet":
            return pq.read_schema(part.path)
        with pa.memory_map(str(part.path)) as source:
            reader = pa.ipc.open_file(source) if part.kind == "arrow-file" else pa.ipc.open_stream(source)
            return reader.schema
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(f"input {part.path} cannot be read as {part.kind}: {_first_line(exc)}") from None


def _table_rows(part: _Part) -> int | None:
    if part.kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(part.path).metadata.num_rows
    if part.kind == "arrow-file":
        import pyarrow as pa

        with pa.memory_map(str(part.path)) as source:
            reader = pa.ipc.open_file(source)
            return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    return None


def _part_rows(part: _Part, wanted: set[str] | None) -> Iterator[dict[str, Any] | RowError]:
    if part.kind == "jsonl":
        yield from _jsonl_rows(part.path)
    elif part.kind == "json-array":
        yield from _json_array_rows(part.path)
    else:
        yield from _table_rows_iter(part, wanted)


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any] | RowError]:
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield RowError("non-utf-8 line")
                continue
            try:
                value = json.loads(text)
            except ValueError as exc:
                yield RowError(f"invalid json: {_first_line(exc)}")
                continue
            yield value if isinstance(value, dict) else RowError(f"row is a JSON {type(value).__name__}, not an object")


def _json_array_rows(path: Path) -> Iterator[dict[str, Any] | RowError]:
    try:
        values = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"input {path} is not valid JSON: {_first_line(exc)}") from None
    if not isinstance(values, list):
        raise ConfigError(f"input {path} is JSON but not a list of rows")
    for value in values:
        yield value if isinstance(value, dict) else RowError(f"row is a JSON {type(value).__name__}, not an object")


def _table_rows_iter(part: _Part, wanted: set[str] | None) -> Iterator[dict[str, Any] | RowError]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _table_schema(part)
    columns = [name for name in schema.names if wanted is None or name in wanted]
    try:
        if part.kind == "parquet":
            for batch in pq.ParquetFile(part.path).iter_batches(batch_size=_BATCH_ROWS, columns=columns):
                yield from batch.to_pylist()
            return
        with pa.memory_map(str(part.path)) as source:
            reader = pa.ipc.open_file(source) if part.kind == "arrow-file" else pa.ipc.open_stream(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches)) \
                if part.kind == "arrow-file" else iter(reader)
            for batch in batches:
                for start in range(0, batch.num_rows, _BATCH_ROWS):
                    yield from batch.slice(start, _BATCH_ROWS).select(columns).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(f"input {part.path} is corrupt: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]

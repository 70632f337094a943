"""Reading a benchmark's JSONL files from a folder the user downloaded (untrusted input).

A file must be a regular file inside the folder (the rule of `vist2.data_folder`), at most
MAX_FILE_BYTES; each line at most MAX_LINE_BYTES and one JSON object. Every error is one
line naming the file and line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

from vist2 import data_folder as data_folder_rule
from vist2.errors import Vist2Error

MAX_FILE_BYTES = 1 << 30  # LongBench's largest subset file is ~30 MB, LooGLE's ~60 MB
MAX_LINE_BYTES = 64 << 20


def data_folder(name: str, flag: str = "--data") -> Path:
    """The folder given with `flag`, which must exist."""
    root = Path(name)
    if not root.is_dir():
        raise Vist2Error(f"{flag} {name}: not a folder (download the benchmark's JSONL files into one)")
    return root


def file_in(root: Path, name: str) -> Path:
    """root/name, checked by the data-folder rule (`vist2.data_folder`): a regular file inside root."""
    return data_folder_rule.file_in(root, name, max_bytes=MAX_FILE_BYTES, opt_out=None)


def regular_file(path: Path, max_bytes: int | None = MAX_FILE_BYTES) -> Path:
    """path, checked to be a regular file of at most `max_bytes` (None: any size)."""
    return data_folder_rule.regular_file(path, max_bytes)


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def records(path: Path, max_file_bytes: int | None = MAX_FILE_BYTES) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file of at most `max_file_bytes`
    (None: any size; lines stay bounded); NaN/Infinity are errors."""
    with open(regular_file(path, max_file_bytes), "rb") as handle:
        number = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            where = f"{path}, line {number}"
            if len(raw) > MAX_LINE_BYTES:
                raise Vist2Error(f"{where}: longer than {MAX_LINE_BYTES} bytes")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise Vist2Error(f"{where}: not UTF-8") from None
            if not text.strip():
                continue
            try:
                record = json.loads(text, parse_constant=_no_constants)
            except (json.JSONDecodeError, ValueError, RecursionError) as error:
                message = error.msg if isinstance(error, json.JSONDecodeError) else str(error) or "too deeply nested"
                raise Vist2Error(f"{where}: not valid JSON ({message})") from None
            if not isinstance(record, dict):
                raise Vist2Error(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def finite_number(value: Any, where: str, name: str) -> float:
    """A JSON number field that must be finite (bool is not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Vist2Error(f"{where}: field {name!r} must be a finite number, got {value!r}")
    return value


def unique_id(seen: dict[str, int], value: str, path: Path, number: int, field: str) -> str:
    """`value`, recorded in `seen` (id -> line) after checking no earlier line of `path` had it:
    two samples with one id would share one prediction key and collapse into one score."""
    if value in seen:
        raise Vist2Error(f"{path}, lines {seen[value]} and {number}: both have {field} {value!r}; sample ids must "
                         "be unique within a file")
    seen[value] = number
    return value

"""`vist2 prepare`: tokenize a text corpus once into memory-mappable token shards.

Reads documents in the order `vist2.train.data.read_records` does, streaming (one batch of
documents in memory at a time), tokenizes each batch with the fast tokenizer's parallel
`encode_batch_fast`, appends every document's ids and the end-of-text token to the current shard,
and writes manifest.json last. All of it happens in a hidden temporary folder beside the
output, renamed into place at the end: an interrupted prepare leaves no folder that training
would take for complete.
"""

from __future__ import annotations

import glob
import itertools
import json
import math
import os
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from vist2.errors import Vist2Error
from vist2.train.tokens import FORMAT, MANIFEST, OWNER, SHARD_GLOB, VERSION, token_dtype, tokenizer_hash

SHARD_TOKENS = 1 << 28  # 512 MiB of uint16 per shard


def iter_texts(files: list[Path]) -> Iterator[tuple[int, str]]:
    """(file index, text) of every document, file by file, without holding a whole JSONL/Parquet/dataset."""
    for index, path in enumerate(files):
        yield from ((index, text) for text in _file_texts(path))


def _file_texts(path: Path) -> Iterator[str]:
    from vist2.train.data import _jsonl_records, field, reading

    with reading(path):
        if path.suffix == ".txt":
            yield path.read_text(encoding="utf-8")
        elif path.suffix == ".jsonl":
            yield from (field(record, "text") for record in _jsonl_records(path))
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            row = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                for record in batch.to_pylist():
                    yield field(dict(record, _where=f"{path}, row {row}"), "text")
                    row += 1
        else:
            from datasets import DatasetDict, load_from_disk

            saved = load_from_disk(str(path))
            for split in saved.values() if isinstance(saved, DatasetDict) else [saved]:
                for row, record in enumerate(split):
                    yield field(dict(record, _where=f"{path}, row {row}"), "text")


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _batches(texts: Iterator[tuple[int, str]], batch_bytes: int) -> Iterator[list[tuple[int, str]]]:
    batch, size = [], 0
    for item in texts:
        batch.append(item)
        text = item[1]
        size += len(text)
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _ShardWriter:
    def __init__(self, folder: Path, dtype: str, shard_tokens: int):
        self.folder, self.dtype, self.limit = folder, dtype, shard_tokens
        self.shards: list[dict] = []
        self.handle = None

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.handle is None or self.shards[-1]["tokens"] == self.limit:
                self._next()
            room = self.limit - self.shards[-1]["tokens"]
            self.handle.write(ids[:room].tobytes())
            self.shards[-1]["tokens"] += len(ids[:room])
            ids = ids[room:]

    def _next(self) -> None:
        self.close()
        name = f"tokens-{len(self.shards):05d}.bin"
        self.handle = open(self.folder / name, "xb")
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> None:
        if self.handle is not None:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            self.handle = None


def check_output(output: Path) -> None:
    if output.exists() or output.is_symlink():
        raise Vist2Error(f"--output {output} already exists; choose a new folder (prepare never overwrites)")


def _ids(backend, eos: int, batch: list[str], dtype: str) -> np.ndarray:
    """Every document's ids followed by the end-of-text token, as `token_stream` builds them:
    `tokenizer.encode` runs this backend too (truncation and padding off); `encode_batch_fast`
    skips offsets and runs in parallel over the batch's documents."""
    encoded = [encoding.ids for encoding in backend.encode_batch_fast(batch, add_special_tokens=False)]
    count = sum(len(ids) for ids in encoded) + len(encoded)
    return np.fromiter(itertools.chain.from_iterable(x for ids in encoded for x in (ids, [eos])), dtype, count)


def _remove_own(temporary: Path, created: list[Path]) -> None:
    """Delete only what this run created; a folder someone else put files into stays."""
    for path in created:
        path.unlink(missing_ok=True)
    try:
        temporary.rmdir()
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def remove_leftovers(output: Path) -> None:
    """The temporary folders of killed prepares into `output` (marked by OWNER, their process gone):
    the files prepare writes are removed, and the folder if nothing else is in it; anything else
    is left and said where."""
    for folder in sorted(output.parent.glob(f".{glob.escape(output.name)}.vist2-prepare-*.tmp")):
        pid = folder.name[len(output.name) + len(".vist2-prepare-") + 1 : -len(".tmp")]
        if not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue  # not ours, or a prepare still running (ours is not made yet: one of our id is old)
        ours = not folder.is_symlink() and (folder / OWNER).is_file()
        if ours:
            _remove_own(folder, [folder / OWNER, folder / MANIFEST, folder / (MANIFEST + ".partial"),
                                 *folder.glob(SHARD_GLOB)])
        if folder.exists() or folder.is_symlink():
            print(f"note: {folder} looks left by a killed `vist2 prepare` but holds files it did not write "
                  "(or lacks its marker); it was not removed", file=sys.stderr)
        else:
            print(f"removed {folder}, left by a killed `vist2 prepare`", file=sys.stderr)


def prepare(paths: tuple[str, ...], output: Path, tokenizer, tokenizer_name: str, batch_mb: float = 1.0,
            shard_tokens: int = SHARD_TOKENS, progress: bool = True, command_line: str = "",
            follow_symlinks: bool = False) -> dict:
    """Tokenize `paths` into `output`; returns the manifest."""
    from vist2.train.data import data_files

    if not (math.isfinite(batch_mb) and batch_mb > 0):
        raise Vist2Error("--batch-mb must be a positive finite number")
    check_output(output)
    files = data_files(paths, follow_symlinks)
    vocab = len(tokenizer)
    dtype = token_dtype(vocab)
    sha = tokenizer_hash(tokenizer)
    if tokenizer.eos_token_id is None:
        raise Vist2Error(f"tokenizer {tokenizer_name!r} has no end-of-text token")
    backend = tokenizer.backend_tokenizer  # what tokenizer.encode does to it, after hashing it
    backend.no_truncation()
    backend.no_padding()
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(output)
    temporary = output.parent / f".{output.name}.vist2-prepare-{os.getpid()}.tmp"
    temporary.mkdir()  # fails if it exists: this folder is ours alone
    marker = temporary / OWNER
    marker.write_text(f"in progress: {command_line}\n", encoding="utf-8")
    writer = _ShardWriter(temporary, dtype, shard_tokens)
    created = [marker]
    try:
        documents, tokens = _tokenize(files, backend, tokenizer.eos_token_id, writer, int(batch_mb * 1e6), progress)
        writer.close()
        if documents == 0:
            raise Vist2Error(f"no documents found in {', '.join(paths)}")
        manifest = {
            "format": FORMAT, "version": VERSION,
            "tokenizer": {"name": tokenizer_name, "sha256": sha, "vocab_size": vocab,
                          "eos_token_id": tokenizer.eos_token_id},
            "dtype": dtype, "documents": documents, "tokens": tokens,
            "shards": writer.shards,
            "sources": [{"path": str(p.resolve()), "bytes": _size(p)} for p in files],
            "command": command_line,
        }
        _write_manifest(temporary, manifest, created)
        marker.unlink()
        check_output(output)  # still free: nobody wrote there meanwhile
        os.rename(temporary, output)
    except BaseException:
        writer.close()
        _remove_own(temporary, created + [temporary / s["file"] for s in writer.shards])
        raise
    return manifest


def _tokenize(files: list[Path], backend, eos: int, writer: _ShardWriter, batch_bytes: int,
              progress: bool) -> tuple[int, int]:
    """Every document of `files`, tokenized into the writer's shards: (documents, tokens)."""
    from tqdm import tqdm

    documents = tokens = 0
    ends = list(itertools.accumulate(_size(p) for p in files))
    bar = tqdm(total=ends[-1], unit="B", unit_scale=True, unit_divisor=1000, disable=not progress,
               desc="prepare", smoothing=0.1)
    for batch in _batches(iter_texts(files), batch_bytes):
        ids = _ids(backend, eos, [text for _, text in batch], writer.dtype)
        writer.write(ids)
        documents += len(batch)
        tokens += len(ids)
        last = batch[-1][0]  # files before it are done; within it, count the text's bytes
        done = max(bar.n, ends[last - 1] if last else 0) + sum(len(t.encode("utf-8", "surrogatepass"))
                                                                for i, t in batch if i == last)
        bar.update(min(done, ends[last]) - bar.n)
    bar.update(ends[-1] - bar.n)
    bar.close()
    return documents, tokens


def _write_manifest(temporary: Path, manifest: dict, created: list[Path]) -> None:
    """MANIFEST in `temporary`, written whole (a .partial file, synced, then renamed); each file
    is added to `created` before it exists."""
    partial = temporary / (MANIFEST + ".partial")
    created.append(partial)
    with open(partial, "x", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    created.append(temporary / MANIFEST)
    os.replace(partial, temporary / MANIFEST)

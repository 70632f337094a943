"""Reading a prepared corpus (`vist2 prepare`): token shards memory-mapped on every process.

A prepared corpus is a folder holding manifest.json (written last, so its presence means the
folder is complete) and shards tokens-NNNNN.bin of raw little-endian token ids. The shards
joined are exactly the stream `vist2.train.data.token_stream` builds from the raw corpus.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from vist2.errors import Vist2Error

FORMAT = "vist2-prepared"
VERSION = 1
MANIFEST = "manifest.json"
OWNER = "VIST2_PREPARE_IN_PROGRESS"  # marks a temporary folder `vist2 prepare` is still writing
SHARD_GLOB = "tokens-*.bin"


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the fast tokenizer's full JSON (vocabulary, merges, added tokens, normalizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise Vist2Error("prepared corpora need a fast (Rust) tokenizer")
    return hashlib.sha256(backend.to_str().encode()).hexdigest()


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size < 65536 else "uint32"


def is_prepared(path: Path) -> bool:
    """True for a complete prepared corpus; shards without a manifest, or a folder prepare is still
    writing (its OWNER marker), are refused."""
    if not path.is_dir():
        return False
    if (path / MANIFEST).is_file() and not (path / OWNER).exists():
        return True
    if (path / OWNER).exists() or any(path.glob(SHARD_GLOB)):
        raise Vist2Error(f"{path} is the unfinished output of an interrupted or running `vist2 prepare`; run it again")
    return False


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Vist2Error(f"cannot read {path / MANIFEST}: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise Vist2Error(f"{path / MANIFEST} is not a {FORMAT} manifest of version {VERSION}")
    return manifest


class ShardedStream:
    """The token stream of a prepared corpus, memory-mapped; slicing returns an int64 array.
    Pickles as its paths (DataLoader workers reopen the maps instead of copying the tokens)."""

    def __init__(self, folder: Path, shards: list[dict], dtype: str):
        self.folder, self.shards, self.dtype = folder, shards, dtype
        self.ends = np.cumsum([s["tokens"] for s in shards])
        self.maps = None

    def _open(self) -> list[np.memmap]:
        maps = []
        for shard in self.shards:
            name = shard["file"]
            path = self.folder / name
            if "/" in name or name.startswith(".") or not path.is_file():
                raise Vist2Error(f"{self.folder / MANIFEST}: shard {name!r} is missing or not a plain file name")
            expected = shard["tokens"] * np.dtype(self.dtype).itemsize
            if path.stat().st_size != expected:
                raise Vist2Error(f"{path}: {path.stat().st_size} bytes, the manifest says {expected}")
            maps.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(shard["tokens"],)))
        return maps

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitem__(self, key: slice) -> np.ndarray:
        if self.maps is None:
            self.maps = self._open()
        start, stop, _ = key.indices(len(self))
        parts, first = [], int(np.searchsorted(self.ends, start, side="right"))
        for index in range(first, len(self.shards)):
            base = int(self.ends[index - 1]) if index else 0
            if base >= stop:
                break
            parts.append(self.maps[index][max(0, start - base) : stop - base])
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "shards": self.shards, "dtype": self.dtype}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], state["shards"], state["dtype"])


def open_prepared(path: Path, tokenizer) -> ShardedStream:
    """The corpus' stream, after checking it was prepared with this exact tokenizer."""
    manifest = read_manifest(path)
    ours = tokenizer_hash(tokenizer)
    theirs = manifest.get("tokenizer", {})
    if theirs.get("sha256") != ours:
        raise Vist2Error(f"{path} was prepared with tokenizer {theirs.get('name')!r} "
                         f"(sha256 {str(theirs.get('sha256'))[:12]}), not the model's (sha256 {ours[:12]}); "
                         "run `vist2 prepare` again with the model's tokenizer")
    if manifest.get("dtype") not in ("uint16", "uint32") or not manifest.get("shards"):
        raise Vist2Error(f"{path / MANIFEST}: no shards or an unknown dtype")
    return ShardedStream(path, manifest["shards"], manifest["dtype"])

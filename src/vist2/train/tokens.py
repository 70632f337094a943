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

from vist2.data_folder import inside, regular_file
from vist2.errors import Vist2Error

FORMAT = "vist2-prepared"
VERSION = 1
MANIFEST = "manifest.json"
OWNER = "VIST2_PREPARE_IN_PROGRESS"  # marks a temporary folder `vist2 prepare` is still writing
SHARD_GLOB = "tokens-*.bin"
DTYPES = ("uint16", "uint32")
MAX_MANIFEST_BYTES = 64 << 20
CHECK_TOKENS = 1 << 26  # ids checked per shard when it is opened (all of a smaller shard) ...
CHECK_BLOCKS = 64  # ... in this many blocks spread over a larger one


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
    """The manifest, with every field training reads checked for its type."""
    where = path / MANIFEST
    try:
        manifest = json.loads(regular_file(where, MAX_MANIFEST_BYTES).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise Vist2Error(f"cannot read {where}: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise Vist2Error(f"{where} is not a {FORMAT} manifest of version {VERSION}")
    tokenizer, shards = manifest.get("tokenizer"), manifest.get("shards")
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("sha256"), str):
        raise Vist2Error(f"{where}: field 'tokenizer' must be an object with a string 'sha256'")
    if manifest.get("dtype") not in DTYPES:
        raise Vist2Error(f"{where}: field 'dtype' must be one of {', '.join(DTYPES)}, got {manifest.get('dtype')!r}")
    if not isinstance(shards, list) or not shards:
        raise Vist2Error(f"{where}: field 'shards' must be a non-empty list")
    for number, shard in enumerate(shards):
        if not (isinstance(shard, dict) and isinstance(shard.get("file"), str) and isinstance(shard.get("tokens"), int)
                and not isinstance(shard["tokens"], bool) and shard["tokens"] >= 0):
            raise Vist2Error(f"{where}: shards[{number}] must be an object with a string 'file' and an "
                             f"integer 'tokens' >= 0, got {shard!r}"[:300])
    return manifest


def _first_outside(values: np.ndarray, vocab_size: int) -> int | None:
    """Index of the first id >= vocab_size in `values` (None if all are in range)."""
    if not len(values) or int(values.max()) < vocab_size:
        return None
    return int(np.argmax(values >= vocab_size))


class ShardedStream:
    """The token stream of a prepared corpus, memory-mapped; slicing returns an int64 array.
    Every slice is checked against the vocabulary (an id outside it names its shard and offset).
    Pickles as its paths (DataLoader workers reopen the maps instead of copying the tokens)."""

    def __init__(self, folder: Path, shards: list[dict], dtype: str, vocab_size: int, follow_symlinks: bool = False):
        self.folder, self.shards, self.dtype, self.vocab_size = folder, shards, dtype, vocab_size
        self.follow_symlinks = follow_symlinks
        self.ends = np.cumsum([s["tokens"] for s in shards])
        self.maps = None

    def _path(self, name: str) -> Path:
        """A shard: a plain file name in the folder, resolving inside it (the data-folder rule)."""
        if "/" in name or "\\" in name or name.startswith(".") or not name:
            raise Vist2Error(f"{self.folder / MANIFEST}: shard {name!r} is not a plain file name")
        path = inside(self.folder, self.folder / name, self.follow_symlinks)
        if not path.exists():
            raise Vist2Error(f"{path}: no such shard (listed in {self.folder / MANIFEST})")
        return regular_file(path)

    def _open(self) -> list[np.memmap]:
        maps = []
        for shard in self.shards:
            path = self._path(shard["file"])
            expected = shard["tokens"] * np.dtype(self.dtype).itemsize
            if path.stat().st_size != expected:
                raise Vist2Error(f"{path}: {path.stat().st_size} bytes, the manifest says {expected} "
                                 f"({shard['tokens']} tokens of {self.dtype})")
            maps.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(shard["tokens"],))
                        if shard["tokens"] else np.zeros(0, self.dtype))
        return maps

    def check(self, sample_tokens: int = CHECK_TOKENS) -> None:
        """Open every shard (names, sizes) and check ids against the vocabulary: all of a shard
        up to `sample_tokens`, else CHECK_BLOCKS blocks spread over it (slices are checked as read)."""
        self.maps = self._open()
        for shard, tokens in zip(self.shards, self.maps):
            block = len(tokens) if len(tokens) <= sample_tokens else sample_tokens // CHECK_BLOCKS
            for start in np.linspace(0, len(tokens) - block, CHECK_BLOCKS if block < len(tokens) else 1).astype(int):
                bad = _first_outside(tokens[start : start + block], self.vocab_size)
                if bad is not None:
                    self._outside(shard, int(start) + bad, int(tokens[start + bad]))

    def _outside(self, shard: dict, offset: int, value: int):
        raise Vist2Error(f"{self.folder / shard['file']}: token id {value} at token {offset} is outside the "
                         f"tokenizer's vocabulary of {self.vocab_size}; the shard is damaged or not from this "
                         "tokenizer (run `vist2 prepare` again)")

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
            part = self.maps[index][max(0, start - base) : stop - base]
            bad = _first_outside(part, self.vocab_size)
            if bad is not None:
                self._outside(self.shards[index], max(0, start - base) + bad, int(part[bad]))
            parts.append(part)
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "shards": self.shards, "dtype": self.dtype, "vocab_size": self.vocab_size,
                "follow_symlinks": self.follow_symlinks}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


def open_prepared(path: Path, tokenizer, follow_symlinks: bool = False) -> ShardedStream:
    """The corpus' stream, after checking it was prepared with this exact tokenizer and that its
    shards are what the manifest says (`ShardedStream.check`)."""
    manifest = read_manifest(path)
    ours = tokenizer_hash(tokenizer)
    theirs = manifest["tokenizer"]
    if theirs["sha256"] != ours:
        raise Vist2Error(f"{path} was prepared with tokenizer {theirs.get('name')!r} "
                         f"(sha256 {theirs['sha256'][:12]}), not the model's (sha256 {ours[:12]}); "
                         "run `vist2 prepare` again with the model's tokenizer")
    if manifest["dtype"] != token_dtype(len(tokenizer)):
        raise Vist2Error(f"{path / MANIFEST}: dtype {manifest['dtype']}, but a vocabulary of {len(tokenizer)} "
                         f"is stored as {token_dtype(len(tokenizer))}")
    stream = ShardedStream(path, manifest["shards"], manifest["dtype"], len(tokenizer), follow_symlinks)
    stream.check()
    return stream

"""Training data from local files, as map-style datasets of `vist2.stages.Example`s.

Readers: folders of *.txt, JSONL, Parquet, and `datasets.save_to_disk` folders. Records:
  text stages (ocr, olm)   {"text": ...} (a .txt file is one record)
  captioning               {"image": path relative to the JSONL file, "caption": ...}
  sft                      {"query": ..., "response": ...}  (response may hold <think>...</think>)

Data files are untrusted: an image path must name a regular file inside the data file's
folder (unless `images_outside_data`), of at most MAX_IMAGE_BYTES. Samples that cannot be
used (a bad image with on_bad_image="skip", an SFT query longer than max_length) are
skipped before training, listed in `dataset.skipped` with their file and line, and counted.

Order is deterministic and resumable: `ResumableBatches` walks a seeded permutation per
epoch and hands rank r its share of every optimizer step, starting at any sample position.
A key is (record index, images): the OCR curriculum picks images per sample from progress.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from vist2 import jsonl_files, stages
from vist2.chunking import split_chunks
from vist2.data_folder import files_under, inside, regular_file
from vist2.errors import Vist2Error
from vist2.layout import span
from vist2.prompt import Prompt, build_prompt, chat_parts, response_positions

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
MAX_IMAGE_BYTES = 256 * 2**20


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file())


def data_files(paths: tuple[str, ...], follow_symlinks: bool = False) -> list[Path]:
    """Every readable file (or saved dataset folder) under the given paths, in sorted order. A path
    given directly must be a regular file or a folder; what a folder holds follows the data-folder
    rule (`vist2.data_folder`: inside it unless `follow_symlinks`, regular files only)."""
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if not path.exists():
            raise Vist2Error(f"data path {path} does not exist")
        if not path.is_dir():
            found.append(regular_file(path))
            continue
        if _is_saved_dataset(path):
            files_under(path, None, follow_symlinks)
            found.append(path)
            continue
        files = files_under(path, TEXT_SUFFIXES, follow_symlinks)
        saved = sorted(p for p in path.iterdir() if _is_saved_dataset(p))
        for folder in saved:
            inside(path, folder, follow_symlinks)
            files_under(folder, None, follow_symlinks)
        if not files and not saved:
            raise Vist2Error(f"data folder {path} holds no *.txt, *.jsonl, *.parquet files or saved datasets")
        found += files + saved
    return found


def _jsonl_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a training JSONL file (any size; lines bounded, NaN/Infinity refused)."""
    for number, record in jsonl_files.records(path, max_file_bytes=None):
        record["_where"], record["_base"] = f"{path}, line {number}", path.parent
        yield record


@contextlib.contextmanager
def reading(path: Path):
    """What the libraries raise for a damaged file (a corrupt Parquet file, a broken
    dataset_info.json, bad UTF-8) as one line naming it."""
    try:
        yield
    except Vist2Error:
        raise
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0][:300]
        raise Vist2Error(f"cannot read {path}: {reason}") from None


def read_records(paths: tuple[str, ...], follow_symlinks: bool = False) -> list[dict[str, Any]]:
    """All records of all files, each with "_where" (file and line) for error messages."""
    records: list[dict[str, Any]] = []
    for path in data_files(paths, follow_symlinks):
        with reading(path):
            if path.suffix == ".txt":
                records.append({"text": path.read_text(encoding="utf-8"), "_where": str(path), "_base": path.parent})
            elif path.suffix == ".jsonl":
                records += _jsonl_records(path)
            elif path.suffix == ".parquet":
                import pyarrow.parquet as pq

                rows = pq.read_table(path).to_pylist()
                records += [dict(row, _where=f"{path}, row {i}", _base=path.parent) for i, row in enumerate(rows)]
            else:
                from datasets import DatasetDict, load_from_disk

                saved = load_from_disk(str(path))
                splits = saved.values() if isinstance(saved, DatasetDict) else [saved]
                records += [dict(row, _where=f"{path}, row {i}", _base=path.parent)
                            for split in splits for i, row in enumerate(split)]
    if not records:
        raise Vist2Error(f"no records found in {', '.join(paths)}")
    return records


def field(record: dict[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise Vist2Error(f"{record['_where']}: needs a string field {name!r}")
    return value


def token_stream(tokenizer, texts: list[str]) -> np.ndarray:
    """All documents tokenized and joined, each followed by the end-of-text token."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    return np.asarray(ids, dtype=np.int64)


def curriculum_images(progress: float, rng: random.Random, max_images: int, bounds: tuple[float, float]) -> int:
    """OCR curriculum (paper PT-2): easy = 1 image, medium = 2-4, hard = more than 4."""
    if progress < bounds[0] or max_images == 1:
        return 1
    if progress < bounds[1] or max_images <= 4:
        return rng.randint(2, min(4, max_images))
    return rng.randint(5, max_images)


class TextStageDataset(torch.utils.data.Dataset):
    """OCR / OLM samples cut from one token stream. OCR: a key's `images` consecutive chunks
    from chunk unit `index`; OLM: the window `index` of as many chunks as max_length allows,
    or, for a fixed `ocr_replay` fraction of windows, its first chunks as an OCR sample."""

    def __init__(self, stage: str, tokenizer, texts: list[str], chunk_tokens: int, beta: int, max_length: int,
                 sees_text: bool = True, ocr_replay: float = 0.0, stream=None, fill=None):
        self.stage, self.tokenizer, self.chunk, self.beta, self.sees_text = stage, tokenizer, chunk_tokens, beta, sees_text
        self.ocr_replay, self.fill, self.max_length = ocr_replay, fill, max_length
        self.stream = token_stream(tokenizer, texts) if stream is None else stream  # stream: a prepared corpus
        self.max_images = max(1, max_length // span(chunk_tokens, 1, beta))  # OCR: (v_i, c_i) pairs of K that fit
        if stage == "olm":
            chunks = max(1, (max_length + beta) // span(chunk_tokens, 1, beta))  # n text chunks + n-1 visual blocks
            self.window = chunks * chunk_tokens
        else:
            self.window = chunk_tokens
        self.units = len(self.stream) // self.window
        if self.units == 0:
            raise Vist2Error(f"the data has {len(self.stream)} tokens, fewer than one sample ({self.window})")

    def __len__(self) -> int:
        return self.units

    def __getitem__(self, key: tuple[int, int]) -> stages.Example:
        index, images = key
        start = index * self.window
        if self.fill is not None:
            return self._filled(start, images, index)
        ids = self.stream[start : start + self.window * images].tolist()
        pad = self.tokenizer.pad_token_id
        if self.stage == "ocr":
            return stages.ocr(self.tokenizer, ids, self.chunk, self.beta, pad)
        if random.Random(index).random() < self.ocr_replay:  # OCR of n-1 chunks fits where OLM of n does
            return stages.ocr(self.tokenizer, ids[: self.window - self.chunk], self.chunk, self.beta, pad)
        return stages.olm(self.tokenizer, ids, self.chunk, self.beta, pad, sees_text=self.sees_text)


    def _filled(self, start: int, images: int, index: int) -> stages.Example:
        """fill: the sample from `start` with as many chunks as fill their pages: OCR `images`
        of them, OLM (or OCR replay) as many as max_length holds."""
        pad, fill = self.tokenizer.pad_token_id, self.fill
        olm = self.stage == "olm" and random.Random(index).random() >= self.ocr_replay
        count = images if self.stage == "ocr" else self.max_length  # OLM and OCR replay: as many as fit
        room = self.max_length - (0 if olm else self.beta)  # so that even one chunk fits max_length
        ids = self.stream[start : start + min(fill.max_tokens * count, room)].tolist()
        chunks, length = split_chunks(ids, self.chunk, fill), 0
        kept: list[int] = []
        for number, chunk in enumerate(chunks[:count]):
            length += span(len(chunk), int(number > 0 if olm else 1), self.beta)  # OLM: no block after the last
            if kept and length > self.max_length:
                break
            kept += chunk
        if olm:
            return stages.olm(self.tokenizer, kept, self.chunk, self.beta, pad, sees_text=self.sees_text, fill=fill)
        return stages.ocr(self.tokenizer, kept, self.chunk, self.beta, pad, fill=fill)


def _image_problem(path: Path) -> str | None:
    """Why `path` is no usable image (None if it is one): regular files only, bounded, fully decodable."""
    if not path.is_file():  # also refuses FIFOs, devices and folders, which could hang or never end
        return "is missing or not a regular file"
    if path.stat().st_size > MAX_IMAGE_BYTES:
        return f"is larger than {MAX_IMAGE_BYTES >> 20} MiB"
    try:
        with Image.open(path) as image:
            image.load()  # decodes the pixels: a truncated file fails here, not in training
        return None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"is not a readable image ({error})"


def image_path(record: dict[str, Any], outside_ok: bool) -> Path:
    """The record's image, relative to its data file's folder, which it may not leave unless `outside_ok`."""
    base = Path(record.get("_base", "."))
    path = base / field(record, "image")
    if not outside_ok and not path.resolve().is_relative_to(base.resolve()):
        raise Vist2Error(f"{record['_where']}: image {field(record, 'image')!r} is outside the data folder {base} "
                         "(pass --images-outside-data to allow it)")
    return path


class CaptionDataset(torch.utils.data.Dataset):
    """(image, caption) pairs; pairs with a missing or unreadable image fail or are skipped."""

    def __init__(self, records: list[dict[str, Any]], tokenizer, beta: int, max_length: int, on_bad_image: str,
                 images_outside_data: bool = False):
        self.tokenizer, self.beta, self.max_caption = tokenizer, beta, max(1, max_length - beta)
        self.pairs: list[tuple[Path, str]] = []
        self.skipped: list[str] = []
        for record in records:
            where = record["_where"]
            image = image_path(record, images_outside_data)
            caption = field(record, "caption")
            problem = _image_problem(image)
            if problem is None:
                self.pairs.append((image, caption))
            elif on_bad_image == "skip":
                self.skipped.append(f"{where}: image {image} {problem}")
            else:
                raise Vist2Error(f"{where}: image {image} {problem} "
                                 "(pass --on-bad-image skip to skip such pairs)")
        if not self.pairs:
            raise Vist2Error(f"no usable (image, caption) pairs; {len(self.skipped)} skipped")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> stages.Example:
        path, caption = self.pairs[key[0]]
        with Image.open(path) as image:
            page = image.convert("L")
        ids = self.tokenizer.encode(caption, add_special_tokens=False)[: self.max_caption - 1]
        return stages.captioning(page, ids + [self.tokenizer.eos_token_id], self.beta, self.tokenizer.pad_token_id)


def sft_length(prompt: Prompt, response: int, chunk_tokens: int, beta: int, ids: list[int] | None = None,
               fill=None) -> int:
    """Sequence length of an SFT example: its prompt (`prompt.build_prompt`), then the interleaved
    response (fill: of the response's tokens `ids`)."""
    return prompt.positions + response_positions(response, chunk_tokens, beta, ids, fill)


class ChatDataset(torch.utils.data.Dataset):
    """SFT chats; a response too long for max_length is cut at the end, a chat whose query alone
    is too long is skipped (listed in `skipped`), an empty response is an error."""

    def __init__(self, records: list[dict[str, Any]], tokenizer, chunk_tokens: int, beta: int, max_length: int,
                 fits=None, fill=None):
        self.tokenizer, self.chunk, self.beta, self.max_length = tokenizer, chunk_tokens, beta, max_length
        self.fill = fill  # chunks that fill their page instead of K tokens (`chunking.Fill`)
        self.fits = fits  # the renderer's fit rule: a chunk too long for one page takes more (prompt.chunk_pages)
        self.end = len(chat_parts(tokenizer)[2])
        self.chats: list[tuple[list[int], list[int], Prompt]] = []
        self.skipped: list[str] = []
        for record in records:
            query, response = self._encode(field(record, "query")), self._encode(field(record, "response"))
            if not response:
                raise Vist2Error(f"{record['_where']}: the response is empty")
            prompt = build_prompt(tokenizer, query, "gcc", chunk_tokens, beta, fits, fill)
            if sft_length(prompt, 1 + self.end, chunk_tokens, beta) > max_length:
                self.skipped.append(f"{record['_where']}: the query alone ({len(query)} tokens) exceeds "
                                    f"max_length {max_length}")
            else:
                self.chats.append((query, response, prompt))
        if not self.chats:
            raise Vist2Error(f"no chat fits max_length {max_length}; {len(self.skipped)} skipped "
                             f"(first: {self.skipped[0] if self.skipped else 'none'})")

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def __len__(self) -> int:
        return len(self.chats)

    def __getitem__(self, key: tuple[int, int]) -> stages.Example:
        query_ids, response_ids, prompt = self.chats[key[0]]
        end = chat_parts(self.tokenizer)[2]
        length = lambda keep: sft_length(prompt, keep + self.end, self.chunk, self.beta,  # noqa: E731
                                         response_ids[:keep] + end, self.fill)
        low, high = 1, len(response_ids)  # the longest response that fits (lengths grow with it)
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if length(middle) <= self.max_length else (low, middle - 1)
        pad = self.tokenizer.pad_token_id
        return stages.sft(self.tokenizer, query_ids, response_ids[:low], self.chunk, self.beta, pad, fits=self.fits,
                          fill=self.fill)


def build_dataset(stage: str, paths: tuple[str, ...], tokenizer, chunk_tokens: int, beta: int, max_length: int,
                  on_bad_image: str = "fail", sees_text: bool = True, ocr_replay: float = 0.0,
                  images_outside_data: bool = False, fits=None, fill=None,
                  follow_symlinks: bool = False) -> torch.utils.data.Dataset:
    from vist2.train.tokens import is_prepared, open_prepared

    if any(is_prepared(Path(p)) for p in paths):
        if stage not in ("ocr", "olm") or len(paths) != 1:
            raise Vist2Error("a prepared corpus (vist2 prepare) is for --stage ocr or olm and must be the only --data path")
        stream = open_prepared(Path(paths[0]), tokenizer, follow_symlinks)
        return TextStageDataset(stage, tokenizer, [], chunk_tokens, beta, max_length, sees_text, ocr_replay, stream,
                                fill)
    records = read_records(paths, follow_symlinks)
    if stage in ("ocr", "olm"):
        texts = [field(r, "text") for r in records]
        return TextStageDataset(stage, tokenizer, texts, chunk_tokens, beta, max_length, sees_text, ocr_replay,
                                fill=fill)
    if stage == "captioning":
        return CaptionDataset(records, tokenizer, beta, max_length, on_bad_image, images_outside_data)
    return ChatDataset(records, tokenizer, chunk_tokens, beta, max_length, fits, fill)


class ResumableBatches(torch.utils.data.Sampler):
    """Micro-batches of keys (record index, images) for one process, from sample `start` on.

    Global sample p of the run is record order[p % n] of epoch p // n (a seeded permutation).
    Optimizer step s owns samples [s*B, (s+1)*B); within it, micro-batch m of rank r is the
    slice at (m * world + r) * micro. So the order does not depend on when a run was resumed.
    """

    def __init__(self, size: int, batch_size: int, micro_batch_size: int, rank: int, world: int, seed: int,
                 total_steps: int, start_step: int = 0, curriculum=None):
        self.size, self.batch, self.micro, self.rank, self.world = size, batch_size, micro_batch_size, rank, world
        self.seed, self.total_steps, self.start_step, self.curriculum = seed, total_steps, start_step, curriculum
        self.schedule_steps = total_steps  # the curriculum's notion of "the whole run"; a time budget resets it
        self._orders: dict[int, torch.Tensor] = {}  # a tensor: 8 bytes per sample, not a Python int each

    def _record(self, sample: int) -> int:
        epoch, offset = divmod(sample, self.size)
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._orders = {epoch: torch.randperm(self.size, generator=generator)}
        return int(self._orders[epoch][offset])

    def _images(self, sample: int, step: int) -> int:
        if self.curriculum is None:
            return 1
        return self.curriculum(step / max(1, self.schedule_steps), random.Random(self.seed * 1_000_003 + sample))

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.batch // (self.micro * self.world)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_step = self.batch // (self.micro * self.world)
        for step in range(self.start_step, self.total_steps):
            for m in range(per_step):
                first = step * self.batch + (m * self.world + self.rank) * self.micro
                yield [(self._record(p), self._images(p, step)) for p in range(first, first + self.micro)]

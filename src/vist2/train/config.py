"""`TrainConfig`: every knob of a training run, the paper's per-stage defaults (table 8),
and how a JSON config file and command-line flags override them (flag > file > stage default).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vist2.errors import Vist2Error
from vist2.render import MAX_PAGE_SIDE, check_min_font_size

STAGES = ("captioning", "ocr", "olm", "sft")
PARTS = ("vision", "aligner", "llm")

# Paper table 8 (0.6B): AdamW, weight decay 1e-4, warmup 0.01, cosine, one epoch.
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "captioning": dict(lr=5e-4, max_length=1024, batch_size=96, train_parts=("aligner",)),
    "ocr": dict(lr=5e-4, max_length=4096, batch_size=64, train_parts=("vision", "aligner")),
    "olm": dict(lr=5e-4, max_length=8192, batch_size=64, train_parts=("llm",)),
    "sft": dict(lr=1e-5, max_length=8192, batch_size=64, train_parts=("vision", "aligner", "llm")),
}


@dataclass(frozen=True)
class TrainConfig:
    stage: str
    data: tuple[str, ...]  # files or folders: *.txt, *.jsonl, *.parquet, datasets.save_to_disk folders
    output: str  # run folder: checkpoints/, tensorboard/, losses.json, loss.png, final/
    preset: str | None = None  # start from a fresh model of this preset ...
    init: str | None = None  # ... or from a checkpoint folder (the previous stage's final/)
    resume: bool = False  # continue from the last complete checkpoint in output/checkpoints
    train_parts: tuple[str, ...] = ()  # () = the stage default; subset of vision, aligner, llm
    lr: float = 0.0  # 0 = the stage default
    max_length: int = 0  # tokens per sample; 0 = the stage default
    batch_size: int = 0  # samples per optimizer step over all processes; 0 = the stage default
    micro_batch_size: int = 8  # samples per forward on one process; the rest is accumulation
    weight_decay: float = 1e-4
    warmup_ratio: float = 0.01
    schedule: str = "cosine"  # "cosine" | "constant"
    epochs: int = 1
    max_steps: int = 0  # 0 = epochs over the data
    max_minutes: float = 0.0  # > 0: stop after this long; the schedule length is set from the first steps' speed
    seed: int = 0
    num_workers: int = 0  # DataLoader workers; rendering runs in them
    mixed_precision: str = "auto"  # "auto" (bf16 on a GPU that has it, else fp32) | "no" | "bf16" | "fp16"
    gradient_checkpointing: bool = False
    fsdp: bool = False  # shard with PyTorch FSDP2 (launch with torchrun); see vist2.train.sharded
    grad_clip: float = 1.0
    save_every: int = 500  # optimizer steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2
    log_every: int = 1
    on_bad_image: str = "fail"  # captioning pairs with a missing/corrupt image: "fail" | "skip"
    curriculum: tuple[float, float] = (1 / 3, 2 / 3)  # OCR: progress where medium / hard samples begin
    page_tokens: int = 0  # OCR: tokens per page, <= the model's chunk (short pages first); 0 = the chunk
    chunking: str = ""  # "fixed" | "fill" (chunks that fill their page); "" = the model's
    min_font_size: int = 0  # fill: pages are filled down to this font size; 0 = the model's
    max_chunk_tokens: int = 0  # fill: most tokens per chunk; 0 = the model's
    ocr_replay: float = 0.0  # OLM: fraction of samples shown as OCR instead, so the LLM keeps reading
    progress_bar: bool = True
    images_outside_data: bool = False  # captioning: allow image paths outside the JSONL's folder
    follow_symlinks: bool = False  # read data files whose symlinks lead out of their data folder

    def __post_init__(self) -> None:
        _check_types(self)
        if self.stage not in STAGES:
            raise Vist2Error(f"stage must be one of {STAGES}, got {self.stage!r}")
        if not self.data:
            raise Vist2Error("no training data given (--data PATH ...)")
        if not (self.preset or self.init or self.resume):
            raise Vist2Error("start from --preset NAME or --init CHECKPOINT (or --resume)")
        unknown = set(self.train_parts) - set(PARTS)
        if unknown:
            raise Vist2Error(f"unknown train_parts {sorted(unknown)}; choose from {PARTS}")
        if self.schedule not in ("cosine", "constant"):
            raise Vist2Error(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.on_bad_image not in ("fail", "skip"):
            raise Vist2Error(f"on_bad_image must be 'fail' or 'skip', got {self.on_bad_image!r}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise Vist2Error(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.chunking not in ("", "fixed", "fill"):
            raise Vist2Error(f"chunking must be fixed or fill (or empty for the model's), got {self.chunking!r}")
        if self.chunking == "fill" and self.page_tokens:
            raise Vist2Error("page_tokens is for fixed chunking; fill chunks as many tokens as fill the page")
        if not 0 <= self.ocr_replay < 1 or (self.ocr_replay and self.stage != "olm"):
            raise Vist2Error(f"ocr_replay must be in [0, 1) and is for the olm stage only, got {self.ocr_replay}")
        for name in ("micro_batch_size", "save_every", "epochs", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise Vist2Error(f"{name} must be >= 1, got {getattr(self, name)}")
        check_min_font_size(self.min_font_size, 1, MAX_PAGE_SIDE)  # 0: the model's
        for name in ("max_length", "batch_size", "max_steps", "num_workers", "page_tokens", "max_chunk_tokens"):
            if getattr(self, name) < 0:
                raise Vist2Error(f"{name} must be >= 0 (0 = the default), got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "max_minutes", "grad_clip"):
            if getattr(self, name) < 0:
                raise Vist2Error(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio <= 1:
            raise Vist2Error(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if not 0 <= self.seed < 2**32:
            raise Vist2Error(f"seed must be in [0, 2**32), got {self.seed}")
        if len(self.curriculum) != 2 or not 0 <= self.curriculum[0] <= self.curriculum[1] <= 1:
            raise Vist2Error(f"curriculum must be two fractions 0 <= MEDIUM <= HARD <= 1, got {self.curriculum}")

    def with_stage_defaults(self) -> TrainConfig:
        """Fill every 0 / () field from the stage's row of `STAGE_DEFAULTS`."""
        defaults = STAGE_DEFAULTS[self.stage]
        changes = {name: value for name, value in defaults.items() if not getattr(self, name)}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_KINDS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_types(config: TrainConfig) -> None:
    """Each field has its declared type (config files are JSON), and no float is NaN or infinite."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        optional = f.type.endswith("| None")
        base = f.type.removesuffix(" | None")
        if value is None and optional:
            continue
        if base.startswith("tuple"):
            item = (str,) if "str" in base else (int, float)
            ok = isinstance(value, tuple) and all(isinstance(v, item) and not isinstance(v, bool) for v in value)
            items = value if ok else ()
        else:
            kind = _KINDS[base]
            ok = isinstance(value, kind) and (base == "bool" or not isinstance(value, bool))
            items = (value,) if ok else ()
        if not ok:
            raise Vist2Error(f"{f.name} must be of type {f.type}, got {value!r}")
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            raise Vist2Error(f"{f.name} must be a finite number, got {value!r}")


def _coerce(name: str, value: Any) -> Any:
    """JSON values -> the field's type (lists become tuples)."""
    if name in ("data", "train_parts", "curriculum") and isinstance(value, list):
        return tuple(value)
    if name in ("data", "train_parts") and isinstance(value, str):
        return tuple(v for v in value.split(",") if v) if name == "train_parts" else (value,)
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    from vist2.inputs import read_text  # a regular file, bounded read

    try:
        data = json.loads(read_text(str(path), "--config"))
    except json.JSONDecodeError as error:
        raise Vist2Error(f"config file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise Vist2Error(f"config file {path} must hold a JSON object")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(data) - known
    if unknown:
        raise Vist2Error(f"unknown fields in config file {path}: {sorted(unknown)}")
    return {name: _coerce(name, value) for name, value in data.items()}


HELP = {
    "stage": "captioning, ocr, olm or sft",
    "data": "files or folders of training data (*.txt, *.jsonl, *.parquet, saved datasets)",
    "output": "run folder: checkpoints/, tensorboard/, losses.json, loss.png, final/",
    "preset": "start from a fresh model of this preset (e.g. tiny, vist2-0.6b)",
    "init": "start from this checkpoint folder (e.g. the previous stage's final/)",
    "resume": "continue from the last complete checkpoint in OUTPUT/checkpoints",
    "train_parts": "comma-separated subset of vision,aligner,llm to train (default: the stage's)",
    "lr": "peak learning rate (default: the stage's, 5e-4 or 1e-5 for sft)",
    "max_length": "tokens per sample (default: the stage's)",
    "batch_size": "samples per optimizer step over all processes (default: the stage's)",
    "micro_batch_size": "samples per forward on one process; the rest is accumulation (default 8)",
    "weight_decay": "AdamW weight decay (default 1e-4)",
    "warmup_ratio": "fraction of the steps spent warming up, in [0, 1] (default 0.01)",
    "schedule": "cosine or constant after warmup (default cosine)",
    "epochs": "passes over the data (default 1)",
    "max_steps": "optimizer steps; 0 = epochs over the data (default 0)",
    "max_minutes": "stop after this many minutes, schedule sized from the first steps (default 0 = off)",
    "seed": "seed for the model, data order and sampling (default 0)",
    "num_workers": "DataLoader worker processes; rendering runs in them (default 0)",
    "mixed_precision": "auto, no, bf16 or fp16 (default auto: bf16 on a GPU that has it)",
    "gradient_checkpointing": "recompute activations in backward to save memory",
    "fsdp": "shard model and optimizer with FSDP2; launch: torchrun --nproc_per_node N -m vist2 train ...",
    "grad_clip": "clip the gradient norm to this; 0 = off (default 1.0)",
    "save_every": "optimizer steps between checkpoints; one is also written at the end (default 500)",
    "keep_checkpoints": "complete checkpoints to keep, >= 1 (default 2)",
    "log_every": "steps between TensorBoard points (default 1)",
    "on_bad_image": "captioning pairs with a missing or unreadable image: fail or skip (default fail)",
    "curriculum": "OCR: run fractions where medium and hard samples begin (default 0.33 0.67)",
    "page_tokens": "OCR: tokens per page, at most the model's chunk (default 0 = the chunk)",
    "chunking": "fixed (K tokens per chunk) or fill (as many tokens as fill the page) (default: the model's)",
    "min_font_size": "fill: fill pages down to this font size in pixels (default: the model's)",
    "max_chunk_tokens": "fill: most tokens per chunk (default: the model's, else 4 x K)",
    "ocr_replay": "OLM: fraction of samples shown as OCR instead, in [0, 1) (default 0)",
    "progress_bar": "show the tqdm progress bar (default on)",
    "images_outside_data": "captioning: allow image paths outside the JSONL file's folder (default off)",
    "follow_symlinks": "read data files (and prepared shards) whose symlinks lead out of their data folder "
                       "(default off: refused)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `TrainConfig` field (default None = not given), plus --config."""
    parser.add_argument("--config", help="a JSON file with TrainConfig fields; flags override it")
    for f in dataclasses.fields(TrainConfig):
        flag, help = "--" + f.name.replace("_", "-"), HELP[f.name]
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help)
        elif f.name == "data":
            parser.add_argument(flag, nargs="+", default=None, help=help)
        elif f.name == "train_parts":
            parser.add_argument(flag, default=None, help=help)
        elif f.name == "curriculum":
            parser.add_argument(flag, type=float, nargs=2, default=None, metavar=("MEDIUM", "HARD"), help=help)
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=None, help=help)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = load_config_file(args.config) if args.config else {}
    for f in dataclasses.fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = _coerce(f.name, given)
    missing = [name for name in ("stage", "data", "output") if name not in values]
    if missing:
        raise Vist2Error(f"missing {', '.join('--' + m for m in missing)} (flags or --config file)")
    return TrainConfig(**values).with_stage_defaults()

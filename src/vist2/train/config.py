"""`TrainConfig`: every knob of a training run, the paper's per-stage defaults (table 8),
and how a JSON config file and command-line flags override them (flag > file > stage default).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vist2.errors import Vist2Error

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
    grad_clip: float = 1.0
    save_every: int = 500  # optimizer steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2
    log_every: int = 1
    on_bad_image: str = "fail"  # captioning pairs with a missing/corrupt image: "fail" | "skip"
    curriculum: tuple[float, float] = (1 / 3, 2 / 3)  # OCR: progress where medium / hard samples begin
    page_tokens: int = 0  # OCR: tokens per page, <= the model's chunk (short pages first); 0 = the chunk
    ocr_replay: float = 0.0  # OLM: fraction of samples shown as OCR instead, so the LLM keeps reading
    progress_bar: bool = True

    def __post_init__(self) -> None:
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
        if not 0 <= self.ocr_replay < 1 or (self.ocr_replay and self.stage != "olm"):
            raise Vist2Error(f"ocr_replay must be in [0, 1) and is for the olm stage only, got {self.ocr_replay}")
        if self.micro_batch_size < 1 or self.save_every < 1 or self.epochs < 1:
            raise Vist2Error("micro_batch_size, save_every and epochs must be >= 1")

    def with_stage_defaults(self) -> TrainConfig:
        """Fill every 0 / () field from the stage's row of `STAGE_DEFAULTS`."""
        defaults = STAGE_DEFAULTS[self.stage]
        changes = {name: value for name, value in defaults.items() if not getattr(self, name)}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, value: Any) -> Any:
    """JSON values -> the field's type (lists become tuples)."""
    if name in ("data", "train_parts", "curriculum") and isinstance(value, list):
        return tuple(value)
    if name in ("data", "train_parts") and isinstance(value, str):
        return tuple(v for v in value.split(",") if v) if name == "train_parts" else (value,)
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as error:
        raise Vist2Error(f"cannot read config file {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise Vist2Error(f"config file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise Vist2Error(f"config file {path} must hold a JSON object")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(data) - known
    if unknown:
        raise Vist2Error(f"unknown fields in config file {path}: {sorted(unknown)}")
    return {name: _coerce(name, value) for name, value in data.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `TrainConfig` field (default None = not given), plus --config."""
    parser.add_argument("--config", help="a JSON file with TrainConfig fields; flags override it")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif f.name == "data":
            parser.add_argument(flag, nargs="+", default=None, help="files or folders of training data")
        elif f.name == "train_parts":
            parser.add_argument(flag, default=None, help="comma-separated subset of vision,aligner,llm")
        elif f.name == "curriculum":
            parser.add_argument(flag, type=float, nargs=2, default=None, metavar=("MEDIUM", "HARD"))
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=None)


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

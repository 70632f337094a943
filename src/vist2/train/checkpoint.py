"""Run folders and fault-tolerant checkpoints.

    OUTPUT/checkpoints/step-00000040/   model/ (Vist2Model.save_pretrained + tokenizer)
                                        state/ (accelerate: optimizer, RNG states of every rank)
                                        progress.json (step, schedule length, loss history)
    OUTPUT/final/                       the trained model, loadable with Vist2Model.from_pretrained

Every folder is written under a temporary name and renamed when complete, so a run killed
at any moment leaves only complete checkpoints (and maybe a stale temporary folder, removed
on the next start). `--resume` continues from the highest complete step.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from vist2.errors import Vist2Error
from vist2.model import read_checkpoint_config

PREFIX = "step-"
TEMPORARY = ".tmp-"


def checkpoints_dir(output: str | Path) -> Path:
    return Path(output) / "checkpoints"


def complete_checkpoints(output: str | Path) -> list[Path]:
    folder = checkpoints_dir(output)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "progress.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def remove_stale_temporaries(output: str | Path) -> None:
    folder = checkpoints_dir(output)
    for path in folder.glob(TEMPORARY + "*") if folder.is_dir() else []:
        shutil.rmtree(path, ignore_errors=True)
    for path in Path(output).glob(TEMPORARY + "*") if Path(output).is_dir() else []:
        shutil.rmtree(path, ignore_errors=True)


def temporary_for(final: Path) -> Path:
    return final.with_name(TEMPORARY + final.name)


def publish(temporary: Path, final: Path) -> None:
    """Atomically make a completely written folder visible under its final name."""
    if final.exists():
        stale = final.with_name(TEMPORARY + "old-" + final.name)
        shutil.rmtree(stale, ignore_errors=True)
        final.replace(stale)
        temporary.replace(final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        temporary.replace(final)
    fd = os.open(final.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_progress(folder: Path, progress: dict[str, Any]) -> None:
    (folder / "progress.json").write_text(json.dumps(progress) + "\n")


def read_progress(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "progress.json").read_text())


def prune(output: str | Path, keep: int) -> None:
    for old in complete_checkpoints(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def model_identity(directory: str | Path) -> dict[str, Any]:
    """What must agree between a checkpoint and the run that loads it: the model's shape."""
    config, _ = read_checkpoint_config(directory)
    return {"preset": config.preset, "render": config.render, "vision": config.vision.params,
            "aligner": config.aligner, "llm": config.llm.params, "chunk": config.chunk}


def check_same_model(expected: dict[str, Any], directory: str | Path, what: str) -> None:
    found = model_identity(directory)
    if found != expected:
        differing = sorted(k for k in expected if expected[k] != found.get(k))
        raise Vist2Error(f"{what} {directory} holds a different model (preset {found['preset']!r}, differs in "
                         f"{', '.join(differing)}) than this run expects (preset {expected['preset']!r})")

"""Run folders and fault-tolerant checkpoints.

    OUTPUT/checkpoints/step-00000040/   model/ (Vist2Model.save_pretrained + tokenizer)
                                        state/ (accelerate: optimizer, RNG states of every rank;
                                                with --fsdp, sharded/: model + optimizer shards, DCP)
                                        progress.json (step, schedule length, loss history)
    OUTPUT/final/                       the trained model, loadable with Vist2Model.from_pretrained

Every folder is written under a temporary name (holding a marker file) and renamed when
complete, so a run killed at any moment leaves only complete checkpoints (and maybe a stale
temporary folder, removed on the next start: only folders holding the marker, never the
user's). One run at a time holds OUTPUT/.vist2.lock (an flock, released when the process
ends, even by a crash). `--resume` continues from the highest complete step that loads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

from vist2.errors import Vist2Error
from vist2.folder_lock import LOCK, hold
from vist2.model import Vist2Model, read_checkpoint_config
from vist2.train import sharded

PREFIX = "step-"
TEMPORARY = ".tmp-"
MARKER = ".vist2-temporary"  # inside every temporary folder this program creates
# LOCK stays after the run: it also marks the folder as a run folder of ours
PROBE_BYTES = 1 << 20
RUN_FILES = ("train_config.json", "losses.json", "loss.png")  # replaced by every run in the folder


def checkpoints_dir(output: str | Path) -> Path:
    return Path(output) / "checkpoints"


def _step_folders(output: str | Path) -> list[Path]:
    folder = checkpoints_dir(output)
    return [p for p in folder.iterdir() if re.fullmatch(PREFIX + r"\d+", p.name)] if folder.is_dir() else []


def is_checkpoint(path: Path) -> bool:
    """A complete checkpoint of ours: its progress.json, written last before the rename, is our mark."""
    return path.is_dir() and not path.is_symlink() and (path / "progress.json").is_file()


def complete_checkpoints(output: str | Path) -> list[Path]:
    found = [p for p in _step_folders(output) if is_checkpoint(p)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def check_no_foreign_checkpoints(output: str | Path) -> None:
    """A step-N entry that is no checkpoint of ours is the user's: refused before any work,
    since a run would replace it when it saves step N."""
    foreign = sorted(p.name for p in _step_folders(output) if not is_checkpoint(p))
    if foreign:
        raise Vist2Error(f"{checkpoints_dir(output)} holds {', '.join(foreign[:3])}"
                         f"{' ...' if len(foreign) > 3 else ''} not written by vist2 (no progress.json); "
                         "move it away or choose another --output (nothing was removed)")


def _ours(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and (path / MARKER).is_file()


def remove_stale_temporaries(output: str | Path) -> None:
    """Remove temporary folders a killed run left: only those holding this program's marker."""
    for folder in (checkpoints_dir(output), Path(output)):
        for path in folder.glob(TEMPORARY + "*") if folder.is_dir() else []:
            if _ours(path):
                shutil.rmtree(path, ignore_errors=True)


def temporary_for(final: Path) -> Path:
    """The temporary name of `final` while it is written (the same on every process)."""
    return final.with_name(TEMPORARY + final.name)


def make_temporary(final: Path) -> Path:
    """Create the marked temporary folder of `final`; a leftover of ours is replaced, anything else refused."""
    temporary = temporary_for(final)
    if temporary.exists() or temporary.is_symlink():
        if not _ours(temporary):
            raise Vist2Error(f"{temporary} exists and was not made by vist2; move it away (nothing was removed)")
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    (temporary / MARKER).write_text("written by vist2; removed when complete or on the next start\n")
    return temporary


def publish(temporary: Path, final: Path) -> None:
    """Atomically make a completely written folder visible under its final name.

    An existing `final` is replaced only if this program wrote it (a checkpoint folder or a
    final/ of this run); the caller checks that before any work."""
    if final.name.startswith(PREFIX) and (final.exists() or final.is_symlink()) and not is_checkpoint(final):
        raise Vist2Error(f"{final} exists and was not written by vist2; move it away (nothing was removed)")
    if final.exists():
        stale = temporary.with_name(temporary.name + "-old")
        (final / MARKER).write_text("")  # marks `stale` as ours, should a crash leave it
        final.replace(stale)
        temporary.replace(final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        temporary.replace(final)
    (final / MARKER).unlink()
    fd = os.open(final.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def explain_write_failure(folder: Path) -> None:
    """After a save failed with a library's opaque error (torch.save says "unexpected pos" on a full
    disk): raise the OSError of a small probe write in `folder` if the disk refuses it too."""
    probe = folder / ".vist2-write-probe"
    try:
        with open(probe, "wb") as handle:
            handle.write(bytes(PROBE_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(folder)) from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def lock(output: Path):
    """Hold OUTPUT/.vist2.lock for this process's lifetime, or say which run holds it. A folder
    without the lock file that holds names a run writes (RUN_FILES) is not ours: refused."""
    foreign = [name for name in RUN_FILES if (output / name).exists()] if not (output / LOCK).exists() else []
    if foreign:
        raise Vist2Error(f"--output {output} holds {', '.join(foreign)} not written by vist2 train (no {LOCK}); "
                         "choose another --output (nothing was overwritten)")
    return hold(output, "--output")


def write_progress(folder: Path, progress: dict[str, Any]) -> None:
    (folder / "progress.json").write_text(json.dumps(progress) + "\n")


def read_progress(checkpoint: Path) -> dict[str, Any]:
    progress = json.loads((checkpoint / "progress.json").read_text())
    if not (isinstance(progress, dict) and isinstance(progress.get("step"), int)
            and isinstance(progress.get("schedule_steps"), int) and isinstance(progress.get("losses"), list)):
        raise Vist2Error("progress.json lacks an integer step, schedule_steps or a list of losses")
    return progress


def check_state(checkpoint: Path, fsdp: bool) -> None:
    """The training state a resume reads is there and whole: optimizer.bin (unless sharded) and every
    rank's RNG states are torch.save zip archives whose directory reads back (an empty or truncated
    file fails here); with --fsdp, the DCP metadata of the shards."""
    state = checkpoint / "state"
    if not state.is_dir():
        raise Vist2Error("no state/ folder")
    archives = sorted(state.glob("random_states_*.pkl")) + ([] if fsdp else [state / "optimizer.bin"])
    for path in archives:
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.infolist()
            if not members or any(m.header_offset + m.compress_size > path.stat().st_size for m in members):
                raise zipfile.BadZipFile("members end past the file")
        except (OSError, zipfile.BadZipFile) as error:
            raise Vist2Error(f"{path.relative_to(checkpoint)} is missing, empty or truncated ({error})") from None
    if fsdp and not (state / "sharded" / ".metadata").is_file():
        raise Vist2Error("state/sharded/.metadata is missing")


def prune(output: str | Path, keep: int) -> None:
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
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


def full_model(accelerator, model, fsdp: bool) -> Vist2Model | None:
    """The unsharded model on the main process (None elsewhere); every rank must call it."""
    from accelerate.utils import DistributedType

    if fsdp:
        state = sharded.full_state(model)
    else:
        state = accelerator.get_state_dict(model)  # collective under FSDP / DeepSpeed: every rank calls it
    if not accelerator.is_main_process:
        return None
    unwrapped = accelerator.unwrap_model(model)
    if fsdp or accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        full = Vist2Model(unwrapped.config)
        full.load_state_dict(state)
        unwrapped = full
    return unwrapped


def save_step(accelerator, model, optimizer, tokenizer, output: Path, step: int, progress: dict, keep: int) -> None:
    """Checkpoint (all ranks take part): written under a temporary name, then renamed."""
    final = checkpoints_dir(output) / f"{PREFIX}{step:08d}"
    temporary = temporary_for(final)
    if accelerator.is_main_process:
        make_temporary(final)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(temporary / "state"))  # under --fsdp: the RNG states only
        if progress["fsdp"]:
            sharded.save(model, optimizer, temporary / "state")
        full = full_model(accelerator, model, progress["fsdp"])
        if full is not None:
            full.save_pretrained(temporary / "model", tokenizer)
    except RuntimeError:
        explain_write_failure(temporary)
        raise
    accelerator.wait_for_everyone()  # every rank's RNG state is in before the rename
    if accelerator.is_main_process:
        write_progress(temporary, progress)
        publish(temporary, final)
        prune(output, keep)
    accelerator.wait_for_everyone()


def restore(accelerator, model, optimizer, state: Path, fsdp: bool) -> None:
    """Model and optimizer state of a checkpoint to resume; one line if it cannot be read."""
    try:
        accelerator.load_state(str(state))
        if fsdp:
            sharded.load(model, optimizer, state)
    except (RuntimeError, OSError, ValueError, KeyError) as error:
        if isinstance(error, Vist2Error):
            raise
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise Vist2Error(f"cannot load the training state in {state} ({reason}); move that checkpoint "
                         "away to resume from the one before") from None


def save_final(accelerator, model, tokenizer, output: Path, fsdp: bool) -> tuple[Path, Vist2Model | None]:
    """OUTPUT/final, written aside then published (all ranks take part); (final, the full model on
    the main process, else None)."""
    final = output / "final"
    temporary = temporary_for(final)
    if accelerator.is_main_process:
        make_temporary(final)
    accelerator.wait_for_everyone()
    full = full_model(accelerator, model, fsdp)
    if full is not None:
        try:
            full.save_pretrained(temporary, tokenizer)
        except RuntimeError:
            explain_write_failure(temporary)
            raise
        publish(temporary, final)
    accelerator.wait_for_everyone()
    return final, full

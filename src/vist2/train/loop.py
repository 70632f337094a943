"""`train(config)`: one stage of VIST2 training with Hugging Face Accelerate.

The same code runs on one CPU, under `accelerate launch` or `torchrun` on many processes
(DDP; with `--fsdp`, PyTorch's FSDP2, see `vist2.train.sharded`), with bf16 autocast on CPU
or GPU (fp16 on GPU only). Each optimizer step consumes `batch_size`
samples over all processes, reached by gradient accumulation of micro-batches. The
learning rate is set by hand each step (warmup then cosine), so resuming needs only the
step number. Watch a run with the tqdm bar (loss, tokens/s, ETA), TensorBoard
(OUTPUT/tensorboard) and OUTPUT/loss.png; the trained model is OUTPUT/final.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vist2 import stages
from vist2.config import Vist2Config
from vist2.errors import Vist2Error
from vist2.model import Vist2Model, build_model, read_checkpoint_config
from vist2.options import chunk_options
from vist2.presets import preset
from vist2.render import Renderer
from vist2.tokenizer import load_tokenizer
from vist2.train import checkpoint as ckpt
from vist2.train import sharded
from vist2.train.config import PARTS, TrainConfig
from vist2.train.data import ResumableBatches, build_dataset, curriculum_images

CALIBRATION_STEPS = 3  # with max_minutes: steps run before the schedule is sized from their speed


@dataclass
class TrainResult:
    final: Path  # the trained model folder
    losses: list[float]  # one per optimizer step, from step 1
    steps: int
    seconds: float
    skipped: list[str]  # samples skipped (a bad captioning image, an SFT query over max_length), with file:line
    model: Vist2Model  # the trained model (unwrapped; under --fsdp the full model on CPU on rank 0, shards elsewhere)
    tokenizer: object
    main_process: bool = True  # False on every rank but 0 of a multi-process run


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """Linear warmup over warmup_ratio of the run, then cosine to 0 (or constant)."""
    warmup = max(1, math.ceil(config.warmup_ratio * total))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _usable_checkpoint(config: TrainConfig) -> tuple[Path, Vist2Model] | None:
    """The newest complete checkpoint that loads, and its model; damaged newer ones are reported and passed over."""
    for checkpoint in reversed(ckpt.complete_checkpoints(config.output)):
        try:
            progress = ckpt.read_progress(checkpoint)
            ckpt.check_state(checkpoint, bool(progress.get("fsdp", False)))
            model = build_model(checkpoint / "model")
        except (Vist2Error, OSError, ValueError, KeyError) as error:
            print(f"warning: checkpoint {checkpoint} is damaged ({error}); trying the one before", file=sys.stderr)
            continue
        if progress.get("stage", config.stage) != config.stage:
            raise Vist2Error(f"cannot resume: {checkpoint} is from stage {progress['stage']!r}, this run is "
                             f"{config.stage!r}; use --init {checkpoint / 'model'} to start a new stage from it")
        return checkpoint, model
    if ckpt.complete_checkpoints(config.output):
        raise Vist2Error(f"cannot resume: no checkpoint in {ckpt.checkpoints_dir(config.output)} is readable")
    return None


def _load_model(config: TrainConfig, model_config: Vist2Config | None) -> tuple[Vist2Model, dict | None, Path | None]:
    """The starting model: the last usable checkpoint (--resume), --init, or a fresh preset."""
    last = ckpt.complete_checkpoints(config.output)
    if config.init:
        init_config, _ = read_checkpoint_config(config.init)
        if config.preset and init_config.preset != config.preset:
            raise Vist2Error(f"--init {config.init} was trained from preset {init_config.preset!r}, "
                             f"not {config.preset!r}")
    if last and not config.resume:
        raise Vist2Error(f"{config.output} already holds checkpoints; pass --resume to continue "
                         "or choose another --output (nothing was overwritten)")
    final = Path(config.output) / "final"
    if (final.exists() or final.is_symlink()) and not last:
        raise Vist2Error(f"{final} already holds a finished model and there is no checkpoint to resume; "
                         "choose another --output or move it away (nothing was overwritten)")
    usable = _usable_checkpoint(config) if config.resume else None
    if usable is not None:
        checkpoint, model = usable
        model_dir = checkpoint / "model"
        found = model.config
        expected = config.preset or (model_config.preset if model_config else None)
        if expected and found.preset != expected:
            raise Vist2Error(f"cannot resume: {checkpoint} holds a model of preset {found.preset!r}, "
                             f"this run asks for {expected!r}")
        if config.init:
            ckpt.check_same_model(ckpt.model_identity(config.init), model_dir, "cannot resume: checkpoint")
        if checkpoint != last[-1]:
            print(f"resuming from {checkpoint}, the newest checkpoint that reads back", file=sys.stderr)
        return model.train(), ckpt.read_progress(checkpoint), checkpoint
    if config.resume:
        print(f"--resume: no checkpoint in {ckpt.checkpoints_dir(config.output)}; starting from the beginning",
              file=sys.stderr)
    if config.init:
        return build_model(config.init).train(), None, None
    if not config.preset and model_config is None:
        raise Vist2Error("nothing to start from: give --preset NAME or --init CHECKPOINT")
    return build_model(config=model_config or preset(config.preset), seed=config.seed).train(), None, None


def freeze(model: Vist2Model, parts: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """Train only these parameter groups of the model (`PARTS`); the parameters left trainable."""
    for name, part in model.parameter_groups().items():
        part.requires_grad_(name in parts)
    return [p for p in model.parameters() if p.requires_grad]


def _mixed_precision(config: TrainConfig) -> str:
    """The autocast dtype; fp16 (loss scaling) needs a GPU and does not combine with --fsdp."""
    choice, gpu = config.mixed_precision, torch.cuda.is_available()
    if choice == "fp16" and not gpu:
        raise Vist2Error("--mixed-precision fp16 needs a GPU (CPU autocast has no fp16 loss scaling); "
                         "use bf16 or no")
    if choice == "fp16" and config.fsdp:
        raise Vist2Error("--mixed-precision fp16 does not combine with --fsdp; use bf16")
    if choice != "auto":
        return choice
    return "bf16" if gpu and torch.cuda.is_bf16_supported() else "no"


def _plot(losses: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(range(1, len(losses) + 1), losses)
    axis.set(xlabel="optimizer step", ylabel="training loss (nats/token)", title=title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def train(config: TrainConfig, model_config: Vist2Config | None = None) -> TrainResult:
    """Run one stage. `model_config` starts a fresh model of a config that is no named preset."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    config = config.with_stage_defaults()
    output = Path(config.output)
    # Accelerate keeps its settings process-wide; a second train() in one process may choose another
    # precision (the process group, PartialState, is kept).
    AcceleratorState._reset_state()
    # cpu=True without a GPU: plain `torchrun` on CPU is then multi-process (gloo), not N lone runs
    accelerator = Accelerator(mixed_precision=_mixed_precision(config), cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    accelerator.register_save_state_pre_hook(lambda models, weights, directory: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, directory: models.clear())
    world = accelerator.num_processes
    if config.batch_size % (config.micro_batch_size * world):
        raise Vist2Error(f"batch_size {config.batch_size} is not a multiple of micro_batch_size "
                         f"{config.micro_batch_size} x {world} processes")
    if config.fsdp:
        sharded.check_launch()
        if accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
            raise Vist2Error("--fsdp shards with FSDP2 itself: launch it with torchrun (or accelerate launch "
                             "--multi_gpu), not with accelerate's --use_fsdp or --use_deepspeed")
    set_seed(config.seed)
    held = None
    try:
        if accelerator.is_main_process:
            try:
                output.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise Vist2Error(f"cannot create --output {output}: {error}") from None
            held = ckpt.lock(output)  # before anything in the folder is touched
            ckpt.check_no_foreign_checkpoints(output)
            ckpt.remove_stale_temporaries(output)
        accelerator.wait_for_everyone()
        return _train(config, model_config, accelerator, output)
    finally:
        if held is not None:
            held.close()


def _dataset(config: TrainConfig, model: Vist2Model, tokenizer, renderer) -> tuple:
    """(the chunk options the stage trains with, its dataset)."""
    options = chunk_options(model, renderer, chunking=config.chunking or None, min_font_size=config.min_font_size or None,
                            max_chunk_tokens=config.max_chunk_tokens or None)
    chunk_tokens = options.chunk_tokens
    if config.page_tokens > chunk_tokens or (config.page_tokens and config.stage != "ocr"):
        raise Vist2Error(f"page_tokens must be at most the chunk ({chunk_tokens}) and is for the ocr stage only")
    dataset = build_dataset(config.stage, config.data, tokenizer, config.page_tokens or chunk_tokens,
                            options.beta, config.max_length, config.on_bad_image,
                            options.visual_sees_text, config.ocr_replay, config.images_outside_data,
                            renderer.fits, options.fill(renderer, tokenizer), config.follow_symlinks)
    return options, dataset


@dataclass
class _Run:
    """One stage's state between its named steps (_start, _step, _finish)."""

    config: TrainConfig
    accelerator: object
    output: Path
    model: object
    optimizer: torch.optim.Optimizer
    trainable: list
    tokenizer: object
    dataset: object
    sampler: ResumableBatches
    batches: object  # the loader's iterator
    writer: object  # TensorBoard's SummaryWriter on the main process, else None
    bar: object
    losses: list[float]
    progress: dict | None
    total: int
    start: int
    schedule_steps: int
    began: float
    step: int = 0
    step_seconds: float | None = None


def _train(config: TrainConfig, model_config: Vist2Config | None, accelerator, output: Path) -> TrainResult:
    run = _start(config, model_config, accelerator, output)
    done = run.step >= min(run.total, run.schedule_steps)
    while not done:
        done = _step(run)
    return _finish(run)


def _trainable_model(config: TrainConfig, model_config: Vist2Config | None, accelerator) -> tuple:
    """(model, progress, resumed, tokenizer, trainable parameters), ready for backward on this device."""
    model, progress, resumed = _load_model(config, model_config)
    tokenizer = load_tokenizer(model.config.tokenizer)
    parts = config.train_parts or PARTS
    trainable = freeze(model, parts)
    if model.config.attn_implementation == "flex_attention" and accelerator.device.type == "cpu":
        raise Vist2Error(f"the model uses flex_attention, which has no backward on CPU in torch {torch.__version__}; "
                         "train it on a GPU, or from a checkpoint with attn_implementation 'sdpa'")
    if config.gradient_checkpointing:
        for part in (model.llm, model.vision.model):
            part.activation_checkpointing_enable({"use_reentrant": False})
    return model, progress, resumed, tokenizer, trainable


def _schedule(config: TrainConfig, samples: int, progress: dict | None, resumed: Path | None) -> tuple[int, int, int]:
    """(steps in all, the first step, the steps the learning-rate schedule is sized for)."""
    per_epoch = samples // config.batch_size
    total = config.max_steps or config.epochs * per_epoch
    if total < 1:
        raise Vist2Error(f"{samples} samples make no full batch of {config.batch_size}")
    start = progress["step"] if progress else 0
    schedule_steps = progress["schedule_steps"] if progress else total
    if progress and not config.max_minutes and total != schedule_steps:  # --max-steps / --epochs changed
        if total <= start:
            raise Vist2Error(f"cannot resume: {resumed} is at step {start} and this run asks for {total} steps in all "
                             "(--max-steps / --epochs); ask for more to continue")
        print(f"resuming at step {start} of a {schedule_steps}-step run and continuing to {total} steps; the "
              f"learning-rate schedule is now sized for {total}", file=sys.stderr)
        schedule_steps = total
    return total, start, schedule_steps


def _optimizer(config: TrainConfig, accelerator, model, trainable: list, progress: dict | None,
               resumed: Path | None) -> tuple:
    """(model, optimizer, trainable): sharded (--fsdp) or prepared by Accelerate, restored when resuming."""
    if progress and progress.get("fsdp", False) != config.fsdp:
        raise Vist2Error(f"cannot resume: {resumed} was written {'with' if progress.get('fsdp') else 'without'} "
                         f"--fsdp; resume it the same way")
    if config.fsdp:  # shard first: the optimizer must hold the sharded parameters
        model = sharded.shard(model, accelerator.device)
        trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    if not config.fsdp:
        model, optimizer = accelerator.prepare(model, optimizer)
    if progress:
        ckpt.restore(accelerator, model, optimizer, resumed / "state", config.fsdp)
    return model, optimizer, trainable


def _start(config: TrainConfig, model_config: Vist2Config | None, accelerator, output: Path) -> _Run:
    """Model, data, schedule, optimizer and logs of a run, resumed where its checkpoint left off."""
    world, rank = accelerator.num_processes, accelerator.process_index
    model, progress, resumed, tokenizer, trainable = _trainable_model(config, model_config, accelerator)
    renderer = Renderer(model.config.render)
    options, dataset = _dataset(config, model, tokenizer, renderer)
    total, start, schedule_steps = _schedule(config, len(dataset), progress, resumed)
    losses: list[float] = progress["losses"] if progress else []
    curriculum = None
    if config.stage == "ocr":
        curriculum = functools.partial(curriculum_images, max_images=dataset.max_images, bounds=config.curriculum)
    sampler = ResumableBatches(len(dataset), config.batch_size, config.micro_batch_size, rank, world, config.seed,
                               total, start, curriculum)
    sampler.schedule_steps = schedule_steps
    collate = functools.partial(stages.collate, renderer=renderer, pad_id=tokenizer.pad_token_id,
                                bidirectional_visual=options.bidirectional_visual)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=config.num_workers)
    model, optimizer, trainable = _optimizer(config, accelerator, model, trainable, progress, resumed)
    writer = None
    if accelerator.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(output / "tensorboard"), purge_step=start + 1)
        (output / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    from tqdm.auto import tqdm

    bar = tqdm(total=schedule_steps, initial=start, desc=f"{config.stage} ({output.name})", unit="step",
               disable=not (accelerator.is_main_process and config.progress_bar), dynamic_ncols=True)
    return _Run(config, accelerator, output, model, optimizer, trainable, tokenizer, dataset, sampler, iter(loader),
                writer, bar, losses, progress, total, start, schedule_steps, began=time.perf_counter(), step=start)


def _accumulate(run: _Run) -> tuple[list[torch.Tensor], int]:
    """Forward and backward over one step's micro-batches: (their losses, the tokens they were scored on)."""
    config, accelerator, model = run.config, run.accelerator, run.model
    accumulation = config.batch_size // (config.micro_batch_size * accelerator.num_processes)
    micro_losses, tokens = [], 0
    for micro in range(accumulation):
        batch = {k: v.to(accelerator.device) for k, v in next(run.batches).items()}
        if config.fsdp:  # reduce-scatter the gradients once, after the last micro-batch
            model.set_requires_gradient_sync(micro == accumulation - 1)
            sync = contextlib.nullcontext()
        else:
            sync = contextlib.nullcontext() if micro == accumulation - 1 else accelerator.no_sync(model)
        with sync, accelerator.autocast():
            loss = model(**batch).loss
            accelerator.backward(loss / accumulation)
        micro_losses.append(loss.detach().float())
        tokens += int((batch["labels"] != -100).sum())
    return micro_losses, tokens


def _step(run: _Run) -> bool:
    """One optimizer step, logged and checkpointed; True when the run is done."""
    config, accelerator = run.config, run.accelerator
    tick = time.perf_counter()
    micro_losses, tokens = _accumulate(run)
    if config.grad_clip > 0 and config.fsdp:
        torch.nn.utils.clip_grad_norm_(run.trainable, config.grad_clip)  # the norm over all shards
    elif config.grad_clip > 0:
        accelerator.clip_grad_norm_(run.trainable, config.grad_clip)
    lr = learning_rate(config, run.step, run.schedule_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    step = run.step
    mean_loss = accelerator.reduce(torch.stack(micro_losses).mean(), "mean").item()
    run.losses.append(mean_loss)
    seconds = time.perf_counter() - tick
    speed = tokens * accelerator.num_processes / seconds
    if config.max_minutes and not run.progress and step > run.start + CALIBRATION_STEPS:
        # Time budget: the schedule ends when the time does, re-estimated from recent steps
        # (curriculum samples grow longer, so the first steps' speed would overestimate).
        run.step_seconds = seconds if run.step_seconds is None else 0.9 * run.step_seconds + 0.1 * seconds
        remaining = config.max_minutes * 60 - (time.perf_counter() - run.began)
        run.schedule_steps = min(run.total, step + max(1, int(remaining / run.step_seconds)))
        run.sampler.schedule_steps = run.bar.total = run.schedule_steps
    if run.writer is not None and step % config.log_every == 0:
        run.writer.add_scalar("train/loss", mean_loss, step)
        run.writer.add_scalar("train/lr", lr, step)
        run.writer.add_scalar("train/tokens_per_second", speed, step)
    run.bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{speed:,.0f}", lr=f"{lr:.2e}")
    run.bar.update(1)
    out_of_time = config.max_minutes and time.perf_counter() - run.began > config.max_minutes * 60
    done = step >= min(run.total, run.schedule_steps) or bool(out_of_time)
    if step % config.save_every == 0 or done:
        state = {"step": step, "schedule_steps": run.schedule_steps, "losses": run.losses, "stage": config.stage,
                 "fsdp": config.fsdp}
        ckpt.save_step(accelerator, run.model, run.optimizer, run.tokenizer, run.output, step, state,
                       config.keep_checkpoints)
    return done


def _finish(run: _Run) -> TrainResult:
    """The final model, losses.json and loss.png; the run's result."""
    config, accelerator, output = run.config, run.accelerator, run.output
    run.bar.close()
    seconds = time.perf_counter() - run.began
    final, full = ckpt.save_final(accelerator, run.model, run.tokenizer, output, config.fsdp)
    if full is not None:
        (output / "losses.json").write_text(json.dumps(run.losses) + "\n")
        if run.losses:
            _plot(run.losses, output / "loss.png", f"VIST2 {config.stage} stage")
        run.writer.close()
    accelerator.wait_for_everyone()
    skipped = list(getattr(run.dataset, "skipped", []))
    trained = full if full is not None else accelerator.unwrap_model(run.model)
    return TrainResult(final, run.losses, run.step, seconds, skipped, trained, run.tokenizer,
                       accelerator.is_main_process)

"""Training: every stage on the tiny preset, frozen parts bit-identical, the schedule,
config overrides, a 2-process `accelerate launch` run, kill-and-resume, and bad checkpoints."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from vist2.cli import main
from vist2.errors import Vist2Error
from vist2.model import Vist2Model
from vist2.presets import tiny
from vist2.tokenizer import byte_tokenizer
from vist2.train import TrainConfig, train
from vist2.train.config import STAGE_DEFAULTS
from vist2.train.loop import learning_rate

WORDS = "the of and to in is was for on that with as by at from this are be or an it not which have".split()
SMALL = dict(batch_size=4, micro_batch_size=2, max_steps=3, max_length=200, progress_bar=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for doc in range(3):
        (folder / f"{doc}.txt").write_text(" ".join(WORDS[(doc * 7 + i * i) % len(WORDS)] for i in range(200)))
    return folder


def stage_data(stage: str, tmp_path: Path) -> Path:
    if stage in ("ocr", "olm"):
        return corpus(tmp_path / "corpus")
    path = tmp_path / f"{stage}.jsonl"
    if stage == "captioning":
        rows = []
        for i in range(4):
            Image.new("L", (64, 16), 40 * i).save(tmp_path / f"{i}.png")
            rows.append({"image": f"{i}.png", "caption": f"shade number {i}"})
    else:
        rows = [{"query": "tell me " * (5 + 9 * i), "response": "<think>hm</think>" + f"answer {i}. " * 6} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def init_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    Vist2Model(tiny()).save_pretrained(folder, byte_tokenizer())
    return folder


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> Path:
    return init_checkpoint(tmp_path_factory.mktemp("init"))


@pytest.mark.parametrize("stage", ["captioning", "ocr", "olm", "sft"])
def test_stage_trains_only_its_parameters(stage, tmp_path, start):
    before = Vist2Model.from_pretrained(start)
    result = train(TrainConfig(stage=stage, data=(str(stage_data(stage, tmp_path)),), output=str(tmp_path / "run"),
                               init=str(start), lr=1e-2, **SMALL))
    after = Vist2Model.from_pretrained(result.final)
    assert result.steps == 3 and len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    trainable = STAGE_DEFAULTS[stage]["train_parts"]
    for name, part in before.parameter_groups().items():
        new = dict(after.parameter_groups()[name].named_parameters())
        changed = [n for n, p in part.named_parameters() if not torch.equal(p, new[n])]
        if name in trainable:
            assert changed, f"{stage}: {name} should have trained"
        else:
            assert not changed, f"{stage}: frozen {name} changed: {changed[:3]}"
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_schedule_warms_up_then_decays_to_zero():
    config = TrainConfig(stage="ocr", data=("x",), output="y", preset="tiny", warmup_ratio=0.1).with_stage_defaults()
    rates = [learning_rate(config, step, 100) for step in range(100)]
    assert rates[0] == pytest.approx(5e-5) and max(rates) == pytest.approx(5e-4)
    assert rates[9] == pytest.approx(5e-4) and rates[-1] < 1e-6
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))


def test_config_file_and_flags_override_stage_defaults(tmp_path):
    import argparse

    from vist2.train.config import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({"stage": "sft", "data": ["d"], "output": "o", "preset": "tiny",
                                       "lr": 3e-4, "batch_size": 16}))
    args = parser.parse_args(["--config", str(config_file), "--batch-size", "8", "--train-parts", "llm"])
    config = config_from_args(args)
    assert (config.lr, config.batch_size, config.train_parts) == (3e-4, 8, ("llm",))
    assert (config.max_length, config.weight_decay, config.warmup_ratio) == (8192, 1e-4, 0.01)  # table 8
    ocr = config_from_args(parser.parse_args(["--stage", "ocr", "--data", "d", "--output", "o", "--preset", "tiny"]))
    assert (ocr.lr, ocr.max_length, ocr.batch_size, ocr.train_parts) == (5e-4, 4096, 64, ("vision", "aligner"))


def train_command(data: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--stage", "ocr", "--data", str(data), "--output", str(output), "--preset", "tiny",
            "--batch-size", "4", "--micro-batch-size", "2", "--max-length", "200", "--no-progress-bar", *extra]


def test_kill_and_resume_reproduces_the_uninterrupted_loss_curve(tmp_path):
    data = corpus(tmp_path / "corpus")
    steps = ["--max-steps", "10", "--save-every", "2"]
    assert main(train_command(data, tmp_path / "whole", *steps)) == 0
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "vist2", *train_command(data, killed, *steps)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 60
    while not (killed / "checkpoints" / "step-00000002").exists() and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "final").exists(), "the run should have been killed before it finished"
    assert main(train_command(data, killed, *steps, "--resume")) == 0
    whole = json.loads((tmp_path / "whole" / "losses.json").read_text())
    resumed = json.loads((killed / "losses.json").read_text())
    assert len(whole) == 10 and resumed == whole


def test_refuses_other_preset_checkpoints_and_keeps_existing_runs(tmp_path, capsys):
    data = corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    assert main(train_command(data, run, "--max-steps", "2")) == 0
    weights = (run / "final" / "model.safetensors").read_bytes()
    assert main(train_command(data, run, "--max-steps", "2")) == 2
    assert "already holds checkpoints; pass --resume" in capsys.readouterr().err
    command = train_command(data, run, "--max-steps", "2", "--resume")
    command[command.index("tiny")] = "smollm2-135m"
    assert main(command) == 2
    assert "holds a model of preset 'tiny', this run asks for 'smollm2-135m'" in capsys.readouterr().err
    other = Vist2Model(tiny().replace(preset="tiny-wide", **{"chunk.chunk_tokens": 32}))
    other.save_pretrained(tmp_path / "other", byte_tokenizer())
    init = train_command(data, tmp_path / "run2", "--max-steps", "2", "--init", str(tmp_path / "other"))
    assert main(init) == 2
    assert "trained from preset 'tiny-wide', not 'tiny'" in capsys.readouterr().err
    assert main(["train", "--stage", "ocr", "--data", str(data), "--output", str(tmp_path / "run3"),
                 "--init", str(data)]) == 2
    assert "is not a vist2 checkpoint" in capsys.readouterr().err
    assert (run / "final" / "model.safetensors").read_bytes() == weights


DDP_SCRIPT = """
import hashlib, sys, torch
from vist2.train import TrainConfig, train
result = train(TrainConfig(stage="olm", data=(sys.argv[1],), output=sys.argv[2], preset="tiny", batch_size=4,
                           micro_batch_size=1, max_steps=2, max_length=200, lr=1e-2, progress_bar=False))
digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in result.model.parameters()))
rank = torch.distributed.get_rank()
open(f"{sys.argv[2]}/hash-{rank}.txt", "w").write(digest.hexdigest())
"""


@pytest.mark.slow  # two fresh processes under accelerate launch: 36 s on a shared 2-core machine at load 10
def test_two_process_accelerate_launch_ends_with_identical_parameters(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    # `accelerate launch --cpu` alone starts one process (it needs MPI for more); torchrun + gloo via
    # --multi_gpu with ACCELERATE_USE_CPU=1 gives the 2-process CPU run.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
    done = subprocess.run([*launcher, str(script), str(corpus(tmp_path / "corpus")), str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    hashes = [(tmp_path / "run" / f"hash-{rank}.txt").read_text() for rank in (0, 1)]
    assert hashes[0] == hashes[1]
    saved = Vist2Model.from_pretrained(tmp_path / "run" / "final")
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in saved.parameters()))
    assert digest.hexdigest() == hashes[0]  # and the saved model is what the ranks hold


def test_time_budget_ends_the_run_on_time_with_short_pages(tmp_path):
    data = corpus(tmp_path / "corpus")
    budget = dict(SMALL, max_steps=0, epochs=1000, max_minutes=0.03)  # 1.8 s
    began = time.perf_counter()
    result = train(TrainConfig(stage="ocr", data=(str(data),), output=str(tmp_path / "run"), preset="tiny",
                               page_tokens=8, **budget))
    assert time.perf_counter() - began < 15 and result.steps > 4
    assert result.seconds < 0.03 * 60 + 1.0  # the schedule was sized to the budget, then the clock stops it
    with pytest.raises(Vist2Error, match="page_tokens"):
        train(TrainConfig(stage="olm", data=(str(data),), output=str(tmp_path / "bad"), preset="tiny",
                          page_tokens=8, **SMALL))

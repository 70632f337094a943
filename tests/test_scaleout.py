"""Scale-out paths on CPU: FSDP2 under torchrun (vs an unsharded run, kill and resume),
bf16 autocast, gradient checkpointing, fp16 refused, and FlexAttention in training."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vist2 import layout as L
from vist2 import stages
from vist2.cli import main
from vist2.model import Vist2Model
from vist2.presets import tiny
from vist2.render import Renderer
from vist2.tokenizer import byte_tokenizer

from test_train import WORDS, corpus

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1] / "src"))

pytestmark = pytest.mark.usefixtures("one_thread")


def command(data: Path, output: Path, *extra: str) -> list[str]:
    # micro-batches of one sample: the mean loss is then the same however samples meet on ranks
    return ["train", "--stage", "olm", "--data", str(data), "--output", str(output), "--preset", "tiny",
            "--train-parts", "vision,aligner,llm", "--batch-size", "4", "--micro-batch-size", "1",
            "--max-length", "200", "--lr", "1e-2", "--no-progress-bar", *extra]


def torchrun(args: list[str], **kwargs) -> subprocess.Popen:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "vist2"]
    return subprocess.Popen([*launcher, *args], env=ENV, text=True, start_new_session=True, **kwargs)


def max_difference(a: Path, b: Path) -> float:
    first, second = Vist2Model.from_pretrained(a).state_dict(), Vist2Model.from_pretrained(b).state_dict()
    assert first.keys() == second.keys()
    return max(float((first[k] - second[k]).abs().max()) for k in first)


@pytest.mark.slow  # two fresh processes under torchrun: 43 s on a shared 2-core machine at load 10
def test_fsdp_two_processes_equal_an_unsharded_run_and_only_rank_0_reports(tmp_path):
    data = corpus(tmp_path / "corpus")
    steps = ["--max-steps", "2", "--save-every", "1"]
    assert main(command(data, tmp_path / "whole", *steps)) == 0
    run = torchrun(command(data, tmp_path / "fsdp", *steps, "--fsdp"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = run.communicate(timeout=180)
    assert run.returncode == 0, err[-3000:]
    assert out.count("trained 2 steps") == 1, out
    assert max_difference(tmp_path / "fsdp" / "final", tmp_path / "whole" / "final") < 1e-5
    state = tmp_path / "fsdp" / "checkpoints" / "step-00000002" / "state"
    assert len(list((state / "sharded").glob("*.distcp"))) == 2  # one shard file per rank


@pytest.mark.slow
def test_fsdp_two_processes_killed_and_resumed_equal_an_unsharded_run(tmp_path):
    data = corpus(tmp_path / "corpus")
    steps = ["--max-steps", "6", "--save-every", "1"]
    assert main(command(data, tmp_path / "whole", *steps)) == 0
    killed = tmp_path / "killed"
    process = torchrun(command(data, killed, *steps, "--fsdp"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-00000002").exists() and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks, mid-run
    process.wait()
    assert not (killed / "final").exists(), "the run should have been killed before it finished"
    assert sorted((killed / "checkpoints" / "step-00000002" / "state" / "sharded").glob("*.distcp"))
    resumed = torchrun(command(data, killed, *steps, "--fsdp", "--resume"), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err[-3000:]
    assert out.count("trained 6 steps") == 1  # only rank 0 reports
    assert max_difference(killed / "final", tmp_path / "whole" / "final") < 1e-5
    whole = json.loads((tmp_path / "whole" / "losses.json").read_text())
    again = json.loads((killed / "losses.json").read_text())
    assert len(again) == 6 and max(abs(a - b) for a, b in zip(whole, again)) < 1e-5


def test_fsdp_without_a_distributed_launch_is_refused(tmp_path, capsys):
    assert main(command(corpus(tmp_path / "corpus"), tmp_path / "run", "--max-steps", "1", "--fsdp")) == 2
    err = capsys.readouterr().err
    assert "--fsdp needs a distributed launch: torchrun" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_fp16_on_cpu_is_refused_in_one_line(tmp_path, capsys):
    extra = ("--max-steps", "1", "--mixed-precision", "fp16")
    assert main(command(corpus(tmp_path / "corpus"), tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert "--mixed-precision fp16 needs a GPU" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_bf16_autocast_loss_is_finite_and_close_to_fp32(tmp_path):
    data = corpus(tmp_path / "corpus")
    for precision in ("no", "bf16"):
        assert main(command(data, tmp_path / precision, "--max-steps", "4", "--mixed-precision", precision)) == 0
    fp32 = json.loads((tmp_path / "no" / "losses.json").read_text())
    bf16 = json.loads((tmp_path / "bf16" / "losses.json").read_text())
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert max(abs(a - b) / a for a, b in zip(fp32, bf16)) < 0.01, (fp32, bf16)


def batch_of(model: Vist2Model, tokens: int = 150) -> dict[str, torch.Tensor]:
    tokenizer = byte_tokenizer()
    ids = tokenizer.encode(" ".join(WORDS * 3))[:tokens]
    example = stages.olm(tokenizer, ids, model.config.chunk.chunk_tokens, model.config.visual_tokens,
                         tokenizer.pad_token_id, sees_text=True)
    return stages.collate([example, example], Renderer(model.config.render), tokenizer.pad_token_id)


def gradients(model: Vist2Model, batch: dict) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of the loss, and how many activation elements autograd kept for backward."""
    kept = [0]

    def pack(tensor):
        kept[0] += tensor.numel()
        return tensor

    model.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}, kept[0]


def test_gradient_checkpointing_gives_the_same_gradients_from_fewer_kept_activations():
    torch.manual_seed(0)
    model = Vist2Model(tiny()).train()
    batch = batch_of(model)
    plain, plain_kept = gradients(model, batch)
    for part in (model.llm, model.vision.model):
        part.activation_checkpointing_enable({"use_reentrant": False})
    checkpointed, kept = gradients(model, batch)
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    assert max(float((plain[k] - checkpointed[k]).abs().max()) for k in plain) < 1e-6
    assert kept < plain_kept / 2  # the layers' activations are recomputed, not kept


def test_block_mask_from_the_dense_mask_attends_like_it():
    flex_attention = pytest.importorskip("torch.nn.attention.flex_attention").flex_attention
    model = Vist2Model(tiny())
    mask = batch_of(model)["attention_mask"]
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, mask.shape[-1], 16) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(flex_attention(q, k, v, block_mask=L.block_mask_from_dense(mask)), expected, atol=1e-5)


def test_training_a_flex_attention_model_on_cpu_is_refused_in_one_line(tmp_path, capsys):
    start = tmp_path / "flex"
    Vist2Model(tiny().replace(attn_implementation="flex_attention")).save_pretrained(start, byte_tokenizer())
    run = command(corpus(tmp_path / "corpus"), tmp_path / "run", "--max-steps", "1", "--init", str(start))
    run.remove("--preset"), run.remove("tiny")
    assert main(run) == 2
    err = capsys.readouterr().err
    assert "flex_attention, which has no backward on CPU" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # FlexAttention inside the HF model compiles on CPU (~35 s)
def test_flex_attention_forward_builds_the_block_mask_and_equals_sdpa():
    torch.manual_seed(0)
    sdpa = Vist2Model(tiny()).eval()
    flex = Vist2Model(tiny().replace(attn_implementation="flex_attention")).eval()
    flex.load_state_dict(sdpa.state_dict())
    batch = batch_of(sdpa)
    with torch.no_grad():
        expected, found = sdpa(**batch), flex(**batch)  # the dense mask becomes a BlockMask inside
    assert torch.allclose(found.logits, expected.logits, atol=1e-4)
    assert abs(float(found.loss) - float(expected.loss)) < 1e-4


def test_generation_runs_a_flex_checkpoint_with_sdpa_and_says_so_once(tmp_path, capsys):
    from vist2.engine import Engine
    from vist2.errors import Vist2Error
    from vist2.generate import GenerationConfig, generate, load_model

    torch.manual_seed(0)
    built = Vist2Model(tiny().replace(attn_implementation="flex_attention")).eval()
    built.save_pretrained(tmp_path / "flex", byte_tokenizer())
    with pytest.raises(Vist2Error, match="generation runs on SDPA .* 'flex_attention'"):
        Engine(built, byte_tokenizer())
    assert built.config.attn_implementation == "flex_attention"  # the built model is left as it is
    model, tokenizer = load_model(str(tmp_path / "flex"))
    result = generate(model, tokenizer, "the of and " * 30, GenerationConfig(mode="gcc", max_new_tokens=8))
    assert result.stats.as_dict() and model.llm.config._attn_implementation == "sdpa"
    assert capsys.readouterr().err.count("generation runs it with sdpa") == 1


def test_gpu_selfcheck_runs_reduced_on_cpu_and_writes_one_json(tmp_path, monkeypatch, capsys):
    import runpy

    script = Path(__file__).parents[1] / "scripts" / "gpu_selfcheck.py"
    monkeypatch.setattr(sys, "argv", ["gpu_selfcheck.py", "--device", "cpu", "--output", str(tmp_path / "r.json")])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    report = json.loads((tmp_path / "r.json").read_text())
    assert done.value.code == 0 and report["ok"], report
    assert report["versions"]["torch"] == torch.__version__ and report["mode"] == "reduced (cpu)"
    checks = report["checks"]
    assert set(checks) == {"flex_vs_sdpa", "bf16_train", "gcc_verify_bf16", "engine_decode", "step_time"}
    assert set(checks["flex_vs_sdpa"]["kernel"]) == {"ocr", "olm", "olm_blind", "sft"}
    assert max(row["forward"] for row in checks["flex_vs_sdpa"]["kernel"].values()) < 1e-4
    assert len(checks["bf16_train"]["tiny"]["losses"]) == 3
    assert checks["gcc_verify_bf16"]["max_logit_difference"] < 5e-2
    assert checks["engine_decode"]["new_tokens"] == 64
    assert checks["step_time"] == {"skipped": "needs a GPU", "ok": True, "seconds_total": pytest.approx(0, abs=1)}
    assert "all checks passed" in capsys.readouterr().err

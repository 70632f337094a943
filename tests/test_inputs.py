"""Bad input to any command, config file or API call: exit status 2 and a one-line message
naming the flag or field, before any work; no traceback."""

import json
import re

import pytest
import torch

from vist2.cli import main
from vist2.errors import Vist2Error
from vist2.generate import GenerationConfig, generate
from vist2.model import Vist2Model
from vist2.presets import tiny
from vist2.render import RenderConfig
from vist2.tokenizer import byte_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def run(argv) -> int:
    try:
        return main(argv)
    except SystemExit as done:  # argparse's own errors
        return done.code


GEN = ["generate", "--preset", "tiny", "--prompt", "hi"]


@pytest.mark.parametrize("argv, message", [
    (GEN + ["--repetition-penalty", "nan"], "repetition_penalty must be a finite number"),
    (GEN + ["--temperature", "nan"], "temperature must be a finite number"),
    (GEN + ["--top-p", "inf"], "top_p must be a finite number"),
    (GEN + ["--seed", str(2**70)], "argument --seed: must be in [0,"),
    (GEN + ["--device", "cuda" if not torch.cuda.is_available() else "cuda:99"], "--device 'cuda"),
    (GEN + ["--device", "bogus"], "--device 'bogus' cannot be used here"),
    (["generate", "--preset", "tiny", "--prompt", "\udcff"], "argument --prompt: is not valid UTF-8"),
    (["generate", "--preset", "tiny", "--prompt-file", "/dev/zero"], "is not a regular file"),
    (["render", "--width", "100000", "--height", "100000", "hi", "-o", "x.png"], "render.width must be in [1, 8192]"),
    (["render", "hi", "-o", "no/such/folder/x.png"], "folder no/such/folder does not exist"),
    (["render", "--file", "/dev/zero", "-o", "x.png"], "--file /dev/zero is not a regular file"),
    (["layout", "--tokens", "200000"], "--tokens must be in [1, 4096]"),
    (["layout", "--png", "no/such/m.png"], "--png no/such/m.png: folder no/such does not exist"),
    (["bench", "--scale", "0"], "argument --scale: must be a finite number > 0"),
    (["bench", "--chunk-tokens", "0"], "argument --chunk-tokens: must be >= 1"),
    (["bench", "--page", "0x0"], "--page sides must be >= 1 pixel"),
    (["bench", "--paper-sizes", "bogus"], "--paper-sizes: unknown preset 'bogus'"),
    (["bench", "--threads", "0"], "argument --threads: must be in [1,"),
    (["bench", "--threads", "-1"], "argument --threads: must be in [1,"),
    (["bench", "--out", "a-file"], "--out a-file exists and is not a folder"),
    (["quickstart", "--minutes", "0"], "argument --minutes: must be a finite number > 0"),
    (["quickstart", "--minutes", "-1"], "argument --minutes: must be a finite number > 0"),
])
def test_bad_flags_exit_2_with_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("mine")
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert (tmp_path / "a-file").read_text() == "mine"
    assert not (tmp_path / "x.png").exists()


def test_oversized_prompt_file_is_refused_before_reading_it_all(tmp_path, capsys):
    big = tmp_path / "big.txt"
    with open(big, "wb") as handle:
        handle.truncate(50 * 2**20)  # sparse: 50 MB of zeros
    assert run(["generate", "--preset", "tiny", "--prompt-file", str(big)]) == 2
    assert "is larger than 8 MiB" in capsys.readouterr().err


@pytest.mark.parametrize("fields, message", [
    (dict(repetition_penalty=float("nan")), "repetition_penalty must be a finite number"),
    (dict(temperature=float("inf")), "temperature must be a finite number"),
    (dict(stop_strings="ab"), "stop_strings must be a tuple of strings"),
    (dict(seed=2**80), "seed must be an integer in [0, 2**63)"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be an integer"),
])
def test_generation_config_rejects_bad_values(fields, message):
    with pytest.raises(Vist2Error, match=re.escape(message)):
        GenerationConfig(**fields)


def test_generate_rejects_bytes_prompts():
    with pytest.raises(Vist2Error, match="got bytes"):
        generate(None, byte_tokenizer(), b"hi")


@pytest.mark.parametrize("fields, message", [
    (dict(margin=-1), "render.margin must be in [0, 8192]"),
    (dict(max_font_size=10**6), "render.max_font_size must be in [1, 8192], got 1000000"),
    (dict(line_height=10**6), "render.line_height must be in [1, 8192]"),
    (dict(tab_size=10**9), "render.tab_size must be in [0, 64]"),
    (dict(width=100000), "render.width must be in [1, 8192]"),
    (dict(height="256"), "render.height must be an integer"),
])
def test_render_config_rejects_bad_values(fields, message):
    with pytest.raises(Vist2Error, match=re.escape(message)):
        RenderConfig(**fields)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "good"
    torch.manual_seed(0)
    Vist2Model(tiny()).save_pretrained(folder, byte_tokenizer())
    return folder


def _variant(checkpoint, tmp_path, edit):
    import shutil

    folder = tmp_path / "variant"
    shutil.copytree(checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["llm"]["params"].update(vocab_size=200_000_000), "describes [200000000, 64]"),
    (lambda c: c["llm"].update(model_type="nonsense"), "llm.model_type 'nonsense' is not a model type"),
    (lambda c: c.update(attn_implementation="bogus"), "attn_implementation must be one of"),
    (lambda c: c["chunk"].update(chunk_tokens="8"), "chunk.chunk_tokens must be of type int"),
    (lambda c: c.update(chunk=5), "config.chunk must be a JSON object"),
    (lambda c: c["render"].update(margin=-3), "render.margin must be in [0, 8192]"),
    (lambda c: c["render"].update(max_font_size=10**6), "render.max_font_size must be in [1, 8192], got 1000000"),
    (lambda c: c.update(dtype=5), "dtype must be one of float32, bfloat16, float16, got 5"),
    (lambda c: c.update(dtype="nn"), "dtype must be one of float32, bfloat16, float16, got 'nn'"),
    (lambda c: c["llm"].update(path="/elsewhere/llm"),
     "llm.path must be null in a checkpoint (its weights are in model.safetensors), got '/elsewhere/llm'"),
    (lambda c: c["vision"].update(path="/elsewhere"), "vision.path must be null in a checkpoint"),
])
def test_damaged_checkpoint_configs_are_named_before_allocating(edit, message, checkpoint, tmp_path, capsys):
    folder = _variant(checkpoint, tmp_path, edit)
    assert run(["generate", "--model", str(folder), "--prompt", "hi"]) == 2
    assert message in capsys.readouterr().err


def test_foreign_or_corrupt_tokenizers_are_named(checkpoint, tmp_path, capsys):
    folder = _variant(checkpoint, tmp_path, lambda c: None)
    tokenizer = byte_tokenizer()
    tokenizer.add_tokens([f"extra{i}" for i in range(400)])
    tokenizer.save_pretrained(folder)
    assert run(["generate", "--model", str(folder), "--prompt", "hi"]) == 2
    assert "has 661 tokens but the model embeds only 272" in capsys.readouterr().err
    (folder / "tokenizer.json").write_text("{ broken")
    assert run(["generate", "--model", str(folder), "--prompt", "hi"]) == 2
    assert f"cannot load the tokenizer in {folder}" in capsys.readouterr().err


def test_streaming_into_a_closed_pipe_ends_quietly(monkeypatch, capsys):
    import vist2.generate

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(vist2.generate, "stream", lambda *args, **kwargs: iter(["a", "b"]))
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(GEN) == 141  # like a shell's SIGPIPE exit, with nothing printed
    assert capsys.readouterr().err == ""


def test_meta_flops_of_a_preset_given_as_weight_folders(tmp_path):
    from vist2.model import meta_model

    torch.manual_seed(0)
    model = Vist2Model(tiny())
    model.llm.save_pretrained(tmp_path / "llm")
    config = tiny().replace(**{"llm.path": str(tmp_path / "llm"), "llm.params": {}})
    counted = meta_model(config)
    assert counted.device.type == "meta"
    assert counted.llm.config.hidden_size == model.llm.config.hidden_size


def test_a_preset_too_large_for_memory_is_refused_before_allocating(monkeypatch, capsys):
    from vist2 import generate

    monkeypatch.setattr(generate, "_available_bytes", lambda device: 2**30)  # a 1 GiB machine
    assert main(["generate", "--preset", "vist2-8b", "--prompt", "hi"]) == 2
    assert "preset 'vist2-8b' needs 31.7 GiB for its fp32 weights" in capsys.readouterr().err

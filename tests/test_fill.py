"""Chunking policy `fill`: the incremental fit test equals the renderer's own layout, chunks
never exceed their page, the tail rule, teacher-forced == incremental with variable chunks,
the bounds, and `--chunking` on every command."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vist2.bench import bounds
from vist2.chunking import PageTexts, chunk_texts, complete_prefix, split_chunks, split_compressed
from vist2.cli import main
from vist2.errors import Vist2Error
from vist2.engine import Engine
from vist2.generate import GenerationConfig, generate
from vist2.options import chunk_options
from vist2.render import RenderConfig, Renderer, TextDoesNotFit
from vist2.tokenizer import byte_tokenizer, token_bytes
from vist2.verify import verify

TOKENIZER = byte_tokenizer()
RENDERER = Renderer(RenderConfig(width=128, height=32))  # the tiny preset's page
SCRIPTS = ["The quick brown fox, jumps. ", "中文渲染测试，每个字。", "Привет мир ", "مرحبا بالعالم ", "😀🎉 ",
           "def f(x):\n\treturn x\r\n", "\x00\x07 ", "  \n\n", "W" * 30, "iiiii lll ", "abcdefghij" * 12]
pytestmark = pytest.mark.usefixtures("one_thread")


def fill_options(model, size=10, chunk_tokens=20, **more):
    return chunk_options(model, chunk_tokens=chunk_tokens, chunking="fill", min_font_size=size, **more)


def fill_of(size=10, max_tokens=80):
    from vist2.options import ChunkOptions

    return ChunkOptions(20, 16, True, False, "fill", size, max_tokens).fill(RENDERER, TOKENIZER)


texts = st.lists(st.tuples(st.sampled_from(SCRIPTS), st.integers(0, 40), st.integers(1, 12)), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(texts, st.sampled_from([6, 8, 11]))
def test_incremental_fit_equals_render_and_check(parts, size):
    """Text grown piece by piece (random cuts, any script, tabs, CR LF): every decision of the
    incremental `PageFit` equals laying out the whole text again, and at the renderer's
    smallest size, whether rasterising the page succeeds."""
    fit, text = RENDERER.page_fit(size), ""
    for script, start, length in parts:
        piece = (script * 3)[start : start + length]
        assert fit.fits_with(piece) == (RENDERER.layout(RENDERER.normalize(text + piece), size) is not None)
        fit.extend(piece)
        text += piece
        assert fit.fits() == (RENDERER.layout(RENDERER.normalize(text), size) is not None)
    if size == RENDERER.config.min_font_size:
        try:
            RENDERER.render(text)
            rendered = True
        except TextDoesNotFit:
            rendered = False
        assert fit.fits() == rendered


@settings(max_examples=25, deadline=None)
@given(texts, st.sampled_from([6, 10, 14]))
def test_fill_chunks_fill_their_page_and_never_exceed_it(parts, size):
    """Each chunk's page fits at min_font_size, and it closed only because the next token's
    text would not fit (or at max_tokens): chunks are as long as the page allows."""
    text = "".join((script * 3)[start : start + length] for script, start, length in parts) * 4
    ids = TOKENIZER.encode(text, add_special_tokens=False)
    fill = fill_of(size, max_tokens=300)
    chunks = split_chunks(ids, 20, fill)
    assert [i for chunk in chunks for i in chunk] == ids
    pages = chunk_texts(TOKENIZER, chunks)
    assert "".join(pages) == text
    carried = PageTexts(TOKENIZER)  # the bytes of a character cut by a chunk boundary move on
    for chunk, page, following in zip(chunks, pages, chunks[1:]):
        assert RENDERER.layout(RENDERER.normalize(page), size) is not None or len(chunk) == 1
        if len(chunk) < fill.max_tokens:  # closed by the page: one more token would overflow it
            data = carried.pending + b"".join(token_bytes(TOKENIZER, chunk + following[:1]))
            longer = data[: complete_prefix(data)].decode("utf-8", errors="replace")
            assert RENDERER.layout(RENDERER.normalize(longer), size) is None
        carried.next(chunk)


def test_tail_rule_with_fill():
    """The open last chunk stays text when it has at most beta tokens; a chunk closed by
    max_tokens is full and always compressed."""
    ids = TOKENIZER.encode("word " * 40, add_special_tokens=False)
    chunks = split_chunks(ids, 20, fill_of(10, max_tokens=300))
    assert len(chunks) > 2 and all(len(c) < 300 for c in chunks)  # closed by the page
    last = len(chunks[-1])
    assert split_compressed(ids, 20, last, fill_of(10, 300)) == (chunks[:-1], chunks[-1])
    assert split_compressed(ids, 20, last - 1, fill_of(10, 300)) == (chunks, [])
    full = ids[:12]
    assert split_chunks(full, 20, fill_of(10, max_tokens=12)) == [full]
    assert split_compressed(full, 20, 64, fill_of(10, max_tokens=12)) == ([full], [])
    assert split_compressed(full, 20, 64, fill_of(10, max_tokens=13)) == ([], full)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_variable_chunks_incremental_equals_teacher_forced(tiny, bidirectional):
    """gcc and pcc (and text) with chunks of varying length: a row compresses its chunk when the
    next token would overflow its page, and picks that token again from the visual block."""
    model, tokenizer = tiny
    lines = []
    options = fill_options(model, bidirectional_visual=bidirectional)
    assert verify(model, tokenizer, seed=1, report=lines.append, options=options) <= 1e-4
    lengths = {n for line in lines if "response chunks" in line for n in line.split()[-1].split(",")}
    assert len(lengths) > 2, lines  # the chunks really vary in length


def test_generation_stats_report_chunk_lengths_and_density(tiny):
    model, tokenizer = tiny
    prompt = "Hello world, this is a test of fill. " * 8
    config = GenerationConfig(mode="gcc", max_new_tokens=120, ignore_eos=True)
    fixed = generate(model, tokenizer, prompt, config, options=chunk_options(model, chunk_tokens=20)).stats
    assert fixed.chunk_lengths == [20] * len(fixed.chunk_lengths) and fixed.tokens_per_visual_token == 20 / 16
    renderer = Renderer(model.config.render)
    options = fill_options(model)
    filled = generate(model, tokenizer, prompt, config, renderer, options).stats
    assert filled.chunks_split == 0 and len(set(filled.chunk_lengths)) > 1
    pages = len(filled.chunk_lengths)
    assert filled.tokens_per_visual_token == pytest.approx(sum(filled.chunk_lengths) / (pages * 16))
    from vist2.bench.run import fill_steps

    run_steps = fill_steps(model, tokenizer, prompt, config, renderer, options)  # the KV bound, these chunks
    assert bounds.kv_peak(run_steps) == filled.kv_tokens_peak


def test_min_font_size_outside_the_renderer_is_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(Vist2Error, match="min_font_size 3 is outside this renderer's sizes"):
        generate(model, tokenizer, "hi", GenerationConfig(max_new_tokens=2), options=fill_options(model, size=3))
    with pytest.raises(Vist2Error, match="chunking must be one of fixed, fill"):
        chunk_options(model, chunking="adaptive")


def test_chunking_flag_end_to_end(tmp_path, capsys):
    from tests.test_train import corpus, stage_data

    assert main(["generate", "--preset", "tiny", "--prompt", "fill the page " * 10, "--max-new-tokens", "30",
                 "--chunking", "fill", "--min-font-size", "12", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    assert stats["chunk_lengths"] and stats["chars_per_visual_token"] > 0
    assert main(["verify", "--preset", "tiny", "--chunk-tokens", "16", "--chunking", "fill", "--min-font-size",
                 "12"]) == 0
    assert "response chunks" in capsys.readouterr().out
    assert main(["layout", "--stage", "olm", "--tokens", "60", "--chunking", "fill", "--min-font-size", "12",
                 "--json"]) == 0
    lengths = [s["length"] for s in json.loads(capsys.readouterr().out)["segments"] if s["kind"] == "text"]
    assert sum(lengths) == 60 and len(set(lengths)) > 1
    data = corpus(tmp_path / "corpus")
    for stage in ("ocr", "olm", "sft"):
        assert main(["train", "--stage", stage, "--data", str(stage_data(stage, tmp_path)), "--output",
                     str(tmp_path / stage), "--preset",
                     "tiny", "--batch-size", "2", "--micro-batch-size", "2", "--max-length", "200", "--max-steps",
                     "1", "--no-progress-bar", "--chunking", "fill", "--min-font-size", "12"]) == 0
    assert main(["bench", "--preset", "tiny", "--lengths", "40", "--scenario", "long-writing", "--repeats", "1",
                 "--chunking", "fill", "--out", str(tmp_path / "bench"), "--threads", "1"]) == 0
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["measurements"]
    gcc = next(r for r in rows if r["mode"] == "gcc")
    assert gcc["kv_tokens_peak"] == gcc["bound"]["kv_tokens_peak"]
    (tmp_path / "essay.txt").write_text("It was a bright cold day in April, and the clocks were striking. " * 8)
    assert main(["eval", "ocr", "--preset", "tiny", "--data", str(tmp_path / "essay.txt"), "--samples", "2",
                 "--chunking", "fill", "--min-font-size", "12", "--out", str(tmp_path / "eval"),
                 "--no-progress-bar"]) == 0
    row = json.loads((tmp_path / "eval" / "results.json").read_text())["rows"][0]
    assert row["n"] == 2 and row["ratio"] != 4.0
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(["generate", "--preset", "tiny", "--prompt", "x", "--chunking", "adaptive"])
    assert refused.value.code == 2 and "--chunking" in capsys.readouterr().err
    assert main(["train", "--stage", "ocr", "--data", str(data), "--output", str(tmp_path / "bad"), "--preset",
                 "tiny", "--chunking", "fill", "--page-tokens", "8"]) == 2


def test_eval_rows_report_the_measured_ratio_under_fill():
    from vist2.eval.runner import summarize

    records = [{"task": "t", "length": 100, "mode": mode, "scores": {"score": 50.0},
                "stats": {"kv_tokens_peak": 1, "kv_tokens_full_text": 2, "time_to_first_token_s": 0.1,
                          "tokens_per_visual_token": tokens}}
               for mode, tokens in (("gcc", 2.0), ("gcc", 3.0), ("text", 0.0))]
    ratios = {row.mode: row.ratio for row in summarize("x", records, None)}
    assert ratios == {"gcc": 2.5, "text": None}
    assert {row.mode: row.ratio for row in summarize("x", records, 4.0)}["gcc"] == 4.0


def test_a_fill_row_finishes_at_the_position_limit_never_beyond(tiny, monkeypatch):
    """Issue 21.3: fill chunks at min_font_size 20 hold 1-10 tokens, so a 200-token gcc request
    admitted on a backbone of 300 positions would need ~780; it finishes "length" at the limit."""
    from vist2 import decode
    from vist2.model import Vist2Model

    model, tokenizer = tiny
    params = dict(model.config.llm.params, max_position_embeddings=300)
    limited = Vist2Model(model.config.replace(**{"llm.params": params})).eval()
    seen = []
    forward = decode.forward

    def recording(model, kv, feeds):
        seen.append(max(int(feed.positions.max()) for feed in feeds))
        return forward(model, kv, feeds)

    monkeypatch.setattr(decode, "forward", recording)
    engine = Engine(limited, tokenizer, options=fill_options(limited, size=20))
    request = engine.add("Hello world, this is a test of fill.", GenerationConfig(
        mode="gcc", max_new_tokens=200, ignore_eos=True))
    for _ in engine.run():
        pass
    beta = engine.options.beta
    assert request.finish_reason == "length" and request.stats.generated_tokens < 200
    assert max(seen) < 300 and request.base + max(request.offset, 1) <= 300
    assert max(seen) >= 300 - beta - max(request.stats.chunk_lengths)  # it stopped at the limit, not early

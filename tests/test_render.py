"""Renderer: fitting, layout, bad inputs, determinism, the batch tensor and `vist2 render`."""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vist2.cli import main
from vist2.errors import Vist2Error
from vist2.render import RenderConfig, Renderer, TextDoesNotFit

PROSE = "The quick brown fox jumps over the lazy dog while the cat watches. " * 6
renderer = Renderer(RenderConfig())


def ink(page) -> np.ndarray:
    return np.asarray(page.image) < 128


def ink_columns(page) -> np.ndarray:
    return np.flatnonzero(ink(page).any(axis=0))


def test_same_text_gives_identical_pixels():
    first = Renderer(RenderConfig()).render(PROSE + "中文 😀")
    second = Renderer(RenderConfig()).render(PROSE + "中文 😀")
    assert first.image.tobytes() == second.image.tobytes()
    assert first.image.mode == "L" and first.image.size == (256, 256)


def test_longer_text_gets_the_largest_font_that_fits():
    short, long = renderer.render("Hello"), renderer.render(PROSE)
    assert short.font_size == 24
    assert long.font_size < short.font_size
    assert renderer.layout(PROSE, long.font_size + 1) is None  # one size larger overflows


def test_text_that_cannot_fit_raises():
    with pytest.raises(TextDoesNotFit, match="8000 characters"):
        renderer.render("word " * 1600)


def test_latin_wraps_at_spaces_and_cjk_at_any_character():
    lines = renderer.layout(PROSE, 10)
    assert len(lines) > 1
    assert [word for line in lines for word in line.split()] == PROSE.split()  # no word is cut
    cjk = renderer.layout("中文渲染测试" * 20, 16)
    assert len(cjk) > 1 and "".join(cjk) == "中文渲染测试" * 20


def test_word_longer_than_a_line_is_broken_by_characters():
    lines = renderer.layout("x" * 100, 24)
    assert len(lines) > 1 and "".join(lines) == "x" * 100


def test_newlines_and_tabs_are_respected():
    assert renderer.render("a\nb").lines == 2
    assert renderer.render("a\r\nb").lines == 2
    assert renderer.render("a\n\nb").lines == 3
    assert ink_columns(renderer.render("\tx"))[0] > ink_columns(renderer.render("x"))[0] + 20


def test_empty_text_gives_a_blank_page():
    page = renderer.render("")
    assert page.lines == 0 and page.missing == 0
    assert not ink(page).any() and page.image.size == (256, 256)


def test_whitespace_only_gives_a_blank_page():
    page = renderer.render("   \n\t \n")
    assert page.lines == 3 and page.missing == 0
    assert not ink(page).any()


def test_megabyte_of_text_fails_fast_and_clearly():
    start = time.perf_counter()
    with pytest.raises(TextDoesNotFit, match="1000000 characters does not fit a 256x256 page"):
        renderer.render("a" * 1_000_000)
    assert time.perf_counter() - start < 1.0


def test_control_characters_are_drawn_as_counted_boxes():
    page = renderer.render("a\x00b\x07c\x1b")
    assert page.missing == 3
    assert ink(page).sum() > ink(renderer.render("abc")).sum()


def test_emoji_are_drawn_as_counted_boxes():
    page = renderer.render("😀🚀")
    assert page.missing == 2 and ink(page).any()


def test_right_to_left_scripts_render_without_crashing():
    page = renderer.render("שלום עולם مرحبا بالعالم")
    letters = len("שלוםעולםمرحبابالعالم")
    assert page.image.size == (256, 256) and ink(page).any()
    assert 0 <= page.missing <= letters  # glyphs or boxes, never dropped silently


def test_cjk_renders_with_ink_and_no_missing_glyphs():
    page = renderer.render("中文渲染测试，你好世界。日本語のテキスト")
    assert page.missing == 0 and ink(page).any()


def test_missing_font_file_is_a_clear_error():
    with pytest.raises(Vist2Error, match="/no/such/font.ttf"):
        Renderer(RenderConfig(font_path="/no/such/font.ttf"))


def test_fixed_line_height_puts_each_line_in_its_row():
    config = RenderConfig(line_height=16)
    fixed = Renderer(config)
    page = fixed.render("x\nx\nx")
    rows = np.flatnonzero(ink(page).any(axis=1))
    for line in range(3):
        band = rows[(rows >= config.margin + 16 * line) & (rows < config.margin + 16 * (line + 1))]
        assert band.size > 0
    assert sum(fixed._font(page.font_size).getmetrics()) <= 16
    assert fixed.render("x\n" * 14 + "x").lines == 15  # (256 - 2 * 2) // 16 lines fit
    with pytest.raises(TextDoesNotFit):
        fixed.render("x\n" * 15 + "x")


def test_render_batch_is_pixels_over_255():
    batch = renderer.render_batch(["Hello", "中文"])
    assert batch.shape == (2, 1, 256, 256) and str(batch.dtype) == "torch.float32"
    expected = np.asarray(renderer.render("中文").image, dtype=np.float32) / 255
    assert np.array_equal(batch[1, 0].numpy(), expected)
    assert batch.max() == 1.0 and batch.min() == 0.0


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=300))
def test_any_text_renders_or_says_it_does_not_fit(text):
    try:
        page = renderer.render(text)
    except TextDoesNotFit:
        return
    assert page.image.size == (256, 256) and 6 <= page.font_size <= 24


def test_cli_render_writes_a_page(tmp_path, capsys):
    out = tmp_path / "page.png"
    assert main(["render", "Hello 世界 😀", "-o", str(out), "--width", "128", "--height", "64"]) == 0
    from PIL import Image

    assert Image.open(out).size == (128, 64)
    assert "1 missing" in capsys.readouterr().out


def test_cli_render_reads_a_file_and_reports_errors(tmp_path, capsys):
    source = tmp_path / "chunk.txt"
    source.write_text("line one\nline two\n", encoding="utf-8")
    assert main(["render", "--file", str(source), "-o", str(tmp_path / "p.png")]) == 0
    assert "3 lines" in capsys.readouterr().out
    assert main(["render", "x", "--font", str(tmp_path / "none.ttf"), "-o", str(tmp_path / "q.png")]) == 2
    assert "font file not found" in capsys.readouterr().err

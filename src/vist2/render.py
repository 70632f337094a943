"""Render a chunk of text into a fixed-size grayscale "sketch" image (DESIGN section 6).

Every page has the same geometry, so every chunk gives the same number of visual tokens.
Text runs left to right, top to bottom: hard breaks at newlines, word wrap at spaces for
Latin scripts, wrap at any character for wide (CJK) characters. The font size is the
largest in [min_font_size, max_font_size] at which the whole chunk fits; text that fits
at no size raises TextDoesNotFit, it is never cut. Characters the font lacks and control
characters are drawn as a box and counted, never dropped.

    page = Renderer(RenderConfig()).render("Hello, 世界")
    page.image.save("page.png")
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from vist2.errors import Vist2Error
from vist2.linebreak import LineState, paragraphs, place
from vist2.pagefit import PageFit

if TYPE_CHECKING:
    import torch

INK, PAPER = 0, 255
MAX_PAGE_SIDE = 8192  # pixels; a page is one ViT input (also bounds font sizes, line height, margin)
MAX_TAB_SIZE = 64  # spaces per tab
PLACEHOLDER_EM = 0.6  # width of the placeholder box, as in the Mono face's Latin cell


class TextDoesNotFit(Vist2Error):
    """The text needs more room than the page has, even at the smallest legible size."""


def check_min_font_size(size: int, low: int, high: int, name: str = "min_font_size") -> None:
    """The smallest font size a chunk's page is filled down to: 0 (the renderer's) or in [low, high]."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise Vist2Error(f"{name} must be an integer >= 0 (0 = the default), got {size!r}")
    if size and not low <= size <= high:
        raise Vist2Error(f"{name} {size} is outside this renderer's sizes [{low}, {high}] (or 0 = the default)")


@dataclass(frozen=True)
class RenderConfig:
    width: int = 256  # pixels; keep multiples of the ViT patch size (16)
    height: int = 256
    font_path: str | None = None  # None = the bundled WenQuanYi Micro Hei (Latin + CJK)
    font_index: int = 1  # face in the .ttc: 1 = "WenQuanYi Micro Hei Mono"
    max_font_size: int = 24
    min_font_size: int = 6  # smallest legible size; below this a chunk "does not fit"
    margin: int = 2
    line_height: int | None = None  # fixed line pitch in pixels; None = 1.2 x font size
    tab_size: int = 4

    def __post_init__(self) -> None:
        for name in ("width", "height", "font_index", "max_font_size", "min_font_size", "margin", "tab_size",
                     "line_height"):
            value = getattr(self, name)
            if value is None and name == "line_height":
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise Vist2Error(f"render.{name} must be an integer, got {value!r}")
            low = 0 if name in ("font_index", "margin", "tab_size") else 1
            high = {"font_index": None, "tab_size": MAX_TAB_SIZE}.get(name, MAX_PAGE_SIDE)
            if value < low or (high and value > high):
                allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
                raise Vist2Error(f"render.{name} must be {allowed}, got {value}")
        if self.font_path is not None and not isinstance(self.font_path, str):
            raise Vist2Error(f"render.font_path must be a string, got {self.font_path!r}")


@dataclass(frozen=True)
class RenderedPage:
    image: Image.Image  # mode "L", width x height, white paper (255), black ink (0)
    font_size: int
    lines: int
    missing: int  # characters drawn as placeholder boxes (no glyph, or control characters)


def default_font_path() -> str:
    """The WenQuanYi Micro Hei collection shipped by the paperang-p2-fonts-cjk package."""
    spec = importlib.util.find_spec("paperang_p2_fonts_cjk")
    if spec is None or not spec.submodule_search_locations:
        raise Vist2Error("package paperang-p2-fonts-cjk is not installed; pass a font path")
    return os.path.join(spec.submodule_search_locations[0], "fonts", "wqy-microhei.ttc")


@functools.lru_cache(maxsize=8)
def font_coverage(path: str, index: int) -> frozenset[int]:
    """Code points that the font face has a glyph for (read from its cmap once)."""
    from fontTools.ttLib import TTFont

    with TTFont(path, fontNumber=index, lazy=True) as font:
        return frozenset(font.getBestCmap())


class _GlyphWidths(dict):
    """Advance width of each character at one font size, measured on first use."""

    def __init__(self, renderer: Renderer, size: int):
        super().__init__()
        self.renderer, self.size = renderer, size

    def __missing__(self, char: str) -> float:
        if self.renderer.is_placeholder(char):
            width = math.ceil(PLACEHOLDER_EM * self.size)
        else:
            width = self.renderer._font(self.size).getlength(char)
        self[char] = width
        return width


class Renderer:
    """Lays out and draws text on pages of one fixed geometry; caches fonts and widths."""

    def __init__(self, config: RenderConfig = RenderConfig()):
        self.config = config
        self.font_path = config.font_path or default_font_path()
        if not os.path.isfile(self.font_path):
            raise Vist2Error(f"font file not found: {self.font_path}")
        if config.min_font_size < 1 or config.min_font_size > config.max_font_size:
            raise Vist2Error(
                f"need 1 <= min_font_size <= max_font_size, got {config.min_font_size}, {config.max_font_size}"
            )
        self.text_width = config.width - 2 * config.margin
        self.text_height = config.height - 2 * config.margin
        if self.text_width <= 0 or self.text_height <= 0:
            raise Vist2Error(f"margin {config.margin} leaves no room on a {config.width}x{config.height} page")
        try:
            self.coverage = font_coverage(self.font_path, config.font_index)
        except Exception as error:  # fontTools raises many types for unreadable files
            raise Vist2Error(f"cannot read font {self.font_path} (face {config.font_index}): {error}") from error
        self._fonts: dict[int, ImageFont.FreeTypeFont] = {}
        self._widths: dict[int, _GlyphWidths] = {}
        self.largest_size = self._largest_size_for_pitch()

    def _font(self, size: int) -> ImageFont.FreeTypeFont:
        if size not in self._fonts:
            # Basic layout (no raqm) so the pixels do not depend on optional system libraries.
            self._fonts[size] = ImageFont.truetype(
                self.font_path, size, index=self.config.font_index, layout_engine=ImageFont.Layout.BASIC
            )
        return self._fonts[size]

    def _pitch(self, size: int) -> int:
        return self.config.line_height or math.ceil(1.2 * size)

    def _largest_size_for_pitch(self) -> int:
        """With a fixed line_height, the largest size whose ascent + descent fits in it."""
        config = self.config
        if config.line_height is None:
            return config.max_font_size
        for size in range(config.max_font_size, config.min_font_size - 1, -1):
            if sum(self._font(size).getmetrics()) <= config.line_height:
                return size
        raise Vist2Error(f"line_height {config.line_height} is too small for min_font_size {config.min_font_size}")

    def is_placeholder(self, char: str) -> bool:
        """Control characters and characters without a glyph are drawn as a box."""
        return ord(char) not in self.coverage or unicodedata.category(char) == "Cc"

    def widths_at(self, size: int) -> _GlyphWidths:
        """Advance width of each character at this font size (a mapping filled on first use)."""
        if size not in self._widths:
            self._widths[size] = _GlyphWidths(self, size)
        return self._widths[size]

    def normalize(self, text: str) -> str:
        """Text as it is laid out: CR LF as one newline, tabs as spaces."""
        return text.replace("\r\n", "\n").replace("\t", " " * self.config.tab_size)

    def max_lines(self, size: int) -> int:
        """Lines that fit the page's height at this font size."""
        return self.text_height // self._pitch(size)

    def _surely_too_long(self, counts: Counter, size: int) -> bool:
        """Cheap lower bound on the lines needed: every non-space glyph sits on some line."""
        widths = self.widths_at(size)
        ink = sum(count * widths[char] for char, count in counts.items() if char not in " \n")
        return max(counts["\n"] + 1, math.ceil(ink / self.text_width)) > self.max_lines(size)

    def layout(self, text: str, size: int) -> list[str] | None:
        """Lines of normalized text (no tabs, no CR LF) at this font size, or None if they overflow."""
        return self._layout(paragraphs(text), size)

    def _layout(self, paragraphs: list[list[str]], size: int) -> list[str] | None:
        max_lines, widths = self.max_lines(size), self.widths_at(size)
        state = LineState()
        for pieces in paragraphs:
            for piece in pieces:
                if len(state.lines) > max_lines:
                    return None
                place(state, piece, widths, self.text_width)
                if state.broken:
                    return None
            state.end_paragraph()
            if len(state.lines) > max_lines:
                return None
        return state.lines

    def page_fit(self, size: int = 0) -> PageFit:
        """An incremental fit test at `size` (0: min_font_size) for text that grows token by token."""
        check_min_font_size(size, self.config.min_font_size, self.largest_size)
        size = size or self.config.min_font_size
        return PageFit(self.widths_at(size), self.max_lines(size), self.text_width, self.normalize)

    def _fit(self, text: str) -> tuple[int, list[str]]:
        """Largest font size at which the text fits, with its lines (binary search)."""
        counts = Counter(text)
        low, high = self.config.min_font_size, self.largest_size
        if self._surely_too_long(counts, low):
            raise self._does_not_fit(text)
        pieces = paragraphs(text)
        best = self._layout(pieces, low)
        if best is None:
            raise self._does_not_fit(text)
        best_size = low
        while low < high:
            size = (low + high + 1) // 2
            lines = None if self._surely_too_long(counts, size) else self._layout(pieces, size)
            if lines is None:
                high = size - 1
            else:
                low, best_size, best = size, size, lines
        return best_size, best

    def _does_not_fit(self, text: str) -> TextDoesNotFit:
        return TextDoesNotFit(
            f"text of {len(text)} characters does not fit a {self.config.width}x{self.config.height} page "
            f"even at font size {self.config.min_font_size}; use shorter chunks or a larger page"
        )

    def fits(self, text: str) -> bool:
        """Whether the text fits one page at a legible size (the rule `render` applies)."""
        try:
            self._fit(self.normalize(text))
        except TextDoesNotFit:
            return False
        return True

    def render(self, text: str) -> RenderedPage:
        """Draw one chunk of text on a page at the largest font size that fits it."""
        text = self.normalize(text)
        size, lines = self._fit(text)
        font, pitch = self._font(size), self._pitch(size)
        ascent, descent = font.getmetrics()
        image = Image.new("L", (self.config.width, self.config.height), PAPER)
        draw = ImageDraw.Draw(image)
        missing = 0
        for row, line in enumerate(lines):
            top = self.config.margin + row * pitch
            baseline = top + (pitch - ascent - descent) / 2 + ascent
            missing += self._draw_line(draw, line, self.config.margin, baseline, size)
        return RenderedPage(image=image, font_size=size, lines=len(lines), missing=missing)

    def _draw_line(self, draw: ImageDraw.ImageDraw, line: str, x: float, baseline: float, size: int) -> int:
        """Draw runs of covered characters as whole strings, boxes for the rest; count boxes."""
        font, widths, missing, run_start = self._font(size), self.widths_at(size), 0, 0
        run_x = x
        for i, char in enumerate(line):
            if self.is_placeholder(char):
                if run_start < i:
                    draw.text((run_x, baseline), line[run_start:i], font=font, fill=INK, anchor="ls")
                box_width = widths[char]
                draw.rectangle(
                    (round(x) + 1, round(baseline - 0.7 * size), round(x + box_width) - 2, round(baseline)),
                    outline=INK,
                )
                missing += 1
                run_start, run_x = i + 1, x + box_width
            x += widths[char]
        if run_start < len(line):
            draw.text((run_x, baseline), line[run_start:], font=font, fill=INK, anchor="ls")
        return missing

    def render_batch(self, texts: list[str]) -> torch.Tensor:
        """Render chunks into a float32 tensor (N, 1, H, W) of pixel / 255: paper 1.0, ink 0.0."""
        import numpy as np
        import torch

        if not texts:
            return torch.empty(0, 1, self.config.height, self.config.width)
        pixels = np.stack([np.asarray(self.render(text).image) for text in texts])
        return torch.from_numpy(pixels).float().div_(255).unsqueeze(1)

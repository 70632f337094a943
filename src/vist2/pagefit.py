"""The incremental fit test of the `fill` chunking policy: does a growing text still fit one page?

It decides exactly as `Renderer.layout` does, with the same line breaking (`linebreak.place`,
the function `render` draws with), but lays out only the new text and the
word it continues, so generation can ask after every token. No rasterising.

    fit = renderer.page_fit(10)
    fit.extend("Hello, ")
    fit.fits_with("world")  # would "Hello, world" fit at 10 px?
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from vist2.linebreak import LineState, kind, pieces, place, place_chars


class PageFit:
    """Whether a growing text still fits one page at one font size, decided as `Renderer.layout`
    decides it (the same `place`), but laying out only the new text and the word it continues:
    pieces before the last one are placed for good, the last may still grow. No rasterising."""

    def __init__(self, widths: Mapping[str, float], max_lines: int, line_width: float,
                 normalize: Callable[[str], str]):
        self.widths, self.max_lines, self.line_width, self.normalize = widths, max_lines, line_width, normalize
        self.state = LineState()  # after every piece that can no longer grow
        self.open = ""  # the last piece, which the next text may continue
        self.pending_cr = False  # the text ends in "\r" (a line break if "\n" comes next)
        self.by_chars = False  # the last piece, wider than a line, is placed: more of it goes by characters
        self.started = False  # any text at all: "" has no paragraph, so no line

    def copy(self) -> PageFit:
        other = PageFit.__new__(PageFit)
        other.__dict__.update(self.__dict__)
        other.state = self.state.copy()
        return other

    def _advance(self, state: LineState, text: str) -> None:
        """Lay out normalized `text` after what `state` and `self.open` hold; the last piece stays
        open, unless it is a word wider than a line: `place` breaks such a word by characters,
        greedily, so its placed part never moves and the rest follows character by character."""
        for index, paragraph in enumerate(text.split("\n")):
            if index:
                if self.open:
                    place(state, self.open, self.widths, self.line_width)
                    self.open = ""
                self.by_chars = False
                state.end_paragraph()
            if self.by_chars:
                lead = next((i for i, c in enumerate(paragraph) if kind(c) != "word"), len(paragraph))
                place_chars(state, paragraph[:lead], self.widths, self.line_width)
                paragraph, self.by_chars = paragraph[lead:], lead == len(paragraph)
            cut = pieces(self.open + paragraph)
            for piece in cut[:-1]:
                place(state, piece, self.widths, self.line_width)
            self.open = cut[-1] if cut else ""
            if self.open and kind(self.open[0]) == "word" and \
                    sum(map(self.widths.__getitem__, self.open)) > self.line_width:
                place(state, self.open, self.widths, self.line_width)
                self.open, self.by_chars = "", True

    def extend(self, text: str) -> None:
        """Append raw text (tabs and CR LF are normalized as `render` normalizes them)."""
        if not text:
            return
        if self.pending_cr:
            text = "\r" + text
        self.pending_cr = text.endswith("\r")
        if self.pending_cr:
            text = text[:-1]
        self.started = True
        self._advance(self.state, self.normalize(text))

    def fits(self) -> bool:
        """Whether all the text so far fits (equals `renderer.layout(text, size) is not None`)."""
        if not self.started:
            return True
        trial = self.copy()
        state = trial.state
        if trial.pending_cr:
            trial._advance(state, "\r")
        if trial.open:
            place(state, trial.open, self.widths, self.line_width)
        state.end_paragraph()
        return not state.broken and len(state.lines) <= self.max_lines

    def fits_with(self, text: str) -> bool:
        """Whether the text so far followed by `text` would fit; nothing changes."""
        trial = self.copy()
        trial.extend(text)
        return trial.fits()

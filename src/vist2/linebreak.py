"""Greedy line breaking: the one rule that drawing (`Renderer.render`), fitting (`Renderer.fits`)
and the incremental fit test of `fill` chunking (`PageFit`) share, so they never disagree.

Lines break at spaces, inside words wider than a line (by characters), and around any wide
(CJK) character. Widths come from a mapping char -> advance width at one font size.

    state = LineState()
    for piece in pieces("Hello, world"):
        place(state, piece, widths, line_width=200)
    state.end_paragraph()
    state.lines  # ["Hello, world"]
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Mapping


def kind(char: str) -> str:
    """Wrap class: "space", "wide" (a CJK character, a piece of its own) or "word"."""
    if char == " ":
        return "space"
    return "wide" if unicodedata.east_asian_width(char) in ("W", "F") else "word"


def pieces(paragraph: str) -> list[str]:
    """Cut a paragraph into unbreakable pieces: space runs, words, single wide characters."""
    cut: list[str] = []
    for wrap_class, group in itertools.groupby(paragraph, key=kind):
        if wrap_class == "wide":
            cut.extend(group)
        else:
            cut.append("".join(group))
    return cut


def paragraphs(text: str) -> list[list[str]]:
    """Normalized text as paragraphs (split at newlines) of pieces; no paragraph at all for ""."""
    return [pieces(paragraph) for paragraph in text.split("\n")] if text else []


class LineState:
    """Where greedy line breaking stands: finished lines, the current line and its width."""

    __slots__ = ("lines", "line", "x", "first_line", "broken")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.line, self.x = "", 0.0
        self.first_line = 0  # index of the current paragraph's first line
        self.broken = False  # a character wider than a whole line was met: nothing fits

    def copy(self) -> LineState:
        other = LineState()
        other.lines, other.line, other.x = list(self.lines), self.line, self.x
        other.first_line, other.broken = self.first_line, self.broken
        return other

    def end_paragraph(self) -> None:
        if self.line or len(self.lines) == self.first_line:  # an empty paragraph still takes a line
            self.lines.append(self.line)
        self.line, self.x, self.first_line = "", 0.0, len(self.lines)


def place(state: LineState, piece: str, widths: Mapping[str, float], line_width: float) -> None:
    """Place one unbreakable piece: on the current line if it fits, else on the next one; a piece
    wider than a whole line is broken by characters."""
    width = sum(map(widths.__getitem__, piece))
    if state.x + width <= line_width:
        state.line, state.x = state.line + piece, state.x + width
        return
    if state.line:
        state.lines.append(state.line)
        state.line, state.x = "", 0.0
        if piece[0] == " ":  # the line break replaces the space
            return
        if width <= line_width:
            state.line, state.x = piece, width
            return
    place_chars(state, piece, widths, line_width)


def place_chars(state: LineState, chars: str, widths: Mapping[str, float], line_width: float) -> None:
    """Greedy breaking by characters (a piece wider than a line)."""
    for char in chars:
        char_width = widths[char]
        if char_width > line_width:
            state.broken = True
            return
        if state.line and state.x + char_width > line_width:
            state.lines.append(state.line)
            state.line, state.x = "", 0.0
        state.line, state.x = state.line + char, state.x + char_width

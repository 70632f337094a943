"""Cut token ids into chunks, apply the tail rule, and find the text each chunk renders.

Two policies. fixed: chunks of K tokens. fill: a chunk closes before the token whose text
would no longer fit its page at the fill font size (`pagefit.PageFit`), or at max_tokens;
the rule looks at no later token, so generation applies it as it goes (`Chunker`): a row
whose next token would overflow its page compresses the chunk first and picks again.

Tail rule (DESIGN sections 3 and 4): full chunks (K tokens; fill: closed by a full page or
max_tokens) are compressed; a residual of m tokens is compressed too only if m > beta
(visual tokens per chunk), otherwise it stays raw text, since its image would cost more
tokens than the text itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vist2.errors import Vist2Error
from vist2.tokenizer import token_bytes


@dataclass(frozen=True)
class Fill:
    """The fill policy: `new_fit()` is an empty incremental page fit (`Renderer.page_fit`)."""

    tokenizer: object
    new_fit: Callable
    max_tokens: int
    token_bytes: dict = field(default_factory=dict, compare=False, repr=False)  # id -> bytes, filled on use

    def bytes_of(self, token: int) -> bytes:
        if token not in self.token_bytes:
            self.token_bytes[token] = token_bytes(self.tokenizer, [token])[0]
        return self.token_bytes[token]


class Chunker:
    """Where the chunks of one token stream close, a token at a time (both policies)."""

    def __init__(self, tokenizer, chunk_tokens: int, fill: Fill | None = None):
        self.pages, self.chunk_tokens, self.fill = PageTexts(tokenizer), chunk_tokens, fill
        self.chunk: list[int] = []
        self._start_page()

    def _start_page(self) -> None:
        self.data = self.pages.pending  # the page's bytes so far (those carried over included)
        self.text = ""  # their complete characters, as the page will show them
        self.fit = self.fill.new_fit() if self.fill else None

    def _text_with(self, token: int) -> tuple[bytes, str]:
        data = self.data + self.fill.bytes_of(token)
        return data, data[: complete_prefix(data)].decode("utf-8", errors="replace")

    def overflows(self, token: int) -> bool:
        """fill: the chunk holds tokens and its page would not hold this token's text too."""
        if self.fit is None or not self.chunk:
            return False
        _, text = self._text_with(token)
        if text.startswith(self.text):
            return not self.fit.fits_with(text[len(self.text):])
        fit = self.fill.new_fit()
        fit.extend(text)
        return not fit.fits()

    def add(self, token: int) -> bool:
        """Append a token to the chunk; True when the chunk is complete (K tokens, or max_tokens in fill)."""
        self.chunk.append(token)
        if self.fit is not None:
            self.data, text = self._text_with(token)
            if not text.startswith(self.text):  # invalid UTF-8 decoded differently once completed
                self.fit = self.fill.new_fit()
                self.text = ""
            self.fit.extend(text[len(self.text):])
            self.text = text
        return len(self.chunk) == (self.fill.max_tokens if self.fill else self.chunk_tokens)

    def close(self, last: bool = False) -> tuple[list[int], str]:
        """The finished chunk and its page text (`PageTexts`); the next chunk starts empty."""
        chunk, self.chunk = self.chunk, []
        text = self.pages.next(chunk, last)
        self._start_page()
        return chunk, text

    def cut(self, ids: list[int]) -> list[list[int]]:
        """All of `ids` as chunks (the last one may be open)."""
        chunks = []
        for token in ids:
            if self.overflows(token):
                chunks.append(self.close()[0])
            if self.add(token):
                chunks.append(self.close()[0])
        if self.chunk:
            chunks.append(self.chunk)
        return chunks


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise Vist2Error(f"{name} must be a positive integer, got {value!r}")


def split_chunks(ids: list[int], chunk_tokens: int, fill: Fill | None = None) -> list[list[int]]:
    """Consecutive chunks of chunk_tokens ids (fill: as many as fill a page); the last one may be shorter."""
    _check_positive("chunk_tokens", chunk_tokens)
    ids = list(ids)
    if fill is not None:
        return Chunker(fill.tokenizer, chunk_tokens, fill).cut(ids)
    return [ids[start : start + chunk_tokens] for start in range(0, len(ids), chunk_tokens)]


def full_chunks(ids: list[int], chunk_tokens: int, fill: Fill | None = None) -> list[list[int]]:
    """The chunks of `split_chunks` that are full: K tokens each (fill: all but the last, where the text ran out)."""
    chunks = split_chunks(ids, chunk_tokens, fill)
    return chunks[:-1] if fill is not None else [chunk for chunk in chunks if len(chunk) == chunk_tokens]


def split_compressed(ids: list[int], chunk_tokens: int, visual_tokens: int,
                     fill: Fill | None = None) -> tuple[list[list[int]], list[int]]:
    """(chunks to compress, raw tail): a residual of m tokens is compressed only if m > visual_tokens."""
    _check_positive("visual_tokens", visual_tokens)
    chunks = split_chunks(ids, chunk_tokens, fill)
    full = fill.max_tokens if fill is not None else chunk_tokens
    if chunks and len(chunks[-1]) < full and len(chunks[-1]) <= visual_tokens:
        return chunks[:-1], chunks[-1]
    return chunks, []


def complete_prefix(data: bytes) -> int:
    """Length of `data` without a trailing, incomplete UTF-8 character."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # ASCII or a lead byte
            need = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 1
            return len(data) - back if need > back else len(data)
    return len(data)


class PageTexts:
    """The text of each chunk's page, one chunk after another, causally: a character whose
    bytes straddle a chunk boundary is rendered whole in the later chunk, where it is complete.
    Generation renders a chunk as soon as it is finished, so it cannot wait for the next one."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pending = b""

    def next(self, chunk: list[int], last: bool = False) -> str:
        data = self.pending + b"".join(token_bytes(self.tokenizer, chunk))
        cut = len(data) if last else complete_prefix(data)
        self.pending = data[cut:]
        return data[:cut].decode("utf-8", errors="replace")


def chunk_texts(tokenizer, chunks: list[list[int]]) -> list[str]:
    """The text each chunk renders (see `PageTexts`); "".join(result) is the decoded text."""
    pages = PageTexts(tokenizer)
    return [pages.next(chunk, last=index == len(chunks) - 1) for index, chunk in enumerate(chunks)]

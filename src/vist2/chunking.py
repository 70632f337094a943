"""Cut token ids into chunks of K, apply the tail rule, and find the text each chunk renders.

Tail rule (DESIGN sections 3 and 4): full chunks of K tokens are compressed; a residual of
m tokens is compressed too only if m > beta (visual tokens per chunk), otherwise it stays
as raw text, since its image would cost more tokens than the text itself.
"""

from __future__ import annotations

from vist2.errors import Vist2Error
from vist2.tokenizer import token_bytes


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise Vist2Error(f"{name} must be a positive integer, got {value!r}")


def split_chunks(ids: list[int], chunk_tokens: int) -> list[list[int]]:
    """Consecutive chunks of chunk_tokens ids; the last one may be shorter."""
    _check_positive("chunk_tokens", chunk_tokens)
    ids = list(ids)
    return [ids[start : start + chunk_tokens] for start in range(0, len(ids), chunk_tokens)]


def split_compressed(ids: list[int], chunk_tokens: int, visual_tokens: int) -> tuple[list[list[int]], list[int]]:
    """(chunks to compress, raw tail): a residual of m tokens is compressed only if m > visual_tokens."""
    _check_positive("visual_tokens", visual_tokens)
    chunks = split_chunks(ids, chunk_tokens)
    if chunks and len(chunks[-1]) < chunk_tokens and len(chunks[-1]) <= visual_tokens:
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

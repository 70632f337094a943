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


def _is_continuation(byte: int) -> bool:
    return byte & 0xC0 == 0x80


def chunk_texts(tokenizer, chunks: list[list[int]]) -> list[str]:
    """The text each chunk renders; "".join(result) is the decoded text of all chunks.

    A character whose UTF-8 bytes straddle a chunk boundary is rendered whole, once: in the
    chunk where its first byte lies. So a chunk may lend its first bytes to the chunk before.
    """
    pieces = token_bytes(tokenizer, [index for chunk in chunks for index in chunk])
    data = b"".join(pieces)
    bounds, offset, token = [0], 0, 0
    for chunk in chunks:
        offset += sum(len(piece) for piece in pieces[token : token + len(chunk)])
        token += len(chunk)
        bound = max(offset, bounds[-1])
        while bound < len(data) and _is_continuation(data[bound]):
            bound += 1  # the character began in an earlier chunk: it is rendered there
        bounds.append(bound)
    return [data[start:end].decode("utf-8", errors="replace") for start, end in zip(bounds, bounds[1:])]

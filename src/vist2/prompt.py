"""The compressed-query prompt: one builder for training (`stages.sft`), `verify` and generation.

A prompt is the ChatML user turn, then the assistant prefix. In pcc and gcc the query is
compressed by the tail rule (`chunking.split_compressed`): its chunks (K tokens, or as many
as fill a page with `fill`), and a residual longer than beta, become pages; a shorter
residual stays text.

Page rule (`chunk_pages`, for query and response chunks alike): a chunk whose text does not
fit one page (the renderer's fit rule, `Renderer.fits`) is drawn with its line breaks as
spaces; if even that does not fit, it is spread over as many pages as it needs. Every
character reaches the model; both changes are counted (`pages_refit`, `chunks_split`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vist2.chunking import Fill, chunk_texts, split_chunks, split_compressed
from vist2.errors import Vist2Error
from vist2.layout import span

Fits = Callable[[str], bool] | None  # None: every page fits (no renderer at hand)


def chat_parts(tokenizer) -> tuple[list[int], list[int], list[int]]:
    """ChatML pieces around a query: user prefix, assistant prefix, end of turn."""
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    return encode("<|im_start|>user\n"), encode("<|im_end|>\n<|im_start|>assistant\n"), encode("<|im_end|>")


def split_page(text: str, fits: Fits) -> list[str]:
    """The text as consecutive pages that each fit: itself if it does, else the longest
    fitting prefixes, cut after a space or newline when one is in the second half.
    "".join(result) == text: nothing is dropped."""
    if fits is None or fits(text):
        return [text]
    pages, rest = [], text
    while rest:
        if fits(rest):
            pages.append(rest)
            break
        low, high = 0, len(rest) - 1  # longest fitting prefix: fits(rest[:low]) holds
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits(rest[:middle]) else (low, middle - 1)
        if low == 0:
            raise Vist2Error(f"the character {rest[0]!r} does not fit a page even alone; use a larger page")
        cut = max(rest.rfind(" ", 0, low), rest.rfind("\n", 0, low)) + 1
        size = cut if cut > low // 2 and fits(rest[:cut]) else low
        pages.append(rest[:size])
        rest = rest[size:]
    return pages


def chunk_pages(text: str, fits: Fits) -> list[str]:
    """The pages of one chunk (see the page rule above): [text] when it fits."""
    if fits is None or fits(text):
        return [text]
    return split_page(text.replace("\n", " "), fits)


def split_pages(texts: list[str], fits: Fits) -> list[list[str]]:
    """Each chunk's text as the pages it takes."""
    return [chunk_pages(text, fits) for text in texts]


def changes(texts: list[str], pages: list[list[str]]) -> tuple[int, int]:
    """(chunks refitted: drawn with line breaks as spaces, chunks split over more than one page)."""
    return sum("".join(p) != t for t, p in zip(texts, pages)), sum(len(p) > 1 for p in pages)


@dataclass(frozen=True)
class Prompt:
    """One prompt as the segments prefill feeds, in order."""

    segments: tuple[tuple[str, list], ...]  # ("text", ids) | ("pages", page texts)
    positions: int  # positions (and cache entries) it occupies
    full_text_tokens: int  # entries the same prompt takes as plain text
    context_ids: list[int]  # raw ids seen by the repetition penalty and n-gram ban
    pages_refit: int = 0  # query chunks drawn with line breaks as spaces (see `chunk_pages`)
    chunks_split: int = 0  # query chunks spread over more than one page
    chunk_lengths: tuple[int, ...] = ()  # tokens of each compressed query chunk
    chunk_chars: int = 0  # characters on the query's pages

    @property
    def pages(self) -> list[str]:
        return [page for kind, content in self.segments if kind == "pages" for page in content]


def build_prompt(tokenizer, query_ids: list[int], mode: str, chunk_tokens: int, beta: int,
                 fits: Fits = None, fill: Fill | None = None, *, chat_template: bool = True,
                 frame: tuple[list[int], list[int]] | None = None) -> Prompt:
    """The prompt of `mode`: text keeps the query as text; pcc and gcc compress it (fill: `chunking.Fill`).
    chat_template=False: the query alone, without the ChatML turn around it. frame: the ids
    before and after the query (kept as text) instead of the ChatML turn (a server's chat template)."""
    if frame is not None:
        user, assistant = list(frame[0]), list(frame[1])
    else:
        user, assistant, _ = chat_parts(tokenizer) if chat_template else ([], [], [])
    full = user + list(query_ids) + assistant
    if mode == "text":
        return Prompt((("text", full),), len(full), len(full), full)
    chunks, tail = split_compressed(query_ids, chunk_tokens, beta, fill)
    texts = chunk_texts(tokenizer, chunks)
    per_chunk = split_pages(texts, fits)
    pages = [page for chunk in per_chunk for page in chunk]
    segments = (("text", user), ("pages", pages), ("text", tail + assistant))
    segments = tuple(s for s in segments if s[1])
    positions = span(len(user) + len(tail) + len(assistant), len(pages), beta)
    return Prompt(segments, positions, len(full), full, *changes(texts, per_chunk),
                  tuple(map(len, chunks)), sum(map(len, texts)))


def response_positions(response_tokens: int, chunk_tokens: int, beta: int, ids: list[int] | None = None,
                       fill: Fill | None = None) -> int:
    """Positions an interleaved response takes when every chunk but the last fits one page
    (fill: the chunks of `ids`, the response's tokens)."""
    chunks = len(split_chunks(ids, chunk_tokens, fill)) if fill is not None else -(-response_tokens // chunk_tokens)
    return span(response_tokens, max(chunks - 1, 0), beta)

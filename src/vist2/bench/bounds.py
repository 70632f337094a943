"""What each mode's layout implies: its forwards, KV cache sizes and FLOPs, without running it.

`forward_steps` lists the LLM forwards one generation performs, in the order
`vist2.engine` performs them (a prompt of up to PREFILL_TOKENS positions in one forward, a
longer one in pieces of K tokens and batches of PAGE_BATCH pages; text/pcc feed each sampled token but the last; gcc also runs a visual block of
beta tokens per finished chunk, then evicts the chunk's K text entries). From the steps:

- `kv_peak`: the most cache entries held (persistent segments + the current chunk, + the
  visual block being appended while it still sees its chunk);
- `dense_flops`: FLOPs as a dense kernel computes them (every score of each new block
  against the whole cache, masked or not), which is what `FlopCounterMode` counts;
- `layout_flops`: the bound a mask-aware kernel could reach: only the (query, key) pairs
  the attention rule allows (causal inside a block, hidden cache entries skipped);
- `meta_flops`: `FlopCounterMode` on a meta-device model, one counted forward per run of
  steps: FLOPs of a forward are affine in its cache length, so a run of n forwards whose
  cache grows by their own size each time costs n times the forward at the mean cache
  length (two forwards when that mean falls between two integers). A 16K-token decode
  then needs a few dozen counted forwards instead of 16K.

`dense_flops` and `layout_flops` take the LLM's closed form, and a page's vision and aligner
FLOPs as `vist2.bench.flops.count_page` counts them on the model, not a hand form of the
library's vision tower.
"""

from __future__ import annotations

from dataclasses import dataclass
from vist2.bench.flops import LLMShape, count_llm_step, count_page
from vist2.chunking import split_chunks, split_compressed
from vist2.decode import PAGE_BATCH, PREFILL_TOKENS
from vist2.layout import span


@dataclass(frozen=True)
class Step:
    """One LLM forward: `queries` new tokens over `cache` cached entries, `hidden` of which
    the new tokens may not see; `pages` pages encoded for it; `evict` entries dropped after."""

    kind: str  # "prompt" (whole) | "prefill" | "pages" (a long prompt's pieces) | "decode" | "visual"
    queries: int
    cache: int
    hidden: int = 0
    pages: int = 0
    evict: int = 0
    block: int = 1  # visual blocks: beta tokens each


@dataclass(frozen=True)
class PromptShape:
    """Token counts of the ChatML prompt: user prefix, query, assistant prefix."""

    user: int
    query: int
    assistant: int

    @classmethod
    def of(cls, tokenizer, query_tokens: int) -> PromptShape:
        from vist2.stages import chat_parts

        user, assistant, _ = chat_parts(tokenizer)
        return cls(len(user), query_tokens, len(assistant))


def forward_steps(mode: str, prompt: PromptShape, response: int, chunk_tokens: int, beta: int,
                  visual_sees_text: bool = True, query_chunks: tuple[int, int] | None = None,
                  response_chunks: list[int] | None = None, full: int | None = None) -> list[Step]:
    """The forwards of one generation of `response` tokens (ignore_eos: it runs to the end).
    Chunks of K tokens, or of the lengths given (fill): `query_chunks` = (query pages, raw tail
    tokens), `response_chunks` = tokens of each response chunk, the last one open; a chunk of
    `full` tokens closed by its count, a shorter one before a token that would overflow its page."""
    K, steps, cache = chunk_tokens, [], 0

    def text(count: int) -> None:
        nonlocal cache
        for piece in split_chunks(list(range(count)), K):
            steps.append(Step("prefill", len(piece), cache))
            cache += len(piece)

    if query_chunks is None:
        chunks, tail = split_compressed(list(range(prompt.query)), K, beta)
        query_chunks = (len(chunks), len(tail))
    pages, tail = query_chunks
    whole = (prompt.user + prompt.query + prompt.assistant if mode == "text"
             else span(prompt.user + tail + prompt.assistant, pages, beta))
    if whole <= PREFILL_TOKENS:
        pages = 0 if mode == "text" else pages
        steps.append(Step("prompt", whole, 0, pages=pages, block=beta if pages else 1))
        cache = whole
    elif mode == "text":
        text(prompt.user + prompt.query + prompt.assistant)
    else:
        text(prompt.user)
        for start in range(0, pages, PAGE_BATCH):
            batch = min(PAGE_BATCH, pages - start)
            steps.append(Step("pages", batch * beta, cache, pages=batch, block=beta))
            cache += batch * beta
        text(tail + prompt.assistant)
    if mode != "gcc":
        response_chunks, full = [response], None
    elif response_chunks is None:
        response_chunks, full = [len(c) for c in split_chunks(list(range(response)), K)], K
    for index, length in enumerate(response_chunks):
        last = index == len(response_chunks) - 1
        by_count = length == full
        # the last sampled token is never fed back; a chunk closed by its count feeds its last
        # token only for a visual block that sees it; one closed by its page fed them all
        fed = length - 1 if last or (by_count and not visual_sees_text) else length
        for _ in range(fed):
            steps.append(Step("decode", 1, cache))
            cache += 1
        if not last:
            steps.append(Step("visual", beta, cache, hidden=0 if visual_sees_text else fed,
                              pages=1, evict=fed, block=beta))
            cache += beta - fed
    return steps


def kv_peak(steps: list[Step]) -> int:
    """Most cache entries held at once: right after a forward, before any eviction."""
    return max(step.cache + step.queries for step in steps)


def kv_final(steps: list[Step]) -> int:
    last = steps[-1]
    return last.cache + last.queries - last.evict


def pages(steps: list[Step]) -> int:
    return sum(step.pages for step in steps)


def _allowed_pairs(step: Step, bidirectional_visual: bool) -> int:
    q = step.queries
    inside = q * (q + 1) // 2
    if bidirectional_visual and step.block > 1:
        inside += step.pages * step.block * (step.block - 1) // 2
    return q * (step.cache - step.hidden) + inside


def _page_counts(steps: list[Step], page: dict[str, int]) -> dict[str, int]:
    return {part: pages(steps) * page[part] for part in ("vision", "aligner")}


def dense_flops(steps: list[Step], llm: LLMShape, page: dict[str, int]) -> dict[str, int]:
    """FLOPs as dense kernels compute them (equal to `FlopCounterMode`'s count): the LLM's closed
    form, and `page` (`count_page` of the model) per page encoded."""
    counts = {"llm": sum(llm.forward(s.queries, s.cache, 1) for s in steps), **_page_counts(steps, page)}
    return {**counts, "total": sum(counts.values())}


def layout_flops(steps: list[Step], llm: LLMShape, page: dict[str, int],
                 bidirectional_visual: bool = False) -> dict[str, int]:
    """The bound: linear layers on every token, attention only on the pairs the mask allows;
    pages cost what `page` (`count_page` of the model) says."""
    per_pair = llm.attention(1, 1)
    linear = sum(s.queries * llm.linear_per_token + llm.head_per_row for s in steps)
    attention = sum(_allowed_pairs(s, bidirectional_visual) for s in steps) * per_pair
    counts = {"llm": linear + attention, **_page_counts(steps, page)}
    return {**counts, "total": sum(counts.values())}


def _runs(steps: list[Step]) -> list[list[Step]]:
    """Maximal runs of alike forwards whose cache grows by exactly their own size each time."""
    runs: list[list[Step]] = []
    for step in steps:
        last = runs[-1][-1] if runs else None
        if (last is not None and (last.kind, last.queries, last.hidden) == (step.kind, step.queries, step.hidden)
                and not last.evict and step.cache == last.cache + last.queries):
            runs[-1].append(step)
        else:
            runs.append([step])
    return runs


def meta_flops(steps: list[Step], model, page: dict[str, int] | None = None) -> dict[str, int]:
    """FLOPs counted by `FlopCounterMode` on `model` (meta device), one forward per run of steps;
    `page` is `count_page(model)` when the caller has it already."""
    llm = 0
    for run in _runs(steps):
        n, first = len(run), run[0]
        low = first.cache + (n - 1) // 2 * first.queries
        high = first.cache + n // 2 * first.queries  # = low when n is odd
        count = count_llm_step(model, first.queries, low, 1)
        if high != low:
            count += count_llm_step(model, first.queries, high, 1)
        else:
            count *= 2
        llm += n * count // 2
    counts = {"llm": llm, **_page_counts(steps, page or count_page(model))}
    return {**counts, "total": sum(counts.values())}

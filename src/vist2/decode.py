"""The forwards of generation, as small free functions over a `KVStore` (DESIGN 3 and 5).

Every forward is `forward(model, kv, feeds)`: each `Feed` is the new tokens of slots alike (a
whole short prompt, a piece of a long one, one decode token per running row, the gcc visual
blocks closing now), all packed in one row so the weights are read once (`attention.py`); a
row sees its slot's entries and the feed's new tokens as an explicit bool mask says.
Positions follow the layout: a transient chunk and its visual block share a base position, so
incremental decoding equals the teacher-forced forward of the same layout (`vist2 verify`).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

from vist2 import attention
from vist2.attention import Group
from vist2.kvstore import KVStore

PAGE_BATCH = 8  # query pages rendered and encoded per forward during a long prompt's prefill
PREFILL_TOKENS = 1024  # prompts up to this many positions are prefilled whole, several per forward


def new_tokens_mask(q: int, block: int, bidirectional: bool) -> torch.Tensor:
    """(q, q) bool among new tokens: causal, or whole blocks of `block` tokens see each other."""
    index = torch.arange(q)
    mask = index[None, :] <= index[:, None]
    if bidirectional:
        mask |= (index[None, :] // block) == (index[:, None] // block)
    return mask


def cache_mask(starts: list[int], new: torch.Tensor, attend: int,
                   hide: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """(B, 1, q, attend) bool: row b sees its entries [0, starts[b]) except `hide[b]`, then
    the new tokens among themselves as `new` (q, q) says."""
    q = new.shape[0]
    column = torch.arange(attend)[None, :]
    start = torch.tensor(starts)[:, None]
    old = column < start
    if hide is not None:
        bounds = torch.tensor(hide)
        old &= (column < bounds[:, :1]) | (column >= bounds[:, 1:])
    if q == 1:
        return (old | (column == start))[:, None, None, :]
    relative = column - start  # (B, L) index among the new tokens
    inside = (relative >= 0) & (relative < q)
    among = new[:, relative.clamp(0, q - 1)].permute(1, 0, 2) & inside[:, None, :]  # (B, q, L)
    return (old[:, None, :] | among)[:, None]


@functools.cache
def _cache_keyword(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_keyword(module) -> str:
    """The keyword a Hugging Face model's forward takes its KV cache by: `cache` from transformers
    5.25 on (there `past_key_values` warns that it goes in 5.40), `past_key_values` before (where
    `cache=` would vanish into **kwargs and the model would make its own cache)."""
    return _cache_keyword(type(module))


@dataclass
class Feed:
    """New tokens for B slots, q each: embeds (B, q, d) at `positions` (B, q), seeing each other
    as `new` (q, q) says and each slot's entries before them except [hide[b][0], hide[b][1]).
    The rows of a feed attend in one SDPA call."""

    slots: list[int]
    embeds: torch.Tensor
    positions: torch.Tensor
    new: torch.Tensor
    hide: list[tuple[int, int]] | None = None


@functools.cache
def _placeholder(device) -> torch.Tensor:
    """A 4D mask, so transformers makes none (the packed attention has its own per group)."""
    return torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)


def forward(model, kv: KVStore, feeds: list[Feed]) -> torch.Tensor:
    """One LLM forward over every feed's tokens packed in one row, appending their KV (weights
    read once for all, attention per feed: `attention.py`); (rows, V) fp32 logits of each row's
    last token, feed after feed."""
    device = model.device
    slots = [slot for f in feeds for slot in f.slots]
    starts = kv.begin(slots, [f.positions.shape[1] for f in feeds for _ in f.slots])
    groups, token, last = [], 0, []
    for feed in feeds:
        rows, q = feed.positions.shape
        begins, starts = starts[:rows], starts[rows:]
        first, attend = feed.slots[0], max(begins) + q
        contiguous = feed.slots == list(range(first, first + rows))  # then a view of the buffers, not a copy
        where = slice(first, first + rows) if contiguous else torch.tensor(feed.slots, device=device)
        groups.append(Group(token, rows, q, where, attend, cache_mask(begins, feed.new, attend, feed.hide).to(device)))
        last += range(token + q - 1, token + rows * q, q)
        token += rows * q
    embeds = torch.cat([f.embeds.flatten(0, 1) for f in feeds])[None]
    positions = torch.cat([f.positions.flatten() for f in feeds])[None].to(device)
    keep = 0 if len(last) == token else torch.tensor(last, device=device)  # 0: every token's logits
    with attention.packed(model.llm):
        out = model.llm(inputs_embeds=embeds, position_ids=positions, attention_mask=_placeholder(device),
                        use_cache=True, logits_to_keep=keep, packed=groups, **{cache_keyword(model.llm): kv})
    return out.logits[0].float()


def prompt_feed(model, slot: int, segments, visual: torch.Tensor | None, bidirectional: bool) -> Feed:
    """A whole prompt (`Prompt.segments`) from position 0; `visual` (pages, beta, d) holds its
    pages' visual tokens in order."""
    embed, device = model.llm.get_input_embeddings(), model.device
    parts, block, used = [], [], 0
    for kind, content in segments:
        if kind == "text":
            parts.append(embed(torch.tensor(content, dtype=torch.long, device=device)))
            block.append(torch.full((len(content),), -1))
        else:
            pages = visual[used : used + len(content)]
            parts.append(pages.reshape(-1, pages.shape[-1]))
            block.append(used + torch.arange(len(content)).repeat_interleave(pages.shape[1]))
            used += len(content)
    block = torch.cat(block)
    new = new_tokens_mask(len(block), 1, False)
    if bidirectional:
        new |= (block[:, None] == block[None, :]) & (block[:, None] >= 0)
    return Feed([slot], torch.cat(parts)[None], torch.arange(len(block))[None], new)


def token_feed(model, slots: list[int], tokens: list[int], positions: list[int]) -> Feed:
    """One token per slot, at its position."""
    embeds = model.llm.get_input_embeddings()(torch.tensor(tokens, dtype=torch.long, device=model.device))
    return Feed(slots, embeds[:, None], torch.tensor(positions)[:, None], ONE)


ONE = torch.ones(1, 1, dtype=torch.bool)  # a single new token sees itself


class PromptCursor:
    """Where a prompt's prefill stands: the next piece of its segments and its position."""

    def __init__(self, segments):
        self.segments, self.index, self.offset, self.base = segments, 0, 0, 0

    @property
    def done(self) -> bool:
        return self.index == len(self.segments)

    def next(self, tokens: int, beta: int) -> tuple[str, list]:
        """The next piece of at most `tokens` positions: text ids, or whole pages (at least one,
        at most PAGE_BATCH, beta positions each), never beyond the current segment."""
        kind, content = self.segments[self.index]
        size = min(tokens, len(content) - self.offset) if kind == "text" else (
            min(max(tokens // beta, 1), PAGE_BATCH, len(content) - self.offset))
        piece = content[self.offset : self.offset + size]
        self.offset += size
        if self.offset == len(content):
            self.index, self.offset = self.index + 1, 0
        return kind, piece


def piece_feed(model, slot: int, cursor: PromptCursor, tokens: int, beta: int, bidirectional: bool,
               encode) -> Feed:
    """The cursor's next piece (`PromptCursor.next`) for a slot that holds what came before it
    (pages encoded by `encode(texts)` -> (N, beta, d))."""
    kind, piece = cursor.next(tokens, beta)
    if kind == "text":
        embeds = model.llm.get_input_embeddings()(torch.tensor(piece, dtype=torch.long, device=model.device))
        new = new_tokens_mask(len(piece), 1, False)
    else:
        visual = encode(piece)
        embeds = visual.reshape(-1, visual.shape[2])
        new = new_tokens_mask(len(embeds), beta, bidirectional)
    positions = torch.arange(cursor.base, cursor.base + len(embeds))
    cursor.base += len(embeds)
    return Feed([slot], embeds[None], positions[None], new)


def compress(model, kv: KVStore, slots: list[int], chunks: list[int], bases: list[int], visual: torch.Tensor,
             beta: int, sees_text: bool, bidirectional: bool) -> torch.Tensor:
    """Each slot's finished chunk (its last `chunks[b]` entries) -> its visual block (B, n, d)
    at the chunk's base, seeing the chunk's text if `sees_text`; then the block is copied over
    the chunk, which is thereby evicted. Returns (B, V) logits of each block's last token."""
    block = visual.shape[1]
    starts = [kv.lengths[s] - c for s, c in zip(slots, chunks)]
    new = new_tokens_mask(block, beta, bidirectional)
    hide = None if sees_text else [(start, start + c) for start, c in zip(starts, chunks)]
    logits = forward(model, kv, [Feed(slots, visual, torch.tensor(bases)[:, None] + torch.arange(block), new, hide)])
    for slot, start, c in zip(slots, starts, chunks):
        kv.move(slot, start + c, start, block)
    return logits

"""The forwards of generation, as small free functions over a `KVStore` (DESIGN 3 and 5):
prefill prompts (whole, or a piece at a time), decode one token for many slots, compress
finished chunks.

Positions follow the layout: a transient chunk and its visual block share a base position,
so incremental decoding equals the teacher-forced forward of the same layout (`vist2 verify`).
Every forward gets an explicit (B, 1, q, L) bool mask; the backbone must use SDPA.
"""

from __future__ import annotations

import functools
import inspect

import torch

from vist2.kvstore import KVStore

PAGE_BATCH = 8  # query pages rendered and encoded per forward during a long prompt's prefill
PREFILL_TOKENS = 1024  # prompts up to this many positions are prefilled whole, several rows per forward


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


def forward(model, kv: KVStore, slots: list[int], embeds: torch.Tensor, positions: torch.Tensor,
            new: torch.Tensor, hide: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """Run the LLM over q new tokens per slot, appending their KV; (B, V) fp32 logits of the last."""
    starts = [kv.lengths[s] for s in slots]
    attend = kv.begin(slots, embeds.shape[1])
    mask = cache_mask(starts, new, attend, hide).to(embeds.device)
    out = model.llm(inputs_embeds=embeds, position_ids=positions.to(embeds.device), attention_mask=mask,
                    use_cache=True, logits_to_keep=1, **{cache_keyword(model.llm): kv})
    return out.logits[:, -1].float()


def prefill_rows(model, kv: KVStore, slots: list[int], prompts: list, bidirectional: bool, encode) -> torch.Tensor:
    """Whole prompts (each `Prompt.segments`, up to PREFILL_TOKENS positions) into empty slots in
    one forward, padded to the longest; all their pages in one `encode(texts)` -> (N, beta, d).
    Row b holds entries [0, positions_b) afterwards; returns (B, V) fp32 logits of each last token."""
    embed, device = model.llm.get_input_embeddings(), model.device
    texts = [page for segments in prompts for kind, content in segments if kind == "pages" for page in content]
    visual = encode(texts) if texts else None
    rows, blocks, used = [], [], 0
    for segments in prompts:
        parts, block = [], []
        for kind, content in segments:
            if kind == "text":
                parts.append(embed(torch.tensor(content, device=device)))
                block.append(torch.full((len(content),), -1))
            else:
                pages = visual[used : used + len(content)]
                parts.append(pages.reshape(-1, pages.shape[-1]))
                block.append(used + torch.arange(len(content)).repeat_interleave(pages.shape[1]))
                used += len(content)
        rows.append(torch.cat(parts))
        blocks.append(torch.cat(block))
    lengths = [len(row) for row in rows]
    q = max(lengths)
    embeds = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    block = torch.nn.utils.rnn.pad_sequence(blocks, batch_first=True, padding_value=-1)  # (B, q)
    index = torch.arange(q)
    mask = (index[None, :] <= index[:, None])[None] & (index[None, None, :] < torch.tensor(lengths)[:, None, None])
    if bidirectional:
        mask |= (block[:, :, None] == block[:, None, :]) & (block[:, :, None] >= 0)
    kv.begin(slots, q)
    base = model.llm.base_model
    out = base(inputs_embeds=embeds, position_ids=index[None].expand(len(rows), q).to(device),
               attention_mask=mask[:, None].to(device), use_cache=True, **{cache_keyword(base): kv})
    for slot, length in zip(slots, lengths):
        kv.lengths[slot] = length  # entries past a row's prompt are padding, overwritten by what follows
    last = out.last_hidden_state[torch.arange(len(rows)), torch.tensor(lengths) - 1]
    return model.llm.get_output_embeddings()(last).float()


def embed_tokens(model, tokens: list[int]) -> torch.Tensor:
    """(len(tokens), 1, d): one token per row."""
    return model.llm.get_input_embeddings()(torch.tensor(tokens, device=model.device)[:, None])


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


def prefill_piece(model, kv: KVStore, slot: int, cursor: PromptCursor, tokens: int, beta: int,
                  bidirectional: bool, encode) -> torch.Tensor:
    """Feed the cursor's next piece (`PromptCursor.next`) into a slot that holds what came
    before it (pages encoded by `encode(texts)` -> (N, beta, d)); (V,) logits of its last token."""
    kind, piece = cursor.next(tokens, beta)
    if kind == "text":
        embeds = model.llm.get_input_embeddings()(torch.tensor([piece], device=model.device))
        new = new_tokens_mask(len(piece), 1, False)
    else:
        visual = encode(piece)
        embeds = visual.reshape(1, -1, visual.shape[2])
        new = new_tokens_mask(embeds.shape[1], beta, bidirectional)
    positions = torch.arange(cursor.base, cursor.base + embeds.shape[1])[None]
    cursor.base += embeds.shape[1]
    return forward(model, kv, [slot], embeds, positions, new)[0]


def compress(model, kv: KVStore, slots: list[int], chunks: list[int], bases: list[int], visual: torch.Tensor,
             beta: int, sees_text: bool, bidirectional: bool) -> torch.Tensor:
    """Each slot's finished chunk (its last `chunks[b]` entries) -> its visual block (B, n, d)
    at the chunk's base, seeing the chunk's text if `sees_text`; then the block is copied over
    the chunk, which is thereby evicted. Returns (B, V) logits of each block's last token."""
    block = visual.shape[1]
    starts = [kv.lengths[s] - c for s, c in zip(slots, chunks)]
    hide = None if sees_text else [(start, start + c) for start, c in zip(starts, chunks)]
    positions = torch.tensor(bases)[:, None] + torch.arange(block)
    logits = forward(model, kv, slots, visual, positions, new_tokens_mask(block, beta, bidirectional), hide)
    for slot, start, c in zip(slots, starts, chunks):
        kv.move(slot, start + c, start, block)
    return logits

"""The forwards of generation, as small free functions over a `KVStore` (DESIGN 3 and 5):
prefill a prompt into one slot, decode one token for many slots, compress finished chunks.

Positions follow the layout: a transient chunk and its visual block share a base position,
so incremental decoding equals the teacher-forced forward of the same layout (`vist2 verify`).
Every forward gets an explicit (B, 1, q, L) bool mask; the backbone must use SDPA.
"""

from __future__ import annotations

import functools
import inspect

import torch

from vist2.chunking import split_chunks
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


def prefill(model, kv: KVStore, slot: int, segments, chunk_tokens: int, bidirectional: bool,
            encode) -> tuple[torch.Tensor, int]:
    """A long prompt's segments into an empty slot, text in pieces of K tokens and pages PAGE_BATCH
    at a time (`encode(texts)` -> (N, beta, d)); returns ((V,) logits, next position)."""
    base, logits = 0, None
    for kind, content in segments:
        if kind == "text":
            for piece in split_chunks(content, chunk_tokens):
                embeds = model.llm.get_input_embeddings()(torch.tensor([piece], device=model.device))
                positions = torch.arange(base, base + len(piece))[None]
                logits = forward(model, kv, [slot], embeds, positions, new_tokens_mask(len(piece), 1, False))
                base += len(piece)
        else:
            for start in range(0, len(content), PAGE_BATCH):
                visual = encode(content[start : start + PAGE_BATCH])
                n, beta, width = visual.shape
                positions = torch.arange(base, base + n * beta)[None]
                new = new_tokens_mask(n * beta, beta, bidirectional)
                logits = forward(model, kv, [slot], visual.reshape(1, n * beta, width), positions, new)
                base += n * beta
    return logits[0], base


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

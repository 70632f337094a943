"""Packed attention for the generation engine: one LLM forward over several KV slots.

A forward of the engine packs every new token of a step in one row (decode tokens of running
requests, a piece of a long prompt, whole short prompts, gcc visual blocks): the linear layers
then read their weights once for all of them, which is what lets a long prompt go in piece by
piece without stalling running streams (chunked prefill, as vLLM does). Only attention is per
slot: the row is cut into `Group`s, one per `decode.Feed` (the decode tokens, a prompt, the
visual blocks closing now), and each attends its own slots' entries of the `KVStore`, whose
`update` hands over the layer's whole buffers.

The attention is registered with transformers under `NAME`, and `packed(llm)` selects it for
the duration of the engine's forwards (the model's config is restored after, also when several
threads' engines share the model). Any other call that meets it (no `packed=` layout) gets
transformers' SDPA, masks made as for SDPA. A grouped-query
backbone's keys are not copied per query head: one new token per row goes in as its key head's
query heads, more on CPU use `enable_gqa` (benchmarks/gqa_attention.py); elsewhere keys are
repeated as transformers does for masked SDPA.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "vist2_packed"


@dataclass
class Group:
    """`rows` rows of `q` tokens each, at [start, start + rows * q) of the packed row, attending
    entries [0, attend) of KV slots `slots` as `mask` (rows, 1, q, attend) allows."""

    start: int
    rows: int
    q: int
    slots: slice | torch.Tensor
    attend: int
    mask: torch.Tensor


def _sdpa(query, key, value, mask, scaling):
    """(B, H, q, D) queries over (B, kv heads, L, D) keys and values, mask (B, 1, q, L). One new
    token per row: a key head's query heads go in as its rows (no copy, as transformers does);
    more on CPU: `enable_gqa`; elsewhere keys are repeated per query head."""
    rows, heads, q, dim = query.shape
    repeat = heads // key.shape[1]
    if repeat > 1 and q == 1:
        out = torch.nn.functional.scaled_dot_product_attention(query.reshape(rows, -1, repeat, dim), key, value,
                                                               attn_mask=mask, scale=scaling)
        return out.reshape(rows, heads, 1, dim)
    if repeat > 1 and query.device.type != "cpu":
        key, value = key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1)
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                                            enable_gqa=repeat > 1 and query.device.type == "cpu")


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     packed: list[Group] | None = None, **kwargs):
    """transformers' attention interface. With `packed`: query (1, H, n, D) is the packed row and
    key/value are the layer's whole buffers (slots, kv heads, capacity, D); (1, n, H, D) out."""
    if packed is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    heads, dim = query.shape[1], query.shape[3]
    out = []
    for group in packed:
        rows = query[0, :, group.start : group.start + group.rows * group.q]
        rows = rows.unflatten(1, (group.rows, group.q)).transpose(0, 1)  # (rows, H, q, D)
        keys, values = key[group.slots, :, : group.attend], value[group.slots, :, : group.attend]
        attended = _sdpa(rows, keys, values, group.mask, scaling)
        out.append(attended.transpose(1, 2).reshape(-1, heads, dim))
    return (torch.cat(out) if len(out) > 1 else out[0])[None], None


AttentionInterface.register(NAME, packed_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


_lock = threading.Lock()
_inside: dict[int, tuple[int, str]] = {}  # id(config) -> (forwards inside `packed`, the setting before)


@contextlib.contextmanager
def packed(llm):
    """Run `llm`'s forwards inside with the packed attention; its config is restored when the
    last forward inside (of any thread) leaves."""
    config = llm.config
    with _lock:
        count, before = _inside.get(id(config), (0, config._attn_implementation))
        _inside[id(config)] = (count + 1, before)
        config._attn_implementation = NAME
    try:
        yield
    finally:
        with _lock:
            count, before = _inside.pop(id(config))
            if count > 1:
                _inside[id(config)] = (count - 1, before)
            else:
                config._attn_implementation = before

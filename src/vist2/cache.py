"""The KV cache of a generation: a transformers `DynamicCache` plus which entries each row
may attend, with eviction that really frees memory (DESIGN 5).

Rows of a batch are prefilled one by one and merged with left padding; `valid` marks the
padding so every forward gets an explicit (B, 1, q, kv) bool mask. Evicting a finished
chunk concatenates the kept slices of every layer's `keys` / `values` into new tensors, so
the old storage is released (a slice view would keep it alive).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from vist2.errors import Vist2Error


class KVCache:
    def __init__(self, cache: DynamicCache, valid: torch.Tensor):
        self.cache = cache
        self.valid = valid  # (B, L) bool: False = left padding of a shorter row

    @classmethod
    def empty(cls, llm_config, batch: int, device: torch.device) -> KVCache:
        cache = DynamicCache(config=llm_config)
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            raise Vist2Error("generation needs a backbone whose cache layers are all full attention "
                             "(no sliding-window or linear-attention layers)")
        return cls(cache, torch.zeros(batch, 0, dtype=torch.bool, device=device))

    def __len__(self) -> int:
        return self.valid.shape[1]

    def row_lengths(self) -> torch.Tensor:
        """(B,) entries each row really holds (padding excluded)."""
        return self.valid.sum(1)

    def nbytes(self) -> int:
        """Bytes of storage held by all layers' keys and values."""
        return sum(layer.keys.untyped_storage().nbytes() + layer.values.untyped_storage().nbytes()
                   for layer in self.cache.layers if layer.is_initialized)

    def attention_mask(self, new: torch.Tensor, hide: slice | None = None) -> torch.Tensor:
        """(B, 1, q, L + q) bool: every valid cached entry (but `hide`), then `new` (q, q) among the new tokens."""
        batch, q = self.valid.shape[0], new.shape[0]
        old = self.valid.clone()
        if hide is not None:
            old[:, hide] = False
        old = old[:, None, None, :].expand(batch, 1, q, old.shape[1])
        return torch.cat([old, new.to(old.device).expand(batch, 1, q, q)], dim=-1)

    def appended(self, count: int) -> None:
        """Record `count` new entries per row (the model's forward has written them)."""
        ones = torch.ones(self.valid.shape[0], count, dtype=torch.bool, device=self.valid.device)
        self.valid = torch.cat([self.valid, ones], dim=1)

    def evict(self, start: int, end: int) -> None:
        """Drop entries [start, end) of every layer into freshly allocated, smaller tensors."""
        for layer in self.cache.layers:
            layer.keys = torch.cat([layer.keys[..., :start, :], layer.keys[..., end:, :]], dim=-2)
            layer.values = torch.cat([layer.values[..., :start, :], layer.values[..., end:, :]], dim=-2)
        self.valid = torch.cat([self.valid[:, :start], self.valid[:, end:]], dim=1)


def merge(rows: list[KVCache]) -> KVCache:
    """One batched cache from single-row caches, shorter rows padded on the left."""
    if len(rows) == 1:
        return rows[0]
    total = max(len(row) for row in rows)
    layers = []
    for index in range(len(rows[0].cache.layers)):
        keys, values = [], []
        for row in rows:
            layer = row.cache.layers[index]
            pad = (0, 0, total - len(row), 0)  # left-pad the sequence dim (-2)
            keys.append(torch.nn.functional.pad(layer.keys, pad))
            values.append(torch.nn.functional.pad(layer.values, pad))
        layers.append((torch.cat(keys), torch.cat(values)))
    valid = torch.cat([torch.cat([row.valid.new_zeros(1, total - len(row)), row.valid], dim=1) for row in rows])
    return KVCache(DynamicCache(ddp_cache_data=layers), valid)

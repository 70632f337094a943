"""The KV store of the engine: per-layer key and value buffers preallocated as
(slots, kv heads, capacity, head dim), one slot per running request (DESIGN 5).

A slot's entries [0, length) are its cache, compact: no padding, no holes. A forward names
the slots it runs and how many entries each writes (`begin`); transformers then calls `update`
per layer, which writes the new keys and values in place and returns the layer's buffers, from
which the packed attention (`attention.py`) reads each slot's entries. A gcc row's visual
block is written after its chunk and then copied over it (`move`, beta entries), so eviction
reallocates nothing and the freed entries are reused by the row's next tokens.

Memory: a slot is added with the entries its request can need at most (`Request.kv_need`), and
the capacity is the largest need of the slots in use, so a request whose need is known (text,
pcc, gcc with K-token chunks) never reallocates while it decodes. A forward that still finds
no room (gcc with fill chunks, whose count is known only as they close) grows the capacity
geometrically, so copies stay linear in the answer length. The buffers shrink when both slots
and capacity fit in half, so memory a finished request held is really returned. `nbytes`
counts what is allocated, reserved entries not yet written included; `bytes_copied` counts
what reallocation and slot compaction copied (not eviction's `move`).

Chosen by measurement over a `DynamicCache` with per-row eviction: see benchmarks/engine_*.
"""

from __future__ import annotations

import torch

from vist2.errors import Vist2Error

GROWTH = 2  # a forward beyond the capacity multiplies it by at least this

class KVStore:
    def __init__(self, llm_config, device: torch.device, dtype: torch.dtype):
        types = set(getattr(llm_config, "layer_types", None) or ["full_attention"])
        if types != {"full_attention"}:
            raise Vist2Error("generation needs a backbone whose layers are all full attention "
                             f"(this one has {sorted(types)})")
        heads = getattr(llm_config, "num_key_value_heads", None) or llm_config.num_attention_heads
        head_dim = getattr(llm_config, "head_dim", None) or llm_config.hidden_size // llm_config.num_attention_heads
        self.shape = (llm_config.num_hidden_layers, 0, heads, 0, head_dim)
        self.keys = torch.zeros(self.shape, device=device, dtype=dtype)
        self.values = torch.zeros(self.shape, device=device, dtype=dtype)
        self._nbytes = 0  # storage bytes held, updated when the buffers are reallocated
        self.lengths: list[int] = []  # entries held per slot in use
        self.needs: list[int] = []  # entries reserved per slot in use
        self.reallocations = 0
        self.bytes_copied = 0  # by reallocation and slot compaction
        self._index: tuple[torch.Tensor, torch.Tensor] | None = None  # (1, n) slot and entry of each new token

    @property
    def slots(self) -> int:
        return self.keys.shape[1]

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def nbytes(self) -> int:
        """Bytes of storage held by all layers' keys and values."""
        return self._nbytes

    def _fit(self) -> None:
        """Grow to the slots and needs in use, or shrink when both fit in half of what is held."""
        slots, entries = len(self.lengths), max(self.needs, default=0)
        grow = slots > self.slots or entries > self.capacity
        shrink = 2 * slots <= self.slots and 2 * entries <= self.capacity
        if (grow or shrink) and (slots, entries) != (self.slots, self.capacity):
            self._resize(slots if shrink else max(slots, self.slots),
                         entries if shrink else max(entries, self.capacity))

    def _resize(self, slots: int, capacity: int) -> None:
        layers, _, heads, _, head_dim = self.shape
        keep_slots = min(slots, self.slots, len(self.lengths))
        keep = min(capacity, max(self.lengths[:keep_slots], default=0))
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = torch.zeros(layers, slots, heads, capacity, head_dim, device=old.device, dtype=old.dtype)
            new[:, :keep_slots, :, :keep] = old[:, :keep_slots, :, :keep]
            setattr(self, name, new)
        self.reallocations += 1
        self.bytes_copied += 2 * layers * keep_slots * heads * keep * head_dim * self.keys.element_size()
        self._nbytes = self.keys.untyped_storage().nbytes() + self.values.untyped_storage().nbytes()

    def add_slots(self, needs: list[int]) -> list[int]:
        """New slots, each with room for its number of entries (one reallocation for all)."""
        first = len(self.lengths)
        self.lengths += [0] * len(needs)
        self.needs += list(needs)
        self._fit()
        return list(range(first, len(self.lengths)))

    def free_slot(self, slot: int) -> int | None:
        """Free a slot; the last slot moves into it (returns its old index) so slots stay compact."""
        last = len(self.lengths) - 1
        moved = None
        if slot != last:
            count = self.lengths[last]
            self.keys[:, slot, :, :count] = self.keys[:, last, :, :count]
            self.values[:, slot, :, :count] = self.values[:, last, :, :count]
            self.bytes_copied += 2 * self.keys[:, slot, :, :count].numel() * self.keys.element_size()
            self.lengths[slot], self.needs[slot] = count, self.needs[last]
            moved = last
        self.lengths.pop()
        self.needs.pop()
        self._fit()
        return moved

    def begin(self, slots: list[int], counts: list[int]) -> list[int]:
        """Prepare a forward that writes counts[i] new entries after slot slots[i]'s (a packed row:
        slot by slot, in this order); returns where each slot's new entries start."""
        starts = [self.lengths[s] for s in slots]
        for s, start, count in zip(slots, starts, counts):
            self.needs[s] = max(self.needs[s], start + count)
        longest = max(start + count for start, count in zip(starts, counts))
        if longest > self.capacity:  # beyond every reservation (gcc fill): grow geometrically
            grown = max(longest, GROWTH * self.capacity)
            self.needs = [grown if need > self.capacity else need for need in self.needs]
        self._fit()
        device = self.keys.device
        self._index = (torch.tensor([[s for s, count in zip(slots, counts) for _ in range(count)]], device=device),
                       torch.tensor([[e for start, count in zip(starts, counts) for e in range(start, start + count)]],
                                    device=device))  # slot and entry of each new token
        for s, count in zip(slots, counts):
            self.lengths[s] += count
        return starts

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """transformers' cache interface: store the packed row's (1, H, n, D) new keys and values
        where `begin` said; returns the layer's whole buffers (`attention.packed_attention` reads
        each slot's entries from them)."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        rows, write = self._index
        keys[rows, :, write] = key_states.transpose(1, 2).to(keys.dtype)
        values[rows, :, write] = value_states.transpose(1, 2).to(values.dtype)
        return keys, values

    def move(self, slot: int, source: int, target: int, count: int) -> None:
        """Copy entries [source, source + count) of a slot to [target, ...); the slot then ends there."""
        self.keys[:, slot, :, target : target + count] = self.keys[:, slot, :, source : source + count].clone()
        self.values[:, slot, :, target : target + count] = self.values[:, slot, :, source : source + count].clone()
        self.lengths[slot] = target + count

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.lengths, default=0)

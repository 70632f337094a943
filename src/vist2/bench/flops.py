"""FLOPs: the LLM's closed form, counted pages, and measured counts by component.

The LLM's closed form counts what torch's `FlopCounterMode` counts: 2*m*n*k per matrix product
(linear layers, attention scores and the attention-weighted values); norms, activations,
RoPE, softmax and embedding look-ups are free. Attention is counted dense: SDPA with an
explicit mask computes every (query, key) score of the block, masked or not.

The vision tower is a library's module (transformers' SigLIP / SigLIP2), so its FLOPs per page
are not written out here but counted on it (`count_page`, kept per config by `page_flops`):
when the library changes how it computes a page, bounds and measured counts move together.

Measured counts split one model's FLOPs into the components of `Vist2Model`:

    with ComponentFlops(model) as flops:
        generate(model, tokenizer, prompt, config)
    flops.counts  # {"llm": ..., "vision": ..., "aligner": ..., "other": ..., "total": ...}

`count_llm_step` / `count_page` count one LLM forward or one page on a model built on the meta
device (`vist2.model.meta_model`: no memory, no weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from vist2.decode import cache_keyword
from vist2.model import meta_model

COMPONENTS = ("llm", "vision", "aligner")


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def flop_counter() -> FlopCounterMode:
    """A silent `FlopCounterMode` that also counts SDPA's CPU kernel (torch registers only
    the GPU kernels, so CPU attention would otherwise count as zero)."""
    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops})


@dataclass(frozen=True)
class LLMShape:
    """The sizes of a decoder LLM that its FLOPs and KV cache depend on."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_hf(cls, config) -> LLMShape:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                   config.num_key_value_heads or config.num_attention_heads, head_dim,
                   config.intermediate_size, config.vocab_size)

    @property
    def linear_per_token(self) -> int:
        """q, k, v, o projections and the gated MLP (gate, up, down), all layers; no LM head."""
        d, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.layers * 2 * (d * q + 2 * d * kv + q * d + 3 * d * self.intermediate)

    @property
    def head_per_row(self) -> int:
        """The LM head for one row of logits."""
        return 2 * self.hidden * self.vocab

    def attention(self, queries: int, keys: int) -> int:
        """Scores (Q K^T) and weighted values (P V) of `queries` rows against `keys` keys."""
        return self.layers * 4 * self.heads * self.head_dim * queries * keys

    def forward(self, queries: int, cache: int, logits: int) -> int:
        """One forward of `queries` new tokens over `cache` cached ones, with `logits` rows of logits."""
        return queries * self.linear_per_token + self.attention(queries, cache + queries) + logits * self.head_per_row

    def kv_bytes_per_token(self, element_size: int) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim * element_size


class ComponentFlops:
    """Counts FLOPs with one `FlopCounterMode` and attributes them to the model's components.

    A global module hook notes when a call enters a module of a component (however it is
    reached: `model(...)`, `model.llm(...)`, `model.encode_pages(...)`) and reads the
    running total when that outermost call returns. FLOPs outside every component go to "other".
    """

    def __init__(self, model: nn.Module):
        self.component_of = {module: name for name, part in model.parameter_groups().items()
                             for module in part.modules()}
        self.counts = dict.fromkeys((*COMPONENTS, "other", "total"), 0)
        self._open: list[tuple[nn.Module, str, int]] = []  # (module, component, total at entry)
        self._counter = flop_counter()
        self._hooks = []

    def _pre(self, module, args) -> None:
        if not self._open and module in self.component_of:
            self._open.append((module, self.component_of[module], self._counter.get_total_flops()))

    def _post(self, module, args, output) -> None:
        if self._open and self._open[-1][0] is module:
            _, component, start = self._open.pop()
            self.counts[component] += self._counter.get_total_flops() - start

    def __enter__(self) -> ComponentFlops:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self._counter.__enter__()
        self._hooks = [register_module_forward_pre_hook(self._pre), register_module_forward_hook(self._post)]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._counter.__exit__(*exc)
        self._open.clear()
        self.counts["total"] = self._counter.get_total_flops()
        self.counts["other"] = self.counts["total"] - sum(self.counts[c] for c in COMPONENTS)


def count_llm_step(model, queries: int, cache: int, logits: int) -> int:
    """Counted FLOPs of one LLM forward of `queries` tokens over a cache of `cache` entries."""
    from transformers import DynamicCache

    llm, device = model.llm, model.device
    hf = llm.config
    shape = LLMShape.from_hf(hf)
    past = DynamicCache(config=hf)
    if cache:
        kv = torch.empty(1, shape.kv_heads, cache, shape.head_dim, device=device)
        for layer in range(shape.layers):
            past.update(kv, kv, layer)
    embeds = torch.empty(1, queries, shape.hidden, device=device)
    positions = torch.arange(cache, cache + queries, device=device)[None]
    mask = torch.ones(1, 1, queries, cache + queries, dtype=torch.bool, device=device)
    with torch.no_grad(), flop_counter() as counter:
        llm(inputs_embeds=embeds, position_ids=positions, attention_mask=mask, use_cache=True,
            logits_to_keep=logits, **{cache_keyword(llm): past})
    return counter.get_total_flops()


def count_page(model) -> dict[str, int]:
    """Counted FLOPs of encoding one page: {"vision": ..., "aligner": ...} (meta or real model).

    The tower is called as `VisionTower` calls it, but with the page's patch grid given on
    the CPU and no padding mask (a full page has none), so nothing needs tensor data."""
    config, device = model.config, model.device
    tower = model.vision.model
    patch, channels = config.vision.patch_size, tower.config.num_channels
    rows, cols = config.render.height // patch, config.render.width // patch
    with torch.no_grad(), flop_counter() as counter:
        if model.vision.siglip2:
            pixels = torch.empty(1, rows * cols, channels * patch * patch, device=device)
            hidden = tower(pixel_values=pixels, pixel_attention_mask=None, spatial_shapes=torch.tensor([[rows, cols]]))
        else:
            hidden = tower(pixel_values=torch.empty(1, channels, config.render.height, config.render.width, device=device))
    vision = counter.get_total_flops()
    features = hidden.last_hidden_state.reshape(1, rows, cols, -1)
    with torch.no_grad(), flop_counter() as counter:
        model.aligner(features)
    return {"vision": vision, "aligner": counter.get_total_flops()}


_PAGE_FLOPS: dict[str, dict[str, int]] = {}


def page_flops(config) -> dict[str, int]:
    """`count_page` of a model of `config`, counted once on the meta device and kept for the process."""
    key = json.dumps(config.to_dict(), sort_keys=True)
    if key not in _PAGE_FLOPS:
        _PAGE_FLOPS[key] = count_page(meta_model(config))
    return dict(_PAGE_FLOPS[key])

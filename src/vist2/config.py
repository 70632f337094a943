"""Model configuration: one small frozen dataclass per concern, composed into `Vist2Config`.

The vision encoder and the LLM are Hugging Face models; their configs are kept as the
plain keyword dicts that `transformers` config classes take, so any RoPE decoder
(`model_type` "qwen3", "llama", ...) and SigLIP / SigLIP2 encoder can be described.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vist2.errors import Vist2Error
from vist2.render import MAX_PAGE_SIDE, RenderConfig, check_min_font_size

VISION_TYPES = ("siglip_vision_model", "siglip2_vision_model")
ATTENTION = ("sdpa", "flex_attention", "eager")
CHUNKING = ("fixed", "fill")
_TYPES = {"int": int, "bool": bool, "str": str, "str | None": (str, type(None)), "dict[str, Any]": dict}


def _check_field_types(config) -> None:
    """Every field of `config` and its parts has its declared type (config.json is untrusted)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            if f.name != "render":  # RenderConfig checks itself
                for inner in dataclasses.fields(value):
                    kind = _TYPES.get(inner.type)
                    item = getattr(value, inner.name)
                    if kind and (not isinstance(item, kind) or (kind is int and isinstance(item, bool))):
                        raise Vist2Error(f"{f.name}.{inner.name} must be of type {inner.type}, got {item!r}")
        elif not isinstance(value, str):
            raise Vist2Error(f"{f.name} must be a string, got {value!r}")


@dataclass(frozen=True)
class VisionConfig:
    """A SigLIP (square pages) or SigLIP2 (any page shape) vision tower."""

    model_type: str = "siglip2_vision_model"
    params: dict[str, Any] = field(default_factory=dict)  # kwargs of the HF config class
    path: str | None = None  # local folder with pretrained weights, loaded by `model.build_llm`

    @property
    def patch_size(self) -> int:
        return int(self.params.get("patch_size", 16))

    @property
    def hidden_size(self) -> int:
        return int(self.params.get("hidden_size", 768))


@dataclass(frozen=True)
class AlignerConfig:
    """Visual features -> LLM embeddings: tanh(Linear) (paper default) or a 2-layer MLP."""

    kind: str = "tanh"  # "tanh" | "mlp"
    mlp_hidden: int = 0  # hidden size of the MLP option (paper: 19,456)
    merge: int = 1  # pixel-shuffle factor s: s*s neighbouring patches become one token


@dataclass(frozen=True)
class LLMConfig:
    """A Hugging Face causal LM that accepts inputs_embeds, position_ids and a 4D mask."""

    model_type: str = "qwen3"
    params: dict[str, Any] = field(default_factory=dict)
    path: str | None = None  # local folder with pretrained weights


@dataclass(frozen=True)
class ChunkConfig:
    """How text is cut: K tokens per chunk (`fixed`), or as many as fill the page (`fill`);
    a visual block then holds beta tokens."""

    chunk_tokens: int = 1024
    chunking: str = "fixed"  # "fixed": K tokens | "fill": closes before the token that would overflow its page
    min_font_size: int = 0  # fill: pages are filled down to this font size; 0 = render.min_font_size
    max_chunk_tokens: int = 0  # fill: most tokens per chunk; 0 = 4 x chunk_tokens
    visual_sees_text: bool = True  # a visual block attends the text chunk it encodes
    bidirectional_visual: bool = False  # attention inside a visual block


def check_chunking(chunking: str, min_font_size: int, max_chunk_tokens: int, prefix: str = "",
                   font_sizes: tuple[int, int] = (1, MAX_PAGE_SIDE)) -> None:
    """The chunking policy's fields (0 = the default for both numbers); min_font_size within the
    renderer's `font_sizes` (its smallest and largest)."""
    if chunking not in CHUNKING:
        raise Vist2Error(f"{prefix}chunking must be one of {', '.join(CHUNKING)}, got {chunking!r}")
    check_min_font_size(min_font_size, *font_sizes, name=f"{prefix}min_font_size")
    value = max_chunk_tokens
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Vist2Error(f"{prefix}max_chunk_tokens must be an integer >= 0 (0 = the default), got {value!r}")


@dataclass(frozen=True)
class Vist2Config:
    render: RenderConfig = field(default_factory=RenderConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    aligner: AlignerConfig = field(default_factory=AlignerConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    tokenizer: str = "qwen3"  # "qwen3" | "bytes" | a local tokenizer folder
    attn_implementation: str = "sdpa"  # "sdpa" (CPU, explicit bool mask) | "flex_attention" (GPU)
    preset: str = "custom"

    def __post_init__(self) -> None:
        _check_field_types(self)
        if self.attn_implementation not in ATTENTION:
            raise Vist2Error(f"attn_implementation must be one of {ATTENTION}, got {self.attn_implementation!r}")
        if self.aligner.merge < 1:
            raise Vist2Error(f"aligner.merge must be >= 1, got {self.aligner.merge}")
        if self.vision.model_type not in VISION_TYPES:
            raise Vist2Error(f"vision.model_type must be one of {VISION_TYPES}, got {self.vision.model_type!r}")
        if self.aligner.kind not in ("tanh", "mlp"):
            raise Vist2Error(f"aligner.kind must be 'tanh' or 'mlp', got {self.aligner.kind!r}")
        if self.aligner.kind == "mlp" and self.aligner.mlp_hidden < 1:
            raise Vist2Error("aligner.kind='mlp' needs aligner.mlp_hidden >= 1")
        self.page_tokens(self.render)  # the page is a whole number of merged patches
        if self.vision.model_type == "siglip_vision_model" and self.render.width != self.render.height:
            raise Vist2Error("SigLIP (v1) needs square pages; use siglip2_vision_model for other shapes")
        if self.chunk.chunk_tokens < 1:
            raise Vist2Error("chunk.chunk_tokens must be >= 1")
        check_chunking(self.chunk.chunking, self.chunk.min_font_size, self.chunk.max_chunk_tokens, "chunk.",
                       (self.render.min_font_size, self.render.max_font_size))

    @property
    def visual_tokens(self) -> int:
        """beta: tokens one rendered page becomes."""
        return self.page_tokens(self.render)

    def page_tokens(self, render: RenderConfig) -> int:
        """beta for pages of `render`'s size: one token per (patch x merge)^2 pixels."""
        step = self.vision.patch_size * self.aligner.merge
        if render.width % step or render.height % step:
            raise Vist2Error(f"page {render.width}x{render.height} is not a multiple of patch size x merge = {step}")
        return (render.width // step) * (render.height // step)

    @property
    def ratio(self) -> float:
        """Compression ratio r = K / beta."""
        return self.chunk.chunk_tokens / self.visual_tokens

    def replace(self, **changes: Any) -> Vist2Config:
        """A copy with some top-level fields or nested fields ("chunk.chunk_tokens") changed."""
        nested: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for key, value in changes.items():
            if "." in key:
                part, name = key.split(".", 1)
                nested.setdefault(part, {})[name] = value
            else:
                top[key] = value
        for part, values in nested.items():
            top[part] = dataclasses.replace(getattr(self, part), **values)
        return dataclasses.replace(self, **top)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vist2Config:
        parts = {"render": RenderConfig, "vision": VisionConfig, "aligner": AlignerConfig,
                 "llm": LLMConfig, "chunk": ChunkConfig}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise Vist2Error(f"unknown config fields: {sorted(unknown)}")
        values = dict(data)
        for name, part in parts.items():
            if name in values:
                if not isinstance(values[name], dict):
                    raise Vist2Error(f"config.{name} must be a JSON object, got {values[name]!r}")
                fields = {f.name for f in dataclasses.fields(part)}
                extra = set(values[name]) - fields
                if extra:
                    raise Vist2Error(f"unknown fields in config.{name}: {sorted(extra)}")
                values[name] = part(**values[name])
        return cls(**values)

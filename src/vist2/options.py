"""Per-call chunk options of generation and verification, defaulting to the model's config.

Options are arguments: nothing replaces a built model's config to change them. beta is not
free: it is the number of visual tokens the encoder makes of one page of the renderer's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vist2.config import check_chunking
from vist2.errors import Vist2Error

if TYPE_CHECKING:
    from vist2.chunking import Fill

FILL_MAX_FACTOR = 4  # fill: max_chunk_tokens 0 = this many times chunk_tokens
MODES = ("text", "pcc", "gcc")  # generation modes (DESIGN 5), in the order results show them


@dataclass(frozen=True)
class ChunkOptions:
    chunk_tokens: int  # K: generated (and query) tokens per chunk
    beta: int  # visual tokens per page
    visual_sees_text: bool  # a visual block attends the text chunk it encodes
    bidirectional_visual: bool  # attention inside a visual block
    chunking: str = "fixed"  # "fixed": K tokens per chunk | "fill": as many as fill the page
    min_font_size: int = 0  # fill: pages are filled down to this size; 0 = the renderer's min_font_size
    max_chunk_tokens: int = 0  # fill: most tokens per chunk; 0 = FILL_MAX_FACTOR x chunk_tokens

    def __post_init__(self) -> None:
        for name in ("chunk_tokens", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise Vist2Error(f"{name} must be a positive integer, got {value!r}")
        check_chunking(self.chunking, self.min_font_size, self.max_chunk_tokens)

    @property
    def ratio(self) -> float:
        """K / beta: text tokens per visual token of a full fixed chunk."""
        return self.chunk_tokens / self.beta

    def fill(self, renderer, tokenizer) -> Fill | None:
        """The fill policy for pages of this renderer (None for fixed K)."""
        from vist2.chunking import Fill

        if self.chunking == "fixed":
            return None
        fit = renderer.page_fit(self.min_font_size)
        return Fill(tokenizer, fit.copy, self.max_chunk_tokens or FILL_MAX_FACTOR * self.chunk_tokens)


@dataclass(frozen=True)
class GenerationConfig:
    mode: str = "gcc"
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop_strings: tuple[str, ...] = ()  # the text is cut before the first one found
    ignore_eos: bool = False
    seed: int | None = None
    chat_template: bool = True  # False: the prompt is the query alone (LongBench's trec, lcc, ...)
    presence_penalty: float = 0.0  # subtracted once from every token already generated (OpenAI's)
    frequency_penalty: float = 0.0  # subtracted per occurrence in the generated tokens
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    min_p: float = 0.0  # drop tokens less likely than min_p times the likeliest; 0 = off
    logprobs: int | None = None  # report each token's log-probability and this many alternatives
    grammar: str | None = None  # the output follows this llguidance grammar (vist2.constrain)

    def __post_init__(self) -> None:
        INF = float("inf")  # noqa: N806  (NaN fails every comparison, so -INF < x < INF rejects it too)
        if self.mode not in MODES:
            raise Vist2Error(f"unknown mode {self.mode!r}; choose from {', '.join(MODES)}")
        for name in ("max_new_tokens", "top_k", "no_repeat_ngram_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise Vist2Error(f"{name} must be an integer, got {value!r}")
        for name in ("temperature", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "min_p"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not -INF < value < INF:
                raise Vist2Error(f"{name} must be a finite number, got {value!r}")
        if self.max_new_tokens < 1:
            raise Vist2Error(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.temperature < 0 or self.top_k < 0 or self.no_repeat_ngram_size < 0:
            raise Vist2Error("temperature, top_k and no_repeat_ngram_size must be >= 0")
        if not 0 < self.top_p <= 1:
            raise Vist2Error(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise Vist2Error(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if isinstance(self.stop_strings, str) or not all(isinstance(s, str) for s in self.stop_strings):
            raise Vist2Error(f"stop_strings must be a tuple of strings, got {self.stop_strings!r}")
        if any(not s for s in self.stop_strings):
            raise Vist2Error("stop strings must be non-empty")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise Vist2Error(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not 0 <= self.min_p <= 1:
            raise Vist2Error(f"min_p must be in [0, 1], got {self.min_p}")
        if not all(isinstance(t, int) and isinstance(v, (int, float)) and -INF < v < INF for t, v in self.logit_bias):
            raise Vist2Error(f"logit_bias must hold (token id, finite number) pairs, got {self.logit_bias!r}")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or self.logprobs < 0):
            raise Vist2Error(f"logprobs must be None or an integer >= 0, got {self.logprobs!r}")
        for name in ("ignore_eos", "chat_template"):
            if not isinstance(getattr(self, name), bool):
                raise Vist2Error(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.grammar is not None and not isinstance(self.grammar, str):
            raise Vist2Error(f"grammar must be a string, got {type(self.grammar).__name__}")
        if self.grammar is not None and self.no_repeat_ngram_size:
            raise Vist2Error("a grammar and no_repeat_ngram_size cannot be combined: the ban may forbid every "
                             "token the grammar allows")


def chunk_options(model, renderer=None, chunk_tokens: int | None = None, visual_sees_text: bool | None = None,
                  bidirectional_visual: bool | None = None, chunking: str | None = None,
                  min_font_size: int | None = None, max_chunk_tokens: int | None = None) -> ChunkOptions:
    """The model's chunk options with any of them given here instead; beta from the renderer's page."""
    chunk = model.config.chunk
    render_config = renderer.config if renderer is not None else model.config.render
    given = lambda value, default: default if value is None else value  # noqa: E731
    return ChunkOptions(
        given(chunk_tokens, chunk.chunk_tokens),
        model.config.page_tokens(render_config),
        given(visual_sees_text, chunk.visual_sees_text),
        given(bidirectional_visual, chunk.bidirectional_visual),
        given(chunking, chunk.chunking),
        given(min_font_size, chunk.min_font_size),
        given(max_chunk_tokens, chunk.max_chunk_tokens),
    )

"""Per-call chunk options of generation and verification, defaulting to the model's config.

Options are arguments: nothing replaces a built model's config to change them. beta is not
free: it is the number of visual tokens the encoder makes of one page of the renderer's size.
"""

from __future__ import annotations

from dataclasses import dataclass

from vist2.errors import Vist2Error


@dataclass(frozen=True)
class ChunkOptions:
    chunk_tokens: int  # K: generated (and query) tokens per chunk
    beta: int  # visual tokens per page
    visual_sees_text: bool  # a visual block attends the text chunk it encodes
    bidirectional_visual: bool  # attention inside a visual block

    def __post_init__(self) -> None:
        for name in ("chunk_tokens", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise Vist2Error(f"{name} must be a positive integer, got {value!r}")


def page_tokens(model, render_config) -> int:
    """beta for pages of this size: one token per (patch x merge)^2 pixels."""
    step = model.config.vision.patch_size * model.config.aligner.merge
    if render_config.width % step or render_config.height % step:
        raise Vist2Error(f"page {render_config.width}x{render_config.height} is not a multiple of "
                         f"patch size x merge = {step}")
    return (render_config.width // step) * (render_config.height // step)


def chunk_options(model, renderer=None, chunk_tokens: int | None = None, visual_sees_text: bool | None = None,
                  bidirectional_visual: bool | None = None) -> ChunkOptions:
    """The model's chunk options with any of them given here instead; beta from the renderer's page."""
    chunk = model.config.chunk
    render_config = renderer.config if renderer is not None else model.config.render
    return ChunkOptions(
        chunk.chunk_tokens if chunk_tokens is None else chunk_tokens,
        page_tokens(model, render_config),
        chunk.visual_sees_text if visual_sees_text is None else visual_sees_text,
        chunk.bidirectional_visual if bidirectional_visual is None else bidirectional_visual,
    )

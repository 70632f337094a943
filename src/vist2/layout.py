"""Interleaved layouts and the attention mask, positions and labels they imply (DESIGN 3).

A layout is a tuple of `Segment`s. Everything the model needs besides token content is
derived from it here:

- `position_ids`: transient text does not advance the position counter, so a chunk and
  its visual block start at the same base and the cache after eviction has consistent RoPE;
- `loss_mask`: which tokens are prediction targets (the logit one step earlier predicts them);
- `dense_mask`: the obviously-correct reference rule, written as loops (tests use it);
- `attention_mask`: the same rule vectorised, as the (B, 1, T, T) bool mask SDPA takes;
- `block_mask`: the same rule as a FlexAttention `BlockMask` (the GPU path).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from vist2.errors import Vist2Error


@dataclass(frozen=True)
class Segment:
    kind: str  # "text" | "visual"
    length: int
    persistent: bool = True  # transient text is later replaced by its visual block
    chunk: int | None = None  # the chunk this text is, or this visual block encodes
    sees_text: bool = False  # visual only: attends the text of `chunk`
    loss: bool = False  # text only: its tokens are prediction targets

    def __post_init__(self) -> None:
        if self.kind not in ("text", "visual"):
            raise Vist2Error(f"segment kind must be 'text' or 'visual', got {self.kind!r}")
        if self.length < 1:
            raise Vist2Error(f"segment length must be >= 1, got {self.length}")
        if self.kind == "visual" and (not self.persistent or self.loss):
            raise Vist2Error("visual blocks are persistent and carry no loss")
        if self.kind == "text" and self.sees_text:
            raise Vist2Error("only visual blocks can see text")
        if not self.persistent and self.chunk is None:
            raise Vist2Error("a transient text segment needs a chunk index")

    def as_json(self) -> dict:
        return asdict(self)


Layout = tuple[Segment, ...]


def text(length: int, *, loss: bool = False, chunk: int | None = None, persistent: bool = True) -> Segment:
    return Segment("text", length, persistent=persistent, chunk=chunk, loss=loss)


def visual(length: int, chunk: int, *, sees_text: bool = False) -> Segment:
    return Segment("visual", length, chunk=chunk, sees_text=sees_text)


def validate(layout: Layout) -> None:
    """Chunk indices name one text segment each; a visual block that sees text has it earlier."""
    text_chunks: dict[int, int] = {}
    for index, segment in enumerate(layout):
        if segment.kind == "text" and segment.chunk is not None:
            if segment.chunk in text_chunks:
                raise Vist2Error(f"chunk {segment.chunk} has two text segments")
            text_chunks[segment.chunk] = index
        if segment.sees_text and segment.chunk not in text_chunks:
            raise Vist2Error(f"visual block {index} sees chunk {segment.chunk}, which has no earlier text")


def length(layout: Layout) -> int:
    return sum(segment.length for segment in layout)


def span(text: int, blocks: int, beta: int) -> int:
    """Length of `text` text tokens and `blocks` visual blocks of beta tokens each: the positions of
    a prompt or response, the cache entries of a row, the length of a training sample."""
    return text + blocks * beta


def position_ids(layout: Layout) -> torch.Tensor:
    """(T,) positions: every segment starts at the base; only persistent ones advance it."""
    positions, base = [], 0
    for segment in layout:
        positions.append(torch.arange(base, base + segment.length))
        if segment.persistent:
            base += segment.length
    return torch.cat(positions)


def loss_mask(layout: Layout) -> torch.Tensor:
    """(T,) bool: tokens that are targets. Position 0 has nothing before it to predict it."""
    mask = torch.cat([torch.full((s.length,), s.kind == "text" and s.loss) for s in layout])
    mask[0] = False
    return mask


def dense_mask(layout: Layout, bidirectional_visual: bool = False) -> torch.Tensor:
    """(T, T) bool reference: row = query, column = key, True = may attend. Slow and plain."""
    validate(layout)
    owner = [index for index, segment in enumerate(layout) for _ in range(segment.length)]
    T = len(owner)
    mask = torch.zeros(T, T, dtype=torch.bool)
    for q in range(T):
        qs = layout[owner[q]]
        for k in range(T):
            ks = layout[owner[k]]
            same_segment = owner[q] == owner[k]
            if k > q and not (bidirectional_visual and same_segment and qs.kind == "visual"):
                continue
            own_chunk = same_segment and not ks.persistent
            reads_its_text = qs.sees_text and ks.kind == "text" and ks.chunk == qs.chunk
            mask[q, k] = ks.persistent or own_chunk or reads_its_text
    return mask


def _token_tables(layout: Layout) -> dict[str, torch.Tensor]:
    """Per-token integer tables that the vectorised rule and the Flex mask_mod index."""
    text_segment = {s.chunk: i for i, s in enumerate(layout) if s.kind == "text" and s.chunk is not None}
    segment_ids, persistent, visual, sees = [], [], [], []
    for index, segment in enumerate(layout):
        n = segment.length
        segment_ids.append(torch.full((n,), index))
        persistent.append(torch.full((n,), segment.persistent))
        visual.append(torch.full((n,), segment.kind == "visual"))
        sees.append(torch.full((n,), text_segment[segment.chunk] if segment.sees_text else -1))
    return {
        "segment": torch.cat(segment_ids),
        "persistent": torch.cat(persistent),
        "visual": torch.cat(visual),
        "sees": torch.cat(sees),
    }


def _rule(tables: dict[str, torch.Tensor], q: torch.Tensor, k: torch.Tensor, bidirectional_visual: bool):
    """The attention rule on index tensors q, k (any broadcastable shapes)."""
    same = tables["segment"][q] == tables["segment"][k]
    allowed = tables["persistent"][k] | same | (tables["sees"][q] == tables["segment"][k])
    causal = k <= q
    if bidirectional_visual:
        causal = causal | (same & tables["visual"][q])
    return causal & allowed


def _padded_tables(layouts: list[Layout], total: int) -> dict[str, torch.Tensor]:
    """Tables for a batch, each row padded to `total` with one persistent padding segment."""
    rows = []
    for layout in layouts:
        validate(layout)
        pad = total - length(layout)
        if pad < 0:
            raise Vist2Error(f"layout of length {length(layout)} is longer than the batch length {total}")
        rows.append(_token_tables(layout + ((text(pad),) if pad else ())))
    return {name: torch.stack([row[name] for row in rows]) for name in rows[0]}


def attention_mask(layouts: list[Layout], total: int | None = None, bidirectional_visual: bool = False) -> torch.Tensor:
    """(B, 1, T, T) bool mask for SDPA. Shorter layouts are padded at the end (padding
    is persistent text that no real token can see, because it comes after them)."""
    total = total or max(length(layout) for layout in layouts)
    tables = _padded_tables(layouts, total)
    q = torch.arange(total).view(total, 1)
    k = torch.arange(total).view(1, total)
    masks = []
    for b in range(len(layouts)):
        row = {name: table[b] for name, table in tables.items()}
        masks.append(_rule(row, q, k, bidirectional_visual))
    return torch.stack(masks).unsqueeze(1)


def block_mask(layouts: list[Layout], total: int | None = None, bidirectional_visual: bool = False,
               device: str | torch.device = "cpu"):
    """The same rule as a FlexAttention BlockMask (GPU path; forward also runs on CPU)."""
    from torch.nn.attention.flex_attention import create_block_mask

    total = total or max(length(layout) for layout in layouts)
    tables = {name: t.to(device) for name, t in _padded_tables(layouts, total).items()}

    def mask_mod(b, h, q, k):
        return _rule({name: table[b] for name, table in tables.items()}, q, k, bidirectional_visual)

    return create_block_mask(mask_mod, len(layouts), None, total, total, device=device)


def block_mask_from_dense(mask: torch.Tensor):
    """A (B, 1, T, T) bool mask (as `attention_mask` builds) as a FlexAttention BlockMask on its device."""
    from torch.nn.attention.flex_attention import create_block_mask

    rows = mask[:, 0]

    def mask_mod(b, h, q, k):
        return rows[b, q, k]

    return create_block_mask(mask_mod, mask.shape[0], None, mask.shape[-2], mask.shape[-1], device=mask.device)


def describe(layout: Layout, bidirectional_visual: bool = False) -> dict:
    """The JSON form printed by `vist2 layout --json`."""
    return {
        "segments": [segment.as_json() for segment in layout],
        "position_ids": position_ids(layout).tolist(),
        "mask": attention_mask([layout], bidirectional_visual=bidirectional_visual)[0, 0].int().tolist(),
    }


def draw_mask(layout: Layout, path: str, bidirectional_visual: bool = False) -> None:
    """Save the attention mask as a picture (like the paper's Figure 2): rows are queries,
    columns keys; allowed cells are coloured by the key's segment kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mask = attention_mask([layout], bidirectional_visual=bidirectional_visual)[0, 0].numpy()
    kinds = [2 if s.kind == "visual" else (1 if s.persistent else 0) for s in layout for _ in range(s.length)]
    colours = np.array([[0.95, 0.55, 0.25], [0.35, 0.55, 0.85], [0.35, 0.7, 0.4]])  # transient, persistent, visual
    picture = np.where(mask[..., None], colours[np.array(kinds)][None, :, :], 1.0)
    size = min(12.0, 3 + len(kinds) / 12)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(picture, interpolation="nearest")
    edges = np.cumsum([s.length for s in layout])[:-1] - 0.5
    for edge in edges:
        axes.axhline(edge, color="0.6", linewidth=0.5)
        axes.axvline(edge, color="0.6", linewidth=0.5)
    labels = [("v" if s.kind == "visual" else "c" if not s.persistent else "p") + ("" if s.chunk is None else str(s.chunk))
              for s in layout]
    centres = np.cumsum([s.length for s in layout]) - np.array([s.length for s in layout]) / 2 - 0.5
    axes.set_xticks(centres, labels, fontsize=7)
    axes.set_yticks(centres, labels, fontsize=7)
    axes.set_xlabel("key")
    axes.set_ylabel("query")
    axes.set_title("orange: transient text, blue: persistent text, green: visual block")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)

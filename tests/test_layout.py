"""Mask, positions and labels follow DESIGN section 3 on many random layouts; the fast
forms (SDPA bool mask, FlexAttention BlockMask) equal the dense reference."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vist2 import layout as L
from vist2.cli import main
from vist2.errors import Vist2Error


@st.composite
def layouts(draw):
    """Random valid layouts: persistent text, transient chunks (with or without their visual
    block, which may see them), and visual blocks of compressed text that is not in the sequence."""
    segments, chunk = [], 0
    for _ in range(draw(st.integers(1, 7))):
        kind = draw(st.sampled_from(["persistent", "chunk", "compressed"]))
        n = draw(st.integers(1, 6))
        loss = draw(st.booleans())
        if kind == "persistent":
            segments.append(L.text(n, loss=loss))
        elif kind == "compressed":
            segments.append(L.visual(n, chunk))
        else:
            segments.append(L.text(n, loss=loss, chunk=chunk, persistent=False))
            if draw(st.booleans()):
                segments.append(L.visual(draw(st.integers(1, 4)), chunk, sees_text=draw(st.booleans())))
        chunk += 1
    return tuple(segments)


def owners(layout):
    return [i for i, s in enumerate(layout) for _ in range(s.length)]


@settings(max_examples=150, deadline=None)
@given(layouts(), st.booleans())
def test_vectorised_mask_equals_dense_reference(layout, bidirectional):
    dense = L.dense_mask(layout, bidirectional)
    assert torch.equal(L.attention_mask([layout], bidirectional_visual=bidirectional)[0, 0], dense)


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_mask_follows_the_attention_rule(layout):
    mask, own = L.dense_mask(layout), owners(layout)
    for q in range(len(own)):
        qs = layout[own[q]]
        assert mask[q, q]  # every token sees itself
        for k in range(len(own)):
            ks = layout[own[k]]
            if k > q:
                assert not mask[q, k]
            elif not ks.persistent:  # transient text: only its own chunk and its own visual block
                assert mask[q, k] == (own[q] == own[k] or (qs.sees_text and qs.chunk == ks.chunk))
            else:
                assert mask[q, k]


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_positions_give_every_query_a_consistent_rope_view(layout):
    """Apart from the chunk text a visual block reads (which shares the block's base), the keys
    a query sees have distinct, increasing positions ending at its own: exactly the state of a
    KV cache that holds persistent segments plus the current chunk."""
    mask, positions, own = L.dense_mask(layout), L.position_ids(layout), owners(layout)
    for q in range(len(positions)):
        reads = [layout[own[q]].sees_text and layout[own[k]].kind == "text"
                 and layout[own[k]].chunk == layout[own[q]].chunk for k in range(len(own))]
        seen = positions[mask[q] & ~torch.tensor(reads, dtype=torch.bool)]
        assert torch.all(seen[1:] > seen[:-1])
        assert seen[-1] == positions[q]


@settings(max_examples=100, deadline=None)
@given(layouts())
def test_chunk_and_its_visual_block_share_a_base_and_only_persistent_segments_advance(layout):
    positions, start, base = L.position_ids(layout), 0, 0
    for segment in layout:
        assert positions[start] == base
        assert torch.equal(positions[start:start + segment.length], torch.arange(base, base + segment.length))
        start += segment.length
        base += segment.length if segment.persistent else 0


@settings(max_examples=100, deadline=None)
@given(layouts())
def test_labels_only_on_loss_text(layout):
    targets, own = L.loss_mask(layout), owners(layout)
    assert not targets[0]  # nothing before it to predict it
    for t in range(1, len(own)):
        segment = layout[own[t]]
        assert targets[t] == (segment.kind == "text" and segment.loss)


@settings(max_examples=20, deadline=None)
@given(st.lists(layouts(), min_size=1, max_size=3))
def test_padded_batch_masks_match_each_dense_mask(batch):
    total = max(L.length(layout) for layout in batch) + 3
    masks = L.attention_mask(batch, total)
    for row, layout in enumerate(batch):
        n = L.length(layout)
        assert torch.equal(masks[row, 0, :n, :n], L.dense_mask(layout))
        assert not masks[row, 0, :n, n:].any()  # real tokens never see padding
        assert masks[row, 0, n:].any(dim=-1).all()  # padding rows are never empty (no NaN)


def test_flex_block_mask_forward_equals_dense():
    flex_attention = pytest.importorskip("torch.nn.attention.flex_attention").flex_attention
    batch = [
        (L.text(5), L.text(7, chunk=0, persistent=False, loss=True), L.visual(3, 0, sees_text=True),
         L.text(4, chunk=1, persistent=False), L.visual(2, 1), L.text(3, loss=True)),
        (L.visual(4, 0), L.text(6, loss=True), L.text(5, chunk=1, persistent=False)),
    ]
    total = max(L.length(layout) for layout in batch)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, total, 8) for _ in range(3))
    for bidirectional in (False, True):
        block = L.block_mask(batch, bidirectional_visual=bidirectional)
        dense = L.attention_mask(batch, bidirectional_visual=bidirectional)
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
        assert torch.allclose(flex_attention(q, k, v, block_mask=block), expected, atol=1e-5)


@pytest.mark.parametrize("bad", [
    lambda: L.Segment("image", 3),
    lambda: L.Segment("text", 0),
    lambda: L.Segment("visual", 2, persistent=False, chunk=0),
    lambda: L.Segment("text", 2, persistent=False),
    lambda: L.dense_mask((L.visual(2, 5, sees_text=True),)),
    lambda: L.attention_mask([(L.text(1, chunk=0), L.text(2, chunk=0))]),
])
def test_invalid_layouts_are_rejected(bad):
    with pytest.raises(Vist2Error):
        bad()


@pytest.mark.parametrize("stage", ["captioning", "ocr", "olm", "sft"])
def test_layout_command_prints_json_consistent_with_the_rule(stage, capsys, tmp_path):
    png = tmp_path / "mask.png"
    assert main(["layout", "--stage", stage, "-K", "8", "-b", "2", "--tokens", "21", "--json", "--png", str(png)]) == 0
    data = json.loads(capsys.readouterr().out)
    layout = tuple(L.Segment(**segment) for segment in data["segments"])
    assert set(data["segments"][0]) == {"kind", "persistent", "chunk", "length", "sees_text", "loss"}
    assert data["position_ids"] == L.position_ids(layout).tolist()
    assert data["mask"] == L.dense_mask(layout).int().tolist()
    assert png.stat().st_size > 1000


def test_layout_command_olm_shape(capsys):
    main(["layout", "--stage", "olm", "-K", "4", "-b", "2", "--tokens", "10", "--json"])
    data = json.loads(capsys.readouterr().out)
    shape = [(s["kind"], s["length"], s["persistent"]) for s in data["segments"]]
    assert shape == [("text", 4, False), ("visual", 2, True), ("text", 4, False), ("visual", 2, True), ("text", 2, False)]
    assert data["position_ids"] == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 2, 3, 4, 5]


def test_layout_command_rejects_bad_numbers(capsys):
    assert main(["layout", "-K", "0"]) == 2
    assert "--chunk-tokens must be in [1, 4096], got 0" in capsys.readouterr().err



@settings(max_examples=50, deadline=None)
@given(st.integers(1, 30), st.integers(0, 6), st.integers(1, 8), st.integers(1, 5))
def test_span_counts_the_positions_of_persistent_text_and_visual_blocks(text, blocks, beta, transient):
    """`blocks` blocks of beta, `text` persistent tokens, then a transient chunk (which advances
    nothing): the chunk starts at position `span`."""
    layout = tuple(L.visual(beta, i) for i in range(blocks)) + (L.text(text),)
    assert int(L.position_ids(layout)[-1]) + 1 == L.span(text, blocks, beta)
    layout += (L.text(transient, chunk=blocks, persistent=False),)
    start = L.span(text, blocks, beta)
    assert L.position_ids(layout)[-transient:].tolist() == list(range(start, start + transient))

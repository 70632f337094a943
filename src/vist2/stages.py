"""The four training layouts of the paper (DESIGN 4) as `Example`s, and `collate` to tensors.

An `Example` is a layout plus its content: token ids for every position (a placeholder
where visual tokens go) and one page per visual block, as text to render or a PIL image.

- captioning: [v, caption]                          caption persistent, with loss
- ocr:        [v1, c1, v2, c2, ...]                 all persistent and causal, loss on c_i
- olm:        [c1, v1, c2, v2, ..., cn]             c_i transient with loss, v_i sees c_i
- sft:        user template, compressed query (tail rule), assistant template,
              [r1, w1, r2, w2, ..., rn]              loss on the response only
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from vist2 import layout as L
from vist2.chunking import Fill, chunk_texts, split_chunks
from vist2.errors import Vist2Error
from vist2.prompt import Fits, Prompt, build_prompt, chat_parts, split_pages

Page = str | Image.Image

@dataclass
class Example:
    layout: L.Layout
    ids: list[int]  # one per position; a placeholder at visual positions
    pages: list[Page] = field(default_factory=list)  # one per visual block, in order

    def __post_init__(self) -> None:
        if len(self.ids) != L.length(self.layout):
            raise Vist2Error(f"{len(self.ids)} ids for a layout of length {L.length(self.layout)}")
        blocks = sum(s.kind == "visual" for s in self.layout)
        if len(self.pages) != blocks:
            raise Vist2Error(f"{len(self.pages)} pages for {blocks} visual blocks")


class _Builder:
    """Appends segments and their content in order."""

    def __init__(self, placeholder: int):
        self.placeholder = placeholder
        self.segments: list[L.Segment] = []
        self.ids: list[int] = []
        self.pages: list[Page] = []

    def text(self, ids: list[int], **kwargs) -> None:
        if ids:
            self.segments.append(L.text(len(ids), **kwargs))
            self.ids += ids

    def visual(self, page: Page, beta: int, chunk: int, sees_text: bool = False) -> None:
        self.segments.append(L.visual(beta, chunk, sees_text=sees_text))
        self.ids += [self.placeholder] * beta
        self.pages.append(page)

    def example(self) -> Example:
        return Example(tuple(self.segments), self.ids, self.pages)


def captioning(image: Page, caption_ids: list[int], beta: int, placeholder: int) -> Example:
    b = _Builder(placeholder)
    b.visual(image, beta, chunk=0)
    b.text(caption_ids, loss=True)
    return b.example()


def ocr(tokenizer, ids: list[int], chunk_tokens: int, beta: int, placeholder: int,
        fill: Fill | None = None) -> Example:
    """Multi-turn OCR: each page is shown first, then its text is read out."""
    chunks = split_chunks(ids, chunk_tokens, fill)
    b = _Builder(placeholder)
    for index, (chunk, page) in enumerate(zip(chunks, chunk_texts(tokenizer, chunks))):
        b.visual(page, beta, chunk=index)
        b.text(chunk, loss=True, chunk=index)
    return b.example()


def _interleave(b: _Builder, tokenizer, ids: list[int], chunk_tokens: int, beta: int, first_chunk: int,
                sees_text: bool, loss: bool, fits: Fits = None, fill: Fill | None = None) -> None:
    """[c1, v1, c2, v2, ..., cn]: every chunk but the last is followed by its visual block
    (one page, or more when its text does not fit one: see `prompt.split_page`)."""
    chunks = split_chunks(ids, chunk_tokens, fill)
    pages = split_pages(chunk_texts(tokenizer, chunks)[:-1], fits)  # the last chunk is never compressed
    for index, chunk in enumerate(chunks):
        b.text(chunk, loss=loss, chunk=first_chunk + index, persistent=False)
        for page in pages[index] if index < len(pages) else []:
            b.visual(page, beta, chunk=first_chunk + index, sees_text=sees_text)


def olm(tokenizer, ids: list[int], chunk_tokens: int, beta: int, placeholder: int, sees_text: bool = True,
        fill: Fill | None = None) -> Example:
    """Optical language modelling: chunk i+1 is predicted from the visual tokens of chunks <= i."""
    b = _Builder(placeholder)
    _interleave(b, tokenizer, ids, chunk_tokens, beta, 0, sees_text, loss=True, fill=fill)
    return b.example()


def prompt_example(prompt: Prompt, beta: int, placeholder: int) -> _Builder:
    """A builder holding the prompt's segments: text, and one visual block per query page."""
    b = _Builder(placeholder)
    for kind, content in prompt.segments:
        if kind == "text":
            b.text(content)
        else:
            for index, page in enumerate(content):
                b.visual(page, beta, chunk=index)  # the query's own text is never in the sequence
    return b


def sft(tokenizer, query_ids: list[int], response_ids: list[int], chunk_tokens: int, beta: int,
        placeholder: int, sees_text: bool = True, fits: Fits = None, fill: Fill | None = None) -> Example:
    """Compressed query (`prompt.build_prompt`) + interleaved response; loss on the response only.
    `fits` (a renderer's fit rule) spreads a chunk too long for one page over more pages;
    `fill` cuts chunks that fill their page instead of K tokens."""
    prompt = build_prompt(tokenizer, query_ids, "gcc", chunk_tokens, beta, fits, fill)
    b = prompt_example(prompt, beta, placeholder)
    end = chat_parts(tokenizer)[2]
    _interleave(b, tokenizer, response_ids + end, chunk_tokens, beta, len(prompt.pages), sees_text, True, fits,
                fill)
    return b.example()


def page_tensor(pages: list[Page], renderer) -> torch.Tensor:
    """(N, 1, H, W) float pages in [0, 1]: text is rendered, images are resized to the page."""
    config = renderer.config
    if not pages:
        return torch.zeros(0, 1, config.height, config.width)

    def one(page: Page) -> torch.Tensor:
        if isinstance(page, str):
            return renderer.render_batch([page])[0]
        pixels = np.asarray(page.convert("L").resize((config.width, config.height)), dtype=np.float32)
        return torch.from_numpy(pixels / 255.0)[None]

    return torch.stack([one(page) for page in pages])


def collate(examples: list[Example], renderer, pad_id: int, bidirectional_visual: bool = False,
            total: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a list of examples into model inputs; rendering happens here (DataLoader workers)."""
    total = total or max(len(e.ids) for e in examples)
    input_ids = torch.full((len(examples), total), pad_id)
    labels = torch.full((len(examples), total), -100)
    position_ids = torch.zeros(len(examples), total, dtype=torch.long)
    visual = torch.zeros(len(examples), total, dtype=torch.bool)
    for row, example in enumerate(examples):
        n = len(example.ids)
        ids = torch.tensor(example.ids)
        input_ids[row, :n] = ids
        labels[row, :n] = torch.where(L.loss_mask(example.layout), ids, -100)
        positions = L.position_ids(example.layout)
        position_ids[row, :n] = positions
        position_ids[row, n:] = torch.arange(1, total - n + 1) + positions.max()
        visual[row, :n] = torch.cat([torch.full((s.length,), s.kind == "visual") for s in example.layout])
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": L.attention_mask([e.layout for e in examples], total, bidirectional_visual),
        "visual": visual,
        "pages": page_tensor([p for e in examples for p in e.pages], renderer),
        "labels": labels,
    }

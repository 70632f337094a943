"""Evaluation of a trained VIST2 on held-out text: OCR and optical language modelling.

- `ocr_bits_per_char`: teacher-forced bits per character of a chunk read from its page
  (or from a blank page: the image ablation, what a pure language model achieves).
- `ocr_transcribe`: greedy transcription of each page (scored by `vist2.eval.ocr`).
- `next_chunk_bits_per_char`: bits per character of the next chunk with (a) the full previous
  text in context, (b) only the previous chunks' visual tokens (VIST2), (c) no context.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vist2 import layout as L
from vist2 import stages
from vist2.chunking import chunk_texts, split_chunks
from vist2.decode import cache_keyword

LN2 = math.log(2)


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, start=1):
        current = [i]
        for j, other in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other)))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace-separated words (longest common subsequence)."""
    x, y = prediction.split(), reference.split()
    if not x or not y:
        return float(x == y)
    lengths = [0] * (len(y) + 1)
    for word in x:
        diagonal = 0
        for j, other in enumerate(y, start=1):
            diagonal, lengths[j] = lengths[j], diagonal + 1 if word == other else max(lengths[j], lengths[j - 1])
    common = lengths[-1]
    if common == 0:
        return 0.0
    precision, recall = common / len(x), common / len(y)
    return 2 * precision * recall / (precision + recall)


def _target_nats(model, examples: list[stages.Example], starts: list[int], renderer, pad_id: int,
                 blank: bool = False) -> list[float]:
    """Nats of each example's tokens from index `start` to its end, teacher forced."""
    batch = stages.collate(examples, renderer, pad_id)
    if blank:
        batch["pages"] = torch.ones_like(batch["pages"])  # white paper, no ink
    device = model.device
    with torch.no_grad():
        logits = model(**{k: v.to(device) for k, v in batch.items() if k != "labels"}).logits.float()
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:].to(device), reduction="none")
    return [float(nll[row, start - 1 : len(example.ids) - 1].sum())
            for row, (example, start) in enumerate(zip(examples, starts))]


def ocr_bits_per_char(model, tokenizer, chunks: list[list[int]], renderer, blank: bool = False,
                      batch_size: int = 32) -> float:
    """Teacher-forced bits per character of each chunk given its page (one image per sample)."""
    beta, pad = model.config.visual_tokens, tokenizer.pad_token_id
    nats, chars = 0.0, 0
    for first in range(0, len(chunks), batch_size):
        group = chunks[first : first + batch_size]
        examples = [stages.ocr(tokenizer, chunk, len(chunk), beta, pad) for chunk in group]
        nats += sum(_target_nats(model, examples, [beta] * len(group), renderer, pad, blank))
        chars += sum(len(text) for text in chunk_texts(tokenizer, group))
    return nats / LN2 / chars


@torch.no_grad()
def ocr_transcribe(model, pages: torch.Tensor, tokens: int, batch_size: int = 64) -> list[list[int]]:
    """Greedy reading of each page: [v, generated...] is plain causal, so a KV cache does it."""
    from transformers import DynamicCache

    beta, device, results = model.config.visual_tokens, model.device, []
    for first in range(0, len(pages), batch_size):
        visual = model.encode_pages(pages[first : first + batch_size].to(device))
        n = visual.shape[0]
        cache, keyword = DynamicCache(), cache_keyword(model.llm)
        positions = torch.arange(beta, device=device).expand(n, beta)
        out = model.llm(inputs_embeds=visual, position_ids=positions, use_cache=True, **{keyword: cache})
        generated = []
        for step in range(tokens):
            token = out.logits[:, -1].argmax(-1)
            generated.append(token)
            if step == tokens - 1:
                break
            embeds = model.llm.get_input_embeddings()(token[:, None])
            position = torch.full((n, 1), L.span(step, 1, beta), device=device)  # after the page and `step` tokens
            out = model.llm(inputs_embeds=embeds, position_ids=position, use_cache=True, **{keyword: cache})
        results += torch.stack(generated, 1).tolist()
    return results


def next_chunk_bits_per_char(model, tokenizer, windows: list[list[int]], renderer,
                             batch_size: int = 16) -> dict[str, float]:
    """Bits per character of each window's last chunk under three kinds of context."""
    K, beta, pad = model.config.chunk.chunk_tokens, model.config.visual_tokens, tokenizer.pad_token_id
    sees = model.config.chunk.visual_sees_text
    totals = {"full_text": 0.0, "visual_memory": 0.0, "no_context": 0.0}
    chars = 0
    for first in range(0, len(windows), batch_size):
        group = windows[first : first + batch_size]
        last = [split_chunks(ids, K)[-1] for ids in group]
        chars += sum(len(tokenizer.decode(ids)) for ids in last)
        full = [stages.Example((L.text(len(ids)),), list(ids)) for ids in group]
        totals["full_text"] += sum(_target_nats(model, full, [len(ids) - len(t) for ids, t in zip(group, last)],
                                                renderer, pad))
        optical = [stages.olm(tokenizer, ids, K, beta, pad, sees_text=sees) for ids in group]
        totals["visual_memory"] += sum(_target_nats(model, optical, [len(e.ids) - len(t) for e, t in zip(optical, last)],
                                                    renderer, pad))
        alone = [stages.Example((L.text(len(t) + 1),), [tokenizer.eos_token_id] + t) for t in last]
        totals["no_context"] += sum(_target_nats(model, alone, [1] * len(group), renderer, pad))
    return {name: nats / LN2 / chars for name, nats in totals.items()}

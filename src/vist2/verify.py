"""`vist2 verify`: incremental generation equals the teacher-forced forward (DESIGN 5).

Random queries and forced responses go through `generate.score` (prefill chunk by chunk,
decode token by token, compress and evict in gcc) and through one forward of the same
layout with the dense reference mask (`layout.dense_mask`). The layouts come from
`stages.sft` (gcc) or from the same prompt builder (`prompt.build_prompt`, pcc and text). The largest
absolute logit difference over every forced token must stay under the tolerance.
"""

from __future__ import annotations

import random

import torch

from vist2 import layout as L
from vist2.chunking import Fill, split_chunks
from vist2.errors import Vist2Error
from vist2.generate import score
from vist2.options import ChunkOptions, chunk_options
from vist2.prompt import build_prompt, chat_parts
from vist2.stages import Example, collate, prompt_example, sft

TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}  # other dtypes: 5e-2


def teacher_example(tokenizer, renderer, query: list[int], response: list[int], mode: str, chunk_tokens: int,
                    beta: int, sees_text: bool, placeholder: int = 0, fill: Fill | None = None) -> Example:
    """The layout generation builds for `mode` (the same prompt builder, the renderer's page rule,
    chunks of K tokens or `fill`), the response (ending in the end-of-turn) with loss."""
    forced = response + chat_parts(tokenizer)[2]
    if mode == "gcc":
        return sft(tokenizer, query, response, chunk_tokens, beta, placeholder, sees_text, renderer.fits, fill)
    prompt = build_prompt(tokenizer, query, mode, chunk_tokens, beta, renderer.fits, fill)
    b = prompt_example(prompt, beta, placeholder)
    b.text(forced, loss=True)
    return b.example()


@torch.inference_mode()
def teacher_logits(model, renderer, example: Example, pad_id: int, bidirectional: bool | None = None) -> torch.Tensor:
    """(N, V) fp32 logits that predict the loss tokens, from one forward with the dense mask."""
    if bidirectional is None:
        bidirectional = chunk_options(model, renderer).bidirectional_visual
    batch = collate([example], renderer, pad_id, bidirectional)
    batch.pop("labels")
    batch["attention_mask"] = L.dense_mask(example.layout, bidirectional)[None, None]
    batch = {name: value.to(model.device) for name, value in batch.items()}
    logits = model(**batch).logits[0].float()
    targets = torch.nonzero(L.loss_mask(example.layout))[:, 0]
    return logits[targets - 1]


def cases(chunk_tokens: int, beta: int) -> list[tuple[str, bool, int, int]]:
    """(mode, visual_sees_text, query length, response length): several chunks, a length not
    divisible by K, queries with and without a raw tail, blocks with and without sight of text."""
    K = chunk_tokens
    with_tail = K + max(1, min(beta, K - 1) // 2)  # residual <= beta stays raw text
    without_tail = 2 * K
    response = 2 * K + 3
    found = [("gcc", True, without_tail, response), ("gcc", True, with_tail, response),
             ("gcc", False, with_tail, response), ("pcc", True, without_tail, response),
             ("pcc", True, with_tail, response), ("text", True, with_tail, response)]
    if beta + 1 < K:  # a residual longer than beta is compressed too
        found.append(("gcc", True, K + beta + 1, response))
    return found


def verify(model, tokenizer, renderer=None, seed: int = 0, report=print, options: ChunkOptions | None = None) -> float:
    """Run every case with these chunk options (default: the model's; each case sets
    visual_sees_text; fill gives chunks of varying length); returns the largest absolute logit difference."""
    from dataclasses import replace

    from vist2.render import Renderer

    renderer = renderer or Renderer(model.config.render)
    options = options or chunk_options(model, renderer)
    K, beta = options.chunk_tokens, options.beta
    fill = options.fill(renderer, tokenizer)
    special = set(tokenizer.all_special_ids)
    vocab = [index for index in range(min(len(tokenizer), model.llm.config.vocab_size)) if index not in special]
    rng = random.Random(seed)
    worst = 0.0
    for mode, sees_text, query_length, response_length in cases(K, beta):
        case_options = replace(options, visual_sees_text=sees_text)
        query = [rng.choice(vocab) for _ in range(query_length)]
        response = [rng.choice(vocab) for _ in range(response_length)]
        example = teacher_example(tokenizer, renderer, query, response, mode, K, beta, sees_text, fill=fill)
        expected = teacher_logits(model, renderer, example, vocab[0], options.bidirectional_visual)
        _, _, end = chat_parts(tokenizer)
        actual = score(model, tokenizer, query, response + end, mode, renderer, case_options)
        if actual.shape != expected.shape:
            raise Vist2Error(f"{mode}: {actual.shape[0]} incremental steps for {expected.shape[0]} targets")
        difference = (actual - expected).abs().max().item()
        worst = max(worst, difference)
        lengths = "" if fill is None or mode != "gcc" else "  response chunks " + ",".join(
            str(len(c)) for c in split_chunks(response + end, K, fill))
        report(f"{mode:4} visual_sees_text={sees_text!s:5} query={query_length:5} response={response_length:5}"
               f"  max |logit difference| = {difference:.3g}{lengths}")
    return worst


def tolerance(model) -> float:
    return TOLERANCE.get(model.dtype, 5e-2)

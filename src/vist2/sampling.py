"""Next-token choice: repetition penalty, no-repeat n-gram ban, then greedy or sampling
with temperature, top-k and top-p. Works on a batch of logits and per-row histories."""

from __future__ import annotations

import torch

from vist2.options import GenerationConfig


def sample(logits: torch.Tensor, history: list[list[int]], config: GenerationConfig,
           generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) tokens, after repetition penalty, n-gram ban, temperature, top-k, top-p."""
    logits = logits.clone()
    for row, ids in enumerate(history):
        if config.repetition_penalty != 1.0 and ids:
            seen = torch.tensor(sorted(set(ids)), device=logits.device)
            values = logits[row, seen]
            logits[row, seen] = torch.where(values > 0, values / config.repetition_penalty,
                                            values * config.repetition_penalty)
        banned = _banned_ngram_tokens(ids, config.no_repeat_ngram_size)
        if banned:
            logits[row, banned] = float("-inf")
    if config.temperature == 0:
        return logits.argmax(-1)
    logits = logits / config.temperature
    if config.top_k:
        kth = torch.topk(logits, min(config.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1:
        ordered, order = logits.sort(-1, descending=True)
        probs = ordered.softmax(-1)
        drop = probs.cumsum(-1) - probs > config.top_p  # keeps the smallest head with mass >= top_p
        logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def _banned_ngram_tokens(ids: list[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram already in `ids`."""
    if n < 1 or len(ids) < n:
        return []
    prefix = ids[len(ids) - n + 1 :]
    return [ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i : i + n - 1] == prefix]

"""Next-token choice: logit bias, repetition, presence and frequency penalties, the no-repeat
n-gram ban, then greedy or sampling with temperature, top-k, top-p and min-p. Works on a
batch of logits with per-row histories; also the log-probabilities reported for a token."""

from __future__ import annotations

import torch

from vist2.options import GenerationConfig


def plain_greedy(config: GenerationConfig) -> bool:
    """True when the choice is the argmax of the raw logits (the engine batches those rows)."""
    return (config.temperature == 0 and config.repetition_penalty == 1.0 and config.no_repeat_ngram_size == 0
            and config.presence_penalty == 0 and config.frequency_penalty == 0 and not config.logit_bias)


def adjust(logits: torch.Tensor, history: list[list[int]], config: GenerationConfig,
           generated: list[list[int]] | None = None) -> torch.Tensor:
    """A copy of (B, V) logits after logit bias, repetition penalty (prompt and output,
    `history`), presence and frequency penalties (output only, `generated`, as OpenAI) and the
    n-gram ban."""
    logits = logits.clone()
    if config.logit_bias:
        ids = torch.tensor([token for token, _ in config.logit_bias], device=logits.device)
        bias = torch.tensor([value for _, value in config.logit_bias], dtype=logits.dtype, device=logits.device)
        logits[:, ids] += bias
    for row, ids in enumerate(history):
        if config.repetition_penalty != 1.0 and ids:
            seen = torch.tensor(sorted(set(ids)), device=logits.device)
            values = logits[row, seen]
            logits[row, seen] = torch.where(values > 0, values / config.repetition_penalty,
                                            values * config.repetition_penalty)
        output = generated[row] if generated is not None else []
        if (config.presence_penalty or config.frequency_penalty) and output:
            counts = torch.bincount(torch.tensor(output, device=logits.device), minlength=logits.shape[-1])
            counts = counts[: logits.shape[-1]].to(logits.dtype)
            logits[row] -= config.frequency_penalty * counts + config.presence_penalty * (counts > 0).to(logits.dtype)
        banned = _banned_ngram_tokens(ids, config.no_repeat_ngram_size)
        if banned:
            logits[row, banned] = float("-inf")
    return logits


def sample(logits: torch.Tensor, history: list[list[int]], config: GenerationConfig,
           generator: torch.Generator | None, generated: list[list[int]] | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) tokens, after `adjust`, temperature, top-k, top-p and min-p."""
    logits = adjust(logits, history, config, generated)
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
    if config.min_p > 0:  # drop tokens less likely than min_p times the likeliest
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < config.min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def token_logprobs(logits: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The model's log-probability of `token` from (V,) raw logits (before any sampling change,
    as OpenAI and vLLM report them), and the `top` likeliest (id, log-probability), best first."""
    logprobs = torch.log_softmax(logits.float(), -1)
    best = torch.topk(logprobs, min(top, logprobs.shape[-1])) if top else None
    pairs = list(zip(best.indices.tolist(), best.values.tolist())) if best is not None else []
    return float(logprobs[token]), pairs


def _banned_ngram_tokens(ids: list[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram already in `ids`."""
    if n < 1 or len(ids) < n:
        return []
    prefix = ids[len(ids) - n + 1 :]
    return [ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i : i + n - 1] == prefix]

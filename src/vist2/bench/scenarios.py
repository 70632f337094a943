"""The benchmark grid (paper section 4.4 / Figure 4) and the prompts that fill it.

- long writing: a short query (256 tokens) and long responses (1K to 16K tokens);
- long context: long queries (2K, 8K, 32K tokens) and a short response (128 tokens).

On a CPU the default grid is scaled by 1/16, which keeps its shape in chunks for a model
with K = 64 (the tiny preset): a 1K response is 16 chunks of 64 there as 1K of 1024 is one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from vist2.errors import Vist2Error

SCENARIOS = ("long-writing", "long-context")
WRITING_QUERY, WRITING_RESPONSES = 256, (1024, 2048, 4096, 8192, 16384)
CONTEXT_QUERIES, CONTEXT_RESPONSE = (2048, 8192, 32768), 128
CPU_SCALE = 1 / 16


@dataclass(frozen=True)
class Case:
    scenario: str
    query_tokens: int
    response_tokens: int

    @property
    def length(self) -> int:
        """The length the scenario varies: the response (writing) or the query (context)."""
        return self.response_tokens if self.scenario == "long-writing" else self.query_tokens


def cases(scenario: str = "all", lengths: list[int] | None = None, scale: float = 1.0) -> list[Case]:
    """The grid of one scenario or both; `lengths` replaces the varied lengths, `scale`
    multiplies every length (the fixed query or response too)."""
    if scenario not in (*SCENARIOS, "all"):
        raise Vist2Error(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}, all")
    if scale <= 0:
        raise Vist2Error(f"scale must be positive, got {scale}")
    if lengths is not None and (not lengths or min(lengths) < 1):
        raise Vist2Error(f"lengths must be positive integers, got {lengths}")
    size = lambda n: max(1, round(n * scale))  # noqa: E731
    grid = []
    if scenario in ("long-writing", "all"):
        grid += [Case("long-writing", size(WRITING_QUERY), n if lengths else size(n))
                 for n in lengths or WRITING_RESPONSES]
    if scenario in ("long-context", "all"):
        grid += [Case("long-context", n if lengths else size(n), size(CONTEXT_RESPONSE))
                 for n in lengths or CONTEXT_QUERIES]
    return grid


def prompt_text(tokenizer, tokens: int, seed: int = 0) -> str:
    """Deterministic English-like filler that encodes to about `tokens` tokens (exactly for
    byte-level tokenizers; a re-encoded BPE text may differ by a token or two)."""
    words = ("the model reads long documents and writes long answers while its context "
             "is rendered into pages of pixels that a vision encoder compresses").split()
    rng = random.Random(seed)
    pieces, ids = [], []
    while len(ids) < tokens:
        pieces.append(" ".join(rng.choice(words) for _ in range(200)) + ".\n")
        ids = tokenizer.encode("".join(pieces), add_special_tokens=False)
    return tokenizer.decode(ids[:tokens])

"""One generation request: its prompt, options, status, per-row decoding state and statistics.

A request is waiting (queued), prefilling (it holds a slot of the KV store, its prompt going
in, maybe in pieces over several steps), running (decoding) or finished, with a
reason: "stop" (a stop token or string), "length" (max_new_tokens, or the backbone's position
limit), "cancelled" (its caller gave up: `Engine.cancel`) or "aborted" (the server stopped or
failed). Every finish reason generate, eval and serve report is this one.
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field

import torch

from vist2.errors import ContextLengthError
from vist2.layout import span
from vist2.options import ChunkOptions, GenerationConfig
from vist2.prompt import Prompt, changes, chunk_pages
from vist2.sampling import plain_greedy


@dataclass
class GenerationStats:
    generated_tokens: int = 0  # tokens sampled, a final EOS included
    chunks_compressed: int = 0  # response chunks turned into visual blocks (gcc)
    kv_tokens_peak: int = 0  # most cache entries this row held at any time
    kv_tokens_final: int = 0
    kv_tokens_full_text: int = 0  # entries a full-text run would hold: text prompt + output
    kv_bytes_peak: int = 0  # most bytes the KV store held (all rows, reserved room included) while this ran
    time_to_first_token_s: float = 0.0  # from `Engine.add` (queueing and prefill included)
    prefill_s: float = 0.0
    decode_s: float = 0.0  # after the first token
    render_s: float = 0.0  # rendering pages (query and response), included in the above
    encode_s: float = 0.0  # vision tower + aligner, included in the above
    pages_refit: int = 0  # chunks (query or response) drawn with line breaks as spaces to fit a page
    chunks_split: int = 0  # chunks whose text fits no page even so, spread over more pages (prompt.chunk_pages)
    chunk_lengths: list[int] = field(default_factory=list)  # tokens of each compressed chunk, query then response
    chars_per_visual_token: float = 0.0  # characters on all compressed pages / their visual tokens
    tokens_per_visual_token: float = 0.0  # tokens of all compressed chunks / their visual tokens

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerationResult:
    text: str
    mode: str
    stats: GenerationStats
    token_ids: list[int]  # generated ids, a final EOS excluded
    finish_reason: str | None = None  # one of FINISH_REASONS (None: not finished yet)


class Status(enum.Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    RUNNING = "running"
    FINISHED = "finished"


FINISH_REASONS = ("stop", "length", "cancelled", "aborted")


def stop_ids(tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end, int) and end != tokenizer.unk_token_id:
        ids.add(end)
    return {i for i in ids if i is not None}


def cut_at_stop(text: str, stop_strings: tuple[str, ...]) -> tuple[str, bool]:
    found = [text.index(s) for s in stop_strings if s in text]
    return (text[: min(found)], True) if found else (text, False)


@dataclass(eq=False)
class Request:
    id: int
    prompt: Prompt
    config: GenerationConfig
    options: ChunkOptions
    chunker: object  # a chunking.Chunker: where response chunks close (gcc), and their page text
    stop_ids: set[int]  # tokens that end it (none when forced or ignore_eos)
    generator: torch.Generator | None  # its own sampling generator when seeded
    forced: list[int] | None = None  # teacher-forced tokens instead of sampling (`score`)
    keep_logits: bool = False  # keep the logits that chose each token in `kept`
    stats: GenerationStats = field(default_factory=GenerationStats)
    constraint: object = None  # a constrain.Constraint when config.grammar is set
    status: Status = Status.WAITING
    finish_reason: str | None = None  # set when it finishes, one of FINISH_REASONS
    slot: int | None = None  # its slot of the KV store while prefilling and running
    cursor: object = None  # a decode.PromptCursor while its prompt goes in piece by piece
    base: int = 0  # next persistent position
    offset: int = 0  # transient chunk tokens in the cache, on top of `base`
    output: list[int] = field(default_factory=list)
    logits: torch.Tensor | None = None  # (V,) fp32 logits of the next token
    kept: list[torch.Tensor] = field(default_factory=list)
    added_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    def __post_init__(self) -> None:
        self.history = list(self.prompt.context_ids)  # seen by the repetition penalty and n-gram ban
        config = self.config
        self.plain_greedy = plain_greedy(config)
        self.steps = len(self.forced) if self.forced is not None else config.max_new_tokens
        self.longest_stop = max((len(s) for s in config.stop_strings), default=0)
        self._chars = self._pages = 0  # characters and pages of the response's compressed chunks

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def start(self, slot: int) -> None:
        self.status, self.slot = Status.PREFILL, slot

    def prefilled(self, logits: torch.Tensor, kv) -> None:
        """Its prompt is in the cache: it decodes from the logits of the prompt's last token."""
        self.status, self.cursor, self.logits, self.base = Status.RUNNING, None, logits, self.prompt.positions
        self.measure(kv)

    def end(self, reason: str) -> None:
        """Finished for `reason` (the first reason stands)."""
        if reason not in FINISH_REASONS:
            raise ValueError(f"unknown finish reason {reason!r}")
        if self.status is not Status.FINISHED:
            self.status, self.finish_reason = Status.FINISHED, reason

    def check_positions(self, llm_config) -> None:
        """Refuse a request that cannot fit the backbone's positions even at best (fill: chunks of
        max_tokens); a gcc fill row that runs out of positions later finishes "length" there."""
        limit = getattr(llm_config, "max_position_embeddings", None)
        if not limit:
            return
        fill = self.chunker.fill
        K = fill.max_tokens if fill is not None else self.options.chunk_tokens
        beta, n, mode = self.options.beta, self.steps, self.config.mode
        response = span(min(n, K), n // K, beta) if mode == "gcc" else n
        if self.prompt.positions + response > limit:
            raise ContextLengthError(
                f"the {mode} prompt needs {self.prompt.positions} positions and {n} new tokens up to "
                f"{response} more, beyond the backbone's limit of {limit} (max_position_embeddings); "
                "shorten the prompt, lower --max-new-tokens or use gcc/pcc compression",
                self.prompt.positions, response, limit)

    def kv_need(self) -> int:
        """Most cache entries this request can hold: the prompt and every fed token (the last one
        sampled never is); gcc: the persistent entries, the last closed chunk and its visual
        block. With fill chunks (at most max_tokens each) the count of chunks is known only as
        they close: this is then the least it can need (the store grows beyond it)."""
        n, P = self.steps, self.prompt.positions
        fill = self.chunker.fill
        chunk = fill.max_tokens if fill is not None else self.options.chunk_tokens
        chunks = -(-n // chunk)
        if self.config.mode != "gcc" or chunks < 2:
            return P + max(n - 1, 0)
        fed = chunk if self.options.visual_sees_text else chunk - 1
        return P + span(fed, chunks - 1, self.options.beta)

    def accept(self, token: int, tokenizer) -> list[int]:
        """Take the chosen token; returns the ids it adds to the output (none for a stop token)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.stats.generated_tokens += 1
        added = []
        if token in self.stop_ids:
            self.end("stop")
        else:
            self.output.append(token)
            self.history.append(token)
            added.append(token)
            if self.longest_stop:
                tail = tokenizer.decode(self.output[-(4 * self.longest_stop + 4) :], skip_special_tokens=True)
                if cut_at_stop(tail, self.config.stop_strings)[1]:
                    self.end("stop")
        if self.stats.generated_tokens >= self.steps:
            self.end("length")
        return added

    def overflows(self, token: int) -> bool:
        """gcc fill: this token's text would overflow the chunk's page. The token is then not
        taken (its kept logits are dropped): the chunk is compressed and the next step picks
        again from the visual block's logits, as the training layout predicts it."""
        if self.config.mode != "gcc" or not self.chunker.overflows(token):
            return False
        if self.keep_logits:
            self.kept.pop()
        return True

    def add_to_chunk(self, token: int) -> bool:
        """Append a generated token to the chunk; True when the chunk is complete (K tokens; fill: max)."""
        return self.chunker.add(token)

    def close_chunk(self, fits) -> list[str]:
        """The finished chunk's pages (`prompt.chunk_pages` with the renderer's `fits`); counts them."""
        chunk, text = self.chunker.close()
        pages = chunk_pages(text, fits)
        refit, split = changes([text], [pages])
        self.stats.pages_refit += refit
        self.stats.chunks_split += split
        self.stats.chunk_lengths.append(len(chunk))
        self._chars += len(text)
        self._pages += len(pages)
        return pages

    def measure(self, kv, evicted: int = 0) -> None:
        """Record the entries this row holds (plus `evicted` ones just dropped) and the store's bytes."""
        self.stats.kv_tokens_peak = max(self.stats.kv_tokens_peak, kv.lengths[self.slot] + evicted)
        self.stats.kv_bytes_peak = max(self.stats.kv_bytes_peak, kv.nbytes())

    def finish(self, kv) -> None:
        """Final statistics, when the finished request leaves the engine (its slot not yet freed)."""
        end = time.perf_counter()
        stats = self.stats
        stats.kv_tokens_final = kv.lengths[self.slot] if self.slot is not None else 0
        stats.kv_tokens_full_text = self.prompt.full_text_tokens + stats.generated_tokens
        stats.pages_refit += self.prompt.pages_refit
        stats.chunks_split += self.prompt.chunks_split
        stats.chunk_lengths[:0] = self.prompt.chunk_lengths
        visual = span(0, max(1, len(self.prompt.pages) + self._pages), self.options.beta)
        if stats.chunk_lengths:
            stats.chars_per_visual_token = (self.prompt.chunk_chars + self._chars) / visual
            stats.tokens_per_visual_token = sum(stats.chunk_lengths) / visual
        first = self.first_token_at or end
        stats.time_to_first_token_s = first - self.added_at
        stats.decode_s = end - first

    def result(self, tokenizer) -> GenerationResult:
        text, _ = cut_at_stop(tokenizer.decode(self.output, skip_special_tokens=True), self.config.stop_strings)
        return GenerationResult(text, self.config.mode, self.stats, list(self.output), self.finish_reason)

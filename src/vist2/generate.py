"""Generation over one model in three modes (DESIGN 5), as small free functions:

- `text`: the plain LLM over the ChatML prompt, no compression (the baseline);
- `pcc`:  the query is compressed (tail rule), the response stays text (Glyph-style);
- `gcc`:  query compressed, and every K generated tokens are rendered, encoded, appended as
          a visual block and evicted from every layer's cache (VIST2).

The prompt mirrors `vist2.stages.sft` and positions follow DESIGN 3 (a transient chunk and
its visual block share a base position), so greedy decoding of a forced response equals
the teacher-forced forward of that layout (`vist2 verify`). Prefill goes chunk by chunk:
text in pieces of K tokens, query pages rendered and encoded PAGE_BATCH at a time.

    result = generate(model, tokenizer, "Summarise ...", GenerationConfig(mode="gcc"))
    print(result.text, result.stats.as_dict())
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field

import torch

from vist2.cache import KVCache, merge
from vist2.chunking import PageTexts, chunk_texts, split_chunks, split_compressed
from vist2.errors import Vist2Error
from vist2.sampling import sample
from vist2.stages import chat_parts

MODES = ("gcc", "pcc", "text")
PAGE_BATCH = 8  # query pages rendered and encoded per forward during prefill


@dataclass(frozen=True)
class GenerationConfig:
    mode: str = "gcc"
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop_strings: tuple[str, ...] = ()  # the text is cut before the first one found
    ignore_eos: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise Vist2Error(f"unknown mode {self.mode!r}; choose from {', '.join(MODES)}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise Vist2Error(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not all(math.isfinite(v) for v in (self.temperature, self.top_p, self.repetition_penalty)):
            raise Vist2Error("temperature, top_p and repetition_penalty must be finite numbers")
        if self.temperature < 0 or self.top_k < 0 or self.no_repeat_ngram_size < 0:
            raise Vist2Error("temperature, top_k and no_repeat_ngram_size must be >= 0")
        if not 0 < self.top_p <= 1:
            raise Vist2Error(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise Vist2Error(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if any(not s for s in self.stop_strings):
            raise Vist2Error("stop strings must be non-empty")


@dataclass
class GenerationStats:
    generated_tokens: int = 0  # tokens sampled, a final EOS included
    chunks_compressed: int = 0  # response chunks turned into visual blocks (gcc)
    kv_tokens_peak: int = 0  # most cache entries this row held at any time
    kv_tokens_final: int = 0
    kv_tokens_full_text: int = 0  # entries a full-text run would hold: text prompt + output
    kv_bytes_peak: int = 0  # most bytes all layers' keys and values held (whole batch)
    time_to_first_token_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0  # after the first token
    render_s: float = 0.0  # rendering pages (query and response), included in the above
    encode_s: float = 0.0  # vision tower + aligner, included in the above
    pages_refit: int = 0  # pages whose text overflowed and was refitted (see `fitting_text`)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerationResult:
    text: str
    mode: str
    stats: GenerationStats
    token_ids: list[int]  # generated ids, a final EOS excluded


@dataclass
class Prompt:
    """One row's prompt as the segments prefill feeds, in order (mirrors `stages.sft`)."""

    segments: list[tuple[str, list]]  # ("text", ids) | ("pages", texts)
    positions: int  # positions (and cache entries) it occupies
    full_text_tokens: int  # entries the same prompt takes as plain text
    context_ids: list[int]  # raw ids seen by the repetition penalty and n-gram ban


def build_prompt(tokenizer, query_ids: list[int], mode: str, chunk_tokens: int, beta: int) -> Prompt:
    user, assistant, _ = chat_parts(tokenizer)
    full = user + query_ids + assistant
    if mode == "text":
        return Prompt([("text", full)], len(full), len(full), full)
    chunks, tail = split_compressed(query_ids, chunk_tokens, beta)
    segments = [("text", user), ("pages", chunk_texts(tokenizer, chunks)), ("text", tail + assistant)]
    segments = [s for s in segments if s[1]]
    positions = len(user) + len(chunks) * beta + len(tail) + len(assistant)
    return Prompt(segments, positions, len(full), full)


@dataclass
class DecodeState:
    kv: KVCache
    base: torch.Tensor  # (B,) next persistent position of each row
    logits: torch.Tensor  # (B, V) fp32 logits of the next token
    offset: int = 0  # transient chunk tokens in the cache, on top of `base`
    chunk: list[list[int]] = field(default_factory=list)  # per row: the current response chunk
    pages: list[PageTexts] = field(default_factory=list)
    kv_peak: torch.Tensor | None = None  # (B,) most entries per row
    bytes_peak: int = 0

    def measure(self) -> None:
        lengths = self.kv.row_lengths()
        self.kv_peak = lengths if self.kv_peak is None else torch.maximum(self.kv_peak, lengths)
        self.bytes_peak = max(self.bytes_peak, self.kv.nbytes())


@contextlib.contextmanager
def _timed(stats: list[GenerationStats], name: str, device: torch.device):
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    for row in stats:
        setattr(row, name, getattr(row, name) + time.perf_counter() - start)


def _block_mask(q: int, block: int, bidirectional: bool) -> torch.Tensor:
    """(q, q) bool among new tokens: causal, or whole blocks of `block` tokens see each other."""
    index = torch.arange(q)
    mask = index[None, :] <= index[:, None]
    if bidirectional:
        mask |= (index[None, :] // block) == (index[:, None] // block)
    return mask


def _forward(model, kv: KVCache, embeds: torch.Tensor, positions: torch.Tensor, new_mask: torch.Tensor,
             hide: slice | None = None) -> torch.Tensor:
    """Run the LLM over new tokens, appending their KV; (B, V) fp32 logits of the last one."""
    mask = kv.attention_mask(new_mask, hide)
    out = model.llm(inputs_embeds=embeds, position_ids=positions.to(embeds.device), attention_mask=mask,
                    past_key_values=kv.cache, use_cache=True, logits_to_keep=1)
    kv.appended(embeds.shape[1])
    return out.logits[:, -1].float()


def fitting_text(renderer, text: str) -> str:
    """The text itself if it fits the page; else with line breaks as spaces; else its longest
    prefix that fits. Generated text can be anything (spelled-out special tokens, runs of
    newlines) and one odd chunk must not stop a generation; `pages_refit` counts these."""
    from vist2.render import TextDoesNotFit

    def fits(candidate: str) -> bool:
        try:
            renderer.render(candidate)
            return True
        except TextDoesNotFit:
            return False

    if fits(text):
        return text
    text = text.replace("\n", " ")
    low, high = 0, len(text)  # longest fitting prefix: fits(text[:low]) holds
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(text[:middle]) else (low, middle - 1)
    return text[:low]


def _encode(model, renderer, texts: list[str], stats: list[GenerationStats]) -> torch.Tensor:
    """Render and encode pages: (N, beta, d_llm)."""
    from vist2.render import TextDoesNotFit

    with _timed(stats, "render_s", model.device):
        try:
            pages = renderer.render_batch(texts)
        except TextDoesNotFit:
            fitted = [fitting_text(renderer, text) for text in texts]
            for row in stats:
                row.pages_refit += sum(a != b for a, b in zip(fitted, texts))
            pages = renderer.render_batch(fitted)
    with _timed(stats, "encode_s", model.device):
        return model.encode_pages(pages)


def prefill(model, renderer, prompt: Prompt, stats: list[GenerationStats]) -> tuple[KVCache, torch.Tensor, int]:
    """One row's prompt into a fresh cache: (cache, (1, V) logits, next position)."""
    chunk = model.config.chunk
    kv = KVCache.empty(model.llm.config, 1, model.device)
    base, logits = 0, None
    for kind, content in prompt.segments:
        if kind == "text":
            for piece in split_chunks(content, chunk.chunk_tokens):
                embeds = model.llm.get_input_embeddings()(torch.tensor([piece], device=model.device))
                positions = torch.arange(base, base + len(piece))[None]
                logits = _forward(model, kv, embeds, positions, _block_mask(len(piece), 1, False))
                base += len(piece)
        else:
            for start in range(0, len(content), PAGE_BATCH):
                visual = _encode(model, renderer, content[start : start + PAGE_BATCH], stats)
                n, beta, width = visual.shape
                positions = torch.arange(base, base + n * beta)[None]
                mask = _block_mask(n * beta, beta, chunk.bidirectional_visual)
                logits = _forward(model, kv, visual.reshape(1, n * beta, width), positions, mask)
                base += n * beta
    return kv, logits, base


def decode_one_token(model, state: DecodeState, tokens: torch.Tensor, transient: bool) -> None:
    """Feed one token per row; transient (gcc chunk) tokens do not advance the base position."""
    embeds = model.llm.get_input_embeddings()(tokens[:, None].to(model.device))
    positions = (state.base + state.offset)[:, None]
    state.logits = _forward(model, state.kv, embeds, positions, torch.ones(1, 1, dtype=torch.bool))
    if transient:
        state.offset += 1
    else:
        state.base += 1
    state.measure()


def compress_chunk(model, renderer, state: DecodeState, stats: list[GenerationStats]) -> None:
    """Finished chunk -> visual block at the chunk's base (seeing its text if configured),
    then evict the chunk's entries from every layer. The block's last logit predicts next."""
    chunk = model.config.chunk
    visual = _encode(model, renderer, [pages.next(ids) for pages, ids in zip(state.pages, state.chunk)], stats)
    beta = visual.shape[1]
    start = len(state.kv) - state.offset
    hide = None if chunk.visual_sees_text else slice(start, None)
    positions = state.base[:, None] + torch.arange(beta)
    mask = _block_mask(beta, beta, chunk.bidirectional_visual)
    state.logits = _forward(model, state.kv, visual, positions, mask, hide)
    state.measure()
    state.kv.evict(start, start + state.offset)
    state.base += beta
    state.offset = 0
    state.chunk = [[] for _ in state.chunk]
    for row in stats:
        row.chunks_compressed += 1


def _stop_ids(tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end, int) and end != tokenizer.unk_token_id:
        ids.add(end)
    return {i for i in ids if i is not None}


def _cut_at_stop(text: str, stop_strings: tuple[str, ...]) -> tuple[str, bool]:
    found = [text.index(s) for s in stop_strings if s in text]
    return (text[: min(found)], True) if found else (text, False)


def _check_backbone(model, prompts: list[Prompt], config: GenerationConfig) -> None:
    implementation = getattr(model.llm.config, "_attn_implementation", "sdpa")
    if implementation != "sdpa":
        raise Vist2Error(f"generation passes boolean masks and needs attn_implementation='sdpa', "
                         f"this model uses {implementation!r}")
    limit = getattr(model.llm.config, "max_position_embeddings", None)
    if not limit:
        return
    K, beta, n = model.config.chunk.chunk_tokens, model.config.visual_tokens, config.max_new_tokens
    response = (n // K) * beta + min(n, K) if config.mode == "gcc" else n
    for prompt in prompts:
        if prompt.positions + response > limit:
            raise Vist2Error(
                f"the {config.mode} prompt needs {prompt.positions} positions and {n} new tokens up to "
                f"{response} more, beyond the backbone's limit of {limit} (max_position_embeddings); "
                "shorten the prompt, lower --max-new-tokens or use gcc/pcc compression")


@torch.inference_mode()
def _generate(model, tokenizer, queries: list[list[int]], config: GenerationConfig, renderer=None,
              forced: list[list[int]] | None = None) -> Generator:
    """Yields (new ids per row, logits that chose this step's tokens) each step; returns results."""
    from vist2.render import Renderer

    renderer = renderer or Renderer(model.config.render)
    K, beta = model.config.chunk.chunk_tokens, model.config.visual_tokens
    prompts = [build_prompt(tokenizer, q, config.mode, K, beta) for q in queries]
    _check_backbone(model, prompts, config)
    stats = [GenerationStats() for _ in queries]
    start = time.perf_counter()
    rows, logits, bases, held = [], [], [], 0
    for prompt in prompts:
        kv, row_logits, base = prefill(model, renderer, prompt, stats)
        held += kv.nbytes()
        rows.append(kv), logits.append(row_logits), bases.append(base)
    state = DecodeState(merge(rows), torch.tensor(bases, device=model.device), torch.cat(logits),
                        chunk=[[] for _ in queries], pages=[PageTexts(tokenizer) for _ in queries])
    state.measure()
    state.bytes_peak = max(state.bytes_peak, held)
    for row in stats:
        row.prefill_s = time.perf_counter() - start
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(config.seed)
    stop_ids = set() if config.ignore_eos or forced else _stop_ids(tokenizer)
    longest_stop = max((len(s) for s in config.stop_strings), default=0)
    history = [p.context_ids.copy() for p in prompts]
    outputs = [[] for _ in queries]
    finished = [False] * len(queries)
    steps = len(forced[0]) if forced else config.max_new_tokens
    first_token_at = None
    for step in range(steps):
        chosen_by = state.logits
        if forced:
            tokens = torch.tensor([f[step] for f in forced])
        else:  # the embedding matrix may be padded beyond the tokenizer's vocabulary
            tokens = sample(state.logits[:, : len(tokenizer)], history, config, generator)
        if first_token_at is None:
            first_token_at = time.perf_counter()
        new = [[] for _ in queries]
        for row, token in enumerate(tokens.tolist()):
            if finished[row]:
                continue
            stats[row].generated_tokens += 1
            if token in stop_ids:
                finished[row] = True
                continue
            outputs[row].append(token)
            history[row].append(token)
            new[row].append(token)
            if longest_stop:
                tail = tokenizer.decode(outputs[row][-(4 * longest_stop + 4) :], skip_special_tokens=True)
                finished[row] = _cut_at_stop(tail, config.stop_strings)[1]
        yield new, chosen_by
        if all(finished) or step == steps - 1:
            break
        if config.mode == "gcc":
            for row, token in enumerate(tokens.tolist()):
                state.chunk[row].append(token)
            complete = len(state.chunk[0]) == K
            if not complete or model.config.chunk.visual_sees_text:  # else nothing will ever see it
                decode_one_token(model, state, tokens, transient=True)
            if complete:
                compress_chunk(model, renderer, state, stats)
        else:
            decode_one_token(model, state, tokens, transient=False)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    end = time.perf_counter()
    final = state.kv.row_lengths().tolist()
    results = []
    for row, prompt in enumerate(prompts):
        row_stats = stats[row]
        row_stats.time_to_first_token_s = first_token_at - start
        row_stats.decode_s = end - first_token_at
        row_stats.kv_tokens_peak = int(state.kv_peak[row])
        row_stats.kv_tokens_final = final[row]
        row_stats.kv_tokens_full_text = prompt.full_text_tokens + row_stats.generated_tokens
        row_stats.kv_bytes_peak = state.bytes_peak
        text, _ = _cut_at_stop(tokenizer.decode(outputs[row], skip_special_tokens=True), config.stop_strings)
        results.append(GenerationResult(text, config.mode, row_stats, outputs[row]))
    return results


def load_model(model_dir: str | None = None, preset_name: str | None = None, seed: int = 0,
               device: str = "cpu"):
    """(model, tokenizer) from a checkpoint folder, or a preset with random weights (seeded)."""
    from vist2.model import Vist2Model
    from vist2.presets import preset
    from vist2.tokenizer import load_tokenizer

    if (model_dir is None) == (preset_name is None):
        raise Vist2Error("give exactly one of a model folder or a preset")
    if model_dir is not None:
        model = Vist2Model.from_pretrained(model_dir, device=device)
    else:
        torch.manual_seed(seed)
        model = Vist2Model(preset(preset_name)).to(device).eval()
    return model, load_tokenizer(model.config.tokenizer)


def _query_ids(tokenizer, prompt: str) -> list[int]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise Vist2Error("the prompt is empty")
    return tokenizer.encode(prompt, add_special_tokens=False)


def _drain(steps: Generator) -> list[GenerationResult]:
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def generate(model, tokenizer, prompt: str | list[str], config: GenerationConfig = GenerationConfig(),
             renderer=None) -> GenerationResult | list[GenerationResult]:
    """Generate for one prompt (a result) or a batch of prompts (a list, any mode)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise Vist2Error("no prompts given")
    results = _drain(_generate(model, tokenizer, [_query_ids(tokenizer, p) for p in prompts], config, renderer))
    return results[0] if isinstance(prompt, str) else results


def score(model, tokenizer, query_ids: list[int], forced_ids: list[int], mode: str, renderer=None) -> torch.Tensor:
    """Teacher-force `forced_ids` through the incremental path of `mode`: (N, V) fp32 logits,
    row j the logits that predicted forced_ids[j] (eviction and compression included)."""
    config = GenerationConfig(mode=mode, max_new_tokens=len(forced_ids), ignore_eos=True)
    steps = _generate(model, tokenizer, [list(query_ids)], config, renderer, forced=[list(forced_ids)])
    logits = []
    while True:
        try:
            logits.append(next(steps)[1][0])
        except StopIteration:
            return torch.stack(logits)


def stream(model, tokenizer, prompt: str, config: GenerationConfig = GenerationConfig(),
           renderer=None) -> Iterator[str]:
    """Yield the text as it is produced; "".join of the pieces equals `generate(...).text`."""
    steps = _generate(model, tokenizer, [_query_ids(tokenizer, prompt)], config, renderer)
    ids, shown, hold = [], "", max((len(s) for s in config.stop_strings), default=0)
    while True:
        try:
            new, _ = next(steps)
        except StopIteration as done:
            rest = done.value[0].text[len(shown) :]
            if rest:
                yield rest
            return
        ids += new[0]
        text, stopped = _cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), config.stop_strings)
        if not stopped:  # hold back an incomplete character and a possible start of a stop string
            text = text.rstrip("\ufffd")
            text = text[: max(len(shown), len(text) - max(hold - 1, 0))]
        if len(text) > len(shown):
            yield text[len(shown) :]
            shown = text

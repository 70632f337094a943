"""The generation engine: requests with their own state join and leave a running batch.

Each `Request` carries its mode (text, pcc, gcc), sampling options, chunk options, prompt,
status and chunk phase. `Engine.step` finishes cancelled requests, admits waiting ones (a
slot of the `KVStore` with room for their need), prefills prompts (whole, or with
`prefill_tokens` at most that many positions per step, so running rows keep decoding while a
long prompt goes in), picks one token for every running request (`_choose`, per row), feeds
them in one batched forward, compresses each gcc row's chunk when it closes, finishes a row
whose next forward would pass the backbone's position limit ("length"), and frees the slots
of finished requests. `add` and `cancel` may be called between steps, or from another thread.

    engine = Engine(model, tokenizer)
    request = engine.add("Summarise ...", GenerationConfig(mode="gcc"))
    for events in engine.run():
        for event in events:
            print(event.request.id, event.tokens, event.pages)
    print(request.result(tokenizer).text)
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import torch

from vist2 import constrain, decode
from vist2.chunking import Chunker
from vist2.constrain import Constraint
from vist2.errors import Vist2Error
from vist2.kvstore import KVStore
from vist2.options import ChunkOptions, chunk_options
from vist2.prompt import build_prompt
from vist2.request import Request, Status, stop_ids
from vist2.sampling import token_logprobs


@dataclass
class Event:
    """What one step did for one request."""

    request: Request
    tokens: list[int]  # ids added to the output (a stop token excluded)
    pages: list[str] = field(default_factory=list)  # page texts its compressed chunk became
    finished: bool = False
    logprobs: list[tuple[float, list]] = field(default_factory=list)  # per token, when config.logprobs asks


def prefill_groups(joining: list[Request]) -> list[list[Request]]:
    """Joining requests in groups prefilled by one forward: alike in attention inside visual
    blocks, at most PREFILL_TOKENS padded positions; a longer prompt alone."""
    groups: list[list[Request]] = []
    for request in sorted(joining, key=lambda r: r.prompt.positions):
        group = groups[-1] if groups else None
        fits = group is not None and (len(group) + 1) * request.prompt.positions <= decode.PREFILL_TOKENS
        if fits and group[0].options.bidirectional_visual == request.options.bidirectional_visual:
            group.append(request)
        else:
            groups.append([request])
    return groups


class Engine:
    def __init__(self, model, tokenizer, renderer=None, options: ChunkOptions | None = None,
                 max_batch: int | None = None, prefill_tokens: int | None = None):
        from vist2.render import Renderer

        implementation = getattr(model.llm.config, "_attn_implementation", "sdpa")
        if implementation != "sdpa":
            raise Vist2Error(f"generation runs on SDPA (it passes boolean masks) and this model was built with "
                             f"{implementation!r}: load it with vist2.generate.load_model, or with "
                             "Vist2Model.from_pretrained(DIR, changes={'attn_implementation': 'sdpa'}) (same weights)")
        if max_batch is not None and max_batch < 1:
            raise Vist2Error(f"max_batch must be >= 1, got {max_batch}")
        if prefill_tokens is not None and (isinstance(prefill_tokens, bool) or not isinstance(prefill_tokens, int)
                                           or prefill_tokens < 1):
            raise Vist2Error(f"prefill_tokens must be a positive integer or None, got {prefill_tokens!r}")
        self.model, self.tokenizer = model, tokenizer
        self.renderer = renderer or Renderer(model.config.render)
        self.options = options or chunk_options(model, self.renderer)
        self.max_batch = max_batch
        self.prefill_tokens = prefill_tokens  # prompt positions prefilled per step (None: whole prompts)
        self.kv = KVStore(model.llm.config, model.device, model.dtype)
        self.max_positions = getattr(model.llm.config, "max_position_embeddings", None) or None
        self.rows: list[Request] = []  # prefilling or running, row i in slot i
        self.waiting: list[Request] = []
        self._lock = threading.Lock()
        self._cancels: dict[Request, str] = {}  # asked for by `cancel`, done at the next step
        self._ids = itertools.count()
        self._stop_ids = stop_ids(tokenizer)

    # -- the API a caller (generate, stream, a server) uses ------------------------------------

    def add(self, query: str | list[int], config, options: ChunkOptions | None = None,
            forced: list[int] | None = None, keep_logits: bool = False,
            frame: tuple[list[int], list[int]] | None = None) -> Request:
        """Queue a request (a prompt string or query ids); it joins the batch at the next step.
        frame: the ids around the query instead of the ChatML turn (`prompt.build_prompt`)."""
        request = self.request(query, config, options, forced, keep_logits, frame)
        with self._lock:
            self.waiting.append(request)
        return request

    def request(self, query: str | list[int], config, options: ChunkOptions | None = None,
                forced: list[int] | None = None, keep_logits: bool = False,
                frame: tuple[list[int], list[int]] | None = None) -> Request:
        """The request `add` would queue, prompt built and checked (it fits the backbone's
        positions), not queued: a caller can check many prompts before generating any."""
        options = options or self.options
        if options.beta != self.options.beta:
            raise Vist2Error(f"beta {options.beta} differs from this engine's page ({self.options.beta} tokens)")
        ids = self._query_ids(query)
        fill = options.fill(self.renderer, self.tokenizer)
        prompt = build_prompt(self.tokenizer, ids, config.mode, options.chunk_tokens, options.beta,
                              self.renderer.fits, fill, chat_template=config.chat_template, frame=frame)
        generator = None
        if config.seed is not None:
            generator = torch.Generator(device=self.model.device).manual_seed(config.seed)
        request = Request(next(self._ids), prompt, config, options, Chunker(self.tokenizer, options.chunk_tokens, fill),
                          set() if config.ignore_eos or forced is not None else self._stop_ids, generator,
                          forced, keep_logits)
        request.check_positions(self.model.llm.config)
        if config.grammar is not None:
            request.constraint = Constraint(config.grammar, self.tokenizer, self._stop_ids)
        return request

    def cancel(self, request: Request, reason: str = "cancelled") -> None:
        """Stop a request for `reason` ("cancelled" or "aborted"); it finishes at the next step,
        its slot freed (its result keeps what it made). Nothing happens if it finished already."""
        if reason not in ("cancelled", "aborted"):
            raise Vist2Error(f"a request is cancelled or aborted, not {reason!r}")
        with self._lock:
            self._cancels.setdefault(request, reason)

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    def run(self):
        """Steps until every request added so far (or meanwhile) is done; yields each step's events."""
        while self.busy:
            yield self.step()

    def kv_entries(self) -> int:
        return sum(self.kv.lengths)

    # -- one step -----------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[Event]:
        events = self._cancel()
        self._admit()
        self._prefill()
        running = [r for r in self.rows if r.status is Status.RUNNING]
        if not running:
            return events
        tokens = self._choose(running)
        feed, complete = [], []
        for request, token in zip(running, tokens):
            if request.overflows(token):  # fill: compress the full page first, then pick again
                event = Event(request, [])
                events.append(event)
                if self._within_limit(request, request.base + self.options.beta):
                    complete.append((request, event))
                event.finished = request.finished
                continue
            event = Event(request, request.accept(token, self.tokenizer))
            if event.tokens and request.config.logprobs is not None:
                event.logprobs.append(token_logprobs(request.logits[: len(self.tokenizer)], token,
                                                     request.config.logprobs))
            if request.constraint is not None and request.constraint.advance(token):
                request.end("stop")  # the grammar is complete
            events.append(event)
            done = False
            if not request.finished and request.config.mode == "gcc":
                done = request.add_to_chunk(token)
            fed = not done or request.options.visual_sees_text  # else nothing will ever see it
            end = request.base + request.offset + fed  # positions the next forwards take
            if done:
                end = max(end, request.base + self.options.beta)
            if request.finished or not self._within_limit(request, end):
                event.finished = True
                continue
            if fed:
                feed.append(request)
            if done:
                complete.append((request, event))
        if feed:
            self._decode(feed)
        if complete:
            self._compress(complete)
        for request in [r for r in self.rows if r.finished]:
            self._leave(request)
        return events

    def _within_limit(self, request: Request, end: int) -> bool:
        """Whether positions [0, end) fit the backbone; if not the request finishes ("length")
        where it is: fill chunks vary, so a gcc row's positions are known only as they close."""
        if self.max_positions is None or end <= self.max_positions:
            return True
        request.end("length")
        return False

    def _query_ids(self, query: str | list[int]) -> list[int]:
        if isinstance(query, str):
            if not query.strip():
                raise Vist2Error("the prompt is empty")
            try:
                query.encode("utf-8")
            except UnicodeEncodeError:
                raise Vist2Error("the prompt is not valid UTF-8 text (it holds lone surrogates)") from None
            return self.tokenizer.encode(query, add_special_tokens=False)
        if not isinstance(query, list) or not query:
            raise Vist2Error("the prompt is empty")
        return list(query)

    def _cancel(self) -> list[Event]:
        """Finish the requests `cancel` was asked for: running ones leave, waiting ones never run."""
        with self._lock:
            cancels, self._cancels = self._cancels, {}
            self.waiting = [r for r in self.waiting if r not in cancels]
        events = []
        for request, reason in cancels.items():
            if request.finished:
                continue
            request.end(reason)
            events.append(Event(request, [], finished=True))
            if request in self.rows:
                self._leave(request)
            else:
                request.finish(self.kv)
        return events

    def _admit(self) -> None:
        with self._lock:
            room = len(self.waiting) if self.max_batch is None else max(self.max_batch - len(self.rows), 0)
            joining, self.waiting = self.waiting[:room], self.waiting[room:]
        for request, slot in zip(joining, self.kv.add_slots([r.kv_need() for r in joining])):
            request.start(slot)
            self.rows.append(request)

    def _prefill(self) -> None:
        """Prompts into their slots, oldest first: a short one whole (several per forward), a long
        one in pieces. With `prefill_tokens`, at most that many positions this step (at least one
        piece), so running rows keep decoding while a long prompt goes in over several steps."""
        left = self.prefill_tokens if self.prefill_tokens is not None else float("inf")
        whole = []
        for request in sorted((r for r in self.rows if r.status is Status.PREFILL), key=lambda r: r.id):
            if left <= 0:
                break
            if request.cursor is None and request.prompt.positions <= min(left, decode.PREFILL_TOKENS):
                whole.append(request)
                left -= request.prompt.positions
                continue
            request.cursor = request.cursor or decode.PromptCursor(request.prompt.segments)
            left -= self._prefill_pieces(request, left)
        for group in prefill_groups(whole):
            started = time.perf_counter()
            logits = decode.prefill_rows(self.model, self.kv, [r.slot for r in group],
                                         [r.prompt.segments for r in group], group[0].options.bidirectional_visual,
                                         lambda texts: self._encode(texts, group))
            for request, row_logits in zip(group, logits):
                request.stats.prefill_s += time.perf_counter() - started
                request.prefilled(row_logits, self.kv)

    def _prefill_pieces(self, request: Request, left: float) -> int:
        """Pieces of one prompt up to `left` positions (unlimited: text in K-token pieces and pages
        PAGE_BATCH at a time, as `bench.bounds` counts them); returns the positions fed."""
        started, cursor, options, used = time.perf_counter(), request.cursor, request.options, 0
        text_piece = options.chunk_tokens if self.prefill_tokens is None else decode.PREFILL_TOKENS
        while not cursor.done and used < left:
            pages = cursor.segments[cursor.index][0] == "pages"
            if pages and used and left - used < options.beta:
                break
            before = cursor.base
            request.logits = decode.prefill_piece(
                self.model, self.kv, request.slot, cursor,
                min(left - used, decode.PAGE_BATCH * options.beta if pages else text_piece), options.beta,
                options.bidirectional_visual, lambda texts: self._encode(texts, [request]))
            used += cursor.base - before
        request.stats.prefill_s += time.perf_counter() - started
        if cursor.done:
            request.prefilled(request.logits, self.kv)
        return used

    def _choose(self, rows: list[Request]) -> list[int]:
        """One token per running row: forced, greedy (batched) or sampled (per row)."""
        from vist2.sampling import sample

        vocabulary = len(self.tokenizer)  # the embedding matrix may be padded beyond it
        logits = constrain.mask(torch.stack([r.logits for r in rows])[:, :vocabulary], rows)
        greedy = logits.argmax(-1).tolist()
        tokens = []
        for index, request in enumerate(rows):
            if request.forced is not None:
                tokens.append(request.forced[request.stats.generated_tokens])
            elif request.plain_greedy:
                tokens.append(greedy[index])
            else:
                chosen = sample(logits[index : index + 1], [request.history], request.config, request.generator,
                                [request.output])
                tokens.append(int(chosen[0]))
            if request.keep_logits:
                request.kept.append(request.logits)
        return tokens

    def _decode(self, rows: list[Request]) -> None:
        """Feed each row's last token; transient (gcc chunk) tokens do not advance the base."""
        positions = torch.tensor([[r.base + r.offset] for r in rows])
        embeds = decode.embed_tokens(self.model, [r.output[-1] for r in rows])
        new = torch.ones(1, 1, dtype=torch.bool)
        logits = decode.forward(self.model, self.kv, [r.slot for r in rows], embeds, positions, new)
        for request, row_logits in zip(rows, logits):
            request.logits = row_logits
            if request.config.mode == "gcc":
                request.offset += 1
            else:
                request.base += 1
            request.measure(self.kv)

    def _compress(self, complete: list[tuple[Request, Event]]) -> None:
        """Finished chunks -> visual blocks, one forward per group of rows alike in shape and options."""
        groups: dict[tuple, list] = {}
        for request, event in complete:
            event.pages = request.close_chunk(self.renderer.fits)
            key = (len(event.pages), request.options.visual_sees_text, request.options.bidirectional_visual)
            groups.setdefault(key, []).append((request, event))
        for (pages, sees_text, bidirectional), members in groups.items():
            rows = [request for request, _ in members]
            visual = self._encode([p for _, event in members for p in event.pages], rows)
            visual = visual.reshape(len(rows), pages * visual.shape[1], visual.shape[2])
            logits = decode.compress(self.model, self.kv, [r.slot for r in rows], [r.offset for r in rows],
                                     [r.base for r in rows], visual, self.options.beta, sees_text, bidirectional)
            for request, row_logits in zip(rows, logits):
                request.logits = row_logits
                request.measure(self.kv, evicted=request.offset)
                request.base += visual.shape[1]
                request.offset = 0
                request.stats.chunks_compressed += 1

    def _encode(self, texts: list[str], rows: list[Request]) -> torch.Tensor:
        """Render and encode pages: (N, beta, d); the time is charged to each of `rows`."""
        started = time.perf_counter()
        pages = self.renderer.render_batch(texts)
        rendered = time.perf_counter()
        visual = self.model.encode_pages(pages)
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        for request in rows:
            request.stats.render_s += rendered - started
            request.stats.encode_s += time.perf_counter() - rendered
        return visual

    def _leave(self, request: Request) -> None:
        """Free the row's slot; the last slot's row moves into it, so slots stay 0..n-1 in order."""
        request.finish(self.kv)
        self.rows.remove(request)
        moved = self.kv.free_slot(request.slot)
        if moved is not None:
            next(r for r in self.rows if r.slot == moved).slot = request.slot
            self.rows.sort(key=lambda r: r.slot)
        request.slot = None

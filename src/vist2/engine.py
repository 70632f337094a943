"""The generation engine: requests with their own state join and leave a running batch.

Each `Request` carries its mode (text, pcc, gcc), sampling options, chunk options, prompt,
status and chunk phase. `Engine.step` finishes cancelled requests, admits waiting ones (a
slot of the `KVStore` with room for their need), prefills prompts (whole, or with
`prefill_tokens` at most that many positions per step, in the same forward as the decode
tokens, so running rows keep decoding while a long prompt goes in), picks one token for every
running request (`_choose`, per row), feeds them in one packed forward (`decode.forward`),
compresses each gcc row's chunk when it closes, finishes a row whose next forward would pass
the backbone's position limit ("length"), and frees the slots of finished requests.
`add` and `cancel` may be called between steps, or from another thread.

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


def prefill_groups(prompts: list[tuple[Request, decode.Feed]]) -> list[list[tuple[Request, decode.Feed]]]:
    """Whole prompts in forwards of at most PREFILL_TOKENS positions together, shortest first."""
    groups: list[list] = []
    size = 0
    for request, feed in sorted(prompts, key=lambda pair: pair[1].positions.shape[1]):
        if not groups or size + feed.positions.shape[1] > decode.PREFILL_TOKENS:
            groups.append([])
            size = 0
        groups[-1].append((request, feed))
        size += feed.positions.shape[1]
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
        prompts = self._prefill()
        running = [r for r in self.rows if r.status is Status.RUNNING]
        tokens = self._choose(running) if running else []
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
        if feed or prompts:
            self._forward(feed, prompts)
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

    def _prefill(self) -> list[tuple[Request, decode.Feed]]:
        """Prompts into their slots, oldest first: a short one whole, a long one in pieces. Without
        `prefill_tokens` every prompt goes in now (short ones several per forward). With it, at most
        that many positions this step (at least one piece), returned to go into the same forward
        as this step's decode tokens: running rows keep decoding while a long prompt goes in."""
        budget = self.prefill_tokens
        left = budget if budget is not None else float("inf")
        whole, pieces = [], []
        for request in sorted((r for r in self.rows if r.status is Status.PREFILL), key=lambda r: r.id):
            if left <= 0:
                break
            if request.cursor is None and request.prompt.positions <= min(left, decode.PREFILL_TOKENS):
                whole.append(request)
                left -= request.prompt.positions
                continue
            cursor = request.cursor = request.cursor or decode.PromptCursor(request.prompt.segments)
            if budget is None:
                while not cursor.done:  # the next piece attends this one: one forward each
                    self._forward([], [(request, self._piece(request, left))])
                continue
            pieces.append((request, self._piece(request, left)))  # one piece a step
            left -= pieces[-1][1].positions.shape[1]
        prompts = self._whole(whole) + pieces
        if budget is not None:
            return prompts
        for group in prefill_groups(prompts):
            self._forward([], group)
        return []

    def _whole(self, requests: list[Request]) -> list[tuple[Request, decode.Feed]]:
        """Whole prompts' feeds, all their pages rendered and encoded in one batch."""
        texts = [page for r in requests for page in r.prompt.pages]
        visual = self._encode(texts, requests) if texts else None
        prompts, used = [], 0
        for request in requests:
            pages = len(request.prompt.pages)
            feed = decode.prompt_feed(self.model, request.slot, request.prompt.segments,
                                      None if visual is None else visual[used : used + pages],
                                      request.options.bidirectional_visual)
            prompts.append((request, feed))
            used += pages
        return prompts

    def _piece(self, request: Request, left: float) -> decode.Feed:
        """The next piece of a long prompt, at most `left` positions (unlimited: text in K-token
        pieces and pages PAGE_BATCH at a time, as `bench.bounds` counts them)."""
        cursor, options = request.cursor, request.options
        pages = cursor.segments[cursor.index][0] == "pages"
        text_piece = options.chunk_tokens if self.prefill_tokens is None else decode.PREFILL_TOKENS
        return decode.piece_feed(self.model, request.slot, cursor,
                                 min(left, decode.PAGE_BATCH * options.beta if pages else text_piece), options.beta,
                                 options.bidirectional_visual, lambda texts: self._encode(texts, [request]))

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

    def _forward(self, rows: list[Request], prompts: list[tuple[Request, decode.Feed]]) -> None:
        """One forward: each running row's last token (a transient gcc chunk token does not
        advance the base) and prompts' feeds (a prompt whose last piece this is starts running)."""
        started = time.perf_counter()
        feeds = [decode.token_feed(self.model, [r.slot for r in rows], [r.output[-1] for r in rows],
                                   [r.base + r.offset for r in rows])] if rows else []
        logits = decode.forward(self.model, self.kv, feeds + [feed for _, feed in prompts])
        for request, row_logits in zip(rows, logits):
            request.logits = row_logits
            if request.config.mode == "gcc":
                request.offset += 1
            else:
                request.base += 1
            request.measure(self.kv)
        for (request, _), row_logits in zip(prompts, logits[len(rows) :]):
            request.stats.prefill_s += time.perf_counter() - started
            request.logits = row_logits
            if request.cursor is None or request.cursor.done:
                request.prefilled(row_logits, self.kv)

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

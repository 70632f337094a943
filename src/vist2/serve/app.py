"""The FastAPI application: OpenAI routes, /health, /metrics and the page at `/`, behind the
guard (serve/guard.py). A request's body is read within the read timeout, then parsed,
rendered and tokenized off the event loop (characters bounded before any tokenizing)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from vist2.errors import ContextLengthError, Vist2Error
from vist2.request import stop_ids
from vist2.serve import tools
from vist2.serve.metrics import Metrics, route_label
from vist2.serve.protocol import (MAX_BODY_BYTES, ApiError, Limits, check_model, context_error, parse_body, parse_job,
                                  with_max_tokens)
from vist2.serve.shapes import Logprobs, envelope, finish_reason, usage
from vist2.serve.worker import QueueFull, Update, Worker

PAGE = Path(__file__).with_name("static") / "index.html"


@dataclass(frozen=True)
class Access:
    """Who may drive the server and how long a client may take to send its request."""

    allowed_hosts: list[str]
    allowed_origins: list[str]
    api_key: str | None = None
    read_timeout: float = 30.0  # seconds to send the headers, and then the body


def create_app(engine, tokenizer, renderer, name: str, default_mode: str, limits: Limits, max_queue: int,
               access: Access | None = None, fingerprint: str = "fp_vist2"):
    """The ASGI app: the guard around FastAPI; its `state` holds worker, metrics and limits.
    access: default, answer only to 127.0.0.1/localhost, no CORS, no key."""
    from vist2.serve.guard import Guard, default_hosts

    access = access or Access(default_hosts("127.0.0.1"), [])
    server = Server(engine, tokenizer, renderer, name, default_mode, limits, max_queue, access, fingerprint)
    app = server.app
    _routes(app, server)
    guarded = Guard(_with_cors(app, access.allowed_origins), access.allowed_hosts, access.api_key,
                    lambda scope, status: server.metrics.answered(route_label(app, scope), status))
    guarded.state = app.state
    return guarded


class Server:
    """What the routes share: engine, worker, metrics, limits and the model's name and template."""

    def __init__(self, engine, tokenizer, renderer, name: str, default_mode: str, limits: Limits, max_queue: int,
                 access: Access, fingerprint: str):
        from vist2.tokenizer import CHATML_TEMPLATE

        self.engine, self.tokenizer, self.renderer, self.name = engine, tokenizer, renderer, name
        self.default_mode, self.limits, self.access, self.fingerprint = default_mode, limits, access, fingerprint
        self.metrics = Metrics()
        self.worker = Worker(engine, self.metrics, max_queue)
        self.template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else CHATML_TEMPLATE
        self.stops = stop_ids(tokenizer)
        self.app = FastAPI(lifespan=self._lifespan, docs_url=None, redoc_url=None, openapi_url=None)
        self.app.state.worker, self.app.state.metrics, self.app.state.limits = self.worker, self.metrics, limits

    @asynccontextmanager
    async def _lifespan(self, app):
        self.worker.start()
        yield
        await asyncio.to_thread(self.worker.stop)

    def error_response(self, error: ApiError, route: str) -> JSONResponse:
        self.metrics.answered(route, error.status)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    def model_card(self) -> dict:
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "vist2",
                "max_model_len": self.limits.context}

    def prepare(self, raw: bytes, chat: bool):
        """Body -> (job, queries, configs, structured): every check, grammars (serve/tools.py), the
        template and the tokenizer (a worker thread)."""
        from vist2.serve.chat import chat_query, completion_queries, messages_of, prompt_chars

        body, limits, tokenizer = parse_body(raw), self.limits, self.tokenizer
        check_model(body, self.name)
        job = parse_job(body, chat, self.default_mode, limits, len(tokenizer))
        param = "messages" if chat else "prompt"
        if prompt_chars(body, chat) > limits.max_prompt_chars:
            raise context_error(f"the prompt has more characters than {limits.max_prompt_tokens} tokens can hold "
                                f"(at most {limits.max_prompt_chars}); please shorten it", param)
        structured = tools.parse(body, tokenizer, self.stops)
        job = tools.job_for(job, structured) if structured else job
        offered = structured.tools if structured else None
        queries = ([chat_query(tokenizer, self.template, messages_of(body), offered)] if chat
                   else completion_queries(tokenizer, body.get("prompt")))
        configs = [with_max_tokens(job, query.tokens, limits, param) for query in queries]
        return job, queries, configs, structured

    async def submit(self, job, queries, configs, chat: bool, queue: asyncio.Queue):
        """The job's rows on the worker (prompt i's choice j: seed + j when seeded); ApiError when refused."""
        items = [(query, config if config.seed is None or j == 0 else
                  replace(config, seed=(config.seed + j) % 2**63))  # choice j of a seeded job: seed + j
                 for query, config in zip(queries, configs) for j in range(job.n)]
        try:
            return await self.worker.submit(items, queue)
        except QueueFull as full:
            raise ApiError(f"the server is busy: {full}; retry later", status=429,
                           kind="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None
        except ContextLengthError as error:
            param = job.max_tokens_param if job.max_tokens is not None else ("messages" if chat else "prompt")
            raise ApiError(f"This model's maximum context length is {error.limit} positions. However, the "
                           f"{job.config.mode} prompt takes {error.positions} positions and the completion up "
                           f"to {error.response}. Please reduce the length of the prompt or of max_tokens.",
                           param, code="context_length_exceeded") from None
        except Vist2Error as error:
            raise ApiError(str(error), "messages" if chat else "prompt") from None

    async def answer(self, request: Request, route: str, chat: bool):
        arrived = time.monotonic()
        try:
            try:
                raw = await read_body(request, self.access.read_timeout)
            except ClientDisconnect:
                self.metrics.answered(route, 499)
                return JSONResponse({}, status_code=499)
            job, queries, configs, structured = await asyncio.to_thread(self.prepare, raw, chat)
            queue: asyncio.Queue = asyncio.Queue()
            rows = await self.submit(job, queries, configs, chat, queue)
        except ApiError as error:
            return self.error_response(error, route)
        self.metrics.answered(route, 200)
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        reply = Reply(rows, queries, job, self.tokenizer, self.renderer, ident, self.name, self.fingerprint, chat,
                      self.metrics, arrived, structured)
        if job.stream:
            return StreamingResponse(reply.events(queue, request, self.worker), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await reply.whole(queue, request, self.worker)


def _routes(app: FastAPI, server: Server) -> None:
    """The routes: the page, /health, /metrics, the models and the two completion routes."""
    metrics, name = server.metrics, server.name

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        message = f"no route {request.method} {request.url.path}" if error.status_code in (404, 405) else str(error.detail)
        return server.error_response(ApiError(message, status=error.status_code, kind=kind),
                                     route_label(app, request.scope))

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "running": len(server.engine.rows), "queued": server.worker.queued}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        metrics.answered("/v1/models", 200)
        return {"object": "list", "data": [server.model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str):
        if model != name:
            return server.error_response(ApiError(f"the model {model!r} does not exist; this server serves {name!r}",
                                                  "model", status=404, kind="not_found_error",
                                                  code="model_not_found"), "/v1/models/{model}")
        metrics.answered("/v1/models/{model}", 200)
        return server.model_card()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await server.answer(request, "/v1/chat/completions", chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await server.answer(request, "/v1/completions", chat=False)


def _with_cors(app, origins: list[str]):
    if not origins:
        return app
    from starlette.middleware.cors import CORSMiddleware

    return CORSMiddleware(app, allow_origins=origins, allow_methods=["GET", "POST"],
                          allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
                          expose_headers=["X-Request-Id"])


async def read_body(request: Request, timeout: float) -> bytes:
    """The body, refused once it passes MAX_BODY_BYTES (413) or takes longer than `timeout` (408)."""
    loop = asyncio.get_running_loop()
    deadline, pieces = loop.time() + timeout, request.stream().__aiter__()
    chunks, size = [], 0
    while True:
        try:
            chunk = await asyncio.wait_for(pieces.__anext__(), max(deadline - loop.time(), 0))
        except StopAsyncIteration:
            return b"".join(chunks)
        except asyncio.TimeoutError:
            raise ApiError(f"the body did not arrive within {timeout:g} s", status=408, code="request_timeout",
                           headers={"Connection": "close"}) from None
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(f"the body is larger than {MAX_BODY_BYTES >> 20} MiB", status=413)
        chunks.append(chunk)


class Reply:
    """The answer to one job: its engine requests (prompt i's choice j is index i * n + j, as
    OpenAI numbers them), as one JSON body or a stream of SSE chunks."""

    def __init__(self, rows, queries, job, tokenizer, renderer, ident, model, fingerprint, chat, metrics, arrived,
                 structured=None):
        from vist2.generate import TextStream

        self.rows, self.queries, self.job, self.tokenizer, self.renderer = rows, queries, job, tokenizer, renderer
        self.ident, self.model, self.fingerprint, self.chat = ident, model, fingerprint, chat
        self.metrics, self.arrived = metrics, arrived
        self.created = int(time.time())  # one per response, on every chunk
        self.index = {row: i for i, row in enumerate(rows)}
        self.texts = [TextStream(tokenizer, row.config.stop_strings) for row in rows]
        self.logprobs = [Logprobs(tokenizer, chat) for _ in rows]
        self.entries: list[list] = [[] for _ in rows]  # (logprob, top) per output token
        self.last_token = [None] * len(rows)
        self.open = set(rows)
        self.structured, self.gates = structured, [tools.StreamGate(structured) for _ in rows]
        self.kind = ("chat.completion.chunk" if job.stream else "chat.completion") if chat else "text_completion"

    def _envelope(self, choices: list, **extra) -> dict:
        return envelope(self.kind, self.ident, self.created, self.model, self.fingerprint, choices, **extra)

    def _prompt_text(self, i: int) -> str:
        return self.queries[i // self.job.n].text

    def _usage(self) -> dict:
        return usage(self.rows, sum(query.tokens for query in self.queries))

    def _time(self, update: Update) -> None:
        """Latency histograms: first token, between tokens, end to end (per choice)."""
        i, now = self.index[update.event.request], time.monotonic()
        if update.event.tokens:
            if self.last_token[i] is None:
                self.metrics.latency("vist2_time_to_first_token_seconds", now - self.arrived)
            else:
                self.metrics.latency("vist2_inter_token_seconds", now - self.last_token[i])
            self.last_token[i] = now
        if update.event.finished:
            self.metrics.latency("vist2_end_to_end_seconds", now - self.arrived)

    async def _updates(self, queue, request, worker):
        """Updates until every row finished; cancels all rows if the client goes away."""
        checked = time.monotonic()
        try:
            while self.open:
                try:
                    update = await asyncio.wait_for(queue.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    update = None
                if time.monotonic() - checked > 0.25:  # a client gone mid-answer frees its rows
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        return
                if update is None:
                    continue
                if isinstance(update, Exception):
                    raise update
                self._time(update)
                self.entries[self.index[update.event.request]] += update.event.logprobs
                if update.event.finished:
                    self.open.discard(update.event.request)
                yield update
        finally:
            for row in self.open:  # disconnected, or the generator was closed: free the rows now
                worker.cancel(row)

    async def whole(self, queue, request, worker):
        try:
            async for _ in self._updates(queue, request, worker):
                pass
        except Exception as error:
            return JSONResponse(ApiError(f"internal error: {error}", kind="server_error").body(), status_code=500)
        if self.open:  # the client left
            return JSONResponse({}, status_code=499)
        choices = []
        for i, row in enumerate(self.rows):
            text = row.result(self.tokenizer).text
            logprobs = self.logprobs[i].shape(row.output, self.entries[i]) if self.job.logprobs is not None else None
            content, calls = tools.reply(text, self.structured)  # completions: never calls
            if self.chat:
                message = {"role": "assistant", "content": content, "refusal": None,
                           **({"tool_calls": calls} if calls else {})}
                choice = {"index": i, "message": message, "logprobs": logprobs}
            else:
                echoed = self._prompt_text(i) if self.job.echo else ""
                choice = {"index": i, "text": echoed + text, "logprobs": logprobs}
            choices.append({**choice, "finish_reason": "tool_calls" if calls else finish_reason(row)})
        return self._envelope(choices, usage=self._usage())

    def _chunk(self, index: int, piece: str | None, finish: str | None, logprobs: dict | None,
               extra: dict | None = None, calls: list | None = None) -> str:
        if self.chat:
            delta = {} if piece is None else {"content": piece}
            if calls:
                delta = {"tool_calls": [{"index": k, **call} for k, call in enumerate(calls)]}
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": index, "text": piece or "", "logprobs": logprobs, "finish_reason": finish}
        body = self._envelope([choice])
        if extra:
            body["vist2"] = extra
        return f"data: {json.dumps(body)}\n\n"

    async def events(self, queue, request, worker):
        for i in range(len(self.rows)):
            if self.chat:
                first = self._envelope([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                         "finish_reason": None}])
                yield f"data: {json.dumps(first)}\n\n"
            elif self.job.echo:
                yield self._chunk(i, self._prompt_text(i), None, None)
        try:
            async for update in self._updates(queue, request, worker):
                yield await self._stream_update(update)
        except Exception as error:
            body = ApiError(f"internal error: {error}", kind="server_error").body()
            yield f"data: {json.dumps(body)}\n\n"
        if self.job.include_usage:
            yield f"data: {json.dumps(self._envelope([], usage=self._usage()))}\n\n"
        yield "data: [DONE]\n\n"

    async def _stream_update(self, update: Update) -> str:
        event, row = update.event, update.event.request
        i = self.index[row]
        piece = self.gates[i].push(self.texts[i].push(event.tokens))
        finish = calls = None
        if event.finished:
            text = row.result(self.tokenizer).text
            piece, calls = self.gates[i].finish(piece + self.texts[i].rest(text), text, self.structured)
            finish = "tool_calls" if calls else finish_reason(row)
        logprobs = None
        if self.job.logprobs is not None and event.tokens:
            logprobs = self.logprobs[i].shape(event.tokens, event.logprobs)
        extra = {"kv_tokens": update.kv_tokens, "kv_tokens_full_text": update.kv_full_text,
                 "chunks_compressed": row.stats.chunks_compressed}
        if event.pages and self.job.return_pages:
            extra["pages"] = await asyncio.to_thread(self._pngs, event.pages)
        if not piece and finish is None and not event.pages and logprobs is None:
            return ""
        return self._chunk(i, piece, finish, logprobs, extra, calls)

    def _pngs(self, pages: list[str]) -> list[str]:
        """Each page text drawn again, as a PNG data URI (the page view)."""
        uris = []
        for text in pages:
            buffer = io.BytesIO()
            self.renderer.render(text).image.save(buffer, format="PNG")
            uris.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
        return uris

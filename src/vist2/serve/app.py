"""The FastAPI application: OpenAI routes, /health, /metrics and the page at `/`."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from vist2.errors import Vist2Error
from vist2.request import stop_ids
from vist2.serve import tools
from vist2.serve.metrics import Metrics
from vist2.serve.protocol import (MAX_BODY_BYTES, ApiError, Limits, chat_query, check_model, completion_query, envelope,
                                  finish_reason, parse_body, parse_job, usage)
from vist2.serve.worker import QueueFull, Update, Worker

PAGE = Path(__file__).with_name("static") / "index.html"


def create_app(engine, tokenizer, renderer, name: str, default_mode: str, limits: Limits,
               max_queue: int) -> FastAPI:
    metrics = Metrics()
    worker = Worker(engine, metrics, max_queue)

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker, app.state.metrics = worker, metrics

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    def error_response(error: ApiError, endpoint: str) -> JSONResponse:
        metrics.answered(endpoint, error.status)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        message = f"no route {request.method} {request.url.path}" if error.status_code in (404, 405) else str(error.detail)
        return error_response(ApiError(message, status=error.status_code, kind=kind), request.url.path)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "running": len(engine.rows), "queued": worker.queued}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "vist2",
                                            "max_model_len": limits.max_prompt_tokens + limits.max_tokens}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await answer(request, "/v1/chat/completions", chat_query, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, "/v1/completions", completion_query, chat=False)

    async def answer(request: Request, endpoint: str, query_of, chat: bool):
        try:
            body = parse_body(await read_body(request))
            check_model(body, name)
            structured = await asyncio.to_thread(tools.parse, body, tokenizer, stop_ids(tokenizer), chat)
            query = structured.prompt if structured and structured.prompt else query_of(body)
            job = parse_job(body, query, default_mode, limits, count)
            job = tools.job_for(job, structured) if structured else job
            configs = [job.config if job.config.seed is None or i == 0 else
                       _reseeded(job.config, job.config.seed + i) for i in range(job.n)]
            queue: asyncio.Queue = asyncio.Queue()
            try:
                rows = await worker.submit(job.query, configs, queue)
            except QueueFull as full:
                raise ApiError(f"the server is busy: {full}; retry later", status=429,
                               kind="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None
            except Vist2Error as error:
                raise ApiError(str(error), "messages" if chat else "prompt") from None
        except ApiError as error:
            return error_response(error, endpoint)
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        metrics.answered(endpoint, 200)
        reply = Reply(rows, tokenizer, renderer, ident, name, chat, job.return_pages, structured)
        if job.stream:
            return StreamingResponse(reply.events(queue, request, worker, job.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await reply.whole(queue, request, worker)

    return app


async def read_body(request: Request) -> bytes:
    """The body, refused (413) once it passes MAX_BODY_BYTES."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(f"the body is larger than {MAX_BODY_BYTES >> 20} MiB", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _reseeded(config, seed: int):
    from dataclasses import replace

    return replace(config, seed=seed % 2**63)


class Reply:
    """The answer to one job: its n engine requests, as one JSON body or a stream of SSE chunks."""

    def __init__(self, rows, tokenizer, renderer, ident, model, chat, return_pages, structured=None):
        from vist2.generate import TextStream

        self.rows, self.tokenizer, self.renderer = rows, tokenizer, renderer
        self.ident, self.model, self.chat, self.return_pages = ident, model, chat, return_pages
        self.index = {row: i for i, row in enumerate(rows)}
        self.texts = [TextStream(tokenizer, row.config.stop_strings) for row in rows]
        self.open = set(rows)
        self.structured, self.gates = structured, [tools.StreamGate(structured) for _ in rows]

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
        choices = []
        for i, row in enumerate(self.rows):
            text = row.result(self.tokenizer).text
            content, calls = tools.reply(text, self.structured)
            message = {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
            choice = ({"index": i, "message": message} if self.chat
                      else {"index": i, "text": text, "logprobs": None})
            choices.append({**choice, "finish_reason": "tool_calls" if calls else finish_reason(row)})
        kind = "chat.completion" if self.chat else "text_completion"
        return envelope(kind, self.ident, self.model, choices, usage=usage(self.rows, self.tokenizer))

    def _chunk(self, index: int, piece: str | None, finish: str | None, extra: dict | None = None,
               calls: list | None = None) -> str:
        if self.chat:
            delta = {} if piece is None else {"content": piece}
            if calls:
                delta = {"tool_calls": [{"index": k, **call} for k, call in enumerate(calls)]}
            choice = {"index": index, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": index, "text": piece or "", "finish_reason": finish, "logprobs": None}
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        body = envelope(kind, self.ident, self.model, [choice])
        if extra:
            body["vist2"] = extra
        return f"data: {json.dumps(body)}\n\n"

    async def events(self, queue, request, worker, include_usage: bool):
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        if self.chat:
            for i in range(len(self.rows)):
                first = envelope(kind, self.ident, self.model,
                                 [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
                yield f"data: {json.dumps(first)}\n\n"
        try:
            async for update in self._updates(queue, request, worker):
                yield await self._stream_update(update)
        except Exception as error:
            body = ApiError(f"internal error: {error}", kind="server_error").body()
            yield f"data: {json.dumps(body)}\n\n"
        if include_usage:
            tail = envelope(kind, self.ident, self.model, [], usage=usage(self.rows, self.tokenizer))
            yield f"data: {json.dumps(tail)}\n\n"
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
        extra = {"kv_tokens": update.kv_tokens, "kv_tokens_full_text": update.kv_full_text,
                 "chunks_compressed": row.stats.chunks_compressed}
        if event.pages and self.return_pages:
            extra["pages"] = await asyncio.to_thread(self._pngs, event.pages)
        if not piece and finish is None and not event.pages:
            return ""
        return self._chunk(i, piece, finish, extra, calls)

    def _pngs(self, pages: list[str]) -> list[str]:
        """Each page text drawn again, as a PNG data URI (the page view)."""
        uris = []
        for text in pages:
            buffer = io.BytesIO()
            self.renderer.render(text).image.save(buffer, format="PNG")
            uris.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
        return uris


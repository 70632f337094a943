"""The engine thread: the only caller of `Engine.add` and `Engine.step`. The asyncio side
submits jobs and cancels them; each step's events go back to the request's asyncio queue."""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass

from vist2.errors import Vist2Error


class QueueFull(Exception):
    pass


@dataclass
class Update:
    """One step's event for one request, with the row's live KV figures."""

    event: object  # engine.Event
    kv_tokens: int  # entries the row holds now
    kv_full_text: int  # entries full text would hold now


class Worker:
    def __init__(self, engine, metrics, max_queue: int):
        self.engine, self.metrics, self.max_queue = engine, metrics, max_queue
        self._pending: list[tuple] = []  # (query, config, loop, queue, future) not yet added
        self._queues: dict = {}  # engine request -> (loop, asyncio.Queue)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._abort_at: float | None = None
        self.thread = threading.Thread(target=self._run, name="vist2-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    @property
    def queued(self) -> int:
        return len(self._pending) + len(self.engine.waiting)

    async def submit(self, items: list, queue: asyncio.Queue) -> list:
        """Add one request per (chat.Query, config) (all answer to `queue`); raises QueueFull or Vist2Error."""
        loop = asyncio.get_running_loop()
        futures = []
        with self._lock:
            if self._stopping or self._abort_at is not None:
                raise QueueFull("the server is shutting down")
            if self.queued + len(items) > self.max_queue:
                raise QueueFull(f"{self.queued} requests are already queued (--max-queue {self.max_queue})")
            for query, config in items:
                future = Future()
                self._pending.append((query, config, loop, queue, future))
                futures.append(future)
        self._wake.set()
        requests = []
        for future in futures:
            try:
                requests.append(await asyncio.wrap_future(future))
            except Vist2Error:
                for request in requests:  # the others of this job go too
                    self.cancel(request)
                raise
        return requests

    def cancel(self, request) -> None:
        self.engine.cancel(request)
        self._wake.set()

    def abort_after(self, seconds: float) -> None:
        """Shutdown began: take no new requests, and cancel those still running after `seconds`
        (their answers end with finish_reason "abort")."""
        with self._lock:
            self._abort_at = time.monotonic() + seconds
        self._wake.set()

    def stop(self) -> None:
        """Cancel whatever is left and end the thread (after the server stopped taking requests)."""
        with self._lock:
            self._stopping = True
        for request in list(self._queues):
            self.engine.cancel(request, "aborted")
        self._wake.set()
        self.thread.join(timeout=30)

    def _add_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for query, config, loop, queue, future in pending:
            try:
                request = self.engine.add(query.ids, config, frame=query.frame)
            except Vist2Error as error:
                future.set_exception(error)
                continue
            self._queues[request] = (loop, queue)
            future.set_result(request)

    def _fail(self, error: Exception) -> None:
        for request, (loop, queue) in list(self._queues.items()):
            self.engine.cancel(request, "aborted")
            try:
                loop.call_soon_threadsafe(queue.put_nowait, error)
            except RuntimeError:
                pass
        self._queues.clear()

    def _run(self) -> None:
        engine = self.engine
        while True:
            self._add_pending()
            if self._abort_at is not None and time.monotonic() >= self._abort_at:
                for request in list(self._queues):
                    engine.cancel(request)
            if not engine.busy:
                if self._stopping:
                    return
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                events = engine.step()
            except Exception as error:  # a bug: fail the requests in flight, keep serving
                traceback.print_exc()
                self._fail(error)
                continue
            for event in events:
                request = event.request
                held = request.stats.kv_tokens_final if event.finished else engine.kv.lengths[request.slot]
                full = request.prompt.full_text_tokens + request.stats.generated_tokens
                target = self._queues.get(request)
                if event.finished:
                    self._queues.pop(request, None)
                self.metrics.observe(event)
                if target is not None:
                    loop, queue = target
                    try:
                        loop.call_soon_threadsafe(queue.put_nowait, Update(event, held, full))
                    except RuntimeError:  # the loop is closed: nobody listens any more
                        pass
            self.metrics.gauge(engine, self.queued)

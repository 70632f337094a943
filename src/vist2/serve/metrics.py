"""Counters and gauges for `GET /metrics`, in the Prometheus text exposition format."""

from __future__ import annotations

import threading

_HELP = {
    "vist2_requests_total": ("counter", "requests answered, by endpoint and HTTP status"),
    "vist2_prompt_tokens_total": ("counter", "prompt tokens of finished requests"),
    "vist2_completion_tokens_total": ("counter", "tokens generated"),
    "vist2_chunks_compressed_total": ("counter", "response chunks rendered and compressed (gcc)"),
    "vist2_queue_depth": ("gauge", "requests waiting for a row"),
    "vist2_running_requests": ("gauge", "requests being decoded"),
    "vist2_kv_entries": ("gauge", "KV cache entries held, all rows"),
    "vist2_kv_bytes": ("gauge", "bytes the KV store holds"),
}


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.values = {name: 0 for name in _HELP if name != "vist2_requests_total"}

    def answered(self, endpoint: str, status: int) -> None:
        with self._lock:
            key = (endpoint, status)
            self.requests[key] = self.requests.get(key, 0) + 1

    def observe(self, event) -> None:
        """One engine event (engine thread)."""
        with self._lock:
            self.values["vist2_completion_tokens_total"] += len(event.tokens)
            if event.pages:
                self.values["vist2_chunks_compressed_total"] += 1
            if event.finished:
                self.values["vist2_prompt_tokens_total"] += event.request.prompt.full_text_tokens

    def gauge(self, engine, queued: int) -> None:
        with self._lock:
            self.values["vist2_queue_depth"] = queued
            self.values["vist2_running_requests"] = len(engine.rows)
            self.values["vist2_kv_entries"] = engine.kv_entries()
            self.values["vist2_kv_bytes"] = engine.kv.nbytes()

    def text(self) -> str:
        lines = []
        with self._lock:
            for name, (kind, help_text) in _HELP.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                if name == "vist2_requests_total":
                    lines += [f'{name}{{endpoint="{e}",status="{s}"}} {c}' for (e, s), c in sorted(self.requests.items())]
                else:
                    lines.append(f"{name} {self.values[name]}")
        return "\n".join(lines) + "\n"

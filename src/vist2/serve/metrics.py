"""Counters, gauges and latency histograms for `GET /metrics`, in the Prometheus text
exposition format. Request labels are route templates (or "unmatched"), never raw paths."""

from __future__ import annotations

import bisect
import threading

_HELP = {
    "vist2_requests_total": ("counter", "requests answered, by route template and HTTP status"),
    "vist2_prompt_tokens_total": ("counter", "prompt tokens of finished requests"),
    "vist2_completion_tokens_total": ("counter", "tokens generated"),
    "vist2_chunks_compressed_total": ("counter", "response chunks rendered and compressed (gcc)"),
    "vist2_queue_depth": ("gauge", "requests waiting for a row"),
    "vist2_running_requests": ("gauge", "requests being decoded"),
    "vist2_kv_entries": ("gauge", "KV cache entries held, all rows"),
    "vist2_kv_bytes": ("gauge", "bytes the KV store holds"),
}
# Seconds; each choice of a request is observed on its own.
_HISTOGRAMS = {
    "vist2_time_to_first_token_seconds": ("time from the request's arrival to its first token",
                                          (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)),
    "vist2_inter_token_seconds": ("time between a choice's consecutive tokens",
                                  (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)),
    "vist2_end_to_end_seconds": ("time from the request's arrival to its last token",
                                 (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)),
}


class Histogram:
    def __init__(self, bounds: tuple[float, ...]):
        self.bounds, self.counts, self.sum, self.count = bounds, [0] * len(bounds), 0.0, 0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        if index < len(self.bounds):
            self.counts[index] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        lines, total = [], 0
        for bound, count in zip(self.bounds, self.counts):
            total += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {total}')
        return lines + [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum}",
                        f"{name}_count {self.count}"]


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.values = {name: 0 for name in _HELP if name != "vist2_requests_total"}
        self.histograms = {name: Histogram(bounds) for name, (_, bounds) in _HISTOGRAMS.items()}

    def answered(self, route: str, status: int) -> None:
        """One answer; `route` is a route template or "unmatched" (never a raw path)."""
        with self._lock:
            key = (route, status)
            self.requests[key] = self.requests.get(key, 0) + 1

    def latency(self, name: str, seconds: float) -> None:
        with self._lock:
            self.histograms[name].observe(seconds)

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
                    lines += [f'{name}{{route="{r}",status="{s}"}} {c}' for (r, s), c in sorted(self.requests.items())]
                else:
                    lines.append(f"{name} {self.values[name]}")
            for name, (help_text, _) in _HISTOGRAMS.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram", *self.histograms[name].lines(name)]
        return "\n".join(lines) + "\n"


def route_label(app, scope) -> str:
    """The template of the route `scope` matches (e.g. /v1/models/{model}), or "unmatched"."""
    from starlette.routing import Match

    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            return route.path
    return "unmatched"

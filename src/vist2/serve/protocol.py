"""OpenAI request checks and response shapes. Every client mistake becomes an `ApiError`
(an OpenAI error body, status 400 or 404); nothing here touches the engine."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

from vist2.errors import Vist2Error
from vist2.options import MODES, GenerationConfig

ROLES = ("system", "user", "assistant")
MAX_N = 8
MAX_STOPS = 4
MAX_BODY_BYTES = 16 * 2**20


class ApiError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.code = message, param, status, kind, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int
    max_tokens: int  # the most a request may ask for
    default_max_tokens: int


@dataclass(frozen=True)
class Job:
    """One checked request: the query text, its sampling config, and how to answer."""

    query: str
    config: GenerationConfig
    n: int
    stream: bool
    include_usage: bool
    return_pages: bool


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number here")


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object")
    return body


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(f"{name} must be a finite number, got {value!r}", name)
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ApiError(f"{name} must be in {bracket}{low}, {high}], got {value}", name)
    return float(value)


def _integer(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(f"{name} must be an integer, got {value!r}", name)
    if not low <= value <= high:
        raise ApiError(f"{name} must be in [{low}, {high}], got {value}", name)
    return value


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(f"{name} must be true or false, got {value!r}", name)
    return value


def _content(message: dict, index: int) -> str:
    content = message.get("content")
    param = f"messages[{index}].content"
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError("only text content parts ({\"type\": \"text\", \"text\": ...}) are supported", param)
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(f"{param} must be a string or a list of text parts", param)


def chat_query(body: dict) -> str:
    """The query the engine's one-turn ChatML prompt holds: a lone user message as it is;
    several messages as "role: content" lines, in order."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty list of {role, content} objects", "messages")
    turns = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(f"messages[{index}] must be an object", f"messages[{index}]")
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(f"messages[{index}].role must be one of {', '.join(ROLES)}, got {role!r}",
                           f"messages[{index}].role")
        turns.append((role, _content(message, index)))
    if len(turns) == 1 and turns[0][0] == "user":
        return turns[0][1]
    return "\n".join(f"{role}: {content}" for role, content in turns)


def completion_query(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError("prompt must be a string (or a list of one string)", "prompt")
    return prompt


def check_model(body: dict, served: str) -> None:
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError("model must be a string naming the served model", "model")
    if model != served:
        raise ApiError(f"the model {model!r} does not exist; this server serves {served!r}", "model",
                       status=404, code="model_not_found")


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise ApiError(f"stop must be a non-empty string or a list of up to {MAX_STOPS} of them", "stop")
    return tuple(stops)


def parse_job(body: dict, query: str, default_mode: str, limits: Limits, count_tokens) -> Job:
    """Check every field (400 with the field named) and build the job."""

    if not query.strip():
        raise ApiError("the prompt is empty", "messages" if "messages" in body else "prompt")
    mode = body.get("mode", default_mode)
    if mode not in MODES:
        raise ApiError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", "mode")
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _integer({name: tokens}, name, limits.default_max_tokens, 1, limits.max_tokens)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError("stream_options must be an object", "stream_options")
    values = dict(
        temperature=_number(body, "temperature", 0.0, 0.0, 2.0),  # greedy unless asked
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=_integer(body, "top_k", 0, -1, 10**6),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 10.0, low_open=True),
        no_repeat_ngram_size=_integer(body, "no_repeat_ngram_size", 0, 0, 64),
        seed=_integer(body, "seed", None, 0, 2**63 - 1),
    )
    values["top_k"] = max(values["top_k"], 0)  # -1 means off, as in vLLM
    n = _integer(body, "n", 1, 1, MAX_N)
    prompt_tokens = count_tokens(query)
    if prompt_tokens > limits.max_prompt_tokens:
        raise ApiError(f"the prompt has {prompt_tokens} tokens, more than this server's limit of "
                       f"{limits.max_prompt_tokens} (--max-prompt-tokens)", "messages" if "messages" in body else "prompt",
                       code="context_length_exceeded")
    try:
        config = GenerationConfig(mode=mode, max_new_tokens=max_tokens, stop_strings=_stops(body),
                                  ignore_eos=_flag(body, "ignore_eos"), **values)
    except Vist2Error as error:
        raise ApiError(str(error)) from None
    return Job(query, config, n, _flag(body, "stream"),
               bool(options and options.get("include_usage") is True), _flag(body, "return_pages"))


def usage(requests, tokenizer) -> dict:
    stats = [r.stats for r in requests]
    prompt = requests[0].prompt.full_text_tokens
    completion = sum(len(r.output) for r in requests)
    return {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "compression": {
            "mode": requests[0].config.mode,
            "chunks_compressed": sum(s.chunks_compressed for s in stats),
            "kv_tokens_peak": max(s.kv_tokens_peak for s in stats),
            "kv_tokens_full_text": max(s.kv_tokens_full_text for s in stats),
        },
    }


def finish_reason(request) -> str:
    return "length" if len(request.output) >= request.config.max_new_tokens else "stop"


def envelope(kind: str, ident: str, model: str, choices: list, **extra) -> dict:
    return {"id": ident, "object": kind, "created": int(time.time()), "model": model, "choices": choices, **extra}

"""OpenAI request checks. Every client mistake becomes an `ApiError` (an OpenAI error body,
status 400 or 404) naming the field; a field the server cannot honour is refused, never
ignored. Nothing here touches the engine."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

from vist2.errors import Vist2Error
from vist2.options import MODES, GenerationConfig

MAX_N = 8
MAX_STOPS = 4
MAX_TOP_LOGPROBS = 20
MAX_BODY_BYTES = 16 * 2**20

# Accepted and honoured (identifiers are accepted as they are: nothing to do with them).
_COMMON = {"model", "n", "stream", "stream_options", "stop", "seed", "temperature", "top_p", "max_tokens",
           "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "user",
           "mode", "ignore_eos", "top_k", "min_p", "repetition_penalty", "no_repeat_ngram_size", "return_pages"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "safety_identifier", "prompt_cache_key",
                         "metadata", "store", "service_tier", "modalities", "response_format", "tools", "tool_choice",
                         "parallel_tool_calls", "functions", "function_call", "audio", "prediction",
                         "reasoning_effort", "web_search_options", "verbosity"}
COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "best_of", "suffix", "response_format"}
# Known, but refused unless absent or null (response_format and tools are checked by serve/tools.py).
UNSUPPORTED = {"functions", "function_call", "audio", "prediction", "reasoning_effort", "web_search_options",
               "verbosity", "suffix"}
_INSTEAD = {"functions": "; send tools", "function_call": "; send tool_choice"}  # OpenAI's deprecated forms


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
    context: int  # the backbone's positions (max_model_len)
    max_prompt_tokens: int
    max_tokens: int  # the most a request may ask for
    default_max_tokens: int
    max_prompt_chars: int  # refused before tokenizing: more characters than max_prompt_tokens can hold
    default_temperature: float = 1.0


@dataclass(frozen=True)
class Job:
    """One checked request: how to sample and how to answer (the prompts come from serve/chat.py)."""

    config: GenerationConfig  # max_new_tokens is set per prompt (`with_max_tokens`)
    max_tokens: int | None  # asked for (None: the server's default, within the context)
    max_tokens_param: str
    n: int
    stream: bool
    include_usage: bool
    return_pages: bool
    echo: bool
    logprobs: int | None  # alternatives per token; None: no logprobs


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number here")


def parse_body(raw: bytes) -> dict:
    """The JSON object, refused (400) when it is not JSON, nests too deep, or holds lone surrogates."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
        json.dumps(body, ensure_ascii=False).encode("utf-8")  # a lone surrogate ("\ud800") cannot be text
    except RecursionError:
        raise ApiError("the body nests JSON too deeply") from None
    except UnicodeEncodeError:
        raise ApiError("the body holds a lone UTF-16 surrogate (\\ud800-\\udfff): not valid text") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object")
    return body


def check_fields(body: dict, chat: bool) -> None:
    known = CHAT_FIELDS if chat else COMPLETION_FIELDS
    for name in body:
        if name not in known:
            raise ApiError(f"unrecognized request argument: {name}", name)
    for name in UNSUPPORTED & set(body):
        if body[name] is None or (name == "suffix" and body[name] == ""):
            continue
        raise ApiError(f"{name} is not supported by this server{_INSTEAD.get(name, '')}", name)
    if body.get("store") not in (None, False):
        raise ApiError("store must be false: this server keeps no completions", "store")
    if body.get("service_tier") not in (None, "auto", "default"):
        raise ApiError("service_tier must be auto or default", "service_tier")
    if body.get("modalities") not in (None, ["text"]):
        raise ApiError('modalities must be ["text"]', "modalities")
    if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
        raise ApiError("metadata must be an object", "metadata")
    for name in ("user", "safety_identifier", "prompt_cache_key"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise ApiError(f"{name} must be a string", name)


def check_model(body: dict, served: str) -> None:
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError("model must be a string naming the served model", "model")
    if model != served:
        raise ApiError(f"the model {model!r} does not exist; this server serves {served!r}", "model",
                       status=404, code="model_not_found")


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


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise ApiError(f"stop must be a non-empty string or a list of up to {MAX_STOPS} of them", "stop")
    return tuple(stops)


def _logit_bias(body: dict, vocabulary: int) -> tuple[tuple[int, float], ...]:
    bias = body.get("logit_bias")
    if bias is None:
        return ()
    if not isinstance(bias, dict):
        raise ApiError("logit_bias must be an object mapping token ids to numbers in [-100, 100]", "logit_bias")
    pairs = []
    for key, value in bias.items():
        if not key.isdigit() or int(key) >= vocabulary:
            raise ApiError(f"logit_bias: {key!r} is not a token id in [0, {vocabulary})", "logit_bias")
        pairs.append((int(key), _number({"logit_bias": value}, "logit_bias", 0.0, -100.0, 100.0)))
    return tuple(pairs)


def _logprobs(body: dict, chat: bool) -> int | None:
    if chat:
        wanted = _flag(body, "logprobs")
        top = _integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
        if top is not None and not wanted:
            raise ApiError("top_logprobs needs logprobs: true", "top_logprobs")
        return (top or 0) if wanted else None
    return _integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)


def parse_job(body: dict, chat: bool, default_mode: str, limits: Limits, vocabulary: int) -> Job:
    """Check every field but the prompt (400 with the field named) and build the job."""

    check_fields(body, chat)
    mode = body.get("mode", default_mode)
    if mode not in MODES:
        raise ApiError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", "mode")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, name, None, 1, limits.max_tokens)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError("stream_options must be an object", "stream_options")
    stream = _flag(body, "stream")
    if options is not None and not stream:
        raise ApiError("stream_options needs stream: true", "stream_options")
    values = dict(
        temperature=_number(body, "temperature", limits.default_temperature, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=_integer(body, "top_k", 0, -1, 10**6),
        min_p=_number(body, "min_p", 0.0, 0.0, 1.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 10.0, low_open=True),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        no_repeat_ngram_size=_integer(body, "no_repeat_ngram_size", 0, 0, 64),
        seed=_integer(body, "seed", None, 0, 2**63 - 1),
        logit_bias=_logit_bias(body, vocabulary),
        logprobs=_logprobs(body, chat),
    )
    values["top_k"] = max(values["top_k"], 0)  # -1 means off, as in vLLM
    n = _integer(body, "n", 1, 1, MAX_N)
    echo = False if chat else _flag(body, "echo")
    if echo and values["logprobs"] is not None:
        raise ApiError("echo with logprobs is not supported: the prompt's log-probabilities are not computed", "echo")
    if not chat and _integer(body, "best_of", n, 1, MAX_N) != n:
        raise ApiError("best_of must equal n: this server does not rank candidates", "best_of")
    try:
        config = GenerationConfig(mode=mode, stop_strings=_stops(body), ignore_eos=_flag(body, "ignore_eos"),
                                  chat_template=False, **values)
    except Vist2Error as error:
        raise ApiError(str(error)) from None
    return Job(config, max_tokens, name, n, stream, bool(options and options.get("include_usage") is True),
               _flag(body, "return_pages"), echo, values["logprobs"])


def context_error(message: str, param: str) -> ApiError:
    return ApiError(message, param, code="context_length_exceeded")


def with_max_tokens(job: Job, prompt_tokens: int, limits: Limits, param: str):  # param: the prompt's field
    """The job's config for one prompt of `prompt_tokens`: max_new_tokens within the context.
    In text mode the check is exact here; pcc and gcc take fewer positions, and the engine
    checks those (`serve.app` turns its refusal into the same error)."""
    if prompt_tokens > limits.max_prompt_tokens:
        raise context_error(f"This model's maximum prompt length is {limits.max_prompt_tokens} tokens. However, "
                            f"your prompt has {prompt_tokens} tokens. Please reduce the length of the prompt.", param)
    room = limits.context - prompt_tokens
    if job.max_tokens is None:
        wanted = min(limits.default_max_tokens, room) if job.config.mode == "text" else limits.default_max_tokens
    else:
        wanted = job.max_tokens
    if job.config.mode == "text" and (room < 1 or wanted > room):
        blamed = job.max_tokens_param if job.max_tokens is not None and room >= 1 else param
        raise context_error(context_message(limits.context, prompt_tokens, wanted), blamed)
    return replace(job.config, max_new_tokens=wanted)


def context_message(context: int, prompt_tokens: int, wanted: int) -> str:
    return (f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + wanted} tokens ({prompt_tokens} in the prompt, {wanted} for the completion). "
            "Please reduce the length of the prompt or of max_tokens.")

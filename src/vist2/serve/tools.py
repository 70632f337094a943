"""OpenAI's structured output and tool calling, as a grammar and a prompt for the engine.

- `response_format`: `{"type": "json_object"}` or `{"type": "json_schema", "json_schema":
  {"name", "schema", "strict"}}` becomes the request's grammar (vist2.constrain); the reply is
  then valid JSON for it (unless `max_tokens` cuts it: finish_reason "length").
- `tools` with `tool_choice`: the tools offered go into the prompt through serve/chat.py (the
  model's chat template with `tools=` when it renders tools, else a system turn listing them).
  Calls are written `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` (the
  Hermes/Qwen format, `chat.OPEN`/`chat.CLOSE`), one block per call, and the grammar forces it:
  `required` - one or more calls (one if `parallel_tool_calls` is false); a named function -
  calls of it; `auto` - a reply that starts with `<` is calls, any other reply is text (or JSON
  for the `response_format`, if given), so the model decides at its first token; `none` - the
  tools are left out of the prompt (as vLLM does) and the reply is free text.
- The reply's blocks become `tool_calls` (ids `call_...`, arguments as a JSON string) with
  finish_reason "tool_calls".
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, replace

from vist2.constrain import grammar_error, json_schema_grammar, lark_grammar
from vist2.errors import Vist2Error
from vist2.serve.chat import CLOSE, OPEN
from vist2.serve.protocol import ApiError

CALLS = re.compile(re.escape(OPEN) + "(.*?)" + re.escape(CLOSE), re.DOTALL)
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Structured:
    """What a request's structured-output fields ask of the engine and of the reply."""

    grammar: str | None  # llguidance grammar for every choice, None: free text
    tools: list | None  # the tools the prompt offers (chat.chat_query renders them), None: none
    calls: bool  # the reply may hold tool calls to parse


def parse(body: dict, tokenizer, stop_ids) -> Structured | None:
    """The request's `response_format`, `tools`, `tool_choice` and `parallel_tool_calls`
    checked (400 naming the field); None when it has none of them. (Completions never get
    here with tools: protocol.check_fields refuses them.)"""
    schema = _response_schema(body.get("response_format"))
    tools = body.get("tools")
    if tools is None:
        for name in ("tool_choice", "parallel_tool_calls"):
            if body.get(name) is not None:
                raise ApiError(f"{name} is only allowed when tools are given", name)
        if schema is None:
            return None
        return Structured(_grammar(json_schema_grammar, schema, "response_format", tokenizer, stop_ids), None, False)
    functions = _functions(tools)
    choice = _tool_choice("auto" if body.get("tool_choice") is None else body["tool_choice"], functions)
    parallel = True if body.get("parallel_tool_calls") is None else body["parallel_tool_calls"]
    if not isinstance(parallel, bool):
        raise ApiError(f"parallel_tool_calls must be true or false, got {parallel!r}", "parallel_tool_calls")
    if choice == "none":
        grammar = None if schema is None else _grammar(json_schema_grammar, schema, "response_format", tokenizer,
                                                         stop_ids)
        return Structured(grammar, None, False)
    called = functions if choice in ("auto", "required") else {choice: functions[choice]}
    lark = calls_lark(called, parallel, text=choice == "auto", schema=schema)
    return Structured(_grammar(lark_grammar, lark, "tools", tokenizer, stop_ids), tools, True)


def job_for(job, structured: Structured):
    """`job` (protocol.Job) with the grammar in its config."""
    if structured.grammar is not None and job.config.no_repeat_ngram_size:
        raise ApiError("no_repeat_ngram_size cannot be combined with response_format or tools (the ban may forbid "
                       "every token the grammar allows)", "no_repeat_ngram_size")
    return replace(job, config=replace(job.config, grammar=structured.grammar))


def calls_lark(functions: dict[str, dict], parallel: bool, text: bool, schema: dict | None) -> str:
    """Lark (llguidance dialect) for tool-call blocks of `functions` (name -> parameters
    schema); with `text`, a reply not starting with "<" (or JSON for `schema`) instead."""
    call = {"anyOf": [{"type": "object", "properties": {"name": {"const": name}, "arguments": parameters},
                       "required": ["name", "arguments"], "additionalProperties": False}
                      for name, parameters in functions.items()]}
    options = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    lines = ["start: calls" + (" | answer" if text else ""),
             "calls: call" + (' ("\\n" call)*' if parallel else ""),
             f"call: {json.dumps(OPEN)} %json {json.dumps({**call, 'x-guidance': options})} {json.dumps(CLOSE)}"]
    if text and schema is not None:
        lines.append(f"answer: %json {json.dumps({**schema, 'x-guidance': options})}")
    elif text:
        lines += ["answer: TEXT?", r"TEXT: /[^<][\s\S]*/"]
    return "\n".join(lines)


def _grammar(build, source, field: str, tokenizer, stop_ids) -> str:
    """`build(source)` (a JSON schema or Lark), checked against the tokenizer: 400 naming `field`."""
    try:
        grammar = build(source)
        error = grammar_error(grammar, tokenizer, stop_ids)
    except Vist2Error as missing:  # llguidance is not installed
        raise ApiError(f"{field} cannot be enforced by this server: {missing}", field) from None
    if error:
        raise ApiError(f"{field} cannot be enforced: {error.splitlines()[0]}", field)
    return grammar


def _response_schema(value) -> dict | None:
    """The JSON schema `response_format` asks for ({"type": "object"} for json_object), or None."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise ApiError("response_format.json_schema must be an object with a schema object", "response_format")
        if not isinstance(spec.get("name", ""), str) or not isinstance(spec.get("strict", False), (bool, type(None))):
            raise ApiError("response_format.json_schema.name must be a string and strict a boolean", "response_format")
        return spec.get("schema", {})  # no schema: any JSON value
    raise ApiError("response_format must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                   "{\"type\": \"json_schema\", \"json_schema\": {...}}", "response_format")


def _functions(tools) -> dict[str, dict]:
    """Function name -> its parameters schema, from OpenAI's `tools` list."""
    if not isinstance(tools, list) or not tools:
        raise ApiError("tools must be a non-empty list of {\"type\": \"function\", \"function\": {...}}", "tools")
    functions = {}
    for index, tool in enumerate(tools):
        param = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise ApiError(f"{param} must be {{\"type\": \"function\", \"function\": {{...}}}} "
                           "(the only tool type)", param)
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ApiError(f"{param}.function.name must be 1-64 letters, digits, _ or -, got {name!r}",
                           f"{param}.function.name")
        if name in functions:
            raise ApiError(f"{param}.function.name {name!r} is given twice", f"{param}.function.name")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise ApiError(f"{param}.function.parameters must be a JSON schema object", f"{param}.function.parameters")
        if not isinstance(function.get("description", ""), str):
            raise ApiError(f"{param}.function.description must be a string", f"{param}.function.description")
        functions[name] = parameters
    return functions


def _tool_choice(choice, functions: dict) -> str:
    """"none", "auto", "required", or the name of the one function to call."""
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in functions:
            raise ApiError(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
        return name
    raise ApiError("tool_choice must be \"none\", \"auto\", \"required\" or "
                   "{\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice")


def reply(text: str, structured: Structured | None) -> tuple[str | None, list[dict] | None]:
    """(content, tool_calls) of one choice's final text."""
    if structured is None or not structured.calls or not text.startswith("<"):
        return text, None
    blocks = CALLS.findall(text)
    if not blocks or text != "\n".join(OPEN + block + CLOSE for block in blocks):  # cut by max_tokens
        return text, None
    calls = []
    for block in blocks:
        call = json.loads(block)  # the grammar wrote it
        calls.append({"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                      "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}})
    return None, calls


class StreamGate:
    """Streams a choice's text, except a reply that may be tool calls: that is held until the
    choice ends and then sent as one `tool_calls` delta."""

    def __init__(self, structured: Structured | None) -> None:
        self.watch = structured is not None and structured.calls
        self.held = ""

    def push(self, piece: str) -> str:
        if not self.watch:
            return piece
        self.held += piece
        if self.held and not self.held.startswith("<"):  # text, not calls: let it all through
            self.watch, piece, self.held = False, self.held, ""
            return piece
        return ""

    def finish(self, piece: str, text: str, structured) -> tuple[str, list[dict] | None]:
        """(the content still to send, the tool_calls) when the choice ends with final `text`."""
        if not self.watch:
            return piece, None
        content, calls = reply(text, structured)
        return ("" if calls else self.held + piece), calls

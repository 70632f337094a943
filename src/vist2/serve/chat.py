"""What a request asks the model to continue: chat messages through the model's own chat
template, or raw completion prompts (strings or token ids). Each becomes a `Query`: the ids
the engine keeps as text before and after the query (`frame`) and the query ids that pcc and
gcc compress. Runs off the event loop (rendering and tokenizing a long prompt take time).

Chat: the conversation is rendered once by the template, with the generation prompt. The
text before the first message's content (a default system turn, the first role marker) and
after the last message's content (its end of turn and the assistant's generation prompt)
stay text; everything between, role markers of later turns included, is the query. For a
lone user message in ChatML this is the layout `stages.sft` trains on. A template that
changes the content (strips it, say) gets no such split: the query is then the rendered
conversation without the generation prompt.

Tools (serve/tools.py decides which are offered): a template with a tool format (Qwen3's)
renders them from `tools=`; for any other the first system turn lists them (`TOOLS_PROMPT`, a
system turn is added when there is none), so the listing is part of the query. Past tool calls
go to a template as objects; one without a place for them gets them written into the content
as the blocks the tools grammar makes the model write.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

from vist2.serve.protocol import ApiError

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_PROMPTS = 64
_FIRST, _LAST = "\u27e6vist2-first\u27e7", "\u27e6vist2-last\u27e7"  # markers no sane template changes
OPEN, CLOSE = "<tool_call>\n", "\n</tool_call>"  # around one call's {"name", "arguments"} (Hermes/Qwen)
TOOLS_PROMPT = ("You may call functions to answer. They are described here as JSON, with a JSON schema of their "
                "parameters:\n<tools>\n{tools}\n</tools>\nTo call functions, reply with one block per call and "
                "nothing else:\n<tool_call>\n{{\"name\": \"<function name>\", \"arguments\": {{<its arguments>}}}}"
                "\n</tool_call>")


@dataclass(frozen=True)
class Query:
    frame: tuple[list[int], list[int]]  # ids kept as text before and after the query
    ids: list[int]  # the query: compressed by the tail rule in pcc and gcc
    text: str  # the prompt as text (echo)

    @property
    def tokens(self) -> int:
        return len(self.frame[0]) + len(self.ids) + len(self.frame[1])


def prompt_chars(body: dict, chat: bool) -> int:
    """Characters of the prompt's strings (chat: the tools' too, the prompt lists them), counted
    before any rendering or tokenizing."""
    stack, total = [body.get("messages"), body.get("tools")] if chat else [body.get("prompt")], 0
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, dict):
            stack += value.values()
        elif isinstance(value, list):
            total += 0 if chat else sum(1 for item in value if isinstance(item, int))  # a token id: a token
            stack += value
    return total


def _text(content, param: str, parts: tuple[str, ...] = ("text",)) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        pieces = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in parts or not isinstance(part.get(kind), str):
                allowed = " or ".join(f'{{"type": "{p}", "{p}": ...}}' for p in parts)
                raise ApiError(f"{param}: only {allowed} content parts are supported", param)
            pieces.append(part[kind])
        return "".join(pieces)
    raise ApiError(f"{param} must be a string or a list of text parts", param)


def _tool_calls(calls, param: str) -> list[dict]:
    if not isinstance(calls, list) or not calls:
        raise ApiError(f"{param} must be a non-empty list of tool calls", param)
    checked = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if (not isinstance(call, dict) or call.get("type", "function") != "function"
                or not isinstance(call.get("id"), str) or not isinstance(function, dict) or not isinstance(function.get("name"), str)
                or not isinstance(function.get("arguments"), str)):
            raise ApiError(f'{param}[{i}] must be {{"id": str, "type": "function", "function": '
                           '{"name": str, "arguments": str}}', f"{param}[{i}]")
        checked.append({"id": call["id"], "type": "function",
                        "function": {"name": function["name"], "arguments": function["arguments"]}})
    return checked


def messages_of(body: dict) -> list[dict]:
    """The messages as the template receives them (developer is given as system, the role
    chat templates know); every role's rules checked with the field named."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty list of {role, content} objects", "messages")
    checked = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ApiError(f"{where} must be an object", where)
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
        known = {"role", "content", "name"} | ({"tool_calls", "refusal", "audio", "function_call"}
                                               if role == "assistant" else set()) | ({"tool_call_id"} if role == "tool"
                                                                                      else set())
        unknown = sorted(set(message) - known)
        if unknown:
            raise ApiError(f"{where}: unknown field {unknown[0]!r} for the {role} role", f"{where}.{unknown[0]}")
        for field in ("audio", "function_call"):
            if message.get(field) is not None:
                raise ApiError(f"{where}.{field} is not supported by this server", f"{where}.{field}")
        if message.get("name") is not None and not isinstance(message["name"], str):
            raise ApiError(f"{where}.name must be a string", f"{where}.name")
        entry = {"role": "system" if role == "developer" else role}
        calls = message.get("tool_calls")
        content = message.get("content")
        if role == "assistant" and content is None and calls is not None:
            entry["content"] = None
        else:
            entry["content"] = _text(content, f"{where}.content",
                                     ("text", "refusal") if role == "assistant" else ("text",))
        if calls is not None:
            entry["tool_calls"] = _tool_calls(calls, f"{where}.tool_calls")
        if role == "tool":
            if not isinstance(message.get("tool_call_id"), str):
                raise ApiError(f"{where}.tool_call_id must be a string (the id of the call it answers)",
                               f"{where}.tool_call_id")
            entry["tool_call_id"] = message["tool_call_id"]
        if isinstance(message.get("name"), str):
            entry["name"] = message["name"]
        checked.append(entry)
    if not any(m["content"] and m["content"].strip() for m in checked):
        raise ApiError("the prompt is empty", "messages")
    return checked


def _arguments(call: dict) -> dict:
    """A past call with its arguments as an object (as the model writes them) when they are JSON."""
    try:
        arguments = json.loads(call["function"]["arguments"])
    except ValueError:
        return call  # kept as the client sent it
    return {**call, "function": {**call["function"], "arguments": arguments}}


@functools.lru_cache(maxsize=8)
def renders_tools(tokenizer, template: str) -> bool:
    """The template has a tool format: `tools=` changes what it renders."""
    probe = [{"type": "function", "function": {"name": "vist2_probe", "parameters": {"type": "object"}}}]
    try:
        shown = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=probe, chat_template=template,
                                              tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that breaks on tools= has no tool format
        return False
    return "vist2_probe" in shown


def _for_template(tokenizer, template: str, messages: list[dict], tools: list | None):
    """(messages, tools=) for the template: tools listed in the first system turn and tool calls
    written into the content when it has no place for them (never dropped)."""
    messages = [{**m, "content": m["content"] or "", "tool_calls": [_arguments(c) for c in m["tool_calls"]]}
                if "tool_calls" in m else m for m in messages]  # content "": Qwen3's template fails on None
    if tools and not renders_tools(tokenizer, template):
        listing = TOOLS_PROMPT.format(tools="\n".join(json.dumps(tool) for tool in tools))
        if messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + listing}
        else:
            messages.insert(0, {"role": "system", "content": listing})
        tools = None
    if "tool_calls" in template:
        return messages, tools
    written = []
    for message in messages:
        if "tool_calls" in message:
            calls = "\n".join(OPEN + json.dumps({"name": c["function"]["name"],
                                                  "arguments": c["function"]["arguments"]}) + CLOSE
                              for c in message["tool_calls"])
            message = {k: v for k, v in message.items() if k != "tool_calls"}
            message["content"] = "\n".join(p for p in (message["content"], calls) if p)
        written.append(message)
    return written, tools


def _render(tokenizer, template: str, messages: list[dict], tools: list | None, generation_prompt: bool = True) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except Exception as error:  # jinja raises TemplateError (raise_exception) and others
        raise ApiError(f"the model's chat template refused these messages: {error}", "messages") from None


def chat_query(tokenizer, template: str, messages: list[dict], tools: list | None = None) -> Query:
    """The conversation (with the `tools` offered, if any) as the template renders it, split
    into frame and query (module docstring)."""
    messages, tools = _for_template(tokenizer, template, messages, tools)
    text = _render(tokenizer, template, messages, tools)
    marked = [dict(m) for m in messages]
    with_text = [i for i, m in enumerate(marked) if m.get("content")]
    first, last = with_text[0], with_text[-1]
    marked[first]["content"] = _FIRST + marked[first]["content"]
    marked[last]["content"] = marked[last]["content"] + _LAST
    signed = _render(tokenizer, template, marked, tools)
    start, end = signed.find(_FIRST), signed.rfind(_LAST)
    split = signed.count(_FIRST) == signed.count(_LAST) == 1 and start < end
    if split:
        before, query, after = signed[:start], signed[start + len(_FIRST) : end], signed[end + len(_LAST) :]
        split = before + query + after == text
    if not split:
        bare = _render(tokenizer, template, messages, tools, generation_prompt=False)
        before, query, after = ("", bare, text[len(bare) :]) if text.startswith(bare) else ("", text, "")
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False) if s else []  # noqa: E731
    return Query((encode(before), encode(after)), encode(query), text)


def completion_queries(tokenizer, prompt) -> list[Query]:
    """A raw prompt (no chat wrapping): a string, a list of them, token ids or a list of those."""
    message = "prompt must be a non-empty string, a list of them, a list of token ids or a list of those"
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_id(i) for i in prompt)):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and len({isinstance(one, str) for one in prompt}) == 1:
        prompts = prompt  # all strings, or all token-id lists
    else:
        raise ApiError(message, "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise ApiError(f"prompt holds {len(prompts)} prompts, more than {MAX_PROMPTS}", "prompt")
    queries = []
    for i, one in enumerate(prompts):
        if isinstance(one, str):
            if not one.strip():
                raise ApiError("the prompt is empty" if len(prompts) == 1 else f"prompt[{i}] is empty", "prompt")
            queries.append(Query(([], []), tokenizer.encode(one, add_special_tokens=False), one))
        elif isinstance(one, list) and one and all(_is_id(t) for t in one):
            outside = [t for t in one if t >= len(tokenizer)]
            if outside:
                raise ApiError(f"token id {outside[0]} is outside the vocabulary (size {len(tokenizer)})", "prompt")
            queries.append(Query(([], []), list(one), tokenizer.decode(one)))
        else:
            raise ApiError(message, "prompt")
    return queries


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0

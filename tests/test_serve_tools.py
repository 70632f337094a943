"""Structured output and tools through `vist2 serve` with the official openai client, on the
tiny random model: json_schema answers validate (dict schema and a Pydantic model through
`chat.completions.parse`), json_object parses, tool calls come back as `tool_calls` (plain and
streamed) with arguments valid for their function, `none` gives text, a past call and its
result render through the chat template path, logprobs come with a grammar, and fields the
server cannot honour get 400 naming them."""

from __future__ import annotations

import json

import pytest

from conftest import require_extra  # noqa: E402

require_extra("fastapi")
require_extra("llguidance")
require_extra("uvicorn")
openai = require_extra("openai")
pydantic = require_extra("pydantic")

from test_serve import start_server  # noqa: E402

PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 10},
                         "age": {"type": "integer", "minimum": 0, "maximum": 99},
                         "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 3}},
          "required": ["name", "age", "pets"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function",
          "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def validate(document, schema) -> None:
    require_extra("jsonschema").validate(document, schema)


@pytest.fixture(scope="module")
def client():
    base, _, stop = start_server(max_prompt_tokens=3000, default_temperature=0.0)  # greedy unless asked
    yield openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
    stop()


def chat(client, **fields):
    fields.setdefault("max_tokens", 200)
    return client.chat.completions.create(model="tiny", messages=fields.pop("messages", ASK), **fields)


@pytest.mark.parametrize("mode", ["text", "pcc", "gcc"])
def test_json_schema_answer_validates_in_each_mode(client, mode):
    for sampling in ({}, {"temperature": 1.0, "seed": 4}):
        wanted = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
        reply = chat(client, response_format=wanted, extra_body={"mode": mode}, **sampling)
        choice = reply.choices[0]
        assert choice.finish_reason == "stop"
        validate(json.loads(choice.message.content), PERSON)


def test_pydantic_model_through_parse_and_json_object(client):
    class Pet(pydantic.BaseModel):
        kind: str = pydantic.Field(max_length=6)
        legs: int = pydantic.Field(ge=0, le=8)
        tame: bool

    parsed = client.chat.completions.parse(model="tiny", messages=ASK, max_tokens=200, response_format=Pet)
    assert isinstance(parsed.choices[0].message.parsed, Pet)
    answer = chat(client, response_format={"type": "json_object"}, n=2, temperature=1.0, seed=1)
    assert [isinstance(json.loads(c.message.content), dict) for c in answer.choices] == [True, True]


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_call_plain_and_streamed(client, tool_choice):
    reply = chat(client, tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    if isinstance(tool_choice, dict):
        assert call.function.name == "get_weather"
    validate(json.loads(call.function.arguments), {"get_weather": WEATHER, "get_time": TIME}[call.function.name])
    chunks = list(chat(client, tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == ""  # the call is not streamed as text
    [streamed] = [t for d in deltas for t in d.tool_calls or []]
    assert (streamed.index, streamed.function.name, streamed.function.arguments) == \
        (0, call.function.name, call.function.arguments)  # greedy: the same call
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_auto_none_and_a_past_call(client):
    auto = chat(client, tools=TOOLS, tool_choice="auto", max_tokens=60).choices[0]
    if auto.message.tool_calls:  # the model chose at its first token; either answer is well formed
        assert auto.finish_reason == "tool_calls" and auto.message.content is None
    else:
        assert not auto.message.content.startswith("<")
    none = chat(client, tools=TOOLS, tool_choice="none", max_tokens=20).choices[0]
    assert none.message.tool_calls is None and isinstance(none.message.content, str)
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]
    after = chat(client, messages=history, tools=TOOLS, tool_choice="none", max_tokens=10).choices[0]
    assert after.message.tool_calls is None and after.finish_reason in ("stop", "length")


def test_logprobs_with_a_grammar_and_with_tool_calls(client):
    called = chat(client, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, logprobs=True,
                  top_logprobs=2).choices[0]
    [call] = called.message.tool_calls
    said = bytes(b for entry in called.logprobs.content for b in entry.bytes).decode()  # the tokens behind the call
    assert said.startswith('<tool_call>\n{"name": "' + call.function.name) and said.endswith("\n</tool_call>")
    assert all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in called.logprobs.content)
    chunks = list(chat(client, response_format={"type": "json_object"}, logprobs=True, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert isinstance(json.loads(text), dict) and bytes(b for e in streamed for b in e.bytes).decode() == text


@pytest.mark.parametrize("fields, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0]"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"response_format": {"type": "json_object"}, "extra_body": {"no_repeat_ngram_size": 3}}, "no_repeat_ngram_size"),
])
def test_fields_that_cannot_be_honoured_get_400_naming_them(client, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, max_tokens=5, **fields)
    assert caught.value.status_code == 400 and caught.value.body["param"] == param


def test_tools_render_through_the_chat_template_path():
    """tools go through serve/chat.py like any chat: the template's tool format where it has one
    (Qwen3), else a system turn listing them; past calls with object arguments; the tools count
    toward the prompt's characters."""
    from vist2.serve.chat import TOOLS_PROMPT, chat_query, messages_of, prompt_chars
    from vist2.tokenizer import byte_tokenizer, qwen3_tokenizer

    past = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "CET"}'}}
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [past]},
                     {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}]
    qwen = qwen3_tokenizer()  # its template renders tools= (Hermes-style blocks)
    as_template = [ASK[0], {"role": "assistant", "content": "", "tool_calls": [
        {**past, "function": {"name": "get_time", "arguments": {"zone": "CET"}}}]},
        {"role": "tool", "content": "12:00", "tool_call_id": "call_1"}]
    query = chat_query(qwen, qwen.chat_template, messages_of({"messages": history}), TOOLS)
    assert query.text == qwen.apply_chat_template(as_template, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert "get_weather" in qwen.decode(query.frame[0]) and "get_weather" not in qwen.decode(query.ids)
    system = chat_query(qwen, qwen.chat_template, [{"role": "system", "content": "Be brief."}, *ASK], TOOLS)
    assert "get_weather" in qwen.decode(system.ids)  # after the system turn's content: compressed with it

    tokenizer = byte_tokenizer()  # ChatML without tools: our system turn, the first message, compressed
    plain = chat_query(tokenizer, tokenizer.chat_template, messages_of({"messages": history}), TOOLS)
    assert plain.text.startswith("<|im_start|>system\n" + TOOLS_PROMPT.split("{tools}")[0])
    assert '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>' in plain.text
    assert "<|im_start|>tool\n12:00<|im_end|>" in plain.text
    assert tokenizer.decode(plain.ids).startswith(TOOLS_PROMPT.split("{tools}")[0])
    without = chat_query(tokenizer, tokenizer.chat_template, messages_of({"messages": ASK}))
    assert "<tools>" not in without.text
    assert prompt_chars({"messages": ASK, "tools": TOOLS}, True) > prompt_chars({"messages": ASK}, True) + 30


def test_raw_completions_take_response_format_but_not_tools(client):
    done = client.completions.create(model="tiny", prompt="A person as JSON:", max_tokens=200,
                                     extra_body={"response_format": {"type": "json_schema",
                                                                     "json_schema": {"name": "p", "schema": PERSON}}})
    validate(json.loads(done.choices[0].text), PERSON)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="hi", max_tokens=5, extra_body={"tools": TOOLS})
    assert caught.value.body["param"] == "tools"


def test_reply_text_becomes_calls_only_when_every_block_is_complete():
    from vist2.serve.tools import Structured, reply

    tooled = Structured(grammar=None, tools=None, calls=True)
    one = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
    content, calls = reply(one + "\n" + one, tooled)
    assert content is None and [c["function"]["arguments"] for c in calls] == ['{"zone": "CET"}'] * 2
    assert len({c["id"] for c in calls}) == 2
    cut = one + '\n<tool_call>\n{"name": "get_ti'  # max_tokens ended it: the text is kept as it is
    assert reply(cut, tooled) == (cut, None)
    assert reply("plain words", tooled) == ("plain words", None)


def test_without_llguidance_response_format_gets_400(client, monkeypatch):
    from vist2 import constrain
    from vist2.errors import Vist2Error

    def missing():
        raise Vist2Error("constrained decoding needs llguidance")

    monkeypatch.setattr(constrain, "_llguidance", missing)
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, max_tokens=5, response_format={"type": "json_object"})
    assert caught.value.body["param"] == "response_format" and "llguidance" in caught.value.body["message"]

"""`vist2 serve` against a real uvicorn server on 127.0.0.1 with the tiny random model (one
server per configuration, module-scoped): the official openai client for the chat template,
raw completions, logprobs against the teacher-forced forward, sampling fields, n, limits and
shapes; raw HTTP and sockets for bad requests, the guard (API key, Host, CORS, content type),
metrics labels, half-sent requests, a 15 MB prompt beside /health, a disconnect that frees its
row, the 429 queue bound; and the CLI: a busy port, SIGTERM ending a stream with "abort"."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import require_extra
from vist2.serve.health import free_port, wait_healthy

require_extra("fastapi")
uvicorn = require_extra("uvicorn")
openai = require_extra("openai")
httpx = require_extra("httpx")


def start_server(access=None, read_timeout: float = 2.0, **limits):
    """A real uvicorn server on the tiny model (seed 0) in a thread: (base URL, app, stop)."""
    from vist2.engine import Engine
    from vist2.generate import load_model
    from vist2.render import Renderer
    from vist2.serve.app import Access, create_app
    from vist2.serve.command import server_limits
    from vist2.serve.guard import default_hosts, timed_h11_protocol

    torch.set_num_threads(1)
    model, tokenizer = load_model(preset_name="tiny")
    from vist2.serve.command import PREFILL_CHUNK_TOKENS

    engine = Engine(model, tokenizer, max_batch=4, prefill_tokens=PREFILL_CHUNK_TOKENS)  # serve's default
    settings = {"max_prompt_tokens": 400, "max_tokens": None, "default_max_tokens": 16, "default_temperature": 1.0,
                **limits}
    access = access or Access(default_hosts("127.0.0.1"), [], None, read_timeout)
    app = create_app(engine, tokenizer, Renderer(model.config.render), "tiny", "gcc",
                     server_limits(model, tokenizer, **settings), 16, access)
    port = free_port()
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                             http=timed_h11_protocol(access.read_timeout)))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base)

    def stop():
        instance.should_exit = True
        thread.join(timeout=30)

    return base, app, stop


@pytest.fixture(scope="module")
def server():
    base, app, stop = start_server()
    yield base, app
    stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="none", max_retries=0)


@pytest.mark.parametrize("mode", ["text", "pcc", "gcc"])
def test_chat_each_mode_plain_and_streamed(client, mode):
    extra = {"mode": mode, "ignore_eos": True}
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello " * 30}],
                                           max_tokens=70, temperature=0, extra_body=extra)
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant"
    usage = reply.usage
    assert usage.completion_tokens == 70 and usage.total_tokens == usage.prompt_tokens + 70
    compression = usage.model_extra["compression"]
    assert compression["mode"] == mode
    assert compression["chunks_compressed"] == (1 if mode == "gcc" else 0)
    assert compression["kv_tokens_full_text"] == usage.prompt_tokens + 70
    if mode != "text":  # the 180-byte query: two chunks of 64 became pages
        assert compression["kv_tokens_peak"] < compression["kv_tokens_full_text"]
    pieces = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello " * 30}],
                                            max_tokens=70, temperature=0, extra_body=extra, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(pieces)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: the stream joins to the plain answer
    assert chunks[-1].usage.completion_tokens == 70
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_n_choices_completions_and_models(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], n=2,
                                           max_tokens=8, temperature=1.0, seed=3, extra_body={"ignore_eos": True})
    assert [c.index for c in reply.choices] == [0, 1] and reply.usage.completion_tokens == 16
    streamed = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], n=2,
                                              max_tokens=8, temperature=1.0, seed=3, stream=True,
                                              extra_body={"ignore_eos": True})
    texts = ["", ""]
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [c.message.content for c in reply.choices]  # seeded: the same samples
    done = client.completions.create(model="tiny", prompt="once upon", max_tokens=5, stop=["zz"],
                                     extra_body={"mode": "text", "ignore_eos": True})
    assert done.object == "text_completion" and done.usage.completion_tokens <= 5


BAD = [
    (b"{not json", 400, None),
    (b"[" * 1000 + b"]" * 1000, 400, None),
    (b"[" * 100_000 + b"]" * 100_000, 400, None),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}', 400, None),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "presence_penalty": 5}, 400, "presence_penalty"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "frequency_penalty": "1"}, 400,
     "frequency_penalty"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"999": 1}}, 400, "logit_bias"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 101}}, 400, "logit_bias"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "min_p": 2}, 400, "min_p"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400, "top_logprobs"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21}, 400,
     "top_logprobs"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}},
     400, "response_format"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": []}, 400, "tools"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"}, 400, "tool_choice"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "low"}, 400,
     "reasoning_effort"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "store": True}, 400, "store"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "modalities": ["audio"]}, 400, "modalities"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "frobnicate": 1}, 400, "frobnicate"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream_options": {}}, 400, "stream_options"),
    ({"model": "tiny", "messages": [{"role": "function", "content": "x"}]}, 400, "messages[0].role"),
    ({"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].tool_call_id"),
    ({"model": "tiny", "messages": [{"role": "assistant", "content": None}]}, 400, "messages[0].content"),
    ({"model": "tiny", "messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": 1}]}]}, 400,
     "messages[0].tool_calls[0]"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 32768, "mode": "text"}, 400,
     "max_tokens"),
    ({"model": "tiny", "prompt": "x", "suffix": "y"}, 400, "suffix"),
    ({"model": "tiny", "prompt": "x", "best_of": 2}, 400, "best_of"),
    ({"model": "tiny", "prompt": "x", "echo": True, "logprobs": 1}, 400, "echo"),
    ({"model": "tiny", "prompt": "x", "logprobs": True}, 400, "logprobs"),
    ({"model": "tiny", "prompt": [5, 300]}, 400, "prompt"),
    ({"model": "tiny", "prompt": [[1], "a"]}, 400, "prompt"),
    ({"model": "tiny", "prompt": ["a", " "]}, 400, "prompt"),
    (b"[1, 2]", 400, None),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400, None),
    ({"model": "tiny"}, 400, "messages"),
    ({"model": "tiny", "messages": []}, 400, "messages"),
    ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    ({"model": "tiny", "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "   "}]}, 400, "messages"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}, 400, "max_tokens"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, 400, "max_tokens"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 1e400}, 400, None),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": -1}, 400, "temperature"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_p": 0}, 400, "top_p"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 99}, 400, "n"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400, "stream"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stop": [""]}, 400, "stop"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "mode": "zip"}, 400, "mode"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "seed": -1}, 400, "seed"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x" * 500}]}, 400, "messages"),
    ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
    ({"model": "tiny", "prompt": []}, 400, "prompt"),
    (b"", 400, None),
    ({"model": 5, "messages": [{"role": "user", "content": "x"}]}, 400, "model"),
    ({"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream_options": 5}, 400, "stream_options"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_k": "3"}, 400, "top_k"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "repetition_penalty": 0}, 400, "repetition_penalty"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "no_repeat_ngram_size": -1}, 400,
     "no_repeat_ngram_size"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "ignore_eos": "no"}, 400, "ignore_eos"),
]


@pytest.mark.parametrize("body,status,param", BAD)
def test_bad_requests_get_openai_errors(server, body, status, param):
    endpoint = "/v1/completions" if isinstance(body, dict) and "prompt" in body else "/v1/chat/completions"
    content = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    reply = httpx.post(server[0] + endpoint, content=content, headers={"Content-Type": "application/json"})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param


def test_unknown_route_and_health_after_bad_input(server):
    reply = httpx.get(server[0] + "/v1/nothing")
    assert reply.status_code == 404 and reply.json()["error"]["type"] == "not_found_error"
    reply = httpx.post(server[0] + "/v1/completions", content=b" " * (17 * 2**20),
                       headers={"Content-Type": "application/json"})
    assert reply.status_code == 413 and reply.json()["error"]["message"].startswith("the body is larger")
    reply = httpx.get(server[0] + "/v1/chat/completions")
    assert reply.status_code == 405 and set(reply.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(server[0] + "/health").json()["status"] == "ok"
    assert "vist2 serve" in httpx.get(server[0] + "/").text


def test_disconnect_frees_the_row_at_once(server):
    base, app = server
    worker = app.state.worker
    body = {"model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 3000,
            "ignore_eos": True, "stream": True, "mode": "text"}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body) as reply:
        lines = reply.iter_lines()
        for _ in range(6):
            next(lines)
        assert len(worker.engine.rows) == 1
        row = worker.engine.rows[0]
    deadline = time.time() + 5
    while worker.engine.rows and time.time() < deadline:
        time.sleep(0.02)
    assert not worker.engine.rows and row.finish_reason == "cancelled" and len(row.output) < 3000
    with pytest.raises(httpx.ReadTimeout):  # a plain (not streamed) answer the client gave up on
        httpx.post(base + "/v1/chat/completions", json={**body, "stream": False}, timeout=0.5)
    deadline = time.time() + 5
    while worker.engine.rows and time.time() < deadline:
        time.sleep(0.02)
    assert not worker.engine.rows


def test_full_queue_answers_429_and_metrics(server):
    base, app = server
    worker = app.state.worker
    worker.max_queue = 0
    try:
        reply = httpx.post(base + "/v1/chat/completions",
                           json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]})
    finally:
        worker.max_queue = 16
    assert reply.status_code == 429 and reply.headers["Retry-After"] == "1"
    assert reply.json()["error"]["code"] == "queue_full"
    text = httpx.get(base + "/metrics").text
    assert 'vist2_requests_total{route="/v1/chat/completions",status="429"} 1' in text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("vist2_")
              and "{" not in line}
    assert values["vist2_completion_tokens_total"] > 0 and values["vist2_chunks_compressed_total"] >= 1
    assert values["vist2_queue_depth"] == 0


@pytest.mark.slow  # starts `vist2 serve` in a fresh process: 27-36 s on a shared 2-core machine at load 10
def test_cli_serves_and_aborts_streams_when_the_sigterm_grace_ends(tmp_path, capsys):
    from vist2.cli import main

    assert main(["serve", "--preset", "tiny", "--mode", "zip"]) == 2
    assert "--mode must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # argparse: one line, exit 2
        main(["serve", "--preset", "tiny", "--prefill-chunk-tokens", "-1"])
    assert refused.value.code == 2 and "--prefill-chunk-tokens: must be >= 0" in capsys.readouterr().err
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "vist2", "serve", "--preset", "tiny", "--port", str(port),
                                    "--mode", "text", "--threads", "1", "--chunk-tokens", "32",
                                    "--shutdown-timeout", "1", "--prefill-chunk-tokens", "16"],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        reply = httpx.post(base + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 40,
                                                           "ignore_eos": True, "mode": "gcc"}, timeout=30)
        assert reply.status_code == 200  # --chunk-tokens 32: 40 tokens close one chunk (the preset's K is 64)
        assert reply.json()["usage"]["compression"]["chunks_compressed"] == 1
        with socket.create_connection(("127.0.0.1", port)) as sock:  # a client that leaves mid-body
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 50\r\n\r\n{")
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 30000, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", base + "/v1/completions", json=body, timeout=30) as streamed:
            lines = streamed.iter_lines()
            next(lines)
            process.send_signal(signal.SIGTERM)  # in flight: 1 s of grace, then its answer ends
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "abort"
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in log.read_text()


# -- chat template, raw completions, logprobs, sampling fields (issue 20 items 1-3, 5, 6) -----------


def test_chat_renders_the_conversation_with_the_template_and_every_role(server, client):
    from vist2.generate import GenerationConfig, generate

    _, app = server
    engine = app.state.worker.engine
    messages = [{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "No lists."},
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}, {"role": "user", "content": "So?"}]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0,
                                           extra_body={"mode": "text", "ignore_eos": True})
    # the template as the model's tokenizer renders it (developer given as system, the call written as
    # a <tool_call> block, arguments as an object, since the byte tokenizer's ChatML template has no place for
    # tool calls)
    shown = [{"role": "system", "content": "Be brief."}, {"role": "system", "content": "No lists."},
             {"role": "user", "content": "Weather?"},
             {"role": "assistant", "content": '<tool_call>\n{"name": "weather", "arguments": {}}\n</tool_call>'},
             {"role": "tool", "content": "sunny"}, {"role": "user", "content": "So?"}]
    rendered = engine.tokenizer.apply_chat_template(shown, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>system\nNo lists.")
    plain = generate(engine.model, engine.tokenizer, rendered,
                     GenerationConfig(mode="text", max_new_tokens=12, ignore_eos=True, chat_template=False))
    assert reply.choices[0].message.content == plain.text
    assert reply.usage.prompt_tokens == len(engine.tokenizer.encode(rendered, add_special_tokens=False))


def test_chat_query_keeps_the_frame_as_text_and_compresses_the_conversation():
    from vist2.prompt import chat_parts
    from vist2.serve.chat import chat_query
    from vist2.tokenizer import CHATML_TEMPLATE, byte_tokenizer

    tokenizer = byte_tokenizer()
    lone = chat_query(tokenizer, CHATML_TEMPLATE, [{"role": "user", "content": "hello"}])
    user, assistant, _ = chat_parts(tokenizer)
    assert lone.frame == (user, assistant) and lone.ids == list(b"hello")  # the layout stages.sft trains on
    default_system = ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nDefault<|im_end|>\\n' }}"
                      "{% endif %}" + CHATML_TEMPLATE)
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    query = chat_query(tokenizer, default_system, turns)
    decode = tokenizer.decode
    assert decode(query.frame[0]) == "<|im_start|>system\nDefault<|im_end|>\n<|im_start|>user\n"
    assert decode(query.ids) == "a<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc"
    assert decode(query.frame[1]) == "<|im_end|>\n<|im_start|>assistant\n"
    stripping = CHATML_TEMPLATE.replace("message['content']", "message['content'] | trim")
    fallback = chat_query(tokenizer, stripping, [{"role": "user", "content": " x "}])
    assert fallback.frame[0] == [] and decode(fallback.frame[1]) == "<|im_start|>assistant\n"


def test_raw_completions_equal_generate_without_template_in_order(server, client):
    from vist2.generate import GenerationConfig, generate

    _, app = server
    engine = app.state.worker.engine
    prompts = ["The sky is", "Once upon a time"]
    reply = client.completions.create(model="tiny", prompt=prompts, n=2, max_tokens=10, temperature=0,
                                      extra_body={"mode": "text", "ignore_eos": True})
    config = GenerationConfig(mode="text", max_new_tokens=10, ignore_eos=True, chat_template=False)
    expected = [generate(engine.model, engine.tokenizer, p, config).text for p in prompts]
    assert [(c.index, c.text) for c in reply.choices] == [(0, expected[0]), (1, expected[0]),
                                                          (2, expected[1]), (3, expected[1])]
    assert reply.usage.prompt_tokens == len("The sky is") + len("Once upon a time")  # bytes: one token each
    ids = client.completions.create(model="tiny", prompt=[list(b"The sky is")], max_tokens=10, temperature=0,
                                    echo=True, extra_body={"mode": "text", "ignore_eos": True})
    assert ids.choices[0].text == "The sky is" + expected[0]
    streamed = client.completions.create(model="tiny", prompt="The sky is", max_tokens=10, temperature=0, echo=True,
                                         stream=True, extra_body={"mode": "text", "ignore_eos": True})
    assert "".join(c.choices[0].text for c in streamed) == "The sky is" + expected[0]


@pytest.mark.parametrize("mode", ["text", "pcc", "gcc"])
def test_logprobs_equal_the_teacher_forced_log_softmax(server, client, mode):
    from vist2.verify import teacher_example, teacher_logits

    _, app = server
    engine = app.state.worker.engine
    query = "hello " * 20  # two chunks of 64 bytes: compressed in pcc and gcc
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": query}],
                                           max_tokens=70, temperature=0, logprobs=True, top_logprobs=3,
                                           extra_body={"mode": mode, "ignore_eos": True})
    content = reply.choices[0].logprobs.content
    output = [entry.bytes[0] for entry in content]  # byte tokenizer: id = byte
    options = engine.options
    example = teacher_example(engine.tokenizer, engine.renderer, list(query.encode()), output, mode,
                              options.chunk_tokens, options.beta, options.visual_sees_text)
    logits = teacher_logits(engine.model, engine.renderer, example, 0)[: len(output), : len(engine.tokenizer)]
    expected = torch.log_softmax(logits, -1)  # over the tokenizer's ids (the embedding may be padded beyond)
    got = torch.tensor([entry.logprob for entry in content])
    assert len(output) == 70
    assert (got - expected[torch.arange(70), output]).abs().max() < 1e-4
    assert [t.logprob for t in content[5].top_logprobs] == pytest.approx(expected[5].topk(3).values.tolist(), abs=1e-4)
    plain = client.completions.create(model="tiny", prompt=[output[:5]], max_tokens=4, temperature=0, logprobs=2,
                                      extra_body={"mode": mode})
    logprobs = plain.choices[0].logprobs
    assert len(logprobs.token_logprobs) == len(logprobs.tokens) == len(logprobs.top_logprobs) <= 4
    pairs = zip(logprobs.top_logprobs, logprobs.token_logprobs)
    assert all(max(top.values()) == pytest.approx(logprob) for top, logprob in pairs)  # greedy: the best


def test_sampling_fields_act_and_temperature_defaults_to_one(client):
    ask = lambda min_p=None, **fields: client.completions.create(  # noqa: E731
        model="tiny", prompt="abc", max_tokens=12, extra_body={"mode": "text", "ignore_eos": True, "min_p": min_p},
        **fields)
    forced = ask(temperature=0, logit_bias={str(ord("Q")): 100})
    assert forced.choices[0].text == "Q" * 12
    greedy = ask(temperature=0).choices[0].text
    penalised = ask(temperature=0, presence_penalty=2, frequency_penalty=2).choices[0].text
    assert len(set(penalised)) > len(set(greedy))  # random weights repeat a byte; the penalties spread them
    assert ask(temperature=1, min_p=1.0, seed=1).choices[0].text == greedy  # min_p 1 keeps only the likeliest
    two = client.completions.create(model="tiny", prompt="abc", n=2, max_tokens=12)  # no temperature: 1
    assert two.choices[0].text != two.choices[1].text


def test_models_context_fingerprint_created_and_request_id(server, client):
    base, _ = server
    assert client.models.retrieve("tiny").model_extra["max_model_len"] == 32768  # the backbone's positions
    missing = httpx.get(base + "/v1/models/other")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    reply = httpx.post(base + "/v1/chat/completions", headers={"X-Request-Id": "abc-1"},
                       json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "mode": "text",
                             "max_tokens": 32760})
    assert reply.status_code == 400 and reply.headers["x-request-id"] == "abc-1"
    error = reply.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    assert "maximum context length is 32768 tokens" in error["message"] and "--" not in error["message"]
    compressed = httpx.post(base + "/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi " * 30}], "mode": "pcc", "max_tokens": 32760})
    error = compressed.json()["error"]  # pcc's positions are the engine's to count: its refusal, in API words
    assert compressed.status_code == 400 and error["code"] == "context_length_exceeded"
    assert "maximum context length is 32768 positions" in error["message"] and "--" not in error["message"]
    assert len(httpx.get(base + "/health").headers["x-request-id"]) == 32  # one made up when none is sent
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=40, stream=True, extra_body={"ignore_eos": True}))
    assert len({c.created for c in chunks}) == 1 and chunks[0].system_fingerprint.startswith("fp_")
    three = httpx.post(base + "/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": None,
        "max_tokens": 3, "ignore_eos": True})
    assert three.json()["usage"]["completion_tokens"] == 3


# -- the guard: keys, hosts, origins, content types; metrics; slow and large requests (items 8-11) -----


@pytest.fixture(scope="module")
def guarded():
    from vist2.serve.app import Access

    access = Access(["127.0.0.1", "vist2.test"], ["http://allowed.test"], "sekret", 1.0)
    base, app, stop = start_server(access)
    yield base
    stop()


def test_api_key_hosts_origins_and_content_type(server, guarded):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
        refused = httpx.post(guarded + "/v1/chat/completions", json=body, headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(guarded + "/v1/models").status_code == 401
    assert httpx.get(guarded + "/health").status_code == 200
    key = {"Authorization": "Bearer sekret"}
    assert httpx.post(guarded + "/v1/chat/completions", json=body, headers=key).status_code == 200
    assert openai.OpenAI(base_url=guarded + "/v1", api_key="sekret").models.list().data[0].id == "tiny"
    allowed = httpx.get(guarded + "/v1/models", headers={**key, "Origin": "http://allowed.test"})
    assert allowed.headers["access-control-allow-origin"] == "http://allowed.test"
    preflight = httpx.options(guarded + "/v1/chat/completions", headers={
        "Origin": "http://allowed.test", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200
    assert httpx.get(guarded + "/health", headers={"Host": "vist2.test:8000"}).status_code == 200
    base = server[0]
    foreign = httpx.get(base + "/v1/models", headers={"Origin": "http://evil.test"})
    assert foreign.status_code == 200 and not any(h.startswith("access-control") for h in foreign.headers)
    for host in ("evil.test", "evil.test:8000", "127.0.0.1.evil.test"):
        rebound = httpx.get(base + "/v1/models", headers={"Host": host})
        assert rebound.status_code == 421 and rebound.json()["error"]["code"] == "host_not_allowed"
    for kind in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": kind} if kind else {}
        refused = httpx.post(base + "/v1/chat/completions", content=json.dumps(body), headers=headers)
        assert refused.status_code == 415, kind
    assert httpx.post(base + "/v1/chat/completions", content=json.dumps(body),
                      headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 200


def test_metrics_use_route_templates_and_export_latency_histograms(server, client):
    base, _ = server
    for path in ('/x"}', "/random/1", "/random/2", "/v1/models/other"):
        httpx.get(base + path)
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                   extra_body={"ignore_eos": True})
    text = httpx.get(base + "/metrics").text
    routes = {line.split('route="')[1].split('"')[0] for line in text.splitlines() if line.startswith("vist2_requests")}
    assert routes <= {"unmatched", "/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model}",
                      "/metrics", "/health", "/"} and "unmatched" in routes and "/v1/models/{model}" in routes
    for name in ("time_to_first_token", "inter_token", "end_to_end"):
        count = next(line for line in text.splitlines() if line.startswith(f"vist2_{name}_seconds_count"))
        assert float(count.split()[1]) >= 1


def test_half_sent_requests_are_closed_within_the_read_timeout(server):
    port = int(server[0].rsplit(":", 1)[1])
    for request in (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-",
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n{\"model\""):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request)
            sock.settimeout(10)
            started, answer = time.monotonic(), b""
            while chunk := sock.recv(4096):  # returns b"" once the server closes the connection
                answer += chunk
            assert time.monotonic() - started < 5  # read timeout 2 s
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


def test_a_huge_prompt_is_refused_before_tokenizing_and_health_stays_quick(server):
    base, _ = server
    gaps, done = [], threading.Event()

    def poll():
        while not done.is_set():
            started = time.monotonic()
            httpx.get(base + "/health", timeout=10)
            gaps.append(time.monotonic() - started)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "word " * 3_000_000}]}  # 15 MB
        reply = httpx.post(base + "/v1/chat/completions", json=body, timeout=60)
    finally:
        done.set()
        poller.join()
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "context_length_exceeded"
    assert len(gaps) >= 2 and max(gaps) < 1.0


def test_busy_port_and_bad_host_fail_before_the_model_loads(capsys):
    from vist2.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        assert main(["serve", "--preset", "smollm2-135m", "--port", str(port)]) == 2
        assert time.monotonic() - started < 5
    err = capsys.readouterr().err.strip()
    assert "--port" in err and "in use" in err and len(err.splitlines()) == 1
    assert main(["serve", "--preset", "tiny", "--host", "no.such.host.invalid"]) == 2
    assert "--host" in capsys.readouterr().err

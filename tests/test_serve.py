"""`vist2 serve` against a real uvicorn server on 127.0.0.1 with the tiny random model: the
official openai client (plain, streamed, each mode, n=2), raw HTTP for bad requests,
a disconnect that frees its row, the 429 queue bound, metrics, and the CLI with SIGTERM."""

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

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(base: str, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not come up")


@pytest.fixture(scope="module")
def server():
    from vist2.engine import Engine
    from vist2.generate import load_model
    from vist2.render import Renderer
    from vist2.serve.app import create_app
    from vist2.serve.protocol import Limits

    model, tokenizer = load_model(preset_name="tiny")
    from vist2.serve.command import PREFILL_CHUNK_TOKENS

    engine = Engine(model, tokenizer, max_batch=4, prefill_tokens=PREFILL_CHUNK_TOKENS)  # serve's default
    app = create_app(engine, tokenizer, Renderer(model.config.render), "tiny", "gcc", Limits(400, 3000, 16), 16)
    port = free_port()
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base)
    yield base, app
    instance.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="none", max_retries=0)


@pytest.mark.parametrize("mode", ["text", "pcc", "gcc"])
def test_chat_each_mode_plain_and_streamed(client, mode):
    extra = {"mode": mode, "ignore_eos": True}
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello " * 30}],
                                           max_tokens=70, extra_body=extra)
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
                                            max_tokens=70, extra_body=extra, stream=True,
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
    ({"model": "tiny", "prompt": ["a", "b"]}, 400, "prompt"),
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
    reply = httpx.post(server[0] + "/v1/completions", content=b" " * (17 * 2**20))
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
    assert 'vist2_requests_total{endpoint="/v1/chat/completions",status="429"} 1' in text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("vist2_")
              and "{" not in line}
    assert values["vist2_completion_tokens_total"] > 0 and values["vist2_chunks_compressed_total"] >= 1
    assert values["vist2_queue_depth"] == 0


def test_cli_serves_and_stops_cleanly_on_sigterm(tmp_path, capsys):
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
                                    "--prefill-chunk-tokens", "16"],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        reply = httpx.post(base + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 40,
                                                           "ignore_eos": True, "mode": "gcc"}, timeout=30)
        assert reply.status_code == 200  # --chunk-tokens 32: 40 tokens close one chunk (the preset's K is 64)
        assert reply.json()["usage"]["compression"]["chunks_compressed"] == 1
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 300, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", base + "/v1/completions", json=body, timeout=30) as streamed:
            lines = streamed.iter_lines()
            next(lines)
            process.send_signal(signal.SIGTERM)  # in flight: it finishes, then the server exits
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "length"
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in log.read_text()

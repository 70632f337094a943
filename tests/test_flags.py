"""One door for the chunk options: every command that runs a model takes the same chunk flags,
validated once by `add_chunk_flags`, and `chunk_options_from` turns them into a `ChunkOptions`."""

import argparse

import pytest
import torch

from conftest import require_extra
from vist2.cli import main
from vist2.flags import add_chunk_flags, chunk_options_from
from vist2.model import Vist2Model
from vist2.presets import tiny

MODEL_COMMANDS = [["generate", "--preset", "tiny", "--prompt", "hi"], ["verify", "--preset", "tiny"], ["bench"],
                  ["serve", "--preset", "tiny"]] + [
                 ["eval", name, "--preset", "tiny"] for name in ("ruler", "longbench", "loogle", "gsm8k", "ocr")]


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("flag, value, message", [
    ("--chunk-tokens", "0", "argument --chunk-tokens: must be >= 1, got 0"),
    ("--max-chunk-tokens", "0", "argument --max-chunk-tokens: must be in [1, 4194304], got 0"),
    ("--chunking", "wide", "argument --chunking: invalid choice: 'wide'"),
])
def test_every_model_command_refuses_a_bad_chunk_flag_alike(command, flag, value, message, capsys):
    with pytest.raises(SystemExit) as refused:
        main([*command, flag, value])
    assert refused.value.code == 2 and message in capsys.readouterr().err


def test_chunk_options_from_the_flags_or_the_model():
    torch.manual_seed(0)
    model = Vist2Model(tiny())
    parser = argparse.ArgumentParser()
    add_chunk_flags(parser)
    default = chunk_options_from(parser.parse_args([]), model)
    chunk = model.config.chunk
    assert (default.chunk_tokens, default.beta, default.chunking) == (chunk.chunk_tokens, model.config.visual_tokens,
                                                                      chunk.chunking)
    given = chunk_options_from(parser.parse_args(["--chunk-tokens", "16", "--chunking", "fill",
                                                  "--max-chunk-tokens", "40"]), model)
    assert (given.chunk_tokens, given.chunking, given.max_chunk_tokens, given.beta) == (16, "fill", 40, default.beta)
    assert given.ratio == 16 / default.beta


# One chunk option from the command line to where it acts and to what the run records. The preset's
# K is 64: every chunk of 16 below came from the flag. `vist2 eval` is covered by
# test_eval_runner.py::test_chunk_tokens_reach_the_engine_and_the_ratio_column, `vist2 bench` by
# test_bench.py::test_bench_cli_end_to_end (K = 32 in its JSON and in the chunks its engine closed).

QUERY = "the quick brown fox jumps over the lazy dog. " * 2  # 90 byte tokens: chunks of 16, none of 64


def engines(monkeypatch, module) -> tuple[list, list]:
    """Record every Engine `module` builds and every request (prompt layout and stats) they make."""
    from vist2.engine import Engine

    built, requests = [], []

    class Recorded(Engine):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

        def request(self, *args, **kwargs):
            requests.append(super().request(*args, **kwargs))
            return requests[-1]

    monkeypatch.setattr(module, "Engine", Recorded)
    return built, requests


def test_chunk_tokens_reach_generate_its_engine_and_its_json(monkeypatch, capsys, one_thread):
    import json

    import vist2.generate

    built, requests = engines(monkeypatch, vist2.generate)
    assert main(["generate", "--preset", "tiny", "--prompt", QUERY, "--mode", "gcc", "--chunk-tokens", "16",
                 "--max-new-tokens", "2", "--json"]) == 0
    assert [engine.options.chunk_tokens for engine in built] == [16]
    [request] = requests
    assert request.prompt.chunk_lengths and set(request.prompt.chunk_lengths) == {16}  # the prompt's layout
    stats = json.loads(capsys.readouterr().out)["stats"]
    assert stats["chunk_lengths"] and set(stats["chunk_lengths"]) == {16}


def test_chunk_tokens_reach_serve_its_engine_and_a_requests_usage(monkeypatch, one_thread):
    require_extra("uvicorn")
    from starlette.testclient import TestClient

    import vist2.engine
    import vist2.serve.command
    from vist2.serve.health import free_port

    (built, requests), answers = engines(monkeypatch, vist2.engine), []

    class Served:
        """Instead of uvicorn: one request through the app `vist2 serve` built."""

        def __init__(self, config, on_exit):
            self.app = config.app

        def run(self, sockets):
            for listener in sockets:
                listener.close()
            with TestClient(self.app, base_url="http://127.0.0.1") as client:
                answers.append(client.post("/v1/chat/completions", json={
                    "model": "tiny", "messages": [{"role": "user", "content": QUERY}], "max_tokens": 2}).json())

    monkeypatch.setattr(vist2.serve.command, "_server_class", lambda: Served)
    port = free_port()
    assert main(["serve", "--preset", "tiny", "--host", "127.0.0.1", "--port", str(port), "--mode", "gcc",
                 "--threads", "1", "--chunk-tokens", "16"]) == 0
    [engine] = built
    assert engine.options.chunk_tokens == 16
    [answer] = answers
    [request] = requests
    assert len(request.prompt.chunk_lengths) >= 5 and set(request.prompt.chunk_lengths) == {16}
    assert request.stats.chunk_lengths == list(request.prompt.chunk_lengths)
    compression = answer["usage"]["compression"]
    # K = 16 = beta: each page holds as many positions as its text; at the preset's K = 64 the first
    # 64 tokens would have become 16 visual tokens, 48 positions fewer at the peak
    assert compression["mode"] == "gcc" and answer["usage"]["prompt_tokens"] > 64
    assert compression["kv_tokens_full_text"] - compression["kv_tokens_peak"] < 48


def test_chunk_flags_reach_train_its_layouts_and_its_recorded_config(tmp_path, monkeypatch, one_thread):
    """`vist2 train` has no --chunk-tokens (K is the model's); its chunk flags are --chunking,
    --min-font-size and --max-chunk-tokens. Fill with at most 16 tokens a chunk, on a K = 64 model."""
    import json

    import vist2.train.loop as loop

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"query": QUERY + "and once more, " + str(i), "response": f"answer {i}."}) + "\n"
                            for i in range(2)))
    built, dataset = [], loop._dataset
    monkeypatch.setattr(loop, "_dataset", lambda *args: built.append(dataset(*args)) or built[-1])
    assert main(["train", "--stage", "sft", "--data", str(data), "--output", str(tmp_path / "run"), "--preset", "tiny",
                 "--batch-size", "2", "--micro-batch-size", "2", "--max-length", "400", "--max-steps", "1",
                 "--no-progress-bar", "--chunking", "fill", "--max-chunk-tokens", "16"]) == 0
    [(options, chats)] = built
    assert (options.chunking, options.max_chunk_tokens, options.chunk_tokens) == ("fill", 16, 64)
    query_ids, _, prompt = chats.chats[0]
    lengths = prompt.chunk_lengths  # at K = 64 the query (> 100 tokens) would be one chunk of 64 and text
    assert len(lengths) >= 6 and max(lengths) <= 16
    layout = chats[(0, 0)].layout  # the training layout: one visual block per compressed chunk
    assert sum(s.kind == "visual" for s in layout) == len(lengths)
    assert all(s.length <= 16 for s in layout if s.kind == "text" and s.chunk is not None)
    recorded = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert (recorded["chunking"], recorded["max_chunk_tokens"]) == ("fill", 16)

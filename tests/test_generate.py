"""Generation: text mode equals Hugging Face greedy, eviction really frees the cache, gcc
memory stays flat, decoding options, batches, streaming, bad input and the CLI."""

import json

import pytest
import torch

from vist2.engine import Engine
from vist2.kvstore import KVStore
from vist2.chunking import split_compressed
from vist2.cli import main
from vist2.errors import Vist2Error
from vist2.chunking import chunk_texts
from vist2.generate import GenerationConfig, generate, load_model, stream
from vist2.stages import chat_parts

PROMPT = "Summarise the following notes, please. " * 3


def greedy(mode, n, **options):
    return GenerationConfig(mode=mode, max_new_tokens=n, ignore_eos=True, **options)


def test_text_mode_equals_hugging_face_greedy(tiny):
    model, tokenizer = tiny
    user, assistant, _ = chat_parts(tokenizer)
    ids = user + tokenizer.encode(PROMPT) + assistant
    expected = model.llm.generate(torch.tensor([ids]), max_new_tokens=40, min_new_tokens=40, do_sample=False)
    result = generate(model, tokenizer, PROMPT, greedy("text", 40))
    assert result.token_ids == expected[0, len(ids):].tolist()


def test_gcc_slot_holds_persistent_entries_plus_the_current_chunk(tiny):
    model, tokenizer = tiny
    K = model.config.chunk.chunk_tokens
    engine = Engine(model, tokenizer)
    request = engine.add(PROMPT, greedy("gcc", 3 * K + 5))
    compressed = 0
    for events in engine.run():
        compressed += sum(bool(event.pages) for event in events)
        if not request.finished:  # persistent entries == next position; the chunk sits on top
            assert engine.kv.lengths[request.slot] == request.base + request.offset and request.offset < K
    assert compressed == request.stats.chunks_compressed == 3
    assert engine.kv.nbytes() == 0 and engine.kv.lengths == []  # the finished request freed its slot


def test_store_writes_the_visual_block_over_the_chunk_and_frees_finished_slots():
    store = KVStore(load_model(preset_name="tiny")[0].llm.config, torch.device("cpu"), torch.float32)
    first, second = store.add_slots([10, 10])
    store.begin([first, second], [10, 10])
    for layer in range(store.keys.shape[0]):  # one packed row: 10 new entries of each slot
        store.update(torch.randn(1, 2, 20, 16), torch.randn(1, 2, 20, 16), layer)
    storage, expected = store.keys.data_ptr(), store.keys[:, first, :, 7:10].clone()
    store.move(first, 7, 2, 3)  # a 3-entry block written after a 5-entry chunk at 2..7
    assert store.lengths == [5, 10] and store.keys.data_ptr() == storage  # no reallocation
    assert torch.equal(store.keys[:, first, :, 2:5], expected)
    kept = store.keys[:, second, :, :10].clone()
    assert store.free_slot(first) == second  # the last slot moves into the freed one
    assert store.lengths == [10] and torch.equal(store.keys[:, first, :, :10], kept)
    store.free_slot(0)
    assert store.nbytes() == 0


def test_store_copies_are_linear_in_the_answer_length(tiny):
    """Reserved at admission, text and gcc never reallocate while they decode; a slot that
    outgrows its reservation (gcc fill) grows geometrically: copies linear in its entries."""
    model, tokenizer = tiny
    for mode in ("text", "gcc"):
        copied = []
        for n in (64, 512):
            engine = Engine(model, tokenizer)
            generate_with(engine, PROMPT, greedy(mode, n))
            copied.append((engine.kv.reallocations, engine.kv.bytes_copied))
        assert copied == [(2, 0), (2, 0)], mode  # one reservation, one release; nothing copied
    entry = 2 * 2 * 2 * 16 * 4  # keys and values, 2 layers, 2 heads, head dim 16, fp32
    for n in (1000, 8000):
        store = KVStore(model.llm.config, torch.device("cpu"), torch.float32)
        store.add_slots([1])
        for _ in range(n):
            store.begin([0], [1])
        assert store.bytes_copied <= 2 * n * entry and store.reallocations <= 2 + n.bit_length()


def generate_with(engine, prompt, config):
    request = engine.add(prompt, config)
    for _ in engine.run():
        pass
    return request


def test_gcc_kv_stays_flat_while_text_grows(tiny):
    model, tokenizer = tiny
    K, beta = model.config.chunk.chunk_tokens, model.config.visual_tokens
    user, assistant, _ = chat_parts(tokenizer)
    query = tokenizer.encode(PROMPT)
    chunks, tail = split_compressed(query, K, beta)
    prompt_tokens = len(user) + len(chunks) * beta + len(tail) + len(assistant)
    gcc = generate(model, tokenizer, PROMPT, greedy("gcc", 6 * K)).stats
    text = generate(model, tokenizer, PROMPT, greedy("text", 6 * K)).stats
    assert gcc.chunks_compressed == 5
    assert gcc.kv_tokens_peak <= prompt_tokens + gcc.chunks_compressed * beta + K
    assert text.kv_tokens_peak == len(user + query + assistant) + 6 * K - 1 == text.kv_tokens_full_text - 1
    assert gcc.kv_bytes_peak < text.kv_bytes_peak / 2
    assert gcc.render_s > 0 and gcc.encode_s > 0 and text.encode_s == 0


@pytest.mark.parametrize("mode", ["text", "pcc", "gcc"])
def test_batch_equals_single_prompts(tiny, mode):
    model, tokenizer = tiny
    prompts = ["Hi.", PROMPT]
    batch = generate(model, tokenizer, prompts, greedy(mode, 70))
    for prompt, result in zip(prompts, batch):
        single = generate(model, tokenizer, prompt, greedy(mode, 70))
        assert result.token_ids == single.token_ids
        assert result.stats.kv_tokens_peak == single.stats.kv_tokens_peak


def test_sampling_options(tiny):
    model, tokenizer = tiny
    first = generate(model, tokenizer, PROMPT, greedy("pcc", 30, temperature=1.0, seed=3))
    again = generate(model, tokenizer, PROMPT, greedy("pcc", 30, temperature=1.0, seed=3))
    other = generate(model, tokenizer, PROMPT, greedy("pcc", 30, temperature=1.0, seed=4))
    assert first.token_ids == again.token_ids != other.token_ids
    top1 = generate(model, tokenizer, PROMPT, greedy("pcc", 30, temperature=2.0, top_k=1, seed=5))
    nucleus = generate(model, tokenizer, PROMPT, greedy("pcc", 30, temperature=2.0, top_p=1e-6, seed=5))
    assert top1.token_ids == nucleus.token_ids == generate(model, tokenizer, PROMPT, greedy("pcc", 30)).token_ids
    ids = generate(model, tokenizer, PROMPT, greedy("gcc", 80, no_repeat_ngram_size=2)).token_ids
    bigrams = list(zip(ids, ids[1:]))
    assert len(bigrams) == len(set(bigrams))
    plain = generate(model, tokenizer, PROMPT, greedy("gcc", 80)).token_ids
    penalised = generate(model, tokenizer, PROMPT, greedy("gcc", 80, repetition_penalty=5.0)).token_ids
    assert len(set(penalised)) > len(set(plain))


def test_stop_string_eos_and_stream(tiny):
    model, tokenizer = tiny
    free = generate(model, tokenizer, PROMPT, greedy("gcc", 100, temperature=1.0, seed=0))
    stop = free.text[20:23]
    cut = generate(model, tokenizer, PROMPT, greedy("gcc", 100, temperature=1.0, seed=0, stop_strings=(stop,)))
    assert cut.text == free.text[: free.text.index(stop)]
    config = greedy("gcc", 100, temperature=1.0, seed=0, stop_strings=(stop,))
    assert "".join(stream(model, tokenizer, PROMPT, config)) == cut.text
    eos = tokenizer.eos_token_id
    sampled = GenerationConfig(mode="pcc", max_new_tokens=400, temperature=1.5, seed=1)
    result = generate(model, tokenizer, PROMPT, sampled)  # the random model emits EOS/<|im_end|> at random
    assert result.stats.generated_tokens == len(result.token_ids) + 1 < 400
    assert eos not in result.token_ids


def test_response_pages_render_a_split_character_whole_in_the_later_chunk(tiny):
    _, tokenizer = tiny
    ids = tokenizer.encode("abé!")  # é is two bytes: split them across chunks
    assert chunk_texts(tokenizer, [ids[:3], ids[3:]]) == ["ab", "é!"]


def test_bad_input(tiny, tmp_path):
    model, tokenizer = tiny
    with pytest.raises(Vist2Error, match="empty"):
        generate(model, tokenizer, "  ", GenerationConfig())
    with pytest.raises(Vist2Error, match="unknown mode"):
        GenerationConfig(mode="fast")
    for n in (0, -3):
        with pytest.raises(Vist2Error, match="max_new_tokens"):
            GenerationConfig(max_new_tokens=n)
    with pytest.raises(Vist2Error, match="not a vist2 checkpoint"):
        load_model(str(tmp_path))
    from vist2.model import Vist2Model

    params = dict(model.config.llm.params, max_position_embeddings=300)  # a backbone with 300 positions
    limited = Vist2Model(model.config.replace(**{"llm.params": params})).eval()
    long_prompt = "word " * 100  # 500 byte tokens
    with pytest.raises(Vist2Error, match="limit of 300"):
        generate(limited, tokenizer, long_prompt, greedy("text", 10))
    assert generate(limited, tokenizer, long_prompt, greedy("gcc", 10)).stats.generated_tokens == 10


def test_cli_generate_gcc_memory_is_flat(capsys):
    args = ["generate", "--preset", "tiny", "--prompt", "Hello there, summarise this.", "--ignore-eos", "--json"]
    assert main(args + ["--mode", "gcc", "--max-new-tokens", "2000"]) == 0
    gcc = json.loads(capsys.readouterr().out)
    stats = gcc["stats"]
    assert gcc["mode"] == "gcc" and gcc["finish_reason"] == "length"
    assert stats["generated_tokens"] == 2000 and stats["chunks_compressed"] == 31
    persistent = stats["kv_tokens_final"] - (2000 - 1 - 31 * 64)  # the last, unfinished chunk is transient
    assert stats["kv_tokens_peak"] <= persistent + 64 < stats["kv_tokens_full_text"] / 3
    assert main(args + ["--mode", "text", "--max-new-tokens", "300"]) == 0
    text = json.loads(capsys.readouterr().out)["stats"]
    assert text["kv_tokens_peak"] == text["kv_tokens_full_text"] - 1
    assert main(args + ["--mode", "nope"]) == 2
    assert "unknown mode" in capsys.readouterr().err
    assert main(["generate", "--preset", "tiny", "--prompt", "", "--mode", "text"]) == 2
    assert main(["generate", "--preset", "tiny", "--prompt", "x", "--max-new-tokens", "0"]) == 2


def test_dtype_bfloat16_holds_half_the_kv_bytes_of_float32(capsys):
    stats = {}
    for dtype in ("float32", "bfloat16"):
        assert main(["generate", "--preset", "tiny", "--dtype", dtype, "--mode", "gcc", "--max-new-tokens", "70",
                     "--ignore-eos", "--json", "--prompt", "hello there"]) == 0
        stats[dtype] = json.loads(capsys.readouterr().out)["stats"]
    assert stats["bfloat16"]["generated_tokens"] == 70 and stats["bfloat16"]["chunks_compressed"] == 1
    assert stats["bfloat16"]["kv_tokens_peak"] == stats["float32"]["kv_tokens_peak"]
    assert 2 * stats["bfloat16"]["kv_bytes_peak"] == stats["float32"]["kv_bytes_peak"]


def test_chunk_tokens_is_a_generation_option(capsys):
    assert main(["generate", "--preset", "tiny", "--chunk-tokens", "16", "--mode", "gcc", "--max-new-tokens", "40",
                 "--ignore-eos", "--json", "--prompt", "hello there"]) == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    assert stats["chunks_compressed"] == 2 and stats["chunk_lengths"] == [16, 16]  # the preset's K is 64
    with pytest.raises(SystemExit) as refused:  # argparse: one line, exit 2
        main(["generate", "--preset", "tiny", "--chunk-tokens", "0", "--prompt", "hi"])
    assert refused.value.code == 2



def test_a_checkpoint_asking_to_run_its_own_code_is_refused_without_a_prompt(tiny, tmp_path, capsys):
    """trust_remote_code is never on: a tokenizer with auto_map neither asks "run custom code?"
    (a user's "y" on stdin is never read) nor runs the checkpoint's Python."""
    import json
    import os
    import subprocess
    import sys

    from vist2.cli import main

    model, tokenizer = tiny
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder, tokenizer)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "evil_code.EvilTokenizer"]})
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ran = tmp_path / "ran"
    (folder / "evil_code.py").write_text(f"import pathlib\npathlib.Path({str(ran)!r}).write_text('ran')\n"
                                         "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    script = ("import sys\nfrom vist2.errors import Vist2Error\nfrom vist2.tokenizer import load_tokenizer\n"
              f"try:\n    load_tokenizer({str(folder)!r})\nexcept Vist2Error as error:\n    sys.exit(str(error))\n")
    done = subprocess.run([sys.executable, "-c", script], input="y\n", capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))  # a fresh process, stdin holding "y"
    assert done.returncode == 1 and not ran.exists()
    assert f"cannot load the tokenizer in {folder}" in done.stderr and "custom code" in done.stderr
    assert "Do you wish to run the custom code" not in done.stderr
    assert main(["generate", "--model", str(folder), "--prompt", "hi", "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert "custom code" in err and err.count("\n") == 1 and not ran.exists()

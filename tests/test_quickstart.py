"""The quickstart end to end on a tiny budget, and the evaluation measures it reports."""

import json

import pytest
import torch

from vist2 import stages
from vist2.cli import main
from vist2.model import Vist2Model
from vist2.presets import tiny
from vist2.render import Renderer
from vist2.chunking import chunk_texts
from vist2.tokenizer import byte_tokenizer
from vist2.eval import reading
from vist2.quickstart import corpus, quickstart_config, random_text, split

TOKENIZER = byte_tokenizer()


pytestmark = pytest.mark.usefixtures("one_thread")


def test_quickstart_smoke_runs_every_stage_and_prints_the_table(tmp_path, capsys):
    output = tmp_path / "qs"
    assert main(["quickstart", "--output", str(output), "--steps", "2", "--eval-chunks", "8",
                 "--eval-windows", "4", "--no-progress-bar"]) == 0
    printed = capsys.readouterr().out
    for line in ("after OCR stage", "bits/char, teacher forced, blank page", "greedy character accuracy", "greedy ROUGE-L",
                 "full previous text in context", "previous chunks as visual tokens only", "no previous context"):
        assert line in printed
    results = json.loads((output / "results.json").read_text())
    assert results["steps"] == {"read": 2, "ocr": 2, "olm": 2}
    assert results["ocr"]["chunks"] == 8 and results["ocr"]["chars_per_visual_token"] == pytest.approx(2, abs=0.1)
    assert set(results["ocr"]["after_olm"]) >= {"bits_per_char", "bits_per_char_blank_page", "character_accuracy"}
    assert all(0 < results["olm"][k] < 20 for k in ("full_text", "visual_memory", "no_context"))
    back = results["read_back"]  # the last word: a held-out passage compressed and read back
    assert len(back["pages"]) == len(back["read"]) == 8 and all(len(page) == 16 for page in back["pages"])
    assert back["kv_compressed"] == 8 * 8 and back["kv_full_text"] == 8 * 16 and 0 <= back["character_accuracy"] <= 1
    assert "A held-out passage as a compressed prompt: 8 pages of 8 visual tokens each" in printed
    assert f"{back['pages'][0]!r}" in printed
    assert "the compressed passage holds 64 entries, the full text 128" in printed
    assert printed.rstrip().splitlines()[-1].startswith("done in")
    held_out = [path.read_text() for path in sorted((output / "data" / "held_out_essays").glob("*.txt"))]
    assert held_out == split(corpus()["essays"])[1] and back["pages"][0] in "".join(held_out)
    for name in ("sample.png", "loss_curves.png", "read/loss.png", "ocr/loss.png", "olm/loss.png"):
        assert (output / name).stat().st_size > 500
    model = Vist2Model.from_pretrained(output / "model")
    assert model.config.preset == "quickstart" and model.num_parameters()["total"] > 2_000_000
    assert main(["quickstart", "--output", str(output), "--steps", "1"]) == 2  # never overwrites a run
    assert "is not an empty folder" in capsys.readouterr().err


def test_quickstart_model_reads_two_characters_per_visual_token():
    config = quickstart_config()
    assert config.visual_tokens == 8 and config.chunk.chunk_tokens == 16
    page = Renderer(config.render).render("one line, 16 ch.")  # one row of 16 px patches
    assert page.lines == 1 and page.font_size >= 12


def test_held_out_split_and_random_text():
    documents = [f"doc {i}" for i in range(16)]
    train, held = split(documents)
    assert held == ["doc 7", "doc 15"] and len(train) == 14 and not set(train) & set(held)
    text = random_text(["aab"], 3000, seed=1)
    assert set(text) == {"a", "b"} and 1800 < text.count("a") < 2200
    assert random_text(["aab"], 50, seed=1) == random_text(["aab"], 50, seed=1)


def test_edit_distance_and_rouge_l():
    assert reading.levenshtein("kitten", "sitting") == 3
    assert reading.levenshtein("", "abc") == 3
    assert reading.rouge_l("the cat sat", "the cat sat") == 1.0
    assert reading.rouge_l("the cat", "the big cat") == pytest.approx(0.8)  # LCS 2: P = 1, R = 2/3
    assert reading.rouge_l("dog", "the cat") == 0.0


def test_cached_greedy_transcription_equals_teacher_forced_argmax():
    torch.manual_seed(0)
    model = Vist2Model(tiny()).eval()
    renderer = Renderer(model.config.render)
    chunks = [TOKENIZER.encode("read this page"), TOKENIZER.encode("and this one!!")]
    pages = renderer.render_batch(chunk_texts(TOKENIZER, chunks))
    read = reading.ocr_transcribe(model, pages, tokens=6)
    beta, pad = model.config.visual_tokens, TOKENIZER.pad_token_id
    examples = [stages.ocr(TOKENIZER, ids, 64, beta, pad) for ids in read]
    batch = stages.collate(examples, renderer, pad)
    batch["pages"] = pages
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert logits[:, beta - 1 : beta + 5].argmax(-1).tolist() == read


def test_bits_per_char_modes_are_finite_and_blank_pages_differ():
    torch.manual_seed(0)
    model = Vist2Model(tiny()).eval()
    renderer = Renderer(model.config.render)
    ids = TOKENIZER.encode("some words to read and predict, " * 12)
    chunks = [ids[:64], ids[64:128]]
    real = reading.ocr_bits_per_char(model, TOKENIZER, chunks, renderer)
    blank = reading.ocr_bits_per_char(model, TOKENIZER, chunks, renderer, blank=True)
    assert 0 < real < 20 and 0 < blank < 20 and real != blank
    modes = reading.next_chunk_bits_per_char(model, TOKENIZER, [ids[:192], ids[192:384]], renderer)
    assert set(modes) == {"full_text", "visual_memory", "no_context"}
    assert all(0 < v < 20 for v in modes.values()) and len(set(modes.values())) == 3

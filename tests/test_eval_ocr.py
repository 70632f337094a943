"""`vist2 eval ocr`: bounded readers, chunking, hand-checked metrics, and a tiny model end to end."""

import argparse
import json
import os

import pytest
import torch

from vist2.errors import Vist2Error
from vist2.eval import ocr
from vist2.flags import add_chunk_flags
from vist2.model import Vist2Model
from vist2.presets import tiny
from vist2.render import Renderer
from vist2.tokenizer import byte_tokenizer

TOKENIZER = byte_tokenizer()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Vist2Model(tiny()).eval()  # page 128 x 32, beta = 16, K = 64: ratio 4


def _args(data, chunks=4, chunk_tokens=None):
    parser = argparse.ArgumentParser()
    ocr.add_arguments(parser)
    add_chunk_flags(parser)  # the runner's chunk flags
    args = parser.parse_args(["--data", *map(str, data)] + (["--chunk-tokens", str(chunk_tokens)] if chunk_tokens else []))
    args.samples = chunks  # the runner's --samples: chunks per path
    return args


def test_readers_take_txt_jsonl_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("one  document\n\nwith lines")
    (tmp_path / "b.jsonl").write_text('{"text": "first"}\n\n{"text": "second", "id": 2}\n')
    (tmp_path / "skip.md").write_text("not read")
    assert ocr.read_documents(str(tmp_path / "b.jsonl")) == ["first", "second"]
    assert ocr.read_documents(str(tmp_path)) == ["one  document\n\nwith lines", "first", "second"]


@pytest.mark.parametrize("content, message", [
    ('{"text": "ok"}\nnot json\n', "line 2: not valid JSON"),
    ('{"txt": "ok"}\n', "line 1: needs a string field 'text'"),
    ('["text"]\n', "line 1: expected a JSON object, got list"),
    ('{"text": NaN}\n', "line 1: not valid JSON .NaN is not allowed"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(Vist2Error, match=message):
        ocr.read_documents(str(path))


def test_bad_paths_are_refused(tmp_path, monkeypatch):
    with pytest.raises(Vist2Error, match="--data: .* does not exist"):
        ocr.read_documents(str(tmp_path / "missing.txt"))
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(Vist2Error, match="not a .txt or .jsonl file"):
        ocr.read_documents(str(tmp_path / "notes.md"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(Vist2Error, match="holds no .txt or .jsonl files"):
        ocr.read_documents(str(tmp_path / "empty"))
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    (tmp_path / "linked").mkdir()
    os.symlink(outside, tmp_path / "linked" / "link.txt")
    with pytest.raises(Vist2Error, match="holds no .txt"):  # a link out of the folder is not followed
        ocr.read_documents(str(tmp_path / "linked"))
    with pytest.raises(Vist2Error, match="symbolic link"):
        ocr.read_documents(str(tmp_path / "linked" / "link.txt"))
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(Vist2Error, match="cannot read .* as UTF-8"):
        ocr.read_documents(str(tmp_path / "latin1.txt"))
    monkeypatch.setattr(ocr, "MAX_FILE_BYTES", 3)
    with pytest.raises(Vist2Error, match="6 bytes, more than the limit of 3"):
        ocr.read_documents(str(outside))


def test_chunks_stay_inside_documents_and_are_spread():
    documents = ["abc  def\nghi", "0123456789"]  # whitespace runs become one space: "abc def ghi"
    chunks = ocr.held_out_chunks(TOKENIZER, documents, 4, 100)
    assert [TOKENIZER.decode(c) for c in chunks] == ["abc ", "def ", "0123", "4567"]
    spread = ocr.held_out_chunks(TOKENIZER, documents, 4, 2)
    assert [TOKENIZER.decode(c) for c in spread] == ["abc ", "0123"]


def test_metrics_against_hand_computed_values(model, monkeypatch):
    texts = ["the cat sat here", "a big dog ran by"]
    readings = iter([["the cat sat here", "a big cat ran by"], ["", "a"]])  # real page, then blank page
    monkeypatch.setattr(ocr, "_read", lambda *args: next(readings))
    chunks = [TOKENIZER.encode(text) for text in texts]
    row, records = ocr.evaluate(model, TOKENIZER, chunks, Renderer(model.config.render), task="t")
    # edits 0 + 3 ("dog" -> "cat") over 32 characters; ROUGE-L 1 and 0.8 (LCS 4 of 5 words each way)
    assert row.score == pytest.approx(100 * (1 - 3 / 32)) and row.extra["rouge_l"] == pytest.approx(90)
    assert row.extra["character_error_rate"] == pytest.approx(3 / 32)
    # blank page: 16 + 15 edits of 32; "a" is one of 5 reference words: P = 1, R = 1/5, F1 = 1/3
    assert row.extra["character_accuracy_blank_page"] == pytest.approx(100 / 32)
    assert row.extra["rouge_l_blank_page"] == pytest.approx(100 / 6)
    assert (row.benchmark, row.task, row.mode, row.n, row.length) == ("ocr", "t", "ocr", 2, 16)
    assert row.ratio == 1.0 and row.extra["chars_per_visual_token"] == 1.0  # 16 tokens on 16 visual tokens
    assert [r["score"] for r in records] == [100, pytest.approx(100 * 13 / 16)]
    assert records[1]["prediction"] == "a big cat ran by" and records[1]["blank_page_prediction"] == "a"
    assert 0 < row.extra["bits_per_char"] < 20 and 0 < row.extra["bits_per_char_blank_page"] < 20


def test_run_end_to_end_on_a_tiny_model(model, tmp_path):
    (tmp_path / "essay.txt").write_text("It was a bright cold day in April, and the clocks were striking. " * 8)
    (tmp_path / "notes.jsonl").write_text(json.dumps({"text": "Call me Ishmael. Some years ago. " * 8}) + "\n")
    rows, records = ocr.run(_args([tmp_path / "essay.txt", tmp_path / "notes.jsonl"], chunks=3), model, TOKENIZER)
    assert [(r.task, r.n, r.ratio, r.length) for r in rows] == [("essay", 3, 4.0, 64), ("notes", 3, 4.0, 64)]
    assert len(records) == 6 and all(len(r["reference"]) == 64 and len(r["prediction"]) > 0 for r in records)
    assert all(0 <= r.score <= 100 and 0 <= r.extra["rouge_l"] <= 100 for r in rows)
    rows, _ = ocr.run(_args([tmp_path / "essay.txt"], chunks=2, chunk_tokens=32), model, TOKENIZER)
    assert rows[0].ratio == 2.0 and rows[0].n == 2 and rows[0].as_dict()["benchmark"] == "ocr"


def test_bad_arguments_fail_before_any_reading(model, tmp_path):
    (tmp_path / "short.txt").write_text("too short")
    with pytest.raises(Vist2Error, match="--samples must be >= 1"):
        ocr.run(_args([tmp_path / "short.txt"], chunks=0), model, TOKENIZER)
    with pytest.raises(Vist2Error, match="no text of 64 tokens or more"):
        ocr.run(_args([tmp_path / "short.txt"]), model, TOKENIZER)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "short.txt").write_text("x" * 100)
    with pytest.raises(Vist2Error, match="both named 'short'"):
        ocr.run(_args([tmp_path / "b" / "short.txt", tmp_path / "short.txt"]), model, TOKENIZER)

"""`vist2 prepare` and training from a prepared (memory-mapped) corpus."""

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vist2.cli import main
from vist2.errors import Vist2Error
from vist2.tokenizer import byte_tokenizer
from vist2.train.data import build_dataset, read_records, token_stream
from vist2.train.prepare import prepare


def corpus(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("The first document, plain text. " * 9 + "ünïcode ✓\n", encoding="utf-8")
    with open(folder / "b.jsonl", "w", encoding="utf-8") as handle:
        for i in range(7):
            handle.write(json.dumps({"text": f"JSONL record {i}: " + "words and more words " * (i + 1)}) + "\n")
    pq.write_table(pa.table({"text": [f"parquet row {i} " * 5 for i in range(4)]}), folder / "c.parquet")
    return folder


def test_prepared_stream_and_samples_equal_the_raw_path(tmp_path):
    data, tokenizer = corpus(tmp_path / "corpus"), byte_tokenizer()
    manifest = prepare((str(data),), tmp_path / "prepared", tokenizer, "bytes", batch_mb=0.0002,
                       shard_tokens=300, progress=False)
    raw = token_stream(tokenizer, [r["text"] for r in read_records((str(data),))])
    assert manifest["tokens"] == len(raw) and manifest["documents"] == 12 and len(manifest["shards"]) > 2
    for stage in ("ocr", "olm"):
        a = build_dataset(stage, (str(data),), tokenizer, 16, 2, 90, ocr_replay=0.5)
        b = build_dataset(stage, (str(tmp_path / "prepared"),), tokenizer, 16, 2, 90, ocr_replay=0.5)
        assert np.array_equal(b.stream[0 : len(b.stream)], a.stream) and len(a) == len(b)
        b = pickle.loads(pickle.dumps(b))  # as a DataLoader worker gets it: reopens the maps
        for index in range(len(a)):
            for images in (1, 2):
                x, y = a[(index, images)], b[(index, images)]
                assert x == y and x.ids == y.ids


def test_mismatched_tokenizer_is_refused(tmp_path):
    data = corpus(tmp_path / "corpus")
    prepare((str(data),), tmp_path / "prepared", byte_tokenizer(), "bytes", progress=False)
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    manifest["tokenizer"]["sha256"] = "0" * 64
    (tmp_path / "prepared" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Vist2Error, match="prepared with tokenizer 'bytes'"):
        build_dataset("olm", (str(tmp_path / "prepared"),), byte_tokenizer(), 16, 2, 90)


def test_interrupted_prepare_is_never_taken_for_complete(tmp_path, monkeypatch):
    data = corpus(tmp_path / "corpus")
    import vist2.train.prepare as module

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "tokenizer_hash", fail)  # dies after the shards, before the manifest
    with pytest.raises(KeyboardInterrupt):
        prepare((str(data),), tmp_path / "out", byte_tokenizer(), "bytes", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # its temporary folder removed, no output
    # a kill -9 leaves shards without a manifest: refused, not read as data
    half = tmp_path / "half"
    half.mkdir()
    (half / "tokens-00000.bin").write_bytes(b"\0" * 64)
    with pytest.raises(Vist2Error, match="interrupted"):
        build_dataset("olm", (str(half),), byte_tokenizer(), 16, 2, 90)


def test_prepare_cli_bad_input_and_train_from_prepared(tmp_path, capsys):
    data = corpus(tmp_path / "corpus")
    prepared = tmp_path / "prepared"
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("user file")
    (tmp_path / "empty.jsonl").write_text("")
    bad = [["--data", str(tmp_path / "missing")], ["--data", str(data), "--batch-mb", "nan"],
           ["--data", str(data), "--threads", "-1"], ["--data", str(tmp_path / "empty.jsonl")]]
    for flags in bad:
        assert main(["prepare", "--output", str(prepared), "--preset", "tiny", "--quiet", *flags]) == 2
    assert main(["prepare", "--data", str(data), "--output", str(tmp_path / "taken"), "--tokenizer", "bytes"]) == 2
    assert (tmp_path / "taken" / "mine.txt").read_text() == "user file" and not prepared.exists()
    assert main(["prepare", "--data", str(data), "--output", str(prepared), "--preset", "tiny", "--quiet"]) == 0
    assert main(["train", "--stage", "olm", "--data", str(prepared), "--output", str(tmp_path / "run"),
                 "--preset", "tiny", "--batch-size", "2", "--micro-batch-size", "2", "--max-length", "100",
                 "--max-steps", "2", "--no-progress-bar"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out


def test_train_refuses_a_corpus_of_another_tokenizer_in_one_line(tmp_path, capsys):
    other = byte_tokenizer()
    other.add_tokens(["<extra>"])
    other.save_pretrained(tmp_path / "tok")
    data = corpus(tmp_path / "corpus")
    assert main(["prepare", "--data", str(data), "--output", str(tmp_path / "p"), "--tokenizer",
                 str(tmp_path / "tok"), "--quiet"]) == 0
    assert main(["train", "--stage", "olm", "--data", str(tmp_path / "p"), "--output", str(tmp_path / "run"),
                 "--preset", "tiny", "--max-steps", "1", "--no-progress-bar"]) == 2
    err = capsys.readouterr().err
    assert "run `vist2 prepare` again with the model's tokenizer" in err and err.count("\n") == 1


def test_a_folder_still_being_written_is_refused(tmp_path):
    from vist2.train.tokens import OWNER

    data = corpus(tmp_path / "corpus")
    prepare((str(data),), tmp_path / "p", byte_tokenizer(), "bytes", progress=False)
    (tmp_path / "p" / OWNER).write_text("in progress")  # as a temporary folder of a live or killed prepare
    with pytest.raises(Vist2Error, match="interrupted"):
        build_dataset("olm", (str(tmp_path / "p"),), byte_tokenizer(), 16, 2, 90)


def _prepared(tmp_path: Path) -> Path:
    prepare((str(corpus(tmp_path / "corpus")),), tmp_path / "p", byte_tokenizer(), "bytes", shard_tokens=300,
            progress=False)
    return tmp_path / "p"


def _set_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_shard_with_ids_outside_the_vocabulary_is_refused_when_opened_naming_it(tmp_path):
    prepared, tokenizer = _prepared(tmp_path), byte_tokenizer()
    shard = prepared / "tokens-00001.bin"
    ids = np.fromfile(shard, np.uint16)
    ids[17] = len(tokenizer) + 5
    ids.tofile(shard)
    with pytest.raises(Vist2Error, match=rf"tokens-00001\.bin: token id {len(tokenizer) + 5} at token 17 is outside "
                                         rf"the tokenizer's vocabulary of {len(tokenizer)}"):
        build_dataset("olm", (str(prepared),), tokenizer, 16, 2, 90)


def test_a_large_shard_is_sampled_when_opened_and_every_slice_is_checked_when_read(tmp_path):
    from vist2.train.tokens import ShardedStream, read_manifest

    prepared, tokenizer = _prepared(tmp_path), byte_tokenizer()
    shard = prepared / "tokens-00000.bin"
    ids = np.fromfile(shard, np.uint16)
    ids[150] = 60000
    ids.tofile(shard)
    stream = ShardedStream(prepared, read_manifest(prepared)["shards"], "uint16", len(tokenizer))
    with pytest.raises(Vist2Error, match="tokens-00000.bin: token id 60000 at token 150"):
        stream.check()  # the default sample covers all of a small shard
    stream.check(sample_tokens=128)  # 64 blocks of 2 ids over 300 miss position 150
    assert len(stream[0:100]) == 100
    with pytest.raises(Vist2Error, match="tokens-00000.bin: token id 60000 at token 150"):
        stream[100:200]


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(dtype="float64"), "field 'dtype' must be one of uint16, uint32, got 'float64'"),
    (lambda m: m.update(dtype="uint32"), "dtype uint32, but a vocabulary of"),
    (lambda m: m.update(shards="tokens-00000.bin"), "field 'shards' must be a non-empty list"),
    (lambda m: m["shards"][0].update(tokens="300"), "shards[0] must be an object with a string 'file' and an integer"),
    (lambda m: m["shards"][1].update(file=7), "shards[1] must be an object with a string 'file'"),
    (lambda m: m["shards"][0].update(tokens=299), "tokens-00000.bin: 600 bytes, the manifest says 598"),
    (lambda m: m["shards"][0].update(file="../x.bin"), "shard '../x.bin' is not a plain file name"),
    (lambda m: m.update(tokenizer="bytes"), "field 'tokenizer' must be an object with a string 'sha256'"),
    (lambda m: m["tokenizer"].update(sha256=None), "field 'tokenizer' must be an object with a string 'sha256'"),
])
def test_a_manifest_with_fields_of_the_wrong_type_or_size_is_one_line_exit_2(change, message, tmp_path, capsys):
    prepared = _prepared(tmp_path)
    _set_manifest(prepared, change)
    assert main(["train", "--stage", "olm", "--data", str(prepared), "--output", str(tmp_path / "run"),
                 "--preset", "tiny", "--max-steps", "1", "--no-progress-bar"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "internal error" not in err

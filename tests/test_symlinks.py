"""One rule for every reader of a data folder (`vist2.data_folder`): a file is read only if it
resolves inside the folder (unless --follow-symlinks) and is a regular file. Training folders,
prepare's sources, prepared shards and eval's benchmark files all apply it."""

import json
import os
from pathlib import Path

import pytest

from test_prepare import corpus
from vist2.cli import main
from vist2.errors import Vist2Error
from vist2.tokenizer import byte_tokenizer
from vist2.train.data import build_dataset, read_records
from vist2.train.prepare import prepare

pytestmark = pytest.mark.usefixtures("one_thread")


def outside_file(tmp_path: Path, name: str = "secret.txt") -> Path:
    secret = tmp_path / "outside" / name
    secret.parent.mkdir(exist_ok=True)
    secret.write_text("a private file that must not become training data " * 4)
    return secret


def test_a_training_folder_symlink_out_of_it_is_refused_unless_followed(tmp_path):
    data = corpus(tmp_path / "corpus")
    (data / "link.txt").symlink_to(outside_file(tmp_path))
    with pytest.raises(Vist2Error, match=r"link\.txt: resolves to .*secret\.txt, outside the data folder .*"
                                         r"\(pass --follow-symlinks to read it\)"):
        read_records((str(data),))
    texts = [r["text"] for r in read_records((str(data),), follow_symlinks=True)]
    assert any("private file" in text for text in texts)


def test_a_symlink_inside_the_folder_is_fine_and_fifos_are_refused_not_skipped(tmp_path):
    data = corpus(tmp_path / "corpus")
    (data / "again.txt").symlink_to(data / "a.txt")
    assert len(read_records((str(data),))) == 13
    os.mkfifo(data / "pipe.txt")
    with pytest.raises(Vist2Error, match=r"pipe\.txt: not a regular file"):
        read_records((str(data),))


def test_a_saved_dataset_with_a_file_linked_out_is_refused(tmp_path):
    from datasets import Dataset

    data = tmp_path / "data"
    Dataset.from_dict({"text": ["one", "two"]}).save_to_disk(str(data / "saved"))
    arrow = next((data / "saved").glob("*.arrow"))
    moved = tmp_path / "outside" / arrow.name
    moved.parent.mkdir()
    arrow.rename(moved)
    arrow.symlink_to(moved)
    with pytest.raises(Vist2Error, match="outside the data folder"):
        read_records((str(data),))
    assert [r["text"] for r in read_records((str(data),), follow_symlinks=True)] == ["one", "two"]


def test_prepare_refuses_a_source_linked_out_and_lists_only_inside_files(tmp_path, capsys):
    data = corpus(tmp_path / "corpus")
    (data / "link.txt").symlink_to(outside_file(tmp_path))
    command = ["prepare", "--data", str(data), "--output", str(tmp_path / "p"), "--tokenizer", "bytes", "--quiet"]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "link.txt: resolves to" in err and "--follow-symlinks" in err and err.count("\n") == 1
    assert not (tmp_path / "p").exists()
    assert main([*command, "--follow-symlinks"]) == 0
    sources = json.loads((tmp_path / "p" / "manifest.json").read_text())["sources"]
    assert any(s["path"].endswith("secret.txt") for s in sources)


def test_a_prepared_shard_linked_out_of_its_folder_is_refused(tmp_path):
    data, tokenizer = corpus(tmp_path / "corpus"), byte_tokenizer()
    prepared = tmp_path / "prepared"
    prepare((str(data),), prepared, tokenizer, "bytes", progress=False)
    shard = prepared / "tokens-00000.bin"
    moved = tmp_path / "outside.bin"
    shard.rename(moved)
    shard.symlink_to(moved)
    with pytest.raises(Vist2Error, match=r"tokens-00000\.bin: resolves to .*outside\.bin, outside the data folder"):
        build_dataset("olm", (str(prepared),), tokenizer, 16, 2, 90)
    assert len(build_dataset("olm", (str(prepared),), tokenizer, 16, 2, 90, follow_symlinks=True)) > 0


def test_eval_files_follow_the_same_rule(tmp_path):
    from vist2.jsonl_files import file_in

    root = tmp_path / "bench"
    root.mkdir()
    (root / "task.jsonl").symlink_to(outside_file(tmp_path, "task.jsonl"))
    with pytest.raises(Vist2Error, match=r"task\.jsonl: resolves to .*, outside the data folder .*bench$"):
        file_in(root, "task.jsonl")
    os.mkfifo(root / "pipe.jsonl")
    with pytest.raises(Vist2Error, match="not a regular file"):
        file_in(root, "pipe.jsonl")

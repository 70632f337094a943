"""Bad files and refused writes are named errors (exit 2, one line, no traceback), not "internal
error": a checkpoint's config.json, a tokenizer larger than the model, damaged data files, a FIFO
as --data, a full or read-only disk, leftovers of a killed prepare, and torchrun's extra ranks."""

import errno
import json
import os
from pathlib import Path

import pytest

from test_prepare import corpus
from test_train import train_command
from vist2.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def one_line_error(capsys, code: int, message: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "internal error" not in err and "Traceback" not in err


def test_a_tokenizer_larger_than_the_models_vocabulary(tiny, tmp_path, capsys):
    model, _ = tiny
    model.save_pretrained(tmp_path / "ckpt")  # no tokenizer files: config.json names one
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["tokenizer"] = "qwen3"
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    one_line_error(capsys, main(["generate", "--model", str(tmp_path / "ckpt"), "--prompt", "hi"]),
                   f"the tokenizer 'qwen3' named by {tmp_path / 'ckpt'}/config.json has 151669 tokens but the model "
                   "embeds only 272")


def test_layout_png_needs_a_png_name(tmp_path, capsys):
    one_line_error(capsys, main(["layout", "--png", str(tmp_path / "m.xyz")]), "the file name must end in .png")
    assert not (tmp_path / "m.xyz").exists()


def damaged_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    from datasets import Dataset

    os.mkfifo(tmp_path / "pipe.txt")
    saved = tmp_path / "saved"
    Dataset.from_dict({"text": ["some text " * 40] * 4}).save_to_disk(str(saved))
    (saved / "dataset_info.json").write_text('{"citation": ')
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + bytes(50) + b"PAR1")
    return {"fifo": (tmp_path / "pipe.txt", "pipe.txt: not a regular file"),
            "dataset_info": (saved, f"cannot read {saved}"),
            "parquet": (tmp_path / "bad.parquet", f"cannot read {tmp_path / 'bad.parquet'}")}


@pytest.mark.parametrize("case", ["fifo", "dataset_info", "parquet"])
def test_damaged_or_special_data_files_given_to_train_and_prepare(case, tmp_path, capsys):
    path, message = damaged_inputs(tmp_path)[case]
    capsys.readouterr()  # datasets' progress bar
    one_line_error(capsys, main(train_command(path, tmp_path / "run", "--max-steps", "1")), message)
    one_line_error(capsys, main(["prepare", "--data", str(path), "--output", str(tmp_path / "p"), "--tokenizer",
                                 "bytes", "--quiet"]), message)
    assert not (tmp_path / "p").exists()


def refuse(number: int):
    def write(*args, **kwargs):
        raise OSError(number, os.strerror(number))
    return write


@pytest.mark.parametrize("number, hint", [(errno.ENOSPC, "no space left on device"),
                                          (errno.EROFS, "read-only file system")])
def test_a_full_or_read_only_disk_is_the_users_to_fix(number, hint, tmp_path, capsys, monkeypatch):
    import vist2.train.prepare as prepare_module

    data = corpus(tmp_path / "corpus")
    monkeypatch.setattr(prepare_module._ShardWriter, "write", refuse(number))
    one_line_error(capsys, main(["prepare", "--data", str(data), "--output", str(tmp_path / "p"), "--tokenizer",
                                 "bytes", "--quiet"]), f"{hint} ({tmp_path / 'p'}); ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # its temporary folder went with it


def test_a_checkpoint_save_on_a_full_disk_names_the_folder(tmp_path, capsys, monkeypatch):
    """torch.save says only "unexpected pos" on a full disk: a probe write names the cause."""
    def opaque(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr("accelerate.Accelerator.save_state", opaque)
    monkeypatch.setattr(os, "fsync", refuse(errno.ENOSPC))  # the probe write meets a full disk
    data = corpus(tmp_path / "corpus")
    one_line_error(capsys, main(train_command(data, tmp_path / "run", "--max-steps", "1")),
                   "no space left on device (" + str(tmp_path / "run" / "checkpoints" / ".tmp-step-00000001"))


def test_a_killed_prepare_leaves_nothing_for_ever(tmp_path, capsys):
    from vist2.train.tokens import OWNER

    data = corpus(tmp_path / "corpus")
    killed = tmp_path / ".p.vist2-prepare-999999999.tmp"  # no process has this id
    killed.mkdir()
    (killed / OWNER).write_text("in progress: vist2 prepare ...\n")
    (killed / "tokens-00000.bin").write_bytes(bytes(64))
    foreign = tmp_path / ".p.vist2-prepare-999999998.tmp"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    running = tmp_path / f".p.vist2-prepare-{os.getppid()}.tmp"  # a live process's: left alone
    running.mkdir()
    (running / OWNER).write_text("in progress")
    assert main(["prepare", "--data", str(data), "--output", str(tmp_path / "p"), "--tokenizer", "bytes",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert not killed.exists() and f"removed {killed}" in err
    assert (foreign / "mine.txt").read_text() == "keep me" and f"note: {foreign}" in err
    assert (running / OWNER).exists()


def test_under_torchrun_only_rank_0_prints_a_user_error(tmp_path, capsys, monkeypatch):
    command = train_command(tmp_path / "missing", tmp_path / "run", "--max-steps", "1")
    monkeypatch.setenv("RANK", "1")
    assert main(command) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    one_line_error(capsys, main(command), "does not exist")


"""Every command's bad input: exit 2, one line on stderr naming the flag, no traceback, no work done."""

import os
import subprocess
import sys

import pytest

from vist2.cli import main

# {tmp} is a folder holding: a.txt (text), data/ (a folder), taken.png (a file the user owns)
CASES = {
    "render": [["render", "x", "-o", "{tmp}/p.png", "--width", "0"],
               ["render", "x", "-o", "{tmp}/p.png", "--height", "99999"],
               ["render", "x", "-o", "{tmp}/p.png", "--width", "nan"],
               ["render", "x", "-o", "{tmp}/p.png", "--font-index", "-1"],
               ["render", "x", "-o", "{tmp}/p.png", "--line-height", "0"],
               ["render", "--file", "{tmp}/data", "-o", "{tmp}/p.png"],
               ["render", "x", "-o", "{tmp}/taken.png"],
               ["render", "x", "-o", "{tmp}/data", "--overwrite"],
               ["render", "x", "-o", "{tmp}/nofolder/p.png"],
               ["render", "x", "-o", "{tmp}/p.png", "--font", "{tmp}/a.txt"]],
    "generate": [["generate", "--preset", "tiny", "--prompt", "hi", "--temperature", "nan"],
                 ["generate", "--preset", "tiny", "--prompt", "hi", "--top-p", "inf"],
                 ["generate", "--preset", "tiny", "--prompt", "hi", "--top-p", "0"],
                 ["generate", "--preset", "tiny", "--prompt", "hi", "--max-new-tokens", "0"],
                 ["generate", "--preset", "tiny", "--prompt", "hi", "--top-k", "-1"],
                 ["generate", "--preset", "tiny", "--prompt", "hi", "--repetition-penalty=-inf"],
                 ["generate", "--preset", "tiny", "--prompt", "hi", "--no-repeat-ngram-size", "-2"],
                 ["generate", "--preset", "tiny", "--prompt", "hi", "--seed", "-1"],
                 ["generate", "--preset", "tiny", "--prompt", "hi", "--mode", "fast"],
                 ["generate", "--preset", "tiny", "--prompt", "hi", "--device", "nodevice"],
                 ["generate", "--preset", "tiny", "--prompt-file", "{tmp}/data"],
                 ["generate", "--preset", "nosuchpreset", "--prompt", "hi"],
                 ["generate", "--preset", "tiny", "--prompt", "hi", "--chunking", "adaptive"],
                 ["generate", "--preset", "tiny", "--prompt", "hi", "--min-font-size", "-3"],
                 ["generate", "--preset", "tiny", "--prompt", "hi", "--max-chunk-tokens", "0"],
                 ["generate", "--preset", "tiny", "--prompt", "hi", "--stop", ""],
                 ["generate", "--model", "{tmp}/none", "--prompt", "hi"]],
    "verify": [["verify", "--preset", "tiny", "--tolerance", "nan"],
               ["verify", "--preset", "tiny", "--tolerance", "-1"],
               ["verify", "--preset", "tiny", "--chunk-tokens", "0"]],
    "layout": [["layout", "--tokens", "0"], ["layout", "--tokens", "99999"], ["layout", "-K", "0"],
               ["layout", "--query-tokens", "-1"], ["layout", "--png", "{tmp}/taken.png"],
               ["layout", "--png", "{tmp}/nofolder/m.png"], ["layout", "-b", "0"]],
    "bench": [["bench", "--scale", "nan"], ["bench", "--scale", "0"], ["bench", "--repeats", "0"],
              ["bench", "--lengths", "1,x"], ["bench", "--lengths", "0"], ["bench", "--lengths", "99999999999"],
              ["bench", "--scale", "1e300"], ["bench", "--page", "0x8"],
              ["bench", "--threads", "0"], ["bench", "--count-limit", "-1"], ["bench", "--chunk-tokens", "0"],
              ["bench", "--max-positions", "0"], ["bench", "--out", "{tmp}/a.txt"],
              ["bench", "--paper-sizes", "nosuch"], ["bench", "--scenario", "nosuch"],
              ["bench", "--no-measure", "--paper-sizes", "vist2-0.6b", "--out", "{tmp}", "--name", "taken"]],
    "quickstart": [["quickstart", "--minutes", "nan"], ["quickstart", "--minutes", "inf"],
                   ["quickstart", "--minutes", "0"], ["quickstart", "--steps", "-1"],
                   ["quickstart", "--eval-chunks", "0"], ["quickstart", "--threads", "0"],
                   ["quickstart", "--output", "{tmp}", "--steps", "1"], ["quickstart", "--output", "{tmp}/a.txt"]],
    "prepare": [["prepare", "--data", "{tmp}/a.txt", "--output", "{tmp}/p", "--preset", "tiny", "--batch-mb", "nan"],
                ["prepare", "--data", "{tmp}/a.txt", "--output", "{tmp}/p", "--preset", "tiny", "--batch-mb", "0"],
                ["prepare", "--data", "{tmp}/a.txt", "--output", "{tmp}/p", "--preset", "tiny", "--threads", "-1"],
                ["prepare", "--data", "{tmp}/none", "--output", "{tmp}/p", "--preset", "tiny"],
                ["prepare", "--data", "{tmp}/a.txt", "--output", "{tmp}/p", "--preset", "tiny", "--threads", "99999"],
                ["prepare", "--data", "{tmp}/a.txt", "--output", "{tmp}/data", "--preset", "tiny"]],
    "train": [["train", "--stage", "ocr", "--data", "{tmp}/data", "--output", "{tmp}/t", "--preset", "tiny",
               *flag] for flag in (["--lr", "nan"], ["--lr", "-1"], ["--max-steps", "-1"], ["--max-minutes", "inf"],
                                   ["--batch-size", "-1"], ["--weight-decay", "nan"], ["--warmup-ratio", "2"],
                                   ["--epochs", "0"], ["--grad-clip", "nan"], ["--save-every", "-1"],
                                   ["--seed", "-1"], ["--max-length", "-1"], ["--num-workers", "-1"],
                                   ["--curriculum", "nan", "1"], ["--ocr-replay", "inf"], ["--page-tokens", "-1"],
                                   ["--keep-checkpoints", "-1"], ["--log-every", "0"], ["--stage", "nosuch"],
                                   ["--micro-batch-size", "0"], ["--config", "{tmp}/data"],
                                   ["--config", "/dev/zero"], ["--config", "{tmp}/a.txt"])],
    "eval": [["eval", bench, "--preset", "tiny", "--out", "{tmp}/e", *flags]
             for bench, flags in (("ruler", ["--lengths", "0"]), ("ruler", ["--lengths", "x"]), ("ruler", ["--lengths", "1024,99999999999"]),
                                  ("ruler", ["--tasks", "nosuch"]), ("ruler", ["--temperature", "inf"]),
                                  ("ruler", ["--data-seed", "-1"]), ("ruler", ["--top-k", "-1"]),
                                  ("ruler", ["--no-repeat-ngram-size", "-1"]), ("ruler", ["--stop", ""]), ("ruler", ["--threads", "100000"]),
                                  ("longbench", ["--data", "{tmp}/none"]),
                                  ("longbench", ["--data", "{tmp}/data", "--tasks", "nosuch"]),
                                  ("longbench", ["--data", "{tmp}/data", "--max-prompt-tokens", "0"]),
                                  ("loogle", ["--data", "{tmp}/none"]), ("gsm8k", ["--data", "{tmp}/data"]),
                                  ("gsm8k", ["--data", "{tmp}/a.txt", "--samples", "0"]),
                                  ("ocr", ["--data", "{tmp}/a.txt", "--samples", "0"]),
                                  ("ocr", ["--data", "{tmp}/a.txt", "--modes", "text"]),
                                  ("ocr", ["--data", "{tmp}/a.txt", "--chunk-tokens", "-1"]),
                                  ("ocr", ["--data", "{tmp}/none.txt"]))]
            + [["eval", "score", "--benchmark", "longbench", "--task", "nosuch", "--predictions", "{tmp}/a.txt"],
               ["eval", "score", "--benchmark", "longbench", "--task", "trec", "--predictions", "{tmp}/data"]],
}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("some text\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "taken.png").write_text("the user's own file")
    (tmp_path / "taken.json").write_text("the user's own file")
    for target in ("vist2.generate.load_model", "vist2.model.Vist2Model.__init__", "vist2.train.train",
                   "vist2.quickstart.quickstart_config", "vist2.train.prepare.prepare", "vist2.bench.run.bench"):
        monkeypatch.setattr(target, lambda *a, _name=target, **k: pytest.fail(f"did work: {_name}"))
    return tmp_path


@pytest.mark.parametrize("argv", [case for cases in CASES.values() for case in cases], ids=" ".join)
def test_bad_input_exits_2_with_one_line(argv, folder, capsys):
    try:
        code = main([part.replace("{tmp}", str(folder)) for part in argv])
    except SystemExit as done:  # argparse's own errors (a real process exits with this status)
        code = done.code
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "Traceback" not in error, error
    assert error.startswith("vist2 ") and "error:" in error
    assert (folder / "taken.png").read_text() == "the user's own file"


@pytest.mark.parametrize("argv", [["render", "x", "--width", "inf", "-o", "p.png"], ["eval", "ruler", "--samples", "x"]])
def test_argument_errors_are_one_line_in_a_real_process(argv, tmp_path):
    done = subprocess.run([sys.executable, "-m", "vist2", *argv], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "--help" in done.stderr


def test_train_refuses_an_output_folder_holding_files_it_did_not_write(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("some words to train on. " * 400)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "losses.json").write_text("the user's own file")
    code = main(["train", "--stage", "ocr", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run"),
                 "--preset", "tiny", "--max-steps", "1", "--no-progress-bar"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "losses.json not written by vist2 train" in error
    assert (tmp_path / "run" / "losses.json").read_text() == "the user's own file"

"""Training never loses the user's files: bad flags stop before work, only vist2's own
temporary folders are removed, final/ is never overwritten, one run per output folder,
and --resume passes over a damaged newest checkpoint."""

import json
from pathlib import Path

import pytest

from test_train import corpus, train_command
from vist2.cli import main
from vist2.train import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("flags, message", [
    (["--keep-checkpoints", "-1"], "keep_checkpoints must be >= 1"),
    (["--keep-checkpoints", "0"], "keep_checkpoints must be >= 1"),
    (["--log-every", "0"], "log_every must be >= 1"),
    (["--lr", "-1"], "lr must be >= 0"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--grad-clip", "inf"], "grad_clip must be a finite number"),
    (["--num-workers", "-1"], "num_workers must be >= 0"),
    (["--max-steps", "-1"], "max_steps must be >= 0"),
    (["--warmup-ratio", "2"], "warmup_ratio must be in [0, 1]"),
    (["--seed", str(2**70)], "seed must be in [0, 2**32)"),
    (["--curriculum", "0.9", "0.1"], "curriculum must be two fractions"),
    (["--max-minutes", "nan"], "max_minutes must be a finite number"),
])
def test_bad_flags_exit_2_with_one_line_before_any_work(flags, message, tmp_path, capsys):
    output = tmp_path / "run"
    assert main(train_command(tmp_path / "missing-data", output, *flags)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not output.exists()


@pytest.mark.parametrize("field, value, message", [
    ("max_steps", "3", "max_steps must be of type int"),
    ("lr", True, "lr must be of type float"),
    ("data", [1], "data must be of type tuple[str, ...]"),
    ("preset", 7, "preset must be of type str | None"),
])
def test_config_file_fields_of_the_wrong_type(field, value, message, tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"stage": "ocr", "data": ["x"], "output": "o", "preset": "tiny", field: value}))
    assert main(["train", "--config", str(config)]) == 2
    assert message in capsys.readouterr().err


def test_every_train_flag_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    flags = [line.split()[0] for line in out.splitlines() if line.startswith("  --")]
    import argparse

    from vist2.train.config import add_arguments
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert all(action.help for action in parser._actions), "a train flag has no help"
    assert len(flags) > 25


def test_only_marked_temporaries_are_removed_and_final_is_never_overwritten(tmp_path, capsys):
    data, run = corpus(tmp_path / "corpus"), tmp_path / "run"
    (run / "checkpoints" / ".tmp-step-00000001").mkdir(parents=True)  # the user's, by name alone
    (run / ".tmp-notes").mkdir()
    (run / ".tmp-notes" / "mine.txt").write_text("keep me")
    stale = ckpt.make_temporary(run / "checkpoints" / "step-00000009")  # a killed run's leftover
    with pytest.raises(Exception, match="was not made by vist2"):
        ckpt.make_temporary(run / "checkpoints" / "step-00000001")
    ckpt.remove_stale_temporaries(run)
    assert not stale.exists()
    assert (run / ".tmp-notes" / "mine.txt").read_text() == "keep me"
    assert (run / "checkpoints" / ".tmp-step-00000001").is_dir()

    (run / "checkpoints" / ".tmp-step-00000001").rmdir()
    assert main(train_command(data, run, "--max-steps", "1")) == 0
    weights = (run / "final" / "model.safetensors").read_bytes()
    for path in (run / "checkpoints").iterdir():  # the user removed checkpoints/ content
        import shutil
        shutil.rmtree(path)
    capsys.readouterr()
    for extra in ([], ["--resume"]):
        assert main(train_command(data, run, "--max-steps", "1", *extra)) == 2
        assert "already holds a finished model" in capsys.readouterr().err
    assert (run / "final" / "model.safetensors").read_bytes() == weights
    assert (run / ".tmp-notes" / "mine.txt").read_text() == "keep me"


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    first = ckpt.lock(run)
    assert main(train_command(corpus(tmp_path / "corpus"), run, "--max-steps", "1")) == 2
    assert f"is in use by another run (pid {__import__('os').getpid()})" in capsys.readouterr().err
    first.close()  # the first run ends (or crashes): the lock goes with it
    again = ckpt.lock(run)
    again.close()


@pytest.mark.parametrize("damaged", ["config.json", "model.safetensors"])
def test_resume_passes_over_a_damaged_newest_checkpoint(damaged, tmp_path, capsys):
    data, run = corpus(tmp_path / "corpus"), tmp_path / "run"
    steps = ["--max-steps", "2", "--save-every", "1", "--keep-checkpoints", "3"]
    assert main(train_command(data, run, "--max-steps", "2", "--save-every", "1", "--keep-checkpoints", "3")) == 0
    newest = run / "checkpoints" / "step-00000002"
    path = newest / "model" / damaged
    path.write_bytes(path.read_bytes()[:100])
    capsys.readouterr()
    assert main(train_command(data, run, *steps, "--resume")) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is damaged" in err and "resuming from" in err and "step-00000001" in err
    assert len(json.loads((run / "losses.json").read_text())) == 2  # the first run's schedule, redone from 1
    assert json.loads((newest / "model" / "config.json").read_text())["format"] == "vist2"
    assert main(train_command(data, run, *steps, "--resume", "--stage", "olm")) == 2
    assert "is from stage 'ocr', this run is 'olm'" in capsys.readouterr().err


def test_resume_without_checkpoints_says_it_starts_over(tmp_path, capsys):
    data = corpus(tmp_path / "corpus")
    assert main(train_command(data, tmp_path / "run", "--max-steps", "1", "--resume")) == 0
    assert "no checkpoint in" in capsys.readouterr().err


def test_interrupt_and_internal_errors_are_one_line_unless_debug(tmp_path, capsys, monkeypatch):
    import vist2.train

    def boom(config):
        raise RuntimeError("a bug")
    monkeypatch.setattr(vist2.train, "train", boom)
    command = train_command(corpus(tmp_path / "corpus"), tmp_path / "run")
    assert main(command) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: a bug" in err and "Traceback" not in err
    assert main([*command, "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err

    def interrupted(config):
        raise KeyboardInterrupt
    monkeypatch.setattr(vist2.train, "train", interrupted)
    assert main(command) == 130
    assert capsys.readouterr().err.strip() == "vist2 train: interrupted"


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_a_users_folder_named_like_a_checkpoint_is_never_removed(resume, tmp_path, capsys):
    data, run = corpus(tmp_path / "corpus"), tmp_path / "run"
    mine = run / "checkpoints" / "step-00000001"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    assert main(train_command(data, run, "--max-steps", "1", *resume)) == 2
    err = capsys.readouterr().err
    assert "holds step-00000001 not written by vist2 (no progress.json)" in err and err.count("\n") == 1
    assert (mine / "notes.txt").read_text() == "my notes" and not (run / "final").exists()
    with pytest.raises(Exception, match="was not written by vist2"):  # publish refuses it too
        ckpt.publish(ckpt.make_temporary(mine), mine)
    assert (mine / "notes.txt").read_text() == "my notes"


def test_resume_with_more_steps_continues_to_the_new_total_and_says_so(tmp_path, capsys):
    data, run = corpus(tmp_path / "corpus"), tmp_path / "run"
    assert main(train_command(data, run, "--max-steps", "2", "--save-every", "1")) == 0
    capsys.readouterr()
    assert main(train_command(data, run, "--max-steps", "3", "--save-every", "1", "--resume")) == 0
    captured = capsys.readouterr()
    assert "resuming at step 2 of a 2-step run and continuing to 3 steps" in captured.err
    assert "trained 3 steps" in captured.out
    assert len(json.loads((run / "losses.json").read_text())) == 3
    progress = json.loads((run / "checkpoints" / "step-00000003" / "progress.json").read_text())
    assert progress["step"] == 3 and progress["schedule_steps"] == 3
    assert main(train_command(data, run, "--max-steps", "2", "--resume")) == 2
    err = capsys.readouterr().err
    assert "is at step 3 and this run asks for 2 steps in all" in err and err.count("\n") == 1


@pytest.mark.parametrize("damage", ["empty", "truncated", "missing"])
def test_resume_passes_over_a_newest_checkpoint_whose_optimizer_state_is_damaged(damage, tmp_path, capsys):
    data, run = corpus(tmp_path / "corpus"), tmp_path / "run"
    steps = ["--max-steps", "2", "--save-every", "1", "--keep-checkpoints", "3"]
    assert main(train_command(data, run, *steps)) == 0
    optimizer = run / "checkpoints" / "step-00000002" / "state" / "optimizer.bin"
    whole = optimizer.read_bytes()
    if damage == "missing":
        optimizer.unlink()
    else:
        optimizer.write_bytes(b"" if damage == "empty" else whole[: len(whole) // 2])
    capsys.readouterr()
    assert main(train_command(data, run, *steps, "--resume")) == 0
    err = capsys.readouterr().err
    assert "step-00000002 is damaged (state/optimizer.bin is missing, empty or truncated" in err
    assert "resuming from" in err and "step-00000001, the newest checkpoint that reads back" in err
    assert json.loads((run / "checkpoints" / "step-00000002" / "progress.json").read_text())["step"] == 2
    assert (run / "checkpoints" / "step-00000002" / "state" / "optimizer.bin").stat().st_size > 0  # step 2 redone

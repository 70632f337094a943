"""The generic eval runner on the tiny preset with a fake benchmark: files, rows, flag checks."""

import argparse
import json
import re
import types
from pathlib import Path
from dataclasses import replace

import pytest

from vist2.cli import main
from vist2.errors import Vist2Error
from vist2.eval import rows as rows_of
from vist2.eval import runner
from vist2.eval.command import add_common_arguments
from vist2.eval.sample import EvalSample, Row
from vist2.presets import preset


def _fake_benchmark():
    def load_samples(args, tokenizer):
        return [EvalSample(id=f"s{i}", task=task, query=f"say {task} {i} " * (length // 8),
                           references=("a",), max_new_tokens=3, length=length)
                for task, length in (("alpha", 16), ("beta", 64)) for i in range(args.samples)]

    def score(sample, prediction):
        return {"score": 100.0 if sample.id == "s0" else 0.0, "chars": float(len(prediction))}

    return types.SimpleNamespace(NAME="fake", add_arguments=lambda parser: None,
                                 load_samples=load_samples, score=score)


def _args(tmp_path, *flags):
    parser = argparse.ArgumentParser()
    add_common_arguments(parser, "fake")
    args = parser.parse_args(["--preset", "tiny", "--out", str(tmp_path / "out"), "--no-progress-bar", *flags])
    args.command_line = "test"
    return args


def _claim(args, module):
    """The folder check of a run, under its lock (released at once)."""
    held, earlier = runner.claim(Path(args.out), args, module)
    held.close()
    return earlier


def test_runner_writes_rows_predictions_and_plot(tmp_path, one_thread, capsys):
    rows = runner.run(_args(tmp_path, "--samples", "2", "--modes", "gcc,text", "--batch-size", "2"), _fake_benchmark())
    out = tmp_path / "out"
    result = json.loads((out / "results.json").read_text())
    assert set(result) >= {"model", "command", "versions", "rows"} and result["versions"]["torch"]
    assert len(rows) == len(result["rows"]) == 2 * 2 + 2  # (task, length) x mode, text before gcc; a mean per mode
    first, second = result["rows"][:2]
    assert (first["task"], first["length"], first["mode"], first["ratio"]) == ("alpha", 16, "text", None)
    K, beta = preset("tiny").chunk.chunk_tokens, preset("tiny").visual_tokens
    assert (second["task"], second["mode"], second["ratio"]) == ("alpha", "gcc", K / beta)
    assert first["n"] == 2 and first["score"] == 50.0  # s0 scores 100, s1 scores 0
    assert first["stderr"] == pytest.approx(50.0)  # s = sqrt((50^2 + 50^2) / 1) = 70.71, / sqrt(2)
    assert first["max_new_tokens"] == first["benchmark_max_new_tokens"] == 3  # the sample's budget by default
    means = [r for r in result["rows"] if r["aggregate"]]
    assert [(r["task"], r["length"], r["mode"], r["n"]) for r in means] == [("mean", None, "text", 4),
                                                                          ("mean", None, "gcc", 4)]
    assert means[0]["score"] == 50.0 and means[0]["stderr"] == pytest.approx(50 * 2**0.5 / 2)
    assert "chars" in first and first["kv_tokens_peak_mean"] > 0 and first["kv_tokens_full_text_mean"] > 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 2 * 2
    assert {"id", "task", "length", "mode", "prediction", "references", "scores", "stats"} <= set(records[0])
    assert {r["finish_reason"] for r in records} <= {"stop", "length"}
    assert (out / "results.png").stat().st_size > 0
    assert "alpha" in capsys.readouterr().out


def test_runner_never_replaces_files_it_did_not_write(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "results.json").write_text("an earlier run")
    with pytest.raises(Vist2Error, match="--overwrite"):
        _claim(_args(tmp_path), _fake_benchmark())
    _claim(_args(tmp_path, "--overwrite"), _fake_benchmark())
    (tmp_path / "file").write_text("x")
    with pytest.raises(Vist2Error, match="not a folder"):
        _claim(_args(tmp_path, "--out", str(tmp_path / "file")), _fake_benchmark())
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("flags", [["--temperature", "nan"], ["--top-p", "inf"], ["--samples", "0"],
                                   ["--batch-size", "-1"], ["--modes", "text,ocr"], ["--max-new-tokens", "0"],
                                   ["--threads", "0"], ["--repetition-penalty=-inf"]])
def test_bad_flags_exit_2_before_loading(tmp_path, flags, capsys, monkeypatch):
    monkeypatch.setattr("vist2.generate.load_model", lambda *a: pytest.fail("loaded a model"))
    data = tmp_path / "gsm.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    code = main(["eval", "gsm8k", "--preset", "tiny", "--data", str(data), "--out", str(tmp_path / "o"), *flags])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "--" in error
    assert not (tmp_path / "o").exists()


def _rows(out):
    rows = json.loads((out / "results.json").read_text())["rows"]
    return [{k: v for k, v in row.items() if k != "time_to_first_token_s_mean"} for row in rows]


def test_interrupted_run_resumes_to_the_same_summary(tmp_path, one_thread, capsys):
    flags = ("--samples", "2", "--modes", "text,gcc")
    runner.run(_args(tmp_path / "whole", *flags), _fake_benchmark())
    benchmark, calls, limit = _fake_benchmark(), [], [3]
    score = benchmark.score

    def crash_after_limit(sample, prediction):
        calls.append(sample.id)
        if len(calls) > limit[0]:
            raise KeyboardInterrupt
        return score(sample, prediction)

    benchmark.score = crash_after_limit
    with pytest.raises(KeyboardInterrupt):
        runner.run(_args(tmp_path / "cut", *flags), benchmark)
    out = tmp_path / "cut" / "out"
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3 and not (out / "results.json").exists()
    with open(out / "predictions.jsonl", "a") as handle:
        handle.write('{"id": "s1", "ta')  # a write cut short by the crash
    limit[0], calls[:] = 99, []
    runner.run(_args(tmp_path / "cut", *flags), benchmark)
    assert len(calls) == 2 * 2 * 2 - 3  # only the missing predictions are generated
    assert "resuming: 3 of 8" in capsys.readouterr().err
    assert _rows(out) == _rows(tmp_path / "whole" / "out")
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 8


def test_resume_refuses_other_settings_and_foreign_files(tmp_path, one_thread):
    runner.run(_args(tmp_path, "--samples", "1", "--modes", "text", "--max-new-tokens", "2"), _fake_benchmark())
    with pytest.raises(Vist2Error, match="other settings .--samples"):
        _claim(_args(tmp_path, "--samples", "2", "--max-new-tokens", "2"), _fake_benchmark())
    _claim(_args(tmp_path, "--samples", "1", "--max-new-tokens", "2", "--modes", "gcc"),
                           _fake_benchmark())  # another mode of the same run: resumable
    (tmp_path / "out" / "run.json").unlink()
    with pytest.raises(Vist2Error, match="without run.json; pass --overwrite"):
        _claim(_args(tmp_path, "--samples", "1", "--max-new-tokens", "2"), _fake_benchmark())


def test_samples_without_chat_template_get_the_bare_query(tiny, tmp_path, one_thread):
    from vist2.prompt import build_prompt, chat_parts

    model, tokenizer = tiny
    user, assistant, _ = chat_parts(tokenizer)
    ids = tokenizer.encode("Type: abbreviation. Question: What is NASA? " * 4, add_special_tokens=False)
    K, beta = model.config.chunk.chunk_tokens, model.config.visual_tokens
    assert build_prompt(tokenizer, ids, "text", K, beta, chat_template=False).segments == (("text", ids),)
    bare, chat = (build_prompt(tokenizer, ids, "gcc", K, beta, chat_template=c) for c in (False, True))
    assert bare.positions == chat.positions - len(user) - len(assistant) and bare.pages == chat.pages
    benchmark = _fake_benchmark()
    plain = benchmark.load_samples

    def load_samples(args, tokenizer):  # beta's samples are like LongBench's trec: no template
        return [EvalSample(**{**vars(s), "extra": {"chat_template": s.task == "alpha"}}) for s in plain(args, tokenizer)]

    benchmark.load_samples = load_samples
    rows = runner.run(_args(tmp_path, "--samples", "1", "--modes", "text", "--batch-size", "2", "--ignore-eos",
                            "--max-new-tokens", "3"), benchmark)
    queries = {s.task: s.query for s in plain(types.SimpleNamespace(samples=1), tokenizer)}
    tokens = {t: len(tokenizer.encode(q, add_special_tokens=False)) for t, q in queries.items()}
    full = {row.task: row.kv_tokens_full_text_mean for row in rows if row.aggregate is None}
    assert full == {"alpha": tokens["alpha"] + len(user) + len(assistant) + 3, "beta": tokens["beta"] + 3}


def test_cli_rerun_resumes_and_other_settings_exit_2(tmp_path, one_thread, capsys):
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(2)))
    argv = ["eval", "gsm8k", "--preset", "tiny", "--data", str(data), "--out", str(tmp_path / "o"), "--modes", "text",
            "--max-new-tokens", "2", "--no-progress-bar"]
    assert main([*argv, "--samples", "2"]) == 0
    first = (tmp_path / "o" / "results.json").read_text()
    capsys.readouterr()
    assert main([*argv, "--samples", "2"]) == 0
    assert "resuming: 2 of 2" in capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "results.json").read_text())["rows"][0]["score"] == \
        json.loads(first)["rows"][0]["score"]
    assert main([*argv, "--samples", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "other settings (--samples)" in error


def test_a_second_eval_into_a_folder_in_use_is_refused(tmp_path, one_thread, capsys):
    from vist2.folder_lock import hold

    data = tmp_path / "gsm.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    out = tmp_path / "o"
    out.mkdir()
    held = hold(out, "--out")  # as another eval process would (flock is per open file)
    argv = ["eval", "gsm8k", "--preset", "tiny", "--data", str(data), "--out", str(out), "--modes", "text",
            "--max-new-tokens", "2", "--no-progress-bar"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "in use by another run" in error and "--out" in error
    assert not (out / "predictions.jsonl").exists()
    held.close()
    assert main(argv) == 0


def test_resume_refuses_a_retrained_model(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    args = _args(tmp_path, "--samples", "1")
    args.preset, args.model = None, str(model)
    monkeypatch.setattr("vist2.flags.check_model_source", lambda args: None)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run.json").write_text(json.dumps(runner.run_folder.settings(args, _fake_benchmark())))
    _claim(args, _fake_benchmark())  # the same weights: resumable
    (model / "model.safetensors").write_bytes(b"retrained weights")
    with pytest.raises(Vist2Error, match="the --model weights changed"):
        _claim(args, _fake_benchmark())


def test_samples_sharing_a_key_are_refused_before_generating(tmp_path, one_thread, monkeypatch):
    benchmark = _fake_benchmark()
    plain = benchmark.load_samples
    benchmark.load_samples = lambda args, tokenizer: [replace(s, id="same") for s in plain(args, tokenizer)]
    monkeypatch.setattr("vist2.generate.generate", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(Vist2Error, match="two samples of task alpha have the id 'same'"):
        runner.run(_args(tmp_path, "--samples", "2", "--modes", "text"), benchmark)


def test_a_second_eval_is_refused_before_it_reads_or_writes_the_folder(tmp_path, one_thread, capsys, monkeypatch):
    from vist2.folder_lock import hold

    data = tmp_path / "gsm.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    out = tmp_path / "o"
    argv = ["eval", "gsm8k", "--preset", "tiny", "--data", str(data), "--out", str(out), "--modes", "text",
            "--no-progress-bar"]
    assert main([*argv, "--max-new-tokens", "2"]) == 0
    first = {name: (out / name).read_bytes() for name in runner.run_folder.OUTPUTS}
    held = hold(out, "--out")  # the first run, still writing
    monkeypatch.setattr("vist2.generate.load_model", lambda *a: pytest.fail("loaded a model"))
    for flags in (["--max-new-tokens", "3"], ["--max-new-tokens", "3", "--overwrite"]):  # other settings
        assert main([*argv, *flags]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "in use by another run" in error
    held.close()
    assert {name: (out / name).read_bytes() for name in runner.run_folder.OUTPUTS} == first


def _two_gsm8k_problems(tmp_path, modes: str):
    """A two-problem GSM8K file, the run folder and the eval command line (2-token answers)."""
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(2)))
    out = tmp_path / "o"
    return data, out, ["eval", "gsm8k", "--preset", "tiny", "--data", str(data), "--out", str(out), "--modes", modes,
                       "--max-new-tokens", "2", "--no-progress-bar"]


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("scores"), "field 'scores' is missing or not a dict"),
    (lambda r: r["scores"].update(score="high"), "field 'scores' must hold 'score' and only finite numbers"),
    (lambda r: r.update(length="long"), "field 'length' must be an integer or null"),
    (lambda r: r["stats"].pop("kv_tokens_peak"), "field 'stats' must hold finite numbers"),
    (lambda r: r["scores"].update(extra=1.0),
     r"scores \['extra', 'flexible', 'score'\] differ from line 1's \['flexible', 'score'\]"),
])
def test_a_damaged_record_to_resume_is_refused_before_loading(tmp_path, one_thread, capsys, monkeypatch, change,
                                                                message):
    data, out, argv = _two_gsm8k_problems(tmp_path, "text")
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    change(records[1])
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    capsys.readouterr()
    monkeypatch.setattr("vist2.generate.load_model", lambda *a: pytest.fail("loaded a model"))
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and re.search(f"predictions.jsonl, line 2: {message}", error)


def test_prompts_and_data_files_are_recorded_by_sha256(tmp_path, one_thread, capsys):
    import hashlib

    data, out, argv = _two_gsm8k_problems(tmp_path, "text,gcc")
    assert main(argv) == 0
    settings = json.loads((out / "run.json").read_text())
    assert settings["data"] == {str(data): hashlib.sha256(data.read_bytes()).hexdigest()}
    prompts = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 2 and all(p["sha256"] == hashlib.sha256(p["prompt"].encode()).hexdigest() for p in prompts)
    assert "Question: 0+1?" in prompts[0]["prompt"]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 4 and {r["prompt_sha256"] for r in records} == {p["sha256"] for p in prompts}
    data.write_text(data.read_text().replace("0+1?", "0+2?"))  # the same flags, other data: another run
    capsys.readouterr()
    assert main(argv) == 2
    assert "other settings (the data files changed)" in capsys.readouterr().err


def test_chunk_tokens_reach_the_engine_and_the_ratio_column(tmp_path, one_thread):
    runner.run(_args(tmp_path, "--samples", "1", "--modes", "gcc", "--chunk-tokens", "16"), _fake_benchmark())
    out = tmp_path / "out"
    beta = preset("tiny").visual_tokens  # the preset's K is 64: its ratio would be 64 / beta
    rows = [row for row in json.loads((out / "results.json").read_text())["rows"] if not row["aggregate"]]
    assert [row["ratio"] for row in rows] == [16 / beta] * 2
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    lengths = [n for record in records for n in record["stats"]["chunk_lengths"]]
    assert lengths and set(lengths) == {16}  # the query's compressed chunks were cut at K = 16


def _row(task, length, mode, score, stderr, n=4):
    return Row("x", task, length, mode, None, score, n, stderr=stderr)


def test_standard_errors_and_aggregates_by_hand():
    assert rows_of.standard_error([100.0, 100.0, 0.0, 0.0]) == pytest.approx(28.8675, abs=1e-4)  # sqrt(10000/3)/2
    assert rows_of.standard_error([25.0, 75.0]) == pytest.approx(25.0)  # sqrt(2 * 25^2 / 1) / sqrt(2)
    assert rows_of.standard_error([100.0]) is None
    rows = [_row("a", 1024, "text", 100.0, 0.0), _row("b", 1024, "text", 50.0, 30.0),
            _row("c", 1024, "text", 20.0, 40.0), _row("a", 2048, "text", 60.0, None),
            Row("x", "b", 2048, "text", None, None, 0, error="cannot generate")]
    means = rows_of.aggregates("x", rows)
    # per length: 1024 over three tasks (2048 has one scored task: no mean); per mode: every scored row
    assert [(m.length, m.aggregate, m.n) for m in means] == [(1024, "mean of 3 tasks", 12),
                                                              (None, "mean of 4 task-length rows", 16)]
    assert means[0].score == pytest.approx(170 / 3) and means[0].stderr == pytest.approx(50 / 3)  # sqrt(900+1600)/3
    assert means[1].score == pytest.approx(57.5) and means[1].stderr is None  # one row has no se
    table = rows_of.table(rows + means)
    assert "error: cannot generate" in table and "mean of 3 tasks" in table and "16.7" in table


def test_a_sample_the_benchmark_cannot_provide_is_an_error_row_and_the_others_are_scored(tmp_path, one_thread,
                                                                                         capsys):
    benchmark = _fake_benchmark()
    plain = benchmark.load_samples

    def load_samples(args, tokenizer):
        return plain(args, tokenizer) + [EvalSample(id="gamma-error", task="gamma", query="", references=(),
                                                    max_new_tokens=3, length=32, extra={"error": "too short"})]

    benchmark.load_samples = load_samples
    rows = runner.run(_args(tmp_path, "--samples", "2", "--modes", "text", "--max-new-tokens", "2"), benchmark)
    by_task = {r.task: r for r in rows if r.aggregate is None}
    assert by_task["gamma"].error == "too short" and by_task["gamma"].score is None and by_task["gamma"].n == 0
    assert by_task["alpha"].score == 50.0 and by_task["beta"].n == 2
    captured = capsys.readouterr()
    printed = captured.out
    assert "error: too short" in printed and "resuming" not in captured.err  # an error row is no prediction
    assert "answers capped at 2 tokens, the benchmark allows 3" in printed  # --max-new-tokens below the budget
    records = (tmp_path / "out" / "predictions.jsonl").read_text()
    assert "gamma" not in records and '"max_new_tokens": 2, "benchmark_max_new_tokens": 3' in records
    assert (tmp_path / "out" / "results.png").stat().st_size > 0

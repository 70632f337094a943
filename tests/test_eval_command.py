"""`vist2 eval` end to end for the benchmarks wired into the command: longbench, loogle, ocr, score."""

import json

import pytest

from vist2.cli import main


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _rows(out):
    return json.loads((out / "results.json").read_text())["rows"]


def test_longbench_runs_in_text_and_gcc(tmp_path, one_thread):
    record = {"input": "Who wrote the book?", "context": "The book was written by Ann. " * 30, "answers": ["Ann"],
              "length": 180, "dataset": "hotpotqa", "language": "en", "all_classes": None, "_id": "a"}
    _jsonl(tmp_path / "hotpotqa.jsonl", [record])
    out = tmp_path / "out"
    assert main(["eval", "longbench", "--preset", "tiny", "--data", str(tmp_path), "--tasks", "hotpotqa",
                 "--modes", "text,gcc", "--max-new-tokens", "3", "--out", str(out), "--no-progress-bar"]) == 0
    rows = _rows(out)
    assert [(r["task"], r["mode"], r["n"]) for r in rows] == [("hotpotqa", "text", 1), ("hotpotqa", "gcc", 1)]
    gcc = rows[1]
    assert gcc["ratio"] == 4 and gcc["kv_tokens_peak_mean"] < gcc["kv_tokens_full_text_mean"]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2


def test_loogle_runs(tmp_path, one_thread):
    doc = {"input": "Picardo was a painter. " * 20, "title": "Picardo", "output": "none",
           "qa_pairs": "[{'Q': 'What was Picardo?', 'A': 'a painter', 'S': ['Picardo was a painter.']}]"}
    _jsonl(tmp_path / "shortdep_qa.jsonl", [doc])
    out = tmp_path / "out"
    assert main(["eval", "loogle", "--preset", "tiny", "--data", str(tmp_path), "--tasks", "shortdep_qa",
                 "--modes", "pcc", "--max-new-tokens", "3", "--out", str(out), "--no-progress-bar"]) == 0
    assert [(r["task"], r["mode"]) for r in _rows(out)] == [("shortdep_qa", "pcc")]


def test_loogle_cloze_rows_pool_masks_over_questions(tmp_path, one_thread, fixed_predictions):
    pairs = [{"Q": "<mask-0> lives in <mask-1>.", "A": {"<mask-0>": "John Smith", "<mask-1>": "London"}},
             {"Q": "He moved to <mask-0>.", "A": {"<mask-0>": "Paris"}}]
    _jsonl(tmp_path / "shortdep_cloze.jsonl", [{"input": "John Smith of London went to Paris. " * 5, "title": "J",
                                                "output": "none", "qa_pairs": str(pairs)}])
    fixed_predictions({"lives in": "{'<mask-0>': 'John', '<mask-1>': 'London'}", "moved to": "{'<mask-0>': 'Paris'}"})
    out = tmp_path / "out"
    assert main(["eval", "loogle", "--preset", "tiny", "--data", str(tmp_path), "--tasks", "shortdep_cloze",
                 "--modes", "text", "--max-new-tokens", "2", "--out", str(out), "--no-progress-bar"]) == 0
    (row,) = _rows(out)
    assert row["n"] == 2 and row["score"] == pytest.approx(200 / 3) and row["partial_match"] == 100.0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["scores"]["score"] for r in records) == [50.0, 100.0]  # per question; the mean would be 75


def test_ocr_runs(tmp_path, one_thread):
    (tmp_path / "held.txt").write_text("Reading text back from its page. " * 40)
    out = tmp_path / "out"
    assert main(["eval", "ocr", "--preset", "tiny", "--data", str(tmp_path / "held.txt"), "--samples", "2",
                 "--out", str(out), "--no-progress-bar"]) == 0
    (row,) = _rows(out)
    assert row["benchmark"] == "ocr" and row["n"] == 2 and 0 <= row["score"] <= 100


def test_score_prints_longbench_score(tmp_path, capsys):
    lines = [{"pred": "Ann", "answers": ["Ann"], "all_classes": None, "length": 10},
             {"pred": "Bob", "answers": ["Ann"], "all_classes": None, "length": 10}]
    path = _jsonl(tmp_path / "hotpotqa.jsonl", lines)
    assert main(["eval", "score", "--benchmark", "longbench", "--task", "hotpotqa", "--predictions", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == {"score": 50.0}
    assert main(["eval", "score", "--benchmark", "longbench", "--task", "nope", "--predictions", str(path)]) == 2


def test_debug_flag_reaches_eval_benchmarks(tmp_path, capsys):
    missing = str(tmp_path / "missing.jsonl")
    assert main(["eval", "score", "--benchmark", "longbench", "--task", "hotpotqa", "--predictions", missing,
                 "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("benchmark", ["longbench", "loogle", "gsm8k"])
def test_samples_is_honoured(tmp_path, one_thread, benchmark):
    if benchmark == "longbench":
        _jsonl(tmp_path / "hotpotqa.jsonl", [{"input": f"Q{i}?", "context": "Ann wrote it.", "answers": ["Ann"],
                                              "length": 3, "all_classes": None, "_id": f"a{i}"} for i in range(3)])
        data = ["--data", str(tmp_path), "--tasks", "hotpotqa"]
    elif benchmark == "loogle":
        pairs = [{"Q": f"Question {i}?", "A": "Ann"} for i in range(3)]
        _jsonl(tmp_path / "shortdep_qa.jsonl", [{"input": "Ann wrote it.", "title": "T", "qa_pairs": str(pairs)}])
        data = ["--data", str(tmp_path), "--tasks", "shortdep_qa"]
    else:
        data = ["--data", str(_jsonl(tmp_path / "gsm.jsonl", [{"question": f"{i}+1?", "answer": f"#### {i + 1}"}
                                                              for i in range(3)]))]
    out = tmp_path / "out"
    assert main(["eval", benchmark, "--preset", "tiny", *data, "--samples", "2", "--modes", "text",
                 "--max-new-tokens", "2", "--out", str(out), "--no-progress-bar"]) == 0
    assert [row["n"] for row in _rows(out)] == [2]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2


def test_ocr_refuses_generation_modes(tmp_path, capsys):
    (tmp_path / "held.txt").write_text("Reading text back from its page. " * 40)
    assert main(["eval", "ocr", "--preset", "tiny", "--data", str(tmp_path / "held.txt"), "--modes", "text,gcc",
                 "--out", str(tmp_path / "out")]) == 2
    assert "--modes must be distinct names from ocr, got 'text,gcc' (ocr has no other modes)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_longbench_sample_too_long_is_refused_before_generating(tmp_path, one_thread, capsys, monkeypatch):
    record = {"input": "Who?", "context": "Ann wrote it.", "answers": ["Ann"], "length": 3, "all_classes": None}
    _jsonl(tmp_path / "hotpotqa.jsonl", [dict(record, _id="short"), dict(record, _id="long", context="x" * 40_000)])
    monkeypatch.setattr("vist2.generate.generate", lambda *a, **k: pytest.fail("generated"))
    out = tmp_path / "out"
    argv = ["eval", "longbench", "--preset", "tiny", "--data", str(tmp_path), "--tasks", "hotpotqa", "--modes", "text",
            "--out", str(out), "--no-progress-bar"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "hotpotqa.jsonl, line 2: sample 'long' does not fit the model: the text prompt needs" in error
    assert "limit of 32768 (max_position_embeddings)" in error and "--max-prompt-tokens" in error
    assert (out / "predictions.jsonl").read_text() == ""

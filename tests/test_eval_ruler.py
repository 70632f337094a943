"""RULER through NVIDIA's own generators and scorer: end to end on the tiny preset, metrics by hand."""

import json

import pytest
from conftest import require_extra

from vist2.cli import main
from vist2.errors import Vist2Error
from vist2.eval import ruler
from vist2.eval.sample import EvalSample

require_extra("long_context_eval")


def _sample(kind, references):
    return EvalSample(id="x", task="t", query="q", references=tuple(references), max_new_tokens=8,
                      extra={"ruler_task": kind})


def test_scores_are_rulers_metrics_by_hand():
    # niah, vt, cwe, fwe: string_match_all, the share of references found (case-insensitive)
    assert ruler.score(_sample("niah", ["1234567", "7654321"]), "It is 1234567.")["score"] == 50.0
    assert ruler.score(_sample("variable_tracking", ["VAR A", "VAR B"]), "var a, var b")["score"] == 100.0
    # qa: string_match_part, any one reference found
    assert ruler.score(_sample("qa", ["Paris", "City of Light"]), "PARIS\x07")["score"] == 100.0
    assert ruler.score(_sample("qa", ["Paris"]), "London")["score"] == 0.0


@pytest.mark.parametrize("flags", [["--tasks", "niah_single_9"], ["--lengths", "1024,abc"], ["--lengths", "128"]])
def test_bad_ruler_flags_exit_2(tmp_path, flags, capsys):
    code = main(["eval", "ruler", "--preset", "tiny", "--out", str(tmp_path / "o"), *flags])
    assert code == 2 and "--" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_punkt_is_shipped_offline():
    import nltk

    path = str(ruler.punkt_folder())
    saved = list(nltk.data.path)
    nltk.data.path[:] = [path]
    try:
        from nltk.tokenize import sent_tokenize

        assert sent_tokenize("Mr. Smith came. He left.") == ["Mr. Smith came.", "He left."]
    finally:
        nltk.data.path[:] = saved


def test_ruler_end_to_end_on_the_tiny_preset(tmp_path, one_thread, monkeypatch, capsys):
    # qa_1 is the quickest generator; with the byte tokenizer its smallest context needs ~8k tokens.
    # vt cannot be generated with it at any length (its few-shot example alone exceeds the 500 tokens
    # RULER allows it): an error row, seen as soon as RULER prints its search, while qa_1 is scored.
    import time

    monkeypatch.setattr(ruler, "GENERATOR_TIMEOUT_S", 120)
    out = tmp_path / "out"
    command = ["eval", "ruler", "--preset", "tiny", "--tasks", "vt,qa_1", "--lengths", "8192", "--samples", "1",
               "--modes", "text,gcc", "--max-new-tokens", "2", "--out", str(out), "--no-progress-bar"]
    start = time.perf_counter()
    assert main(command) == 0
    assert time.perf_counter() - start < 120  # no generator ran into its timeout
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["task"], r["length"], r["mode"], r["n"]) for r in rows] == [
        ("vt", 8192, "text", 0), ("vt", 8192, "gcc", 0), ("qa_1", 8192, "text", 1), ("qa_1", 8192, "gcc", 1)]
    assert "vt generator cannot fit its smallest context" in rows[0]["error"] and rows[0]["score"] is None
    assert rows[2]["error"] is None and rows[2]["max_new_tokens"] == 2 and rows[2]["benchmark_max_new_tokens"] == 32
    assert "answers capped at 2 tokens, the benchmark allows 32" in capsys.readouterr().out
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert record["references"] and record["stats"]["kv_tokens_full_text"] > 4000
    assert rows[3]["kv_tokens_peak_mean"] < rows[2]["kv_tokens_peak_mean"]  # gcc held the context as pages
    # the samples (and vt's error) are cached in --out: a resumed or repeated run generates nothing
    assert sorted(p.name for p in (out / ruler.CACHE).iterdir()) == ["qa_1-8192", "vt-8192"]
    monkeypatch.setattr(ruler, "_generate", lambda *a: pytest.fail("generated again"))
    (out / "results.json").unlink()
    assert main(command) == 0
    assert json.loads((out / "results.json").read_text())["rows"] == rows


def test_a_generator_past_its_time_limit_is_an_error(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(ruler, "GENERATOR_TIMEOUT_S", 0.5)
    model, tokenizer = tiny
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    package = ruler._package()
    configs, templates = ruler._task_configs(package)
    with pytest.raises(Vist2Error, match="niah_single_1 generator did not finish in 0.5 s at length 65536"):
        ruler._generate(package, tmp_path, tmp_path / "tokenizer", "niah_single_1", configs["niah_single_1"],
                        templates["niah"]["template"], 128, 65536, 1, 42)


def test_samples_without_an_answer_are_refused_not_scored():
    lines = [{"index": 0, "input": "words", "outputs": ["a"], "length": 9},
             {"index": 1, "input": "words", "outputs": [], "length": 9}]
    with pytest.raises(Vist2Error, match="cwe generator gave a sample without an answer at length 1024"):
        ruler._checked(lines, "cwe", 1024)
    assert ruler._checked(lines[:1], "cwe", 1024) == lines[:1]

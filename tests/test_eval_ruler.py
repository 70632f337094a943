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


def test_ruler_end_to_end_on_the_tiny_preset(tmp_path, one_thread):
    # qa_1 is the quickest generator; with the byte tokenizer its smallest context needs ~8k tokens
    out = tmp_path / "out"
    code = main(["eval", "ruler", "--preset", "tiny", "--tasks", "qa_1", "--lengths", "8192", "--samples", "1",
                 "--modes", "text,gcc", "--max-new-tokens", "2", "--out", str(out), "--no-progress-bar"])
    assert code == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["task"], r["length"], r["mode"], r["n"]) for r in rows] == [("qa_1", 8192, "text", 1),
                                                                         ("qa_1", 8192, "gcc", 1)]
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert record["references"] and record["stats"]["kv_tokens_full_text"] > 4000
    assert rows[1]["kv_tokens_peak_mean"] < rows[0]["kv_tokens_peak_mean"]  # gcc held the context as pages

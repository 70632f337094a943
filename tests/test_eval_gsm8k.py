"""GSM8K-style math: answer extraction and exact match by hand, a tiny file end to end."""

import json

import pytest

from vist2.cli import main
from vist2.eval import gsm8k
from vist2.eval.sample import EvalSample


@pytest.mark.parametrize("text, expected", [
    ("Step one gives 3. #### 1,200", "1,200"),
    ("So 4 + 5 = 9. The answer is 9.", "9"),
    ("The answer is 7. Checking: 7 * 2 = 14", "7"),
    ("We get 12 apples and then 15", "15"),
    ("the final answer is: -$3.50", "-$3.50"),
    ("no number here", None),
])
def test_extract_answer(text, expected):
    assert gsm8k.extract_answer(text) == expected


def test_score_compares_numbers_by_value():
    sample = EvalSample(id="1", task="gsm8k", query="q", references=("1200",), max_new_tokens=8)
    assert gsm8k.score(sample, "The answer is 1,200.00")["score"] == 100.0
    assert gsm8k.score(sample, "The answer is 120")["score"] == 0.0
    assert gsm8k.reference_answer("3 + 4 = <<3+4=7>>7\n#### 7") == "7"


def test_gsm8k_end_to_end_and_bad_lines(tmp_path, one_thread, capsys):
    data = tmp_path / "test.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"})
                              for i in range(3)) + "\n")
    out = tmp_path / "out"
    assert main(["eval", "gsm8k", "--preset", "tiny", "--data", str(data), "--samples", "2", "--modes", "text",
                 "--max-new-tokens", "2", "--out", str(out), "--no-progress-bar"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["task"], r["length"], r["mode"], r["n"]) for r in rows] == [("gsm8k", None, "text", 2)]
    assert (out / "results.png").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    assert main(["eval", "gsm8k", "--preset", "tiny", "--data", str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "line 1" in capsys.readouterr().err


def test_gsm8k_lines_are_read_as_bounded_strict_json(tmp_path):
    import argparse

    from vist2.errors import Vist2Error

    data = tmp_path / "gsm.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2", "id": NaN}\n')
    with pytest.raises(Vist2Error, match="line 1: not valid JSON .NaN is not allowed"):
        gsm8k.load_samples(argparse.Namespace(data=str(data), samples=5), None)


def test_ids_stay_distinct_or_are_refused(tmp_path, one_thread, fixed_predictions, capsys):
    # line 1's id "line2" is what line 2 (no id) is called: once, the two collapsed into one key
    data = tmp_path / "gsm.jsonl"
    lines = [{"question": "One plus one?", "answer": "#### 2", "id": "2"},
             {"question": "Two plus two?", "answer": "#### 4"}]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    fixed_predictions({"One plus one": "The answer is 2.", "Two plus two": "The answer is 2."})
    out = tmp_path / "o"
    assert main(["eval", "gsm8k", "--preset", "tiny", "--data", str(data), "--out", str(out), "--modes", "text",
                 "--max-new-tokens", "2", "--no-progress-bar"]) == 0
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert (row["n"], row["score"]) == (2, 50.0)
    lines.append({"question": "Three?", "answer": "#### 3", "id": "2"})
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["eval", "gsm8k", "--preset", "tiny", "--data", str(data), "--out", str(tmp_path / "o2"),
                 "--modes", "text", "--no-progress-bar"]) == 2
    assert "gsm.jsonl, lines 1 and 3: both have id '2'" in capsys.readouterr().err

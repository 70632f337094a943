"""scripts/ratio_sweep.py on a one-step budget (slow: two trainings and the 2M-character corpus)."""

import json
import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "ratio_sweep.py"
COMMITTED = [Path(__file__).parents[1] / "benchmarks" / "eval" / name / "ratio_sweep.json"
             for name in ("", "ratio_sweep_2x_r4", "ratio_sweep_2x_r8")]


def _script():
    return runpy.run_path(str(SCRIPT), run_name="ratio_sweep")


def test_bpe_units_by_hand():
    row = _script()["add_bpe_units"]({"chars_per_visual_token": 2.0}, {"qwen3": 4.0, "smollm2": 5.0})
    assert row == {"chars_per_visual_token": 2.0, "chars_per_token_qwen3": 4.0, "ratio_qwen3_tokens": 0.5,
                   "chars_per_token_smollm2": 5.0, "ratio_smollm2_tokens": 0.4}


def test_committed_rows_carry_both_units():
    for path in COMMITTED:
        for row in json.loads(path.read_text())["rows"]:
            assert row["ratio"] == row["chunk_tokens"] / row["visual_tokens"]  # characters (bytes) per visual token
            for name in ("qwen3", "smollm2"):
                assert row[f"ratio_{name}_tokens"] == row["chars_per_visual_token"] / row[f"chars_per_token_{name}"]


@pytest.mark.slow
def test_committed_characters_per_token_are_what_the_tokenizers_give():
    from vist2.quickstart import corpus, split

    measured = _script()["chars_per_bpe_token"](split(corpus()["essays"])[1])
    row = json.loads(COMMITTED[0].read_text())["rows"][0]
    assert measured == {"qwen3": row["chars_per_token_qwen3"], "smollm2": row["chars_per_token_smollm2"]}
    assert round(measured["qwen3"], 2) == 4.79 and round(measured["smollm2"], 2) == 4.76


@pytest.mark.slow
def test_ratio_sweep_trains_and_reads_each_ratio(tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["ratio_sweep.py", "--output", str(tmp_path / "runs"), "--out", str(out), "--chunk-tokens", "8,32",
            "--read-steps", "1", "--ocr-steps", "1", "--eval-chunks", "2", "--no-progress-bar"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert done.value.code == 0
    results = json.loads((out / "ratio_sweep.json").read_text())
    assert [(row["benchmark"], row["ratio"], row["n"]) for row in results["rows"]] == [("ocr", 1.0, 2), ("ocr", 4.0, 2)]
    assert [row["font_size"] for row in results["rows"]] == [13, 7]  # one page size, smaller type for more text
    for row in results["rows"]:  # the paper's unit: BPE tokens per visual token
        assert row["ratio_qwen3_tokens"] == row["chars_per_visual_token"] / row["chars_per_token_qwen3"]
        assert 4 < row["chars_per_token_qwen3"] < 6 and 4 < row["chars_per_token_smollm2"] < 6
    assert all(len(curve["read"]) == len(curve["ocr"]) == 1 for curve in results["loss_curves"].values())
    for name in ("ratio_sweep_ocr.png", "ratio_sweep_loss.png", "ratio_sweep_predictions.jsonl"):
        assert (out / name).stat().st_size > 100

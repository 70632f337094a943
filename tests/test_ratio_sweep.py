"""scripts/ratio_sweep.py on a one-step budget (slow: two trainings and the 2M-character corpus)."""

import json
import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "ratio_sweep.py"


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
    assert all(len(curve["read"]) == len(curve["ocr"]) == 1 for curve in results["loss_curves"].values())
    for name in ("ratio_sweep_ocr.png", "ratio_sweep_loss.png", "ratio_sweep_predictions.jsonl"):
        assert (out / name).stat().st_size > 100

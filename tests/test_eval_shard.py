"""`torchrun --nproc_per_node 2 -m vist2 eval ...` on CPU (gloo): rank 0 writes one results.json
with the rows of a one-process run and every prediction once; the merge order by hand."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vist2.cli import main
from vist2.eval import shard
from vist2.eval.sample import EvalSample

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1] / "src"))
TIMES = ("time_to_first_token_s_mean",)  # measured, so never equal between runs


def test_records_come_back_in_one_process_order():
    samples = [EvalSample(id=str(i), task="t", query="q", references=("a",), max_new_tokens=1) for i in range(5)]
    records = [{"task": "t", "length": None, "id": str(i), "mode": mode}
               for rank in (1, 0) for mode in ("gcc", "text") for i in range(rank, 5, 2)]
    ordered = shard.in_order(records, samples, ["text", "gcc"])
    assert [(r["mode"], r["id"]) for r in ordered] == [(m, str(i)) for m in ("text", "gcc") for i in range(5)]
    assert shard.mine(samples) == samples and shard.processes() == (0, 1)  # no launcher: one process


def _rows(out: Path) -> list[dict]:
    rows = json.loads((out / "results.json").read_text())["rows"]
    return [{k: v for k, v in row.items() if k not in TIMES} for row in rows]


def _predictions(out: Path) -> dict:
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return {(r["id"], r["mode"]): (r["prediction"], r["scores"]) for r in records}


@pytest.mark.slow
def test_two_processes_write_the_results_of_one(tmp_path, one_thread):
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                            for i in range(5)))
    flags = ["eval", "gsm8k", "--preset", "tiny", "--data", str(data), "--samples", "5", "--modes", "text,gcc",
             "--max-new-tokens", "6", "--no-progress-bar"]
    assert main([*flags, "--out", str(tmp_path / "one")]) == 0
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vist2"]
    run = subprocess.run([*launcher, *flags, "--out", str(tmp_path / "two")], env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote run.json") == 1  # only rank 0 reports
    assert _rows(tmp_path / "two") == _rows(tmp_path / "one")
    lines = (tmp_path / "two" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 5 * 2 and _predictions(tmp_path / "two") == _predictions(tmp_path / "one")
    again = subprocess.run([*launcher, *flags, "--out", str(tmp_path / "two")], env=ENV, capture_output=True,
                           text=True, timeout=600)  # resumed: nothing left to generate, nothing written twice
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "two" / "predictions.jsonl").read_text().splitlines() == lines
    assert _rows(tmp_path / "two") == _rows(tmp_path / "one")

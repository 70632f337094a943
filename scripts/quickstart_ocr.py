"""The quickstart model's OCR rows: `vist2.eval.ocr` on a quickstart run's held-out essays, for the
checkpoint after the OCR stage (RUN/ocr/final) and the final model (RUN/model).

    PYTHONPATH=src .venv/bin/python scripts/quickstart_ocr.py RUN OUT   # OUT/quickstart_ocr.json

For one model this is `vist2 eval ocr --model RUN/model --data RUN/data/held_out_essays --samples 256`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vist2.errors import Vist2Error
from vist2.eval import ocr
from vist2.model import Vist2Model
from vist2.tokenizer import load_tokenizer
from vist2.quickstart import corpus, split, write_documents

CHECKPOINTS = ("ocr/final", "model")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a `vist2 quickstart --output` folder")
    parser.add_argument("out", help="folder for quickstart_ocr.json and quickstart_ocr_predictions.jsonl")
    parser.add_argument("--chunks", type=int, default=256)
    options = parser.parse_args()
    run, out = Path(options.run), Path(options.out)
    if (out / "quickstart_ocr.json").exists():
        sys.exit(f"{out / 'quickstart_ocr.json'} exists; choose another OUT (nothing was overwritten)")
    torch.set_num_threads(1)
    held = run / "data" / "held_out_essays"
    if not held.exists():  # runs made before the quickstart wrote its held-out essays
        write_documents(held, split(corpus()["essays"])[1])
    args = argparse.Namespace(data=[str(held)], samples=options.chunks, chunk_tokens=0)
    rows, records = [], []
    for checkpoint in CHECKPOINTS:
        model = Vist2Model.from_pretrained(run / checkpoint).eval()
        found, predictions = ocr.run(args, model, load_tokenizer(model.config.tokenizer))
        rows += [dict(row.as_dict(), checkpoint=checkpoint) for row in found]
        records += [dict(record, checkpoint=checkpoint) for record in predictions]
        print(json.dumps(rows[-1]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    results = {"model": f"vist2 quickstart run {run}: {CHECKPOINTS[0]} after the OCR stage, "
                        f"{CHECKPOINTS[1]} the final model (after OLM)",
               "command": "PYTHONPATH=src python scripts/quickstart_ocr.py " + " ".join(sys.argv[1:]),
               "versions": {"torch": torch.__version__}, "rows": rows}
    (out / "quickstart_ocr.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "quickstart_ocr_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Vist2Error as error:
        sys.exit(f"quickstart_ocr: error: {error}")

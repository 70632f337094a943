"""OCR at the quickstart scale: a model trained with fill chunks against one trained with fixed
K at the same mean ratio, same budget.

The ratio sweep's setup (`scripts/ratio_sweep.py`): the quickstart-size model from scratch, the
128 x 16 one-line page (beta = 8), `--read-steps` of OCR on random characters then
`--ocr-steps` on the essays, one page per sample. fill fills the line at --min-font-size
(chunks end where the next word would not fit); fixed K is the mean tokens per fill chunk on
the training essays, rounded, so both read the same number of characters per visual token on
average. Each model is evaluated on held-out essay chunks of its own policy and of the other's.

    PYTHONPATH=src:scripts python scripts/fill_ocr.py --output /tmp/fill-ocr --out benchmarks/fill
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ratio_sweep import sweep_config, train_ratio
from vist2.chunking import split_chunks
from vist2.eval import ocr
from vist2.options import ChunkOptions
from vist2.render import Renderer
from vist2.tokenizer import byte_tokenizer
from vist2.quickstart import corpus, random_text, split, write_documents


def fill_of(size: int, K: int = 16):
    renderer = Renderer(sweep_config(K).render)
    return ChunkOptions(K, 8, True, False, "fill", size).fill(renderer, byte_tokenizer())


def mean_fill_tokens(essays: list[str], size: int) -> float:
    tokenizer, fill = byte_tokenizer(), fill_of(size)
    lengths = [len(c) for text in essays[:20] for c in split_chunks(tokenizer.encode(text), 16, fill)[:-1]]
    return sum(lengths) / len(lengths)


def train_one(name: str, K: int, chunking: dict, folder: Path, sources: dict, args) -> dict:
    config = sweep_config(K).replace(preset=f"fill-ocr-{name}")
    return train_ratio(K, folder, sources, args, config, 4 * K if chunking else K, **chunking)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="new folder for data and the trained models")
    parser.add_argument("--out", required=True, help="folder for fill_ocr.json")
    parser.add_argument("--min-font-size", type=int, default=13)
    parser.add_argument("--read-steps", type=int, default=600)
    parser.add_argument("--ocr-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-chunks", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    output, out = Path(args.output), Path(args.out)
    if output.exists() and any(output.iterdir()):
        raise SystemExit(f"{output} is not empty; choose another --output")
    torch.set_num_threads(1)
    texts = corpus()
    essays, held = split(texts["essays"])
    sources = {"random": write_documents(output / "data" / "random", [random_text(essays, 2_000_000, args.seed)]),
               "essays": write_documents(output / "data" / "essays", essays)}
    mean = mean_fill_tokens(essays, args.min_font_size)
    K = round(mean)
    runs = {"fill": train_one("fill", 16, {"chunking": "fill", "min_font_size": args.min_font_size},
                              output / "fill", sources, args),
            "fixed": train_one("fixed", K, {}, output / "fixed", sources, args)}
    from vist2.model import Vist2Model

    tokenizer = byte_tokenizer()
    eval_sets = {"fill chunks": ocr.held_out_chunks(tokenizer, held, 16, args.eval_chunks, fill_of(args.min_font_size)),
                 f"fixed K={K} chunks": ocr.held_out_chunks(tokenizer, held, K, args.eval_chunks)}
    rows = []
    for name, run in runs.items():
        model = Vist2Model.from_pretrained(run["final"]).eval()
        for task, chunks in eval_sets.items():
            row, _ = ocr.evaluate(model, tokenizer, chunks, Renderer(model.config.render), task)
            rows.append({"trained": name, "read": task, **row.as_dict(), "train_seconds": run["train_seconds"],
                         "final_loss": run["losses"]["ocr"][-1]})
            print(json.dumps(rows[-1]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fill_ocr.json").write_text(json.dumps({
        "command": "PYTHONPATH=src:scripts python scripts/fill_ocr.py " + " ".join(sys.argv[1:]),
        "fill_mean_tokens_per_chunk": mean, "fixed_K": K, "min_font_size": args.min_font_size, "rows": rows,
        "loss_curves": {name: run["losses"] for name, run in runs.items()}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

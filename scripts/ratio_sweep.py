"""The compression-ratio sweep (paper table 3 / figure 3) at CPU scale.

For each K in --chunk-tokens, trains the OCR stage of the quickstart-size model (byte tokenizer,
the quickstart's 128 x 16 page, beta = 8 visual tokens) from scratch with the same step budget:
`--read-steps` of OCR on random characters (nothing to guess, all to read), then `--ocr-steps`
of OCR on the essays, one page per sample. Then reads --eval-chunks held-out essay chunks
greedily with `vist2.eval.ocr` (character accuracy, ROUGE-L, the blank-page ablation).
r = K / beta characters per visual token (one byte is one character in this English text). The
paper's r counts BPE tokens per visual token: each row also gives it for the Qwen3 and SmolLM2
tokenizers (`ratio_qwen3_tokens`, `ratio_smollm2_tokens`), the measured characters per visual
token over the characters per BPE token of the held-out essays (`chars_per_token_qwen3`, ...).

Every ratio uses the same page: 128 x 16 pixels, line pitch 1.2 x the font size, fonts from 3 px
up; the renderer picks the largest font at which a chunk fits (13 px for 8-16 characters,
7 px for 32, 5 px on 2 lines for 64, 4 px on 3 lines for 128).

    PYTHONPATH=src .venv/bin/python scripts/ratio_sweep.py --output /tmp/sweep --out benchmarks/eval
    PYTHONPATH=src .venv/bin/python scripts/ratio_sweep.py --add-units benchmarks/eval/ratio_sweep.json
        # adds the BPE units to the rows of a sweep written before they were measured
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vist2.errors import Vist2Error
from vist2.eval import ocr
from vist2.render import RenderConfig, Renderer
from vist2.train.config import TrainConfig
from vist2.train.loop import train
from vist2.quickstart import corpus, quickstart_config, random_text, split, write_documents

SWEEP_PAGE = RenderConfig(width=128, height=16, margin=0, min_font_size=3)  # line pitch 1.2 x font


def sweep_config(chunk_tokens: int):
    return quickstart_config().replace(render=SWEEP_PAGE, **{"chunk.chunk_tokens": chunk_tokens},
                                       preset=f"ratio-sweep-k{chunk_tokens}")


def train_ratio(chunk_tokens: int, folder: Path, sources: dict[str, str], args, config=None,
                longest: int | None = None, **chunking) -> dict:
    """Both training stages for one K (on `config`, default the sweep's; samples of `longest` text
    tokens at most, default K; `chunking`: TrainConfig's chunking fields); returns the final model
    folder and the loss curves."""
    config = config or sweep_config(chunk_tokens)
    common = dict(seed=args.seed, progress_bar=getattr(args, "progress_bar", False), save_every=10**9,
                  keep_checkpoints=1, epochs=1000, batch_size=args.batch_size, micro_batch_size=args.batch_size,
                  warmup_ratio=0.03, lr=3e-4, mixed_precision="no", train_parts=("vision", "aligner", "llm"),
                  stage="ocr", max_length=(longest or chunk_tokens) + config.visual_tokens,  # one page per sample
                  **chunking)
    began = time.perf_counter()
    read = train(TrainConfig(output=str(folder / "read"), data=(sources["random"],), schedule="constant",
                             max_steps=args.read_steps, preset=config.preset, **common), model_config=config)
    essays = train(TrainConfig(output=str(folder / "ocr"), data=(sources["essays"],), max_steps=args.ocr_steps,
                               init=str(read.final), **common))
    return {"final": essays.final, "losses": {"read": read.losses, "ocr": essays.losses},
            "train_seconds": round(time.perf_counter() - began, 1)}


BPE_TOKENIZERS = ("qwen3", "smollm2")


def chars_per_bpe_token(texts: list[str]) -> dict[str, float]:
    """Characters per token of the Qwen3 and SmolLM2 tokenizers (both shipped offline) over `texts`,
    each text tokenized whole."""
    from transformers import AutoTokenizer

    from vist2.presets import smollm2_gguf
    from vist2.tokenizer import qwen3_tokenizer

    gguf = smollm2_gguf()
    smollm2 = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizers = {"qwen3": qwen3_tokenizer(), "smollm2": smollm2}
    characters = sum(map(len, texts))
    return {name: characters / sum(len(tok.encode(text, add_special_tokens=False)) for text in texts)
            for name, tok in tokenizers.items()}


def add_bpe_units(row: dict, units: dict[str, float]) -> dict:
    """The row with the paper's unit beside ours: BPE tokens per visual token for each tokenizer."""
    for name in BPE_TOKENIZERS:
        row[f"chars_per_token_{name}"] = units[name]
        row[f"ratio_{name}_tokens"] = row["chars_per_visual_token"] / units[name]
    return row


def _plots(rows: list[dict], curves: dict[int, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [row["ratio"] for row in rows]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(ratios, [row["score"] for row in rows], "o-", label="character accuracy (1 - CER)")
    axis.plot(ratios, [row["rouge_l"] for row in rows], "s-", label="ROUGE-L")
    axis.plot(ratios, [row["character_accuracy_blank_page"] for row in rows], "x:", label="accuracy, blank page")
    axis.set(xscale="log", xlabel="r = characters per visual token", ylabel="score (0-100)", ylim=(0, 102),
             title="OCR vs compression ratio (quickstart-size model)")
    axis.set_xticks(ratios, [f"{r:g}" for r in ratios])
    per_token = rows[0]["chars_per_token_qwen3"]
    paper = axis.secondary_xaxis("top", functions=(lambda r: r / per_token, lambda p: p * per_token))
    paper.set_xlabel("paper's r = Qwen3 tokens per visual token")
    paper.set_xticks([row["ratio_qwen3_tokens"] for row in rows], [f"{row['ratio_qwen3_tokens']:.2f}" for row in rows])
    paper.minorticks_off()
    axis.minorticks_off()
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "ratio_sweep_ocr.png", dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 3.5))
    for ratio, losses in curves.items():
        joined = losses["read"] + losses["ocr"]
        axis.plot(range(1, len(joined) + 1), joined, label=f"r = {ratio:g}")
    boundary = len(next(iter(curves.values()))["read"])
    axis.axvline(boundary + 0.5, color="grey", lw=0.8, ls="--")
    axis.set(xlabel="optimizer step (random characters | essays)", ylabel="loss (nats/token)", yscale="log",
             title="OCR training loss per compression ratio")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "ratio_sweep_loss.png", dpi=100)
    plt.close(figure)


def _curves(results: dict) -> dict[float, dict]:
    """Loss curves by ratio r, from a ratio_sweep.json."""
    beta = results["rows"][0]["visual_tokens"]
    return {int(k) / beta: losses for k, losses in results["loss_curves"].items()}


def add_units(paths: list[Path]) -> int:
    """Add the BPE units (measured now on the held-out essays) to every row of each file, and
    redraw its OCR plot where one lies beside it."""
    for path in paths:
        if not path.is_file():
            raise Vist2Error(f"--add-units: {path} is not a file")
    units = chars_per_bpe_token(split(corpus()["essays"])[1])
    for path in paths:
        results = json.loads(path.read_text())
        results["rows"] = [add_bpe_units(row, units) for row in results["rows"]]
        path.write_text(json.dumps(results, indent=1) + "\n")
        if (path.parent / "ratio_sweep_ocr.png").exists():
            _plots(results["rows"], _curves(results), path.parent)
        print(path, [round(row["ratio_qwen3_tokens"], 3) for row in results["rows"]])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", help="new folder for data and the trained models")
    parser.add_argument("--out", help="folder for results.json and the plots")
    parser.add_argument("--chunk-tokens", default="8,16,32,64,128", help="K values (beta = 8)")
    parser.add_argument("--read-steps", type=int, default=400, help="OCR steps on random characters per K")
    parser.add_argument("--ocr-steps", type=int, default=200, help="OCR steps on the essays per K")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-chunks", type=int, default=128, help="held-out essay chunks read per K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    parser.add_argument("--add-units", nargs="+", metavar="JSON", help="only add the BPE units to the rows of "
                        "these ratio_sweep.json files (and redraw ratio_sweep_ocr.png beside them if there)")
    args = parser.parse_args(argv)
    if args.add_units:
        return add_units([Path(name) for name in args.add_units])
    if not args.output or not args.out:
        parser.error("--output and --out are required (or --add-units)")
    try:
        sizes = [int(k) for k in args.chunk_tokens.split(",")]
    except ValueError:
        raise SystemExit("--chunk-tokens: comma-separated positive integers, e.g. 8,16,32") from None
    if min(sizes) < 1 or min(args.read_steps, args.ocr_steps, args.batch_size, args.eval_chunks) < 1:
        raise SystemExit("--chunk-tokens, --read-steps, --ocr-steps, --batch-size, --eval-chunks must be >= 1")
    output, out = Path(args.output), Path(args.out)
    if output.exists() and any(output.iterdir()):
        raise SystemExit(f"{output} is not empty; choose another --output (nothing was overwritten)")
    if (out / "ratio_sweep.json").exists():
        raise SystemExit(f"{out / 'ratio_sweep.json'} exists; choose another --out (nothing was overwritten)")
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    texts = corpus()
    essays, held = split(texts["essays"])
    units = chars_per_bpe_token(held)
    sources = {"random": write_documents(output / "data" / "random", [random_text(essays, 2_000_000, args.seed)]),
               "essays": write_documents(output / "data" / "essays", essays)}
    rows, records, curves, runs = [], [], {}, {}
    for K in sizes:
        trained = train_ratio(K, output / f"k{K}", sources, args)
        from vist2.model import Vist2Model
        from vist2.tokenizer import load_tokenizer

        model = Vist2Model.from_pretrained(trained["final"]).eval()
        tokenizer = load_tokenizer(model.config.tokenizer)
        chunks = ocr.held_out_chunks(tokenizer, held, K, args.eval_chunks)
        row, predictions = ocr.evaluate(model, tokenizer, chunks, Renderer(model.config.render), task="essays")
        row.extra.update(final_loss=trained["losses"]["ocr"][-1], chunk_tokens=K,
                         font_size=Renderer(model.config.render).render(predictions[0]["reference"]).font_size,
                         train_seconds=round(trained["train_seconds"], 1))
        rows.append(add_bpe_units(row.as_dict(), units))
        records += predictions
        curves[K / model.config.visual_tokens] = trained["losses"]
        runs[K] = {"losses": trained["losses"]}
        print(json.dumps(rows[-1]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    command = "PYTHONPATH=src python scripts/ratio_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = {"model": "quickstart-size VIST2 (2.7 M parameters), trained from scratch per ratio",
               "command": command, "versions": {"torch": torch.__version__}, "rows": rows,
               "steps": {"read": args.read_steps, "ocr": args.ocr_steps, "batch_size": args.batch_size},
               "seconds": round(time.perf_counter() - began, 1), "threads": args.threads,
               "loss_curves": {str(k): v["losses"] for k, v in runs.items()}}
    (out / "ratio_sweep.json").write_text(json.dumps(results, indent=1) + "\n")
    with open(out / "ratio_sweep_predictions.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    _plots(rows, curves, out)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Vist2Error as error:
        sys.exit(f"ratio_sweep: error: {error}")

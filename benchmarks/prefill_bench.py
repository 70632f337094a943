"""A long prompt joining running streams, with and without chunked prefill (issue 20.12).

In one process, on the engine itself (no HTTP): S streams decode (text mode, greedy,
ignore_eos); after a quiet phase of Q steps a prompt of P tokens joins (its mode given, 4 new
tokens). Every running row gets one token per engine step, so a stream's inter-token gap is
the step's wall time. Reported per prefill budget (`Engine(prefill_tokens=...)`: prompt
positions per step, fed with the decode tokens; none = whole prompts, without chunked
prefill): the median and p99 gap of the quiet phase (the p99 shows the noise
of the machine), the p99 and largest gap from the joiner's arrival to its first token, the
joiner's time to first token (`--alone`: also on an idle engine), and every step's gap with
the prompt positions in the cache after it. Targets: p99 gap while it joins <= 3x the quiet
median; TTFT at most 1.5x the TTFT without chunked prefill (same streams). The JSON's PNG
twin plots the gaps and TTFT against p99.

    PYTHONPATH=src python benchmarks/prefill_bench.py --preset smollm2-135m --prompt-tokens 8000 \
        --budgets none,16,32,64 --modes text --quiet-steps 30 --stream-tokens 1200 \
        --out benchmarks/prefill_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time

import torch

from vist2.engine import Engine
from vist2.generate import GenerationConfig, load_model
from vist2.request import Status

STREAM = "Write the log of a lighthouse keeper, one entry per day. "
JOIN = "The following is the ship register of a small harbour, entry after entry. "


BULKY = ("stream_tokens", "join_gaps_ms", "join_fed_positions")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def join_ids(tokenizer, tokens: int) -> list[int]:
    ids = tokenizer.encode(JOIN, add_special_tokens=False)
    return (ids * (tokens // len(ids) + 1))[:tokens]


def first_token(engine: Engine, request) -> tuple[float, list[float], list[int]]:
    """Steps until `request` has a token; (time to it, each step's wall time, the prompt
    positions in the cache after each step)."""
    started, gaps, fed = time.perf_counter(), [], []
    while request.stats.generated_tokens == 0 and not request.finished:
        step = time.perf_counter()
        engine.step()
        gaps.append(time.perf_counter() - step)
        fed.append(request.cursor.base if request.cursor is not None else request.prompt.positions)
    return time.perf_counter() - started, gaps, fed


def scenario(model, tokenizer, budget, args, mode: str) -> dict:
    engine = Engine(model, tokenizer, prefill_tokens=budget)
    joining = join_ids(tokenizer, args.prompt_tokens)
    alone = None
    if args.alone:
        alone, _, _ = first_token(engine, engine.add(joining, GenerationConfig(mode=mode, max_new_tokens=4)))
        for _ in engine.run():
            pass
    streams = [engine.add(STREAM * (1 + i % 3), GenerationConfig(mode="text", max_new_tokens=args.stream_tokens,
                                                              ignore_eos=True))
               for i in range(args.streams)]
    while any(r.status is not Status.RUNNING for r in streams):
        engine.step()
    quiet = []
    for _ in range(args.quiet_steps):
        step = time.perf_counter()
        engine.step()
        quiet.append(time.perf_counter() - step)
    request = engine.add(joining, GenerationConfig(mode=mode, max_new_tokens=4))
    ttft, gaps, fed = first_token(engine, request)
    tokens = [len(r.output) for r in streams]
    for r in streams:
        engine.cancel(r)
    for _ in engine.run():
        pass
    median = statistics.median(quiet)
    p99 = percentile(gaps, 0.99)
    return {"budget": budget, "join_mode": mode, "join_positions": request.prompt.positions,
            "quiet_gap_median_s": median, "quiet_gap_p99_s": percentile(quiet, 0.99), "join_gap_p99_s": p99, "join_gap_max_s": max(gaps),
            "join_steps": len(gaps), "p99_over_quiet_median": p99 / median,
            "ttft_s": ttft, "ttft_alone_s": alone, "stream_tokens": tokens,
            "join_gaps_ms": [round(1000 * g, 1) for g in gaps], "join_fed_positions": fed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prompt-tokens", type=int, default=8000)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--stream-tokens", type=int, default=4000, help="max new tokens of each stream (room for the run)")
    parser.add_argument("--quiet-steps", type=int, default=100)
    parser.add_argument("--budgets", default="none,128,256,512")
    parser.add_argument("--modes", default="text,pcc", help="modes of the joining prompt")
    parser.add_argument("--alone", action="store_true", help="also time the joining prompt on an idle engine")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load_model(preset_name=args.preset, dtype=args.dtype)
    budgets = [None if b == "none" else int(b) for b in args.budgets.split(",")]
    load_before, rows = os.getloadavg(), []
    for mode in args.modes.split(","):
        for budget in budgets:
            rows.append(scenario(model, tokenizer, budget, args, mode))
            print(json.dumps({k: v for k, v in rows[-1].items() if k not in BULKY}), flush=True)
            write(args, rows, load_before)  # what is measured so far survives an interrupted run


def write(args, rows: list[dict], load_before) -> None:
    for row in rows:
        whole = next((r for r in rows if r["join_mode"] == row["join_mode"] and r["budget"] is None), None)
        row["ttft_over_whole"] = row["ttft_s"] / whole["ttft_s"] if whole else None
        row["targets_met"] = bool(whole) and row["p99_over_quiet_median"] <= 3 and row["ttft_over_whole"] <= 1.5
    record = {"command": "PYTHONPATH=src python " + shlex.join(sys.argv), "torch": torch.__version__,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs, torch threads 1",
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "rows": rows}
    with open(args.out, "w") as handle:
        json.dump(record, handle, indent=1)
    plot(record, args.out.rsplit(".", 1)[0] + ".png")


def plot(record: dict, path: str) -> None:
    """Left: each step's gap over the quiet median as the prompt goes in, per budget. Right:
    time to first token against the p99 gap per budget, the targets' box, and r / (r - 1):
    the least TTFT for a p99 of r if a prompt's pieces cost what its whole prefill does."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in record["rows"] if r["budget"] is not None and r.get("ttft_over_whole")]
    if not rows:
        return
    figure, (gaps, front) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        median = 1000 * row["quiet_gap_median_s"]
        gaps.plot(row["join_fed_positions"], [g / median for g in row["join_gaps_ms"]], lw=0.8,
                  label=f"{row['join_mode']}, budget {row['budget']}")
        front.scatter(row["p99_over_quiet_median"], row["ttft_over_whole"])
        front.annotate(f"{row['budget']}", (row["p99_over_quiet_median"], row["ttft_over_whole"]),
                       textcoords="offset points", xytext=(4, 4))
    gaps.axhline(3, color="k", ls="--", lw=0.8)
    gaps.set(xlabel="prompt positions in the cache", ylabel="step gap / quiet median", yscale="log",
             title="Inter-token gap while an 8K prompt joins")
    gaps.legend(fontsize=8)
    right = max(10.0, 1.1 * max(r["p99_over_quiet_median"] for r in rows))
    ratios = [1.3 + (right - 1.3) * i / 200 for i in range(201)]
    front.plot(ratios, [r / (r - 1) for r in ratios], color="gray", lw=0.8, label="r / (r - 1)")
    front.axvline(3, color="k", ls="--", lw=0.8)
    front.axhline(1.5, color="k", ls="--", lw=0.8)
    front.set(xlabel="p99 gap / quiet median (r)", ylabel="TTFT / whole prefill", xlim=(1, right), ylim=(0.5, 3),
              title="Targets: r <= 3 and TTFT <= 1.5x")
    front.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()

"""A long prompt joining running streams, with and without chunked prefill (issue 20.12).

In one process, on the engine itself (no HTTP): S streams decode (text mode, greedy,
ignore_eos); after a quiet phase of Q steps a prompt of P tokens joins (its mode given, 4 new
tokens). Every running row gets one token per engine step, so a stream's inter-token gap is
the step's wall time. Reported per prefill budget (`Engine(prefill_tokens=...)`, none = whole
prompts, the behaviour before chunked prefill): the median and p99 gap of the quiet phase (the
p99 shows the noise of a shared machine), the p99 and largest gap from the joiner's arrival to
its first token, and the joiner's time to first token (`--alone`: also on an idle engine). Targets: p99 gap while it joins <= 3x the quiet median; TTFT at
most 1.5x the TTFT without chunked prefill (same streams).

    PYTHONPATH=src python benchmarks/prefill_bench.py --preset tiny --prompt-tokens 8000 \
        --budgets none,128,256,512 --alone --out benchmarks/prefill_tiny.json
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


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def join_ids(tokenizer, tokens: int) -> list[int]:
    ids = tokenizer.encode(JOIN, add_special_tokens=False)
    return (ids * (tokens // len(ids) + 1))[:tokens]


def first_token(engine: Engine, request) -> tuple[float, list[float]]:
    """Steps until `request` has a token; (time to it, each step's wall time)."""
    started, gaps = time.perf_counter(), []
    while request.stats.generated_tokens == 0 and not request.finished:
        step = time.perf_counter()
        engine.step()
        gaps.append(time.perf_counter() - step)
    return time.perf_counter() - started, gaps


def scenario(model, tokenizer, budget, args, mode: str) -> dict:
    engine = Engine(model, tokenizer, prefill_tokens=budget)
    joining = join_ids(tokenizer, args.prompt_tokens)
    alone = None
    if args.alone:
        alone, _ = first_token(engine, engine.add(joining, GenerationConfig(mode=mode, max_new_tokens=4)))
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
    ttft, gaps = first_token(engine, request)
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
            "ttft_s": ttft, "ttft_alone_s": alone, "stream_tokens": tokens}


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
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "stream_tokens"}), flush=True)
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


if __name__ == "__main__":
    main()

"""Engine throughput, side by side in one run (issue 9). Every figure is a median of repeats.

- batch_vs_sequential: 8 prompts of different lengths, N tokens each: one batch vs 8 runs one after another;
- concurrency: aggregate decode tokens/s of 1, 2, 4, 8, 16 concurrent requests per mode (all added at once;
  decode = steps that admitted no request);
- single_stream: one text-mode request, decode tokens/s, next to Hugging Face `generate` on the same LLM
  weights and prompt ids with its dynamic and its static cache (greedy, forced to N tokens);
- arrival: 8 gcc requests all at once vs arriving one every N/8 steps (continuous batching):
  aggregate tokens/s over the whole run and mean latency (arrival to last token);
- linear: one pass over all the LLM's linear layers (the matrix products of a decode step) for
  1, 2, 4, 8 and 16 rows, in fp32 and in bf16: what batching can gain on this CPU at best.

    PYTHONPATH=src python benchmarks/engine_bench.py --preset tiny --tokens 300 --repeats 5 \
        --out benchmarks/engine_tiny.json
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
from vist2.generate import GenerationConfig, generate, load_model
from vist2.prompt import chat_parts

MODES = ("text", "pcc", "gcc")


def prompts(count: int) -> list[str]:
    """Prompts of different lengths (20 to ~300 characters)."""
    base = "Please summarise the following meeting notes and list the decisions. "
    return [(base * 5)[: 20 + (37 * i) % 290] for i in range(count)]


def config(mode: str, tokens: int) -> GenerationConfig:
    return GenerationConfig(mode=mode, max_new_tokens=tokens, ignore_eos=True)


def batch_vs_sequential(model, tokenizer, tokens: int, repeats: int, modes) -> dict:
    texts, found = prompts(8), {}
    for mode in modes:
        generate(model, tokenizer, texts[:2], config(mode, 8))  # warm-up
        rows = []
        for _ in range(repeats):
            start = time.perf_counter()
            for text in texts:
                generate(model, tokenizer, text, config(mode, tokens))
            sequential = time.perf_counter() - start
            start = time.perf_counter()
            generate(model, tokenizer, texts, config(mode, tokens))
            batch = time.perf_counter() - start
            rows.append({"sequential_s": sequential, "batch_s": batch, "ratio": sequential / batch})
        found[mode] = {"median_ratio": statistics.median(r["ratio"] for r in rows),
                       "ratio_of_fastest": min(r["sequential_s"] for r in rows) / min(r["batch_s"] for r in rows),
                       "runs": rows}
        print(f"batch vs sequential {mode}: {found[mode]['median_ratio']:.2f}x", flush=True)
    return found


def run_engine(model, tokenizer, arrivals: list[tuple[int, str, GenerationConfig]]) -> dict:
    """Run requests that arrive at given steps; decode time = steps that admitted nobody."""
    engine, pending, step = Engine(model, tokenizer), sorted(arrivals, key=lambda a: a[0]), 0
    requests, added, decode_s, decode_tokens = [], {}, 0.0, 0
    start = time.perf_counter()
    while pending or engine.busy:
        while pending and pending[0][0] <= step:
            _, text, generation = pending.pop(0)
            request = engine.add(text, generation)
            requests.append(request)
            added[request.id] = time.perf_counter()
        joining = bool(engine.waiting)
        began = time.perf_counter()
        events = engine.step()
        if not joining:
            decode_s += time.perf_counter() - began
            decode_tokens += sum(len(e.tokens) + (e.finished and not e.tokens) for e in events)
        for event in events:
            if event.finished:
                event.request.done_at = time.perf_counter()
        step += 1
    wall = time.perf_counter() - start
    total = sum(r.stats.generated_tokens for r in requests)
    return {"requests": len(requests), "tokens": total, "wall_s": wall, "tokens_per_s": total / wall,
            "decode_tokens_per_s": decode_tokens / decode_s if decode_s else None,
            "mean_latency_s": statistics.mean(r.done_at - added[r.id] for r in requests),
            "kv_bytes_peak": max(r.stats.kv_bytes_peak for r in requests)}


def concurrency(model, tokenizer, tokens: int, repeats: int, modes, counts) -> dict:
    """Repeats are the outer loop, so every count is measured in each round (load drifts)."""
    runs = {f"{mode}/{count}": [] for mode in modes for count in counts}
    for _ in range(repeats):
        for mode in modes:
            for count in counts:
                texts = prompts(count)
                runs[f"{mode}/{count}"].append(run_engine(model, tokenizer, [(0, t, config(mode, tokens)) for t in texts]))
    found = {key: {"median_decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in rows),
                   "runs": rows} for key, rows in runs.items()}
    for mode in modes:
        one = found[f"{mode}/1"]["median_decode_tokens_per_s"]
        for count in counts:
            entry = found[f"{mode}/{count}"]
            entry["vs_one"] = entry["median_decode_tokens_per_s"] / one
            print(f"{mode} x{count}: {entry['median_decode_tokens_per_s']:.1f} tok/s ({entry['vs_one']:.2f}x one)",
                  flush=True)
    return found


def single_stream(model, tokenizer, tokens: int, repeats: int) -> dict:
    """Ours (text mode) vs Hugging Face generate on the same LLM weights and prompt ids."""
    text = prompts(1)[0]
    user, assistant, _ = chat_parts(tokenizer)
    ids = torch.tensor([user + tokenizer.encode(text, add_special_tokens=False) + assistant], device=model.device)
    rows = {"vist2_text": [], "hf_dynamic": [], "hf_static": []}
    for repeat in range(repeats + 1):  # the first round warms up
        result = generate(model, tokenizer, text, config("text", tokens))
        ours = (tokens - 1) / result.stats.decode_s
        hf = {}
        for name, cache in (("hf_dynamic", "dynamic"), ("hf_static", "static")):
            start = time.perf_counter()
            with torch.inference_mode():
                first = model.llm.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False,
                                           cache_implementation=cache)
                one = time.perf_counter() - start
                out = model.llm.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                         cache_implementation=cache)
            whole = time.perf_counter() - start - one
            assert out.shape[1] - ids.shape[1] == tokens and first.shape[1] == ids.shape[1] + 1
            hf[name] = (tokens - 1) / max(whole - one, 1e-9)  # minus a prefill + first token
        if repeat:
            rows["vist2_text"].append(ours)
            for name, value in hf.items():
                rows[name].append(value)
    found = {name: {"median_tokens_per_s": statistics.median(v), "runs": v} for name, v in rows.items()}
    print("single stream tok/s:", {k: round(v["median_tokens_per_s"], 1) for k, v in found.items()}, flush=True)
    return found


def arrival(model, tokenizer, tokens: int, repeats: int) -> dict:
    texts, gap = prompts(8), max(tokens // 8, 1)
    found = {}
    for name, arrivals in (("all_at_once", [(0, t, config("gcc", tokens)) for t in texts]),
                           ("staggered", [(i * gap, t, config("gcc", tokens)) for i, t in enumerate(texts)])):
        runs = [run_engine(model, tokenizer, arrivals) for _ in range(repeats)]
        found[name] = {"median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
                       "median_latency_s": statistics.median(r["mean_latency_s"] for r in runs),
                       "arrival_gap_steps": gap if name == "staggered" else 0, "runs": runs}
        print(f"arrival {name}: {found[name]['median_tokens_per_s']:.1f} tok/s", flush=True)
    return found


def linear(model, repeats: int) -> dict:
    """Milliseconds of one pass over the LLM's linear layers for 1, 2, 4, 8, 16 rows (median of repeats)."""
    weights = [m.weight.detach() for m in model.llm.modules() if isinstance(m, torch.nn.Linear)]
    found = {}
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            typed = [w.to(dtype) for w in weights]
            times = {}
            for rows in (1, 2, 4, 8, 16):
                inputs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=dtype) for w in typed}
                runs = []
                for _ in range(repeats + 1):  # the first pass warms up
                    start = time.perf_counter()
                    for w in typed:
                        torch.nn.functional.linear(inputs[w.shape[1]], w)
                    runs.append(1e3 * (time.perf_counter() - start))
                times[rows] = statistics.median(runs[1:])
            name = str(dtype).removeprefix("torch.")
            found[name] = {"ms": times, "rows_8_vs_1": times[8] / times[1], "rows_16_vs_1": times[16] / times[1]}
            print(f"linear layers {name}: " + ", ".join(f"{r} rows {t:.1f} ms" for r, t in times.items()), flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="model dtype")
    parser.add_argument("--parts", default="batch,concurrency,single,arrival,linear")
    parser.add_argument("--counts", default="1,2,4,8,16")
    parser.add_argument("--modes", default=",".join(MODES), help="modes of the concurrency part")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(preset_name=args.preset)
    model = model.to(getattr(torch, args.dtype))
    parts, counts = args.parts.split(","), [int(n) for n in args.counts.split(",")]
    result = {"command": "PYTHONPATH=src python " + shlex.join(sys.argv), "preset": args.preset,
              "tokens": args.tokens, "repeats": args.repeats, "threads": args.threads, "dtype": args.dtype,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "load_average_before": os.getloadavg()}}
    if "batch" in parts:
        result["batch_vs_sequential"] = batch_vs_sequential(model, tokenizer, args.tokens, args.repeats, ("text", "gcc"))
    if "concurrency" in parts:
        result["concurrency"] = concurrency(model, tokenizer, args.tokens, args.repeats, args.modes.split(","), counts)
    if "single" in parts:
        result["single_stream"] = single_stream(model, tokenizer, args.tokens, args.repeats)
    if "arrival" in parts:
        result["arrival"] = arrival(model, tokenizer, args.tokens, args.repeats)
    if "linear" in parts:
        result["linear"] = linear(model, max(args.repeats, 5))
    result["machine"]["load_average_after"] = os.getloadavg()
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()

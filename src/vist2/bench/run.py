"""`vist2 bench`: measure text, PCC and GCC on one model, next to their analytic bounds.

Per scenario, length and mode: one generation under `ComponentFlops` (FLOPs by component;
it also warms the code path up and is not timed; past `count_limit` forwards the count is
made on the meta device instead, see `measure`), then `repeats` timed generations, forced
to full length (ignore_eos); timings are medians, the device is synchronised before each
clock read. Every figure sits next to what the layout implies (`vist2.bench.bounds`).
`paper_sizes` counts the paper's presets on the meta device, without weights.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from vist2.bench import bounds
from vist2.bench.flops import ComponentFlops, LLMShape, page_flops
from vist2.bench.scenarios import Case, prompt_text
from vist2.model import meta_model
from vist2.options import MODES, ChunkOptions, GenerationConfig, chunk_options

TIMINGS = ("time_to_first_token_s", "prefill_s", "decode_s", "render_s", "encode_s")
METHOD = (
    "Measured: one untimed generation per case and mode under torch.utils.flop_counter.FlopCounterMode "
    "(FLOPs split by module into llm, vision, aligner; SDPA's CPU kernel registered with torch's own SDPA "
    "formula), then `repeats` timed generations (medians; device synchronised before each clock read; "
    "ignore_eos so every run generates the full length). KV entries and bytes are the cache's own "
    "counts. Bounds: the forwards that each mode's layout implies (vist2.bench.bounds.forward_steps); "
    "kv bound = most entries they hold; flops_dense = what a dense kernel computes (must equal the "
    "count): the LLM's closed form plus, per page, the vision tower and aligner as FlopCounterMode "
    "counts them on the model built on the meta device, once per config (a library's change to the "
    "tower moves bound and count together); generations of more than --count-limit forwards are "
    "counted by the meta method below on the same config (flops_method says which); flops bound = linear layers on "
    "every token plus attention only on the (query, key) pairs the mask allows. Paper sizes: "
    "FlopCounterMode on the preset built on the meta device; LLM forwards grouped into runs whose cache grows by their own size each step, each run "
    "counted at its mean cache length (FLOPs are affine in it), so a 16K decode is a few dozen counted "
    "forwards; KV bytes at bf16."
)


def machine() -> dict:
    import transformers

    import vist2

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "vist2": vist2.__version__,
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fill_steps(model, tokenizer, prompt: str, config, renderer, options) -> list:
    """fill: the forwards of one generation, from the chunk lengths a probe run of it finds."""
    from vist2.generate import generate
    from vist2.prompt import build_prompt

    ids = tokenizer.encode(prompt, add_special_tokens=False)
    built = build_prompt(tokenizer, ids, config.mode, options.chunk_tokens, options.beta, renderer.fits,
                         options.fill(renderer, tokenizer))
    shape = bounds.PromptShape.of(tokenizer, len(ids))
    tail = built.positions - shape.user - shape.assistant - len(built.pages) * options.beta
    stats = generate(model, tokenizer, prompt, config, renderer, options).stats
    response = stats.chunk_lengths[len(built.chunk_lengths):]
    response.append(stats.generated_tokens - sum(response))
    return bounds.forward_steps(config.mode, shape, stats.generated_tokens, options.chunk_tokens, options.beta,
                                options.visual_sees_text, (len(built.pages), tail), response,
                                options.fill(renderer, tokenizer).max_tokens)


def measure(model, tokenizer, case: Case, mode: str, repeats: int, renderer, options: ChunkOptions,
            count_limit: int = 1500) -> dict:
    """All figures of one case and mode under chunk `options`, with their bounds. Generations of more than
    `count_limit` forwards are counted by the meta-device method on the same config instead
    (FlopCounterMode makes each forward ~10x slower; the two counts are equal, see tests).
    Under fill the bounds follow the chunks a probe generation cut."""
    from vist2.generate import generate

    config = GenerationConfig(mode=mode, max_new_tokens=case.response_tokens, ignore_eos=True)
    prompt = prompt_text(tokenizer, case.query_tokens)
    if options.chunking == "fill":
        steps = fill_steps(model, tokenizer, prompt, config, renderer, options)
    else:
        steps = bounds.forward_steps(mode, bounds.PromptShape.of(tokenizer, len(tokenizer.encode(
            prompt, add_special_tokens=False))), case.response_tokens, options.chunk_tokens,
            options.beta, options.visual_sees_text)
    page = page_flops(model.config)
    if len(steps) <= count_limit:
        with ComponentFlops(model) as flops:
            counted = generate(model, tokenizer, prompt, config, renderer, options)  # also the warm-up
        counts, method = flops.counts, "FlopCounterMode on this generation"
    else:
        warm_up = dataclasses.replace(config, max_new_tokens=min(case.response_tokens, 64))
        counted = generate(model, tokenizer, prompt, warm_up, renderer, options)
        counts, method = bounds.meta_flops(steps, meta_model(model.config), page), "FlopCounterMode, meta runs"
    runs, peaks = [], []
    for _ in range(repeats):
        if model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(model.device)
        _sync(model.device)
        start = time.perf_counter()
        result = generate(model, tokenizer, prompt, config, renderer, options)
        _sync(model.device)
        runs.append({**result.stats.as_dict(), "wall_s": time.perf_counter() - start})
        if model.device.type == "cuda":
            peaks.append(torch.cuda.max_memory_allocated(model.device))
    stats = counted.stats if len(steps) <= count_limit else result.stats  # KV figures are deterministic
    llm = LLMShape.from_hf(model.llm.config)
    kv_bound = bounds.kv_peak(steps)
    median = {name: statistics.median(run[name] for run in runs) for name in (*TIMINGS, "wall_s")}
    return {
        "scenario": case.scenario, "query_tokens": case.query_tokens, "response_tokens": case.response_tokens,
        "length": case.length, "mode": mode, "generated_tokens": stats.generated_tokens,
        "chunks_compressed": stats.chunks_compressed, **median,
        "decode_tokens_per_s": (stats.generated_tokens - 1) / median["decode_s"] if median["decode_s"] else None,
        "kv_tokens_peak": stats.kv_tokens_peak, "kv_tokens_final": stats.kv_tokens_final,
        "kv_bytes_peak": stats.kv_bytes_peak, "flops": counts, "flops_method": method,
        "peak_device_bytes": max(peaks) if peaks else None,
        "bound": {"kv_tokens_peak": kv_bound, "kv_tokens_final": bounds.kv_final(steps),
                  "kv_bytes_peak": kv_bound * llm.kv_bytes_per_token(model.dtype.itemsize),
                  "flops": bounds.layout_flops(steps, llm, page, options.bidirectional_visual),
                  "flops_dense": bounds.dense_flops(steps, llm, page), "forwards": len(steps)},
        "repeats": runs,
    }


def _key(row: dict) -> tuple:
    return row.get("preset"), row["scenario"], row["length"], row["mode"]


def ratios(rows: list[dict], kv_key: str = "kv_bytes_peak") -> list[dict]:
    """PCC and GCC against text at the same scenario and length (speed-ups and savings)."""
    table = {_key(r): r for r in rows}
    out = []
    for (preset, scenario, length, mode), row in table.items():
        text = table.get((preset, scenario, length, "text"))
        if mode == "text" or text is None:
            continue
        entry = {**({"preset": preset} if preset else {}), "scenario": scenario, "length": length, "mode": mode,
                 "kv_saving": 1 - row[kv_key] / text[kv_key],
                 "flops_saving": 1 - row["flops"]["total"] / text["flops"]["total"],
                 "flops_saving_llm_only": 1 - row["flops"]["llm"] / text["flops"]["llm"]}
        if "time_to_first_token_s" in row:
            entry["ttft_speedup"] = text["time_to_first_token_s"] / row["time_to_first_token_s"]
            if row["decode_tokens_per_s"] and text["decode_tokens_per_s"]:
                entry["decode_speedup"] = row["decode_tokens_per_s"] / text["decode_tokens_per_s"]
        out.append(entry)
    return out


def run_measurements(model, tokenizer, grid: list[Case], repeats: int, options: ChunkOptions,
                     count_limit: int = 1500, log=print) -> list[dict]:
    from vist2.render import Renderer

    renderer = Renderer(model.config.render)
    rows = []
    for case in grid:
        for mode in MODES:
            row = measure(model, tokenizer, case, mode, repeats, renderer, options, count_limit)
            log(f"  {case.scenario} q={case.query_tokens} r={case.response_tokens} {mode}: "
                f"ttft {1e3 * row['time_to_first_token_s']:.1f} ms, kv {row['kv_tokens_peak']}, "
                f"{row['flops']['total'] / 1e9:.3f} GFLOP")
            rows.append(row)
    return rows


def paper_sizes(names: list[str], grid: list[Case], element_size: int = 2) -> list[dict]:
    """FLOPs (meta-device count and bound) and KV of each paper preset over `grid`."""
    from vist2.bench.flops import count_page
    from vist2.presets import preset
    from vist2.tokenizer import load_tokenizer

    rows = []
    for name in names:
        config = preset(name)
        model = meta_model(config)
        tokenizer = load_tokenizer(config.tokenizer)
        options = chunk_options(model)
        llm = LLMShape.from_hf(model.llm.config)
        page = count_page(model)
        for case in grid:
            for mode in MODES:
                steps = bounds.forward_steps(mode, bounds.PromptShape.of(tokenizer, case.query_tokens),
                                             case.response_tokens, options.chunk_tokens, options.beta,
                                             options.visual_sees_text)
                kv = bounds.kv_peak(steps)
                rows.append({"preset": name, "scenario": case.scenario, "query_tokens": case.query_tokens,
                             "response_tokens": case.response_tokens, "length": case.length, "mode": mode,
                             "kv_tokens_peak": kv, "kv_bytes_peak": kv * llm.kv_bytes_per_token(element_size),
                             "flops": bounds.meta_flops(steps, model, page),
                             "bound": {"flops": bounds.layout_flops(steps, llm, page)}})
    return rows


def _g(flops: int) -> str:
    return f"{flops / 1e9:,.2f}" if flops < 1e12 else f"{flops / 1e12:,.1f}T"


def table(rows: list[dict]) -> str:
    """The terminal table: one line per case and mode, measured / bound, ratios against text."""
    ratio = {_key(r): r for r in ratios(rows)}
    head = (f"{'scenario':<13}{'len':>6} {'mode':<5}{'TTFT ms':>9}{'tok/s':>8}{'KV peak/bound':>16}"
            f"{'KV MiB':>8}{'GFLOP (llm+vis+al)':>20}{'/bound':>7}{'render s':>9}"
            f"{'TTFT x':>8}{'dec x':>7}{'KV -%':>7}{'FLOP -%':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        x = ratio.get(_key(r), {})
        tps = r["decode_tokens_per_s"]
        lines.append(
            f"{r['scenario']:<13}{r['length']:>6} {r['mode']:<5}{1e3 * r['time_to_first_token_s']:>9.1f}"
            f"{(f'{tps:.0f}' if tps else '-'):>8}{r['kv_tokens_peak']:>8}/{r['bound']['kv_tokens_peak']:<7}"
            f"{r['kv_bytes_peak'] / 2**20:>8.2f}{_g(r['flops']['total']):>20}"
            f"{r['flops']['total'] / r['bound']['flops']['total']:>7.3f}{r['render_s']:>9.3f}"
            + (f"{x['ttft_speedup']:>8.2f}{x.get('decode_speedup', 0):>7.2f}{100 * x['kv_saving']:>7.1f}"
               f"{100 * x['flops_saving']:>8.1f}" if x else ""))
    return "\n".join(lines)


def paper_table(rows: list[dict]) -> str:
    ratio = {_key(r): r for r in ratios(rows)}
    lines = [f"{'preset':<11}{'scenario':<13}{'len':>6} {'mode':<5}{'TFLOP':>9}{'LLM':>9}{'vision':>8}"
             f"{'KV GiB':>8}{'FLOP -%':>8}{'LLM-only -%':>12}{'KV -%':>7}"]
    for r in rows:
        x = ratio.get(_key(r))
        f = r["flops"]
        lines.append(f"{r['preset']:<11}{r['scenario']:<13}{r['length']:>6} {r['mode']:<5}{f['total'] / 1e12:>9.1f}"
                     f"{f['llm'] / 1e12:>9.1f}{(f['vision'] + f['aligner']) / 1e12:>8.1f}"
                     f"{r['kv_bytes_peak'] / 2**30:>8.2f}"
                     + (f"{100 * x['flops_saving']:>8.1f}{100 * x['flops_saving_llm_only']:>12.1f}"
                        f"{100 * x['kv_saving']:>7.1f}" if x else ""))
    return "\n".join(lines)


def write(result: dict, out: Path, name: str) -> list[Path]:
    """`name`.json, and `name`.png / `name`_paper_sizes.png plots where there are rows to plot."""
    from vist2.bench.plots import plot_measured, plot_paper_sizes

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json"]
    paths[0].write_text(json.dumps(result, indent=1) + "\n")
    if result.get("measurements"):
        model = result["model"]
        title = (f"{model['preset']}: K={model['chunk_tokens']}, beta={model['visual_tokens']}, "
                 f"{result['machine']['processor']}, torch {result['machine']['torch']}")
        paths.append(plot_measured(result["measurements"], out / f"{name}.png", title))
    if result.get("paper_sizes"):
        paths.append(plot_paper_sizes(result["paper_sizes"], out / f"{name}_paper_sizes.png"))
    return paths


def bench(model, tokenizer, grid: list[Case], repeats: int, out: Path, name: str = "bench",
          paper_presets: list[str] = (), paper_grid: list[Case] = (), command: str = "",
          arguments: dict | None = None, count_limit: int = 1500, log=print,
          options: ChunkOptions | None = None) -> tuple[dict, list[Path]]:
    """Measure `grid` on `model` under chunk `options` (default: the model's), count `paper_presets`
    over `paper_grid`, print tables, write files."""
    result = {"command": command, "arguments": arguments or {}, "machine": machine(), "method": METHOD}
    if grid:
        config = model.config
        options = options or chunk_options(model)
        result["model"] = {"preset": config.preset, "chunk_tokens": options.chunk_tokens,
                           "visual_tokens": options.beta, "ratio": options.chunk_tokens / options.beta,
                           "visual_sees_text": options.visual_sees_text,
                           "page": [config.render.width, config.render.height], "merge": config.aligner.merge,
                           "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device),
                           "parameters": model.num_parameters(), "config": config.to_dict()}
        log(f"measuring {len(grid)} cases x {len(MODES)} modes, {repeats} timed repeats each")
        result["measurements"] = run_measurements(model, tokenizer, grid, repeats, options, count_limit, log)
        result["ratios"] = ratios(result["measurements"])
        log(table(result["measurements"]))
    if paper_presets:
        log(f"counting {', '.join(paper_presets)} on the meta device")
        result["paper_sizes"] = paper_sizes(list(paper_presets), list(paper_grid))
        result["paper_ratios"] = ratios(result["paper_sizes"])
        log(paper_table(result["paper_sizes"]))
    paths = write(result, out, name)
    log("wrote " + ", ".join(str(p) for p in paths))
    return result, paths

"""KV store growth, before and after (issue 21.4): bytes the store copied while it grew and
decode tokens/s, one request of N generated tokens (greedy, ignore_eos) on the tiny preset.

"before" is the code of one commit (`--before`, default 59b000a: the store grew by 32 entries,
each time a copy of it), "after" of another (`--after`, default HEAD), each exported with
`git archive` into a temporary folder and run in a subprocess. Each case runs before then
after, one process each, `--repeats` times alternating, so both see the same load; a process
loads the model, warms up, then times one request: wall time and the process's CPU time
(less sensitive to other jobs on a shared machine). Figures are medians over the repeats.

    python benchmarks/kv_growth.py --after fc96ea1 --tokens 1024 4096 16384 --out benchmarks/kv_growth.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(mode: str, tokens: int) -> dict:
    """One request in this process (whichever vist2 is on the path); the store's copies counted."""
    import torch

    from vist2 import kvstore
    from vist2.engine import Engine
    from vist2.generate import GenerationConfig, load_model

    torch.set_num_threads(1)
    counted = {"reallocations": 0, "bytes_copied": 0}
    if not hasattr(kvstore.KVStore, "bytes_copied"):  # before: count what its _resize copies
        resize = kvstore.KVStore._resize

        def counting(store, slots, capacity):
            layers, _, heads, _, head_dim = store.shape
            kept = min(slots, store.slots) * min(capacity, store.capacity) * layers * heads * head_dim
            counted["reallocations"] += 1
            counted["bytes_copied"] += 2 * kept * store.keys.element_size()
            resize(store, slots, capacity)

        kvstore.KVStore._resize = counting
    model, tokenizer = load_model(preset_name="tiny")
    prompt = "Please summarise the following meeting notes and list the decisions. " * 2

    def run(count: int):
        engine = Engine(model, tokenizer)
        request = engine.add(prompt, GenerationConfig(mode=mode, max_new_tokens=count, ignore_eos=True))
        for _ in engine.run():
            pass
        return engine, request

    run(64)  # warm-up
    counted.update(reallocations=0, bytes_copied=0)
    started, cpu = time.perf_counter(), time.process_time()
    engine, request = run(tokens)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    if hasattr(engine.kv, "bytes_copied"):
        counted = {"reallocations": engine.kv.reallocations, "bytes_copied": engine.kv.bytes_copied}
    stats = request.stats
    return {**counted, "generated_tokens": stats.generated_tokens, "decode_s": stats.decode_s, "wall_s": wall,
            "cpu_s": cpu, "tokens_per_cpu_s": stats.generated_tokens / cpu,
            "decode_tokens_per_s": (stats.generated_tokens - 1) / stats.decode_s,
            "kv_tokens_peak": stats.kv_tokens_peak, "kv_bytes_peak": stats.kv_bytes_peak}


def child(source: Path, mode: str, tokens: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(source)}
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); import kv_growth; "
            f"print(json.dumps(kv_growth.measure({mode!r}, {tokens})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="59b000a", help="commit whose store is the baseline")
    parser.add_argument("--after", default="HEAD", help="commit whose store is measured against it")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--modes", nargs="+", default=["text", "gcc"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        sources = {}
        for name in ("before", "after"):
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", getattr(args, name), "src"],
                                     check=True, capture_output=True).stdout
            (Path(folder) / name).mkdir()
            subprocess.run(["tar", "-x", "-C", str(Path(folder) / name)], input=archive, check=True)
            sources[name] = Path(folder) / name / "src"
        for mode in args.modes:
            for tokens in args.tokens:
                runs = {name: [] for name in sources}
                for _ in range(args.repeats):
                    for name, source in sources.items():
                        runs[name].append(child(source, mode, tokens))
                row = {"mode": mode, "tokens": tokens, "runs": runs}
                for name in sources:
                    row[name] = {key: statistics.median(run[key] for run in runs[name]) for key in runs[name][0]}
                for ratio, key in (("decode_speedup", "decode_tokens_per_s"), ("cpu_speedup", "tokens_per_cpu_s")):
                    row[ratio] = row["after"][key] / row["before"][key]
                print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
                rows.append(row)
    result = {"command": "python " + shlex.join(sys.argv), "before": args.before, "after": args.after,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads 1; "
                         "shared with other jobs and loaded: tokens/s are comparable only within a row",
              "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

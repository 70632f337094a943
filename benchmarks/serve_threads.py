"""Which torch thread setting should `vist2 serve` default to? Candidates side by side.

Starts one server per candidate (all at once, same preset, `--mode gcc`), then runs the trials
interleaved (A B C D A B C D ...) so that the load of a shared machine falls on every candidate
alike. A trial is C concurrent streaming clients, one request each (greedy, `ignore_eos`,
`--tokens` tokens). Per trial: completion tokens/s (all tokens / wall time) and the server
process's CPU-seconds (user + system over all its threads, from /proc/PID/stat) per token.
Reports the median over `--repeats` trials of each candidate.

    nice env PYTHONPATH=src python benchmarks/serve_threads.py --preset tiny --tokens 512 \\
        --out benchmarks/serve_threads_tiny.json
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
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import one_request  # noqa: E402
from vist2.serve.health import free_port, wait_healthy  # noqa: E402

# The server started with torch's interop pool set to one thread before anything runs.
INTEROP_ONE = ("import sys, torch; torch.set_num_interop_threads(1); from vist2.cli import main; "
               "sys.exit(main(sys.argv[1:]))")


def candidates(cores: int, torch_threads: int) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (python arguments before `serve ...`, extra serve flags)."""
    spare = max(1, cores - 1)
    return {
        "1 thread": (["-m", "vist2"], ["--threads", "1"]),
        f"cores - 1 = {spare}": (["-m", "vist2"], ["--threads", str(spare)]),
        f"torch default = {torch_threads}": (["-m", "vist2"], ["--threads", str(torch_threads)]),
        f"{torch_threads} + interop 1": (["-c", INTEROP_ONE], ["--threads", str(torch_threads)]),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(prefix: list[str], flags: list[str], preset: str, tokens: int, dtype: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, *prefix, "serve", "--preset", preset, "--port", str(port), "--mode", "gcc",
               "--dtype", dtype, "--max-tokens", str(tokens), "--default-max-tokens", str(tokens), *flags]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), f"http://127.0.0.1:{port}"


async def trial(base: str, preset: str, clients: int, tokens: int) -> list[dict]:
    async with httpx.AsyncClient(timeout=900, limits=httpx.Limits(max_connections=clients + 2)) as client:
        return await asyncio.gather(*(one_request(client, base, preset, "gcc", tokens) for _ in range(clients)))


def measure(server: subprocess.Popen, base: str, preset: str, clients: int, tokens: int) -> dict:
    cpu_before, started = cpu_seconds(server.pid), time.perf_counter()
    results = asyncio.run(trial(base, preset, clients, tokens))
    wall, cpu = time.perf_counter() - started, cpu_seconds(server.pid) - cpu_before
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise SystemExit(f"{base}: {errors[0]}")
    generated = sum(r["tokens"] for r in results)
    return {"tokens": generated, "wall_s": round(wall, 3), "cpu_s": round(cpu, 2),
            "tokens_per_s": round(generated / wall, 1), "cpu_ms_per_token": round(1000 * cpu / generated, 2)}


def summary(servers: dict, trials: dict) -> list[dict]:
    return [{"candidate": name, "server": servers[name][0].args[1:], "clients": clients,
             "tokens_per_s_median": statistics.median(t["tokens_per_s"] for t in runs),
             "cpu_ms_per_token_median": statistics.median(t["cpu_ms_per_token"] for t in runs), "trials": runs}
            for name in servers for clients, runs in trials[name].items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--tokens", type=int, default=512, help="tokens per request")
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--repeats", type=int, default=3, help="trials of each candidate per client count")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    import torch

    cores, torch_threads, load_before = len(os.sched_getaffinity(0)), torch.get_num_threads(), os.getloadavg()
    servers = {name: start(prefix, flags, args.preset, args.tokens, args.dtype)
               for name, (prefix, flags) in candidates(cores, torch_threads).items()}
    trials: dict[str, dict[int, list[dict]]] = {name: {} for name in servers}
    try:
        for server, base in servers.values():
            wait_healthy(base, 600, server)
            asyncio.run(trial(base, args.preset, 1, 8))  # warm-up
        for clients in map(int, args.clients.split(",")):
            for repeat in range(args.repeats):
                for name, (server, base) in servers.items():  # interleaved: A B C D A B C D ...
                    trials[name].setdefault(clients, []).append(measure(server, base, args.preset, clients, args.tokens))
                    print(name, clients, json.dumps(trials[name][clients][-1]), flush=True)
                    rows = summary(servers, trials)
                    record = {"command": "nice env PYTHONPATH=src python " + " ".join(sys.argv), "cores": cores,
                              "torch_default_threads": torch_threads, "torch": torch.__version__,
                              "load_average_before": load_before, "load_average_after": os.getloadavg(),
                              "rows": rows}
                    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")  # so far: a cut run keeps it
    finally:
        for server, _ in servers.values():
            server.terminate()
        for server, _ in servers.values():
            server.wait(timeout=60)
    for row in rows:
        print(f"{row['candidate']:>22} | {row['clients']} | {row['tokens_per_s_median']:8.1f} tok/s | "
              f"{row['cpu_ms_per_token_median']:7.2f} CPU-ms/token")


if __name__ == "__main__":
    main()

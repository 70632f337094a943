"""Masked SDPA on CPU for a grouped-query backbone: key heads copied per query head (what
transformers does for a masked SDPA call) against `enable_gqa` (what `attention.py` does).

SmolLM2-135M's attention shape (9 query heads, 3 key heads, head dim 64), one torch thread,
one layer, a prompt piece of q positions at the end of a context of L, keys and values read
from a longer buffer as the engine's KV store holds them (capacity 9,000 entries):

    PYTHONPATH=src python benchmarks/gqa_attention.py --out benchmarks/gqa_attention.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = ((8, 7900), (32, 7900), (1024, 4096))
CAPACITY = 9000


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - started))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for q, length in SHAPES:
        query = torch.randn(1, 9, q, 64)
        keys, values = (torch.randn(1, 3, CAPACITY, 64)[:, :, :length] for _ in range(2))
        mask = torch.ones(1, 1, q, length, dtype=torch.bool).tril(length - q)

        def copied():
            expand = lambda t: t[:, :, None].expand(1, 3, 3, length, 64).reshape(1, 9, length, 64)
            return F.scaled_dot_product_attention(query, expand(keys), expand(values), attn_mask=mask)

        def grouped():
            return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, enable_gqa=True)

        assert torch.allclose(copied(), grouped(), atol=1e-6)
        row = {"queries": q, "context": length, "copied_ms": median_ms(copied, args.repeats),
               "enable_gqa_ms": median_ms(grouped, args.repeats)}
        row["speedup"] = row["copied_ms"] / row["enable_gqa_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    record = {"command": "PYTHONPATH=src python " + shlex.join(sys.argv), "torch": torch.__version__,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads 1",
              "load_average": os.getloadavg(), "rows": rows}
    with open(args.out, "w") as handle:
        json.dump(record, handle, indent=1)


if __name__ == "__main__":
    main()

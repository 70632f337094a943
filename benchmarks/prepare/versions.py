"""Prepare throughput and peak RSS of two source trees side by side (one child process each).

    git archive c90d052 src | tar -x -C /tmp/prep_old
    for tok in bytes qwen3; do for code in /tmp/prep_old/src $PWD/src; do rm -rf /tmp/prep_m_out
      nice -n 10 python benchmarks/prepare/versions.py $code $tok /tmp/vist2-pb/corpus-20MB /tmp/prep_m_out
    done; done
"""

import json
import os
import resource
import subprocess
import sys
import time

src, tokenizer, data, out = sys.argv[1:5]
env = dict(os.environ, PYTHONPATH=src, RAYON_NUM_THREADS="2")
start = time.perf_counter()
rc = subprocess.run([sys.executable, "-m", "vist2", "prepare", "--data", data, "--output", out, "--tokenizer",
                     tokenizer, "--quiet"], env=env, stdout=subprocess.DEVNULL).returncode
seconds = time.perf_counter() - start
manifest = json.load(open(os.path.join(out, "manifest.json")))
mb = sum(source["bytes"] for source in manifest["sources"]) / 1e6
print(json.dumps({"code": src, "tokenizer": tokenizer, "rc": rc, "mb": mb, "tokens": manifest["tokens"],
                  "seconds": round(seconds, 1), "mb_per_s": round(mb / seconds, 3),
                  "tokens_per_s": round(manifest["tokens"] / seconds),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}))

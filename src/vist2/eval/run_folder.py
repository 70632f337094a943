"""The eval runner's output folder: which files are ours, the run's settings, and resuming.

The runner owns four names in --out: run.json (the settings of the run, written before the
first prediction), predictions.jsonl (one record appended and flushed per finished sample and
mode), results.json and results.png (the summary, written at the end). Rerunning the same
command into the same folder resumes: samples already predicted (same task, length, id and
mode) are not generated again. A folder holding a run with other settings, or our file names
without run.json, is refused unless --overwrite; other files there are never touched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vist2.errors import Vist2Error
from vist2.eval.jsonl_files import regular_file

SETTINGS = "run.json"
PREDICTIONS = "predictions.jsonl"
OUTPUTS = (SETTINGS, PREDICTIONS, "results.json", "results.png")
# flags that change neither which samples are evaluated nor their predictions
NOT_SETTINGS = {"run", "command", "command_line", "debug", "out", "overwrite", "modes", "threads",
                "progress_bar", "batch_size", "device"}


def settings(args, module) -> dict:
    """What a resumed run must share with the first: the benchmark and every flag that shapes a prediction."""
    values = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_SETTINGS and not callable(v)}
    weights = sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns]  # a retrained --model is another run
                     for p in Path(args.model).glob("*.safetensors") if p.is_file()) if args.model else []
    return {"benchmark": module.NAME, "flags": json.loads(json.dumps(values, default=str)), "weights": weights}


def check(out: Path, args, module) -> bool:
    """Whether --out holds an earlier run of these settings to resume; raises when it is not ours to write."""
    if out.exists() and not out.is_dir():
        raise Vist2Error(f"--out {out} exists and is not a folder")
    present = [name for name in OUTPUTS if (out / name).exists()]
    if args.overwrite or not present:
        return False
    if SETTINGS not in present:
        raise Vist2Error(f"--out {out} already holds {', '.join(present)} without {SETTINGS}; pass --overwrite "
                         "to replace them or choose another folder")
    try:
        earlier = json.loads(regular_file(out / SETTINGS).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise Vist2Error(f"--out {out}: {SETTINGS} is not a run of ours; pass --overwrite or choose another "
                         "folder") from None
    now = settings(args, module)
    if earlier != now:
        differ = sorted(k for k in set(now["flags"]) | set(earlier.get("flags", {}))
                        if now["flags"].get(k) != earlier.get("flags", {}).get(k))
        what = f"benchmark {earlier.get('benchmark')!r}" if earlier.get("benchmark") != now["benchmark"] else \
            "--" + ", --".join(name.replace("_", "-") for name in differ) if differ else "the --model weights changed"
        raise Vist2Error(f"--out {out} holds a run with other settings ({what}); rerun with the same flags "
                         "to resume, or pass --overwrite, or choose another folder")
    return True


def start(out: Path, args, module, resume: bool) -> dict[tuple, dict]:
    """Prepare --out for writing and return the earlier run's records by key (empty unless resuming)."""
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        for name in OUTPUTS:  # ours, and --overwrite was given (or none existed)
            (out / name).unlink(missing_ok=True)
        (out / SETTINGS).write_text(json.dumps(settings(args, module), indent=1) + "\n", encoding="utf-8")
        return {}
    return _earlier(out / PREDICTIONS)


def key(record: dict) -> tuple:
    return record["task"], record["length"], record["id"], record["mode"]


def _earlier(path: Path) -> dict[tuple, dict]:
    """The records already in predictions.jsonl; an incomplete last line (a write cut short) is dropped and said."""
    if not path.exists():
        return {}
    data = regular_file(path).read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as handle:
            handle.truncate(cut)
        data = data[:cut]
        print(f"{path}: dropped an incomplete last line (a write cut short)", file=sys.stderr)
    records = {}
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        try:
            record = json.loads(line)
            records[key(record)] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            raise Vist2Error(f"{path}, line {number}: not a prediction record of ours; pass --overwrite or "
                             "choose another folder") from None
    return records

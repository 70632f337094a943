"""The eval runner's output folder: which files are ours, the run's settings, and resuming.

The runner owns five names in --out: run.json (the settings of the run, the sha256 of every
data file read among them, written before the first prediction), prompts.jsonl (each distinct
prompt with its sha256, which every prediction record names as prompt_sha256),
predictions.jsonl (one record appended and flushed per finished sample and mode), results.json
and results.png (the summary, written at the end). Rerunning the same
command into the same folder resumes: samples already predicted (same task, length, id and
mode) are not generated again. A folder holding a run with other settings, or our file names
without run.json, is refused unless --overwrite; other files there are never touched.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

from vist2.errors import Vist2Error
from vist2.jsonl_files import regular_file

SETTINGS = "run.json"
PREDICTIONS = "predictions.jsonl"
PROMPTS = "prompts.jsonl"
OUTPUTS = (SETTINGS, PROMPTS, PREDICTIONS, "results.json", "results.png")
# flags that change neither which samples are evaluated nor their predictions
NOT_SETTINGS = {"run", "command", "command_line", "debug", "out", "overwrite", "modes", "threads",
                "progress_bar", "batch_size", "device"}


def settings(args, module) -> dict:
    """What a resumed run must share with the first: the benchmark, every flag that shapes a
    prediction, the --model weights and the sha256 of each data file (module.data_files(args))."""
    values = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_SETTINGS and not callable(v)}
    weights = sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns]  # a retrained --model is another run
                     for p in Path(args.model).glob("*.safetensors") if p.is_file()) if args.model else []
    files = module.data_files(args) if hasattr(module, "data_files") else []
    return {"benchmark": module.NAME, "flags": json.loads(json.dumps(values, default=str)), "weights": weights,
            "data": {str(path): sha256_file(path) for path in files}}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_prompts(out: Path, samples) -> None:
    """prompts.jsonl: each distinct prompt (a sample's query) once, with its sha256."""
    with open(out / PROMPTS, "w", encoding="utf-8") as handle:
        for text in dict.fromkeys(sample.query for sample in samples):
            handle.write(json.dumps({"sha256": sha256_text(text), "prompt": text}, ensure_ascii=False) + "\n")


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
            "--" + ", --".join(name.replace("_", "-") for name in differ) if differ else \
            "the --model weights changed" if earlier.get("weights") != now["weights"] else "the data files changed"
        raise Vist2Error(f"--out {out} holds a run with other settings ({what}); rerun with the same flags "
                         "to resume, or pass --overwrite, or choose another folder")
    return True


def start(out: Path, args, module, earlier: dict[tuple, dict] | None) -> dict[tuple, dict]:
    """Prepare --out for writing; the earlier run's records by key when resuming (from `earlier`),
    else a fresh run.json and no records."""
    out.mkdir(parents=True, exist_ok=True)
    if earlier is not None:
        return earlier
    for name in OUTPUTS:  # ours, and --overwrite was given (or none existed)
        (out / name).unlink(missing_ok=True)
    (out / SETTINGS).write_text(json.dumps(settings(args, module), indent=1) + "\n", encoding="utf-8")
    return {}


def key(record: dict) -> tuple:
    return record["task"], record["length"], record["id"], record["mode"]


# fields of a prediction record that resuming and summarizing read, with their JSON types
RECORD_FIELDS = {"id": str, "task": str, "mode": str, "prediction": str, "references": list, "scores": dict,
                 "stats": dict}
SUMMARY_STATS = ("kv_tokens_peak", "kv_tokens_full_text", "time_to_first_token_s")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_record(record, where: str) -> None:
    """A prediction record as the runner wrote it: every field it reads later, of its type."""
    if not isinstance(record, dict):
        raise Vist2Error(f"{where}: not a prediction record (a JSON object)")
    for name, kind in RECORD_FIELDS.items():
        if not isinstance(record.get(name), kind):
            raise Vist2Error(f"{where}: field {name!r} is missing or not a {kind.__name__}")
    length = record.get("length", "missing")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
        raise Vist2Error(f"{where}: field 'length' must be an integer or null")
    scores, stats = record["scores"], record["stats"]
    if "score" not in scores or not all(_number(v) for v in scores.values()):
        raise Vist2Error(f"{where}: field 'scores' must hold 'score' and only finite numbers")
    if not all(_number(stats.get(name)) for name in SUMMARY_STATS):
        raise Vist2Error(f"{where}: field 'stats' must hold finite numbers {', '.join(SUMMARY_STATS)}")


def earlier(path: Path) -> dict[tuple, dict]:
    """The records already in predictions.jsonl, each checked; an incomplete last line (a write
    cut short) is dropped and said."""
    if not path.exists():
        return {}
    data = regular_file(path).read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as handle:
            handle.truncate(cut)
        data = data[:cut]
        print(f"{path}: dropped an incomplete last line (a write cut short)", file=sys.stderr)
    records, names = {}, {}  # names: the score names of each task's first record, and its line
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        where = f"{path}, line {number}"
        try:
            record = json.loads(line, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError, RecursionError):
            raise Vist2Error(f"{where}: not a prediction record of ours (not JSON); pass --overwrite or choose "
                             "another folder") from None
        check_record(record, where)
        first, at = names.setdefault(record["task"], (sorted(record["scores"]), number))
        if sorted(record["scores"]) != first:
            raise Vist2Error(f"{where}: scores {sorted(record['scores'])} differ from line {at}'s {first} for task "
                             f"{record['task']!r}; pass --overwrite or choose another folder")
        records[key(record)] = record
    return records


def _no_constant(name: str):
    raise ValueError(name)

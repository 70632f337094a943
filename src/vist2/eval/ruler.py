"""RULER (Hsieh et al., 2024) from NVIDIA's own code: `pip install --no-deps nvidia-long-context-eval==26.3`.

Nothing of RULER is re-implemented here. For each task and length, its generator script
(`long_context_eval/data/synthetic/<task>.py`, with the arguments its `synthetic.yaml` gives the
task) runs as a subprocess into a temporary folder, counting tokens with our tokenizer (saved
there as a Hugging Face folder). Predictions are scored with the package's per-sample metric
for the task (`string_match_all` or `string_match_part`, 0-100). Each (task, length) stands
alone: one whose generator fails, runs past GENERATOR_TIMEOUT_S, gives a sample without an
answer, or cannot fit its smallest context (seen from the generator's own output, in seconds)
becomes an error row naming the reason, and the other tasks are generated and scored.
RULER's lines (or the error) are kept in --out/ruler-samples/<task>-<length>/samples.json with
the settings that made them (seed, count, template, tokenizer hash, package version) and reused
when the run is resumed or repeated; --overwrite generates them again.

The prompt is built as RULER's `prepare.py` builds it for its "base" model template: the task
template followed by the task's answer prefix, all of it the user message of our chat prompt
(our generation cannot prefill the assistant turn). NLTK's punkt sentence model comes from the
punkt_tab files that `llama-index-core` ships (`pip install --no-deps llama-index-core==0.14.25`;
never imported), so nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from vist2.errors import Vist2Error
from vist2.jsonl_files import regular_file
from vist2.eval.sample import EvalSample
from vist2.inputs import integer

NAME = "ruler"
PACKAGES = ("nvidia-long-context-eval", "wonderwords", "nltk", "llama-index-core")
TASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
         "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2")
GENERATOR_TIMEOUT_S = 600  # per task and length
CACHE = "ruler-samples"  # --out/ruler-samples/<task>-<length>/samples.json: RULER's lines, reused on resume
_TRY = re.compile(r"Max length (?P<max>\d+) \| Current length (?P<current>\d+) \|")
_FOUND = re.compile(r"(Num haystack|Number of documents|Num noises|num_words): (?P<count>-?\d+)\s*$")
MAX_LENGTH = 2**21  # 2M tokens, well past RULER's largest published length (128K)


def add_arguments(parser) -> None:
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated RULER tasks (default all 13)")
    parser.add_argument("--lengths", default="1024,2048,4096",
                        help="comma-separated total lengths in tokens, prompt + answer (default 1024,2048,4096)")
    parser.add_argument("--data-seed", type=integer(0, 2**32 - 1), default=42,
                        help="RULER's random seed for the samples, in [0, 2**32) (default 42)")


def check_arguments(args) -> None:
    args.task_list = _names(args.tasks)
    unknown = [t for t in args.task_list if t not in TASKS]
    if unknown or not args.task_list:
        raise Vist2Error(f"--tasks: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(TASKS)}")
    try:
        args.length_list = [int(n) for n in _names(args.lengths)]
    except ValueError:
        raise Vist2Error(f"--lengths must be comma-separated integers, got {args.lengths!r}") from None
    if not args.length_list or min(args.length_list) < 256 or max(args.length_list) > MAX_LENGTH:
        raise Vist2Error(f"--lengths must be integers in [256, {MAX_LENGTH}], got {args.lengths!r}")


def load_samples(args, tokenizer) -> list[EvalSample]:
    """Every task at every length; a (task, length) RULER cannot generate is one sample carrying
    `extra["error"]` (the runner makes it an error row). Samples are cached in --out/ruler-samples."""
    check_arguments(args)
    package = _package()
    configs, templates = _task_configs(package)
    samples = []
    with tempfile.TemporaryDirectory(prefix="vist2-ruler-") as folder:
        tokenizer_dir = Path(folder) / "tokenizer"
        tokenizer.save_pretrained(tokenizer_dir)
        tokenizer_sha = _folder_hash(tokenizer_dir)
        for task in args.task_list:
            kind = configs[task]["task"]
            template = templates[kind]["template"] + templates[kind].get("answer_prefix", "")
            tokens = templates[kind]["tokens_to_generate"]  # RULER's answer budget for the task
            for length in args.length_list:
                settings = {"task": task, "length": length, "samples": args.samples, "seed": args.data_seed,
                            "tokens_to_generate": tokens, "template": template, "args": configs[task]["args"],
                            "tokenizer_sha256": tokenizer_sha, "package": _version()}
                cache = Path(args.out) / CACHE / f"{task}-{length}"
                found = None if args.overwrite else _cached(cache, settings)
                if found is None:
                    try:
                        found = {"lines": _checked(_generate(package, Path(folder), tokenizer_dir, task,
                                                             configs[task], template, tokens, length,
                                                             args.samples, args.data_seed), task, length)}
                    except Vist2Error as error:
                        found = {"error": str(error)}
                    _store(cache, settings, found)
                extra = {"ruler_task": kind}
                if "error" in found:
                    print(f"ruler: {found['error']}", file=sys.stderr)
                    samples.append(EvalSample(id=f"{task}-{length}-error", task=task, query="", references=(),
                                              max_new_tokens=tokens, length=length,
                                              extra={**extra, "error": found["error"]}))
                    continue
                samples += [EvalSample(id=f"{task}-{length}-{line['index']}", task=task, query=line["input"],
                                       references=tuple(line["outputs"]), max_new_tokens=tokens, length=length,
                                       extra={**extra, "ruler_tokens": line["length"]})
                            for line in found["lines"]]
    return samples


def score(sample: EvalSample, prediction: str) -> dict[str, float]:
    from long_context_eval.eval.synthetic.constants import TASKS as METRICS

    metric = METRICS[sample.extra["ruler_task"]]["metric_fn_per_sample"]
    cleaned = "".join("\n" if ord(c) < 32 else c for c in prediction.strip()).strip()  # as RULER's evaluate.py
    return {"score": float(metric([cleaned], [list(sample.references)])[0])}


def punkt_folder() -> Path:
    """NLTK data folder holding tokenizers/punkt_tab, from the llama-index-core wheel's files."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        folder = Path(distribution("llama-index-core").locate_file("llama_index/core/_static/nltk_cache"))
    except PackageNotFoundError:
        folder = None
    if folder is None or not (folder / "tokenizers" / "punkt_tab" / "english").is_dir():
        raise Vist2Error("RULER needs NLTK's punkt_tab: pip install --no-deps llama-index-core==0.14.25")
    return folder


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _package() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("long_context_eval")
    if spec is None or not spec.submodule_search_locations:
        raise Vist2Error("RULER needs: pip install --no-deps nvidia-long-context-eval==26.3 (and wonderwords)")
    return Path(list(spec.submodule_search_locations)[0])


def _task_configs(package: Path) -> tuple[dict, dict]:
    """RULER's task table (synthetic.yaml) and its templates and answer lengths per task kind."""
    import yaml

    from long_context_eval.data.synthetic.constants import TASKS as TEMPLATES

    with open(package / "synthetic.yaml", encoding="utf-8") as handle:
        return yaml.safe_load(handle), TEMPLATES


def _generate(package: Path, folder: Path, tokenizer_dir: Path, task: str, config: dict, template: str,
              tokens: int, length: int, samples: int, seed: int) -> list[dict]:
    """Run RULER's generator script for one task and length; its JSONL lines.

    Each generator first searches the largest context (documents, noises, words, haystack) that
    fits, printing "Current length C" per try and then the count found. A count of 0 means even
    its smallest context exceeds the length, and its retry loop would then never end: the script
    is stopped as soon as that line appears. Anything else gets GENERATOR_TIMEOUT_S seconds."""
    script = package / "data" / "synthetic" / f"{config['task']}.py"
    command = [sys.executable, "-u", str(script), "--save_dir", str(folder / "data"), "--save_name",
               f"{task}-{length}", "--tokenizer_path", str(tokenizer_dir), "--tokenizer_type", "hf",
               "--max_seq_length", str(length), "--tokens_to_generate", str(tokens), "--num_samples", str(samples),
               "--random_seed", str(seed), "--template", template]
    for key, value in config["args"].items():
        command += [f"--{key}", str(value)]
    env = dict(os.environ, NLTK_DATA=str(punkt_folder()), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryFile(mode="w+") as errors, \
            subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=errors, text=True) as process:
        stop = threading.Timer(GENERATOR_TIMEOUT_S, process.kill)
        stop.start()
        tries, cannot = [], None
        try:
            for line in process.stdout:
                if match := _TRY.search(line):
                    tries.append((int(match["max"]), int(match["current"])))
                elif (match := _FOUND.match(line)) and int(match["count"]) <= 0 and tries:
                    cannot = tries[-1]
                    process.kill()
            process.wait()
        finally:
            timed_out = not stop.is_alive() and cannot is None and process.returncode != 0
            stop.cancel()
        if cannot is not None:
            raise Vist2Error(f"RULER's {task} generator cannot fit its smallest context at length {length}: "
                             f"its smallest try needs {cannot[1]} tokens with this tokenizer where it allows "
                             f"{cannot[0]}")
        if timed_out:
            raise Vist2Error(f"RULER's {task} generator did not finish in {GENERATOR_TIMEOUT_S} s at length {length}")
        errors.seek(0)
        tail = errors.read().strip().splitlines()[-1:] or ["no output"]
    output = folder / "data" / f"{task}-{length}" / "validation.jsonl"
    if process.returncode != 0 or not output.is_file():
        raise Vist2Error(f"RULER's {task} generator failed at length {length}: {tail[0][:300]}")
    with open(output, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _checked(lines: list[dict], task: str, length: int) -> list[dict]:
    """The generator's samples, refused when one has no reference to score against."""
    if not lines or any(not line.get("outputs") for line in lines):
        raise Vist2Error(f"RULER's {task} generator gave a sample without an answer at length {length}")
    return lines


def _cached(cache: Path, settings: dict) -> dict | None:
    """The lines (or the error) stored for these settings, or None."""
    try:
        stored = json.loads(regular_file(cache / "samples.json", None).read_text(encoding="utf-8"))
    except (Vist2Error, OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return stored["found"] if isinstance(stored, dict) and stored.get("settings") == settings else None


def _store(cache: Path, settings: dict, found: dict) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / "samples.json.partial"
    partial.write_text(json.dumps({"settings": settings, "found": found}, ensure_ascii=False) + "\n", encoding="utf-8")
    partial.replace(cache / "samples.json")


def _folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nvidia-long-context-eval")
    except PackageNotFoundError:
        return None

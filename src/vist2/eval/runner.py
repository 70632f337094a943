"""The generic benchmark runner: every sample in every mode, scored, as tidy rows.

A benchmark module exposes NAME, add_arguments(parser), load_samples(args, tokenizer) and
score(sample, prediction) (or run(args, model, tokenizer) -> (rows, records)); optionally
check_arguments(args), called before anything is loaded, data_files(args), the files it reads
(their sha256 go into run.json), pool(row), which turns a row's means into the benchmark's own
pooled score, and PACKAGES, versions to record.
The runner writes into --out only the files it owns (`run_folder`): each prediction is appended
to predictions.jsonl as it finishes, so an interrupted run resumes when rerun into the same folder.

    vist2 eval ruler --preset tiny --tasks vt --lengths 1024 --samples 2 --out /tmp/ruler
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

from vist2.errors import Vist2Error
from vist2.eval import run_folder, shard
from vist2.eval.rows import plot, summarize, table
from vist2.eval.sample import EvalSample, Row
from vist2.flags import check_model_source, chunk_options_from, generation_config
from vist2.folder_lock import hold
from vist2.options import MODES, ChunkOptions


def run(args, module) -> list[Row]:
    """Check every flag, lock --out and check what it holds, load the model, evaluate, write the
    outputs and print the table."""
    modes = check_arguments(args, module)
    if shard.launched() and hasattr(module, "run"):
        raise Vist2Error(f"{module.NAME} runs in one process: launch it without torchrun or accelerate")
    rank, _ = shard.processes()  # several processes: rank 0 owns --out (vist2.eval.shard)
    out = Path(args.out)
    held, earlier = claim(out, args, module) if rank == 0 else (None, None)
    try:
        return _run(args, module, modes, out, earlier, rank)
    finally:
        if held is not None:
            held.close()


def claim(out: Path, args, module):
    """Create --out and lock it for this process, then check what it holds: under the lock, so no
    other run writes there between this check and our writes. (lock or None, the earlier run's
    records by key when resuming, each checked, else None)."""
    if out.exists() and not out.is_dir():
        raise Vist2Error(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    held = hold(out, "--out")  # a second eval into the same folder is refused while this one runs
    try:
        resume = run_folder.check(out, args, module) and not hasattr(module, "run")
        return held, run_folder.earlier(out / run_folder.PREDICTIONS) if resume else None
    except BaseException:
        if held is not None:
            held.close()
        raise


def _run(args, module, modes: list[str], out: Path, earlier: dict | None, rank: int) -> list[Row]:
    import torch

    from vist2.generate import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, args.preset, args.seed, shard.device(args.device), args.dtype)
    start = time.perf_counter()
    if hasattr(module, "run"):  # no per-sample records to resume from: all files at the end
        rows, records = module.run(args, model, tokenizer)
        run_folder.start(out, args, module, None)
        with open(out / run_folder.PREDICTIONS, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    else:
        options = chunk_options_from(args, model)
        samples = shard.share(lambda: module.load_samples(args, tokenizer))
        if not samples:
            raise Vist2Error(f"{module.NAME}: no samples to evaluate")
        check_unique(module.NAME, samples)
        done = shard.share(lambda: run_folder.start(out, args, module, earlier))
        if rank == 0:
            run_folder.write_prompts(out, samples)
        quiet = argparse.Namespace(**{**vars(args), "progress_bar": args.progress_bar and rank == 0})
        with open(out / run_folder.PREDICTIONS, "a", encoding="utf-8") if rank == 0 else nullcontext() as handle:
            try:
                records = evaluate(model, tokenizer, shard.mine(samples), modes, module.score, quiet, options, done,
                                   handle)
                records = shard.merge(records, samples, modes, done, handle)
            except KeyboardInterrupt:
                print(f"finished predictions are in {out / run_folder.PREDICTIONS}; rerun the same command to "
                      "resume", file=sys.stderr)
                raise
        if rank != 0:
            shard.finish()
            return []
        rows = summarize(module.NAME, records, None if options.chunking == "fill" else options.ratio)
        rows = [module.pool(row) for row in rows] if hasattr(module, "pool") else rows
    write_outputs(out, args, module, rows, time.perf_counter() - start)
    print(table(rows))
    print(f"wrote {', '.join(name for name in run_folder.OUTPUTS if (out / name).exists())} to {args.out}")
    shard.finish()
    return rows


def check_arguments(args, module) -> list[str]:
    """Every common flag and the benchmark's own (check_arguments), before --out is touched; the modes."""
    allowed = getattr(module, "MODES", MODES)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in allowed]
    if bad or not modes or len(set(modes)) != len(modes):
        only = "" if allowed == MODES else f" ({module.NAME} has no other modes)"
        raise Vist2Error(f"--modes must be distinct names from {', '.join(allowed)}, got {args.modes!r}{only}")
    for flag in ("samples", "batch_size", "threads", "max_new_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise Vist2Error(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.threads is not None and args.threads > 4096:
        raise Vist2Error(f"--threads must be at most 4096, got {args.threads}")
    for flag in ("temperature", "top_p", "repetition_penalty"):
        if not math.isfinite(getattr(args, flag)):
            raise Vist2Error(f"--{flag.replace('_', '-')} must be a finite number, got {getattr(args, flag)}")
    for mode in set(modes) & set(MODES):
        generation_config(args, mode, args.max_new_tokens or 1)  # raises on bad sampling flags
    check_model_source(args)
    if hasattr(module, "check_arguments"):
        module.check_arguments(args)
    return sorted(modes, key=lambda mode: (MODES + allowed).index(mode))


def check_unique(benchmark: str, samples: list[EvalSample]) -> None:
    """Refuse two samples with one prediction key: they would share a record and one score."""
    seen = set()
    for sample in samples:
        if (sample.task, sample.length, sample.id) in seen:
            raise Vist2Error(f"{benchmark}: two samples of task {sample.task} have the id {sample.id!r}; "
                             "sample ids must be unique")
        seen.add((sample.task, sample.length, sample.id))


def chat_template(sample: EvalSample) -> bool:
    """Whether the sample's prompt goes through the chat template (LongBench's trec, lcc, ... do not)."""
    return sample.extra.get("chat_template", True) is not False


def sample_config(args, mode: str, sample: EvalSample):
    """The GenerationConfig a sample is generated with in `mode` (batches share one: `batches`)."""
    config = generation_config(args, mode, args.max_new_tokens or sample.max_new_tokens)
    return replace(config, chat_template=chat_template(sample), stop_strings=config.stop_strings + stop_strings(sample))


def stop_strings(sample: EvalSample) -> tuple[str, ...]:
    """The sample's own stop strings (lm-eval's `until` for GSM8K's few-shot prompt), added to --stop."""
    return tuple(sample.extra.get("stop_strings", ()))


def batches(samples: list[EvalSample], size: int, tokenizer) -> list[list[EvalSample]]:
    """Batches of similar prompt length, equal max_new_tokens, chat template and stop strings
    (one GenerationConfig each)."""
    lengths = {id(s): len(tokenizer.encode(s.query, add_special_tokens=False)) for s in samples}
    same = lambda s: (s.max_new_tokens, chat_template(s), stop_strings(s))  # noqa: E731
    ordered = sorted(samples, key=lambda s: (*same(s), lengths[id(s)]))
    groups = []
    for sample in ordered:
        if groups and len(groups[-1]) < size and same(groups[-1][0]) == same(sample):
            groups[-1].append(sample)
        else:
            groups.append([sample])
    return groups


def evaluate(model, tokenizer, samples: list[EvalSample], modes: list[str], score, args, options: ChunkOptions,
             done: dict[tuple, dict] | None = None, sink=None) -> list[dict]:
    """Generate and score every sample in every mode not already in `done` (records by
    `run_folder.key`) under chunk `options`, each record written to `sink` and flushed as it
    finishes; returns all records of these samples and modes, mode by mode in sample order."""
    from tqdm import tqdm

    from vist2.generate import generate

    done = dict(done or {})
    keys = {mode: [(s.task, s.length, s.id, mode) for s in samples] for mode in modes}
    todo = {mode: [s for s, k in zip(samples, keys[mode]) if k not in done and not s.extra.get("error")]
            for mode in modes}
    check_lengths(model, tokenizer, todo, args, options)
    total, skipped = len(samples) * len(modes), sum(len(samples) - len(t) for t in todo.values())
    skipped -= sum(1 for s in samples if s.extra.get("error")) * len(modes)  # not predictions
    done.update({k: error_record(s, k[3]) for mode in modes for s, k in zip(samples, keys[mode])
                 if s.extra.get("error")})
    if skipped:
        print(f"resuming: {skipped} of {total} predictions already in --out", file=sys.stderr)
    with tqdm(total=total, initial=skipped, desc="eval", unit="sample", disable=not args.progress_bar) as bar:
        for mode in modes:
            for group in batches(todo[mode], args.batch_size, tokenizer) if todo[mode] else []:
                config = sample_config(args, mode, group[0])
                results = generate(model, tokenizer, [s.query for s in group], config, options=options)
                for sample, result in zip(group, results):
                    record = {
                        "id": sample.id, "task": sample.task, "length": sample.length, "mode": mode,
                        "prompt_sha256": run_folder.sha256_text(sample.query), "prediction": result.text,
                        "references": list(sample.references), "scores": score(sample, result.text),
                        "finish_reason": result.finish_reason, "stats": result.stats.as_dict(),
                        "max_new_tokens": config.max_new_tokens, "benchmark_max_new_tokens": sample.max_new_tokens,
                    }
                    done[run_folder.key(record)] = record
                    if sink is not None:
                        sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                        sink.flush()
                bar.update(len(group))
    return [done[k] for mode in modes for k in keys[mode]]


def check_lengths(model, tokenizer, todo: dict[str, list[EvalSample]], args, options) -> None:
    """Refuse, before generating anything, a sample whose prompt and answer exceed the model's
    positions in a mode, naming its file and line (extra["where"]) and id."""
    from vist2.engine import Engine

    engine = Engine(model, tokenizer, options=options)
    for mode, samples in todo.items():
        for sample in samples:
            try:
                engine.request(sample.query, sample_config(args, mode, sample))
            except Vist2Error as error:
                cut = " (--max-prompt-tokens N cuts prompts in the middle)" \
                    if hasattr(args, "max_prompt_tokens") else ""
                raise Vist2Error(f"{sample.extra.get('where', sample.task)}: sample {sample.id!r} does not fit the "
                                 f"model: {error}{cut}") from None


def error_record(sample: EvalSample, mode: str) -> dict:
    """The record of a sample the benchmark could not provide (`extra["error"]`): nothing generated."""
    return {"id": sample.id, "task": sample.task, "length": sample.length, "mode": mode,
            "error": sample.extra["error"], "references": [], "scores": {}, "stats": {}}


def versions(module) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("vist2", "torch", "transformers", *getattr(module, "PACKAGES", ())):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def write_outputs(out: Path, args, module, rows: list[Row], seconds: float) -> None:
    """results.json and results.png (predictions.jsonl is written as the run goes)."""
    model = args.model if args.model else f"preset {args.preset} (seed {args.seed})"
    result = {"model": model, "command": args.command_line, "versions": versions(module),
              "seconds": round(seconds, 1), "rows": [row.as_dict() for row in rows]}
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    plot(rows, out / "results.png", f"{module.NAME}: {model}")

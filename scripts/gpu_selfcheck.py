"""A few-minute self-check of the GPU paths, for your machine; writes one JSON for a bug report.

    PYTHONPATH=src python scripts/gpu_selfcheck.py --output selfcheck.json            # on a GPU
    PYTHONPATH=src python scripts/gpu_selfcheck.py --device cpu --output cpu.json    # reduced

Checks (each passes or fails on its own; exit status 1 if any fails):
- flex_vs_sdpa: FlexAttention with each training stage's BlockMask against SDPA with the dense
  mask: the attention kernel (forward, and backward on a GPU), and on a GPU the whole tiny model
  (logits and every gradient). Tolerances: kernel 1e-4, logits 1e-3, gradients 1e-3 of the largest.
- bf16_train: a few AdamW steps under bf16 autocast of the tiny and the vist2-0.6b shape (random
  weights; 0.6b on a GPU only), gradient checkpointing on; every loss must be finite.
- gcc_verify_bf16: `vist2.verify` (incremental gcc/pcc/text generation against one teacher-forced
  forward) on the tiny model in bf16: largest logit difference under 5e-2.
- engine_decode: greedy gcc generation through `vist2.engine.Engine` (tokens per second; the
  engine has no compiled decode step to try yet).
- step_time (GPU only): one training step (forward + backward) of the vist2-0.6b shape in bf16 at
  2K, 4K and 8K tokens, FlexAttention vs SDPA with the dense mask: median seconds and peak memory.
On a CPU the kernel check runs forward only (FlexAttention has no CPU backward) and the 0.6b
shape and the timings are skipped: this reduced form runs in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from vist2 import layout as L
from vist2 import stages
from vist2.model import Vist2Model
from vist2.presets import preset
from vist2.render import Renderer
from vist2.tokenizer import byte_tokenizer

WORDS = "the of and to in is was for on that with as by at from this are be or an it not which have".split()


def text_ids(tokenizer, tokens: int) -> list[int]:
    words = " ".join(WORDS[(i * i + 3 * i) % len(WORDS)] for i in range(tokens))
    return tokenizer.encode(words)[:tokens]


def stage_examples(config, tokenizer, tokens: int) -> dict[str, stages.Example]:
    """One example per layout kind training builds, with byte ids (valid in every preset's vocabulary)."""
    K, beta, pad = config.chunk.chunk_tokens, config.visual_tokens, tokenizer.pad_token_id
    ids = text_ids(tokenizer, tokens)
    fits = Renderer(config.render).fits
    return {
        "ocr": stages.ocr(tokenizer, ids[:K], K, beta, pad),
        "olm": stages.olm(tokenizer, ids, K, beta, pad, sees_text=True),
        "olm_blind": stages.olm(tokenizer, ids, K, beta, pad, sees_text=False),
        "sft": stages.sft(tokenizer, ids[: tokens // 2], ids[: tokens // 4], K, beta, pad, True, fits),
    }


def batch_for(config, examples: list[stages.Example], device) -> dict[str, torch.Tensor]:
    tokenizer = byte_tokenizer()
    batch = stages.collate(examples, Renderer(config.render), tokenizer.pad_token_id,
                           config.chunk.bidirectional_visual)
    return {name: value.to(device) for name, value in batch.items()}


def check_flex_vs_sdpa(device: torch.device, gpu: bool) -> dict:
    from torch.nn.attention.flex_attention import flex_attention

    attend = torch.compile(flex_attention) if gpu else flex_attention  # fused kernels on a GPU
    config = preset("tiny")
    result = {"tolerance": {"kernel": 1e-4, "logits": 1e-3, "gradients_relative": 1e-3}, "kernel": {}}
    examples = stage_examples(config, byte_tokenizer(), 3 * config.chunk.chunk_tokens)
    generator = torch.Generator().manual_seed(0)
    for name, example in examples.items():
        layouts, T = [example.layout], len(example.ids)
        q, k, v = (torch.randn(1, 4, T, 16, generator=generator).to(device).requires_grad_(gpu) for _ in range(3))
        dense = L.attention_mask(layouts).to(device)
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
        found = attend(q, k, v, block_mask=L.block_mask(layouts, device=device))
        row = {"tokens": T, "forward": float((found - expected).abs().max())}
        if gpu:
            expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
            found_grads = torch.autograd.grad(found.square().sum(), (q, k, v))
            row["backward"] = max(float((a - b).abs().max()) for a, b in zip(found_grads, expected_grads))
        result["kernel"][name] = row
    ok = all(v <= 1e-4 for row in result["kernel"].values() for key, v in row.items() if key != "tokens")
    if gpu:  # the whole model: the training path turns the dense mask into a BlockMask
        torch.manual_seed(0)
        sdpa = Vist2Model(config).to(device).train()
        flex = Vist2Model(config.replace(attn_implementation="flex_attention")).to(device).train()
        flex.load_state_dict(sdpa.state_dict())
        batch = batch_for(config, list(examples.values()), device)
        outputs = [model(**batch) for model in (sdpa, flex)]
        for output in outputs:
            output.loss.backward()
        logits = float((outputs[0].logits - outputs[1].logits).abs().max())
        grads = [dict((n, p.grad) for n, p in model.named_parameters() if p.grad is not None) for model in (sdpa, flex)]
        scale = max(float(g.abs().max()) for g in grads[0].values())
        relative = max(float((grads[0][n] - grads[1][n]).abs().max()) for n in grads[0]) / scale
        result["model"] = {"logits": logits, "gradients_relative": relative}
        ok = ok and logits <= 1e-3 and relative <= 1e-3
    return {**result, "ok": ok}


def train_steps(config, device, tokens: int, steps: int, checkpointing: bool = True) -> list[float]:
    torch.manual_seed(0)
    model = Vist2Model(config).to(device).train()
    if checkpointing:
        for part in (model.llm, model.vision.model):
            part.activation_checkpointing_enable({"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = batch_for(config, [stage_examples(config, byte_tokenizer(), tokens)["olm"]], device)
    losses = []
    for _ in range(steps):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def check_bf16_train(device: torch.device, gpu: bool) -> dict:
    result = {}
    for name in ("tiny", "vist2-0.6b") if gpu else ("tiny",):
        config = preset(name)
        began = time.perf_counter()
        losses = train_steps(config, device, 2 * config.chunk.chunk_tokens, steps=3)
        result[name] = {"losses": losses, "seconds": time.perf_counter() - began}
    if not gpu:
        result["vist2-0.6b"] = "skipped: needs a GPU"
    ok = all(torch.isfinite(torch.tensor(row["losses"])).all() for row in result.values() if isinstance(row, dict))
    return {**result, "ok": bool(ok)}


def tiny_bf16(device):
    torch.manual_seed(0)
    return Vist2Model(preset("tiny")).to(device=device, dtype=torch.bfloat16).eval(), byte_tokenizer()


def check_gcc_verify_bf16(device: torch.device, gpu: bool) -> dict:
    from vist2.verify import verify

    model, tokenizer = tiny_bf16(device)
    worst = verify(model, tokenizer, report=lambda line: None)
    return {"max_logit_difference": worst, "tolerance": 5e-2, "ok": worst <= 5e-2}


def check_engine_decode(device: torch.device, gpu: bool) -> dict:
    from vist2.generate import GenerationConfig, generate

    model, tokenizer = tiny_bf16(device)
    prompt = " ".join(WORDS) * 4
    config = GenerationConfig(mode="gcc", max_new_tokens=64, ignore_eos=True)
    generate(model, tokenizer, prompt, GenerationConfig(mode="gcc", max_new_tokens=4))  # warm up
    began = time.perf_counter()
    result = generate(model, tokenizer, prompt, config)
    seconds = time.perf_counter() - began
    tokens = len(result.token_ids)
    return {"new_tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
            "compiled_decode_step": "none: this engine offers no compiled decode step", "ok": tokens == config.max_new_tokens}


def step_seconds(model, batch, repeats: int = 3) -> tuple[float, int]:
    times = []
    torch.cuda.reset_peak_memory_stats()
    for repeat in range(repeats + 1):  # the first compiles FlexAttention's kernels
        torch.cuda.synchronize()
        began = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.cuda.synchronize()
        model.zero_grad(set_to_none=True)
        if repeat:
            times.append(time.perf_counter() - began)
    return statistics.median(times), torch.cuda.max_memory_allocated()


def check_step_time(device: torch.device, gpu: bool) -> dict:
    if not gpu:
        return {"skipped": "needs a GPU", "ok": True}
    config = preset("vist2-0.6b")
    rows = {}
    for tokens in (2048, 4096, 8192):
        batch = batch_for(config, [stage_examples(config, byte_tokenizer(), tokens)["olm"]], device)
        row = {"sequence": int(batch["input_ids"].shape[1])}
        for attention in ("sdpa", "flex_attention"):
            torch.manual_seed(0)
            model = Vist2Model(config.replace(attn_implementation=attention)).to(device).train()
            try:
                seconds, peak = step_seconds(model, batch)
                row[attention] = {"seconds": seconds, "peak_gib": peak / 2**30}
            except torch.cuda.OutOfMemoryError:  # a smaller GPU: report it, measure the rest
                row[attention] = "out of memory"
            del model
            torch.cuda.empty_cache()
        if all(isinstance(row[a], dict) for a in ("sdpa", "flex_attention")):
            row["sdpa_over_flex"] = row["sdpa"]["seconds"] / row["flex_attention"]["seconds"]
        rows[str(tokens)] = row
    return {**rows, "ok": True}


CHECKS = {"flex_vs_sdpa": check_flex_vs_sdpa, "bf16_train": check_bf16_train,
          "gcc_verify_bf16": check_gcc_verify_bf16, "engine_decode": check_engine_decode,
          "step_time": check_step_time}


def versions(device: torch.device) -> dict:
    import transformers

    import vist2

    found = {"python": platform.python_version(), "torch": torch.__version__,
             "transformers": transformers.__version__, "vist2": getattr(vist2, "__version__", "unknown"),
             "platform": platform.platform(), "device": str(device)}
    if device.type == "cuda":
        found.update(cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(device),
                     bf16_supported=torch.cuda.is_bf16_supported())
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="the JSON file to write")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda (default when present) or cpu (the reduced check)")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to torch")
    chosen = [name for name in args.only.split(",") if name]
    unknown = sorted(set(chosen) - set(CHECKS))
    if unknown:
        parser.error(f"--only: unknown checks {unknown}; choose from {', '.join(CHECKS)}")
    report = {"versions": versions(device), "mode": "full" if gpu else "reduced (cpu)",
              "load_average": os.getloadavg(), "checks": {}}
    for name in chosen:
        began = time.perf_counter()
        try:
            result = CHECKS[name](device, gpu)
        except Exception as error:  # a failing check is a result to report, not the end of the run
            result = {"ok": False, "error": f"{type(error).__name__}: {error}",
                      "traceback": traceback.format_exc(limit=8)}
        result["seconds_total"] = time.perf_counter() - began
        report["checks"][name] = result
        print(f"{name:16} {'ok' if result['ok'] else 'FAILED'}  ({result['seconds_total']:.1f} s)", file=sys.stderr)
    report["ok"] = all(result["ok"] for result in report["checks"].values())
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'all checks passed' if report['ok'] else 'SOME CHECKS FAILED'}; wrote {args.output}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

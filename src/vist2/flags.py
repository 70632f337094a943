"""Flags shared by the commands that run a model (generate, verify, bench, eval, serve, train):
each declared here once, next to the function that turns the parsed flags into typed values.
"""

from __future__ import annotations

import os

from vist2.errors import Vist2Error
from vist2.inputs import SEED, integer
from vist2.options import ChunkOptions, GenerationConfig, chunk_options


def add_chunk_flags(parser) -> None:
    """The chunk options of a run over a model: --chunk-tokens and the fill flags (generate, verify,
    bench, eval, serve); `chunk_options_from` turns them into a `ChunkOptions`."""
    parser.add_argument("--chunk-tokens", type=integer(1),
                        help="K, text tokens per compressed chunk (default: the model's)")
    add_fill_flags(parser)


def add_fill_flags(parser) -> None:
    """--chunking, --min-font-size, --max-chunk-tokens (with --chunk-tokens in `add_chunk_flags`; alone
    in `vist2 layout`, which takes K itself)."""
    parser.add_argument("--chunking", choices=("fixed", "fill"),
                        help="fixed: K tokens per chunk; fill: as many tokens as fill the page (default: the model's)")
    parser.add_argument("--min-font-size", type=integer(1, 1024),
                        help="fill: fill pages down to this font size in pixels (default: the model's)")
    parser.add_argument("--max-chunk-tokens", type=integer(1, 2**22),
                        help="fill: most tokens per chunk (default: the model's, else 4 x K)")


def chunk_options_from(args, model, renderer=None) -> ChunkOptions:
    """The model's chunk options with those the flags of `add_chunk_flags` give instead (validated
    there); beta from the renderer's page (default: the model's)."""
    given = {name: getattr(args, name, None) for name in ("chunk_tokens", "chunking", "min_font_size",
                                                           "max_chunk_tokens")}
    return chunk_options(model, renderer, **given)


def add_debug_flag(parser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of any error (also: environment VIST2_DEBUG=1)")


def add_model_source(parser) -> None:
    """--model | --preset, --seed, --device, --dtype (shared by generate, verify, eval and serve)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a vist2 checkpoint folder")
    source.add_argument("--preset", help="a preset with random weights (seeded), e.g. tiny, smollm2-135m")
    parser.add_argument("--seed", type=SEED, default=0, help="seed for random weights and sampling (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="weights and compute dtype (default float32; bfloat16 batches better on CPUs "
                        "with AVX512-BF16, see benchmarks/engine.md)")


def check_model_source(args) -> None:
    """--preset names a preset and --model a folder, checked before any work."""
    from vist2.presets import PRESETS

    if getattr(args, "model", None) is None and args.preset not in PRESETS:
        raise Vist2Error(f"--preset {args.preset!r}: unknown; choose from {', '.join(PRESETS)}")
    if getattr(args, "model", None) is not None and not os.path.isdir(args.model):
        raise Vist2Error(f"--model {args.model}: not a folder (give a vist2 checkpoint folder)")


def add_generation_options(parser, max_new_tokens: int | None = 256) -> None:
    """Sampling flags shared by generate and eval (eval's --max-new-tokens defaults to each task's)."""
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                        help=f"most tokens to generate (default {max_new_tokens or 'per task'})")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens; 0 = off (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default 1)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help="> 1 discourages tokens already seen (default 1 = off)")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0,
                        help="never repeat an n-gram of this size; 0 = off (default)")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-sequence tokens")


def generation_config(args, mode: str, max_new_tokens: int):
    """The GenerationConfig the flags of `add_generation_options` describe (validated there)."""
    return GenerationConfig(
        mode=mode, max_new_tokens=max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size, stop_strings=tuple(args.stop),
        ignore_eos=args.ignore_eos, seed=args.seed,
    )

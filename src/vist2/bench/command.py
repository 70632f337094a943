"""`vist2 bench`: its flags, their checks (before any work), the model to measure, then `run.bench`."""

from __future__ import annotations

from vist2.errors import Vist2Error
from vist2.flags import add_chunk_flags, check_model_source, chunk_options_from
from vist2.inputs import SEED, THREADS, check_device, integer, page_size, positive_number, writable_file


def add_bench(commands) -> None:
    parser = commands.add_parser("bench", help="measure text, pcc and gcc: first token, throughput, KV, FLOPs")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="a vist2 checkpoint folder")
    source.add_argument("--preset", default="tiny", help="a preset with random weights (default tiny)")
    parser.add_argument("--scenario", default="all", help="long-writing, long-context or all (default all)")
    parser.add_argument("--lengths", help="comma-separated lengths replacing the grid's: responses for "
                        "long-writing, queries for long-context (e.g. 1024,16384)")
    parser.add_argument("--scale", type=positive_number, help="multiply the grid's lengths (default 1 on GPU, 1/16 on CPU)")
    parser.add_argument("--repeats", type=integer(1), default=3, help="timed runs per case and mode; medians (default 3)")
    parser.add_argument("--count-limit", type=integer(0), default=1500,
                        help="count FLOPs on the generation itself up to this many forwards; beyond, "
                        "on the meta device (FlopCounterMode slows a forward ~10x; default 1500)")
    add_chunk_flags(parser)
    parser.add_argument("--page", help="override the page size WxH (beta = W/16s * H/16s), e.g. 256x256")
    parser.add_argument("--max-positions", type=integer(1),
                        help="override the preset LLM's max_position_embeddings (random-weight presets only)")
    parser.add_argument("--paper-sizes", nargs="*", metavar="PRESET",
                        help="also count these paper presets on the meta device (no names: all three)")
    parser.add_argument("--no-measure", action="store_true", help="only the --paper-sizes counts")
    parser.add_argument("--out", default="bench", help="output folder (default ./bench)")
    parser.add_argument("--name", default="bench", help="file stem: NAME.json, NAME.png (default bench)")
    parser.add_argument("--overwrite", action="store_true", help="replace NAME.json and its plots in --out")
    parser.add_argument("--device", help="torch device (default: cuda if any, else cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="model dtype (default bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--threads", type=THREADS, help="torch CPU threads")
    parser.add_argument("--seed", type=SEED, default=0, help="seed for random weights (default 0)")
    parser.set_defaults(run=bench_command)


MAX_BENCH_TOKENS = 2**22  # query or response of one case: far beyond any preset's positions


def bench_command(args) -> int:
    from pathlib import Path

    import torch

    from vist2.bench.run import bench
    from vist2.bench.scenarios import CPU_SCALE, cases
    from vist2.presets import PRESETS

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        lengths = [int(n) for n in args.lengths.split(",")] if args.lengths else None
    except ValueError:
        raise Vist2Error(f"--lengths must be comma-separated integers, got {args.lengths!r}") from None
    if lengths and min(lengths) < 1:
        raise Vist2Error(f"--lengths must be >= 1, got {args.lengths!r}")
    if args.page:
        page_size(args.page)
    scale = args.scale or (1.0 if args.device.startswith("cuda") else CPU_SCALE)
    grid = [] if args.no_measure else cases(args.scenario, lengths, scale)
    longest = max((max(case.query_tokens, case.response_tokens) for case in grid), default=0)
    if longest > MAX_BENCH_TOKENS:
        raise Vist2Error(f"--lengths/--scale give {longest} tokens; at most {MAX_BENCH_TOKENS} are allowed")
    paper = args.paper_sizes
    if paper == []:
        paper = ["vist2-0.6b", "vist2-4b", "vist2-8b"]
    unknown = [name for name in paper or [] if name not in PRESETS]
    if unknown:
        raise Vist2Error(f"--paper-sizes: unknown preset {unknown[0]!r}; choose from {', '.join(PRESETS)}")
    if args.no_measure and not paper:
        raise Vist2Error("--no-measure needs --paper-sizes")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise Vist2Error(f"--out {out} exists and is not a folder")
    if "/" in args.name or args.name in ("", ".", ".."):
        raise Vist2Error(f"--name must be a plain file stem, got {args.name!r}")
    for path in (out / f"{args.name}{end}" for end in (".json", ".png", "_paper_sizes.png")):
        if out.is_dir():
            writable_file(str(path), "--out/--name", args.overwrite)
    check_model_source(args)
    model = tokenizer = options = None
    if grid:
        model, tokenizer = _model(args)
        options = chunk_options_from(args, model)
    arguments = {k: v for k, v in vars(args).items() if k not in ("run", "command_line")}
    bench(model, tokenizer, grid, args.repeats, out, args.name, paper or [],
          cases(args.scenario, None, 1.0) if paper else [], args.command_line, arguments, args.count_limit,
          options=options)
    return 0


def _model(args):
    """The model to measure: a checkpoint or a seeded random preset, built with the page overridden
    (nothing replaces the config of a built model; K is a chunk option of the run)."""
    from vist2.generate import load_model
    from vist2.presets import preset

    changes = {}
    if args.page:
        width, height = page_size(args.page)
        changes.update({"render.width": width, "render.height": height})
    if args.max_positions and not args.model:
        changes["llm.params"] = {**preset(args.preset).llm.params, "max_position_embeddings": args.max_positions}
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    return load_model(args.model, None if args.model else args.preset, args.seed, args.device, dtype, changes)

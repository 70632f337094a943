"""The `vist2 prepare` subcommand: flags and checks around `vist2.train.prepare.prepare`."""

from __future__ import annotations

import math
import os
from pathlib import Path

from vist2.errors import Vist2Error


def add_prepare(commands) -> None:
    parser = commands.add_parser(
        "prepare", help="tokenize a text corpus once into memory-mapped token shards for ocr/olm training",
        description="Tokenize *.txt / JSONL / Parquet / saved datasets once; train with --data OUTPUT.")
    parser.add_argument("--data", nargs="+", required=True, help="files or folders, as for vist2 train")
    parser.add_argument("--output", required=True, help="a new folder for the shards and manifest (must not exist)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="use this preset's tokenizer, e.g. tiny, smollm2-135m")
    source.add_argument("--tokenizer", help="'bytes', 'qwen3' or a local tokenizer folder")
    parser.add_argument("--threads", type=int, default=0, help="tokenizer threads (default 0 = all cores)")
    parser.add_argument("--batch-mb", type=float, default=1.0, help="text per tokenizer batch in MB (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--follow-symlinks", action="store_true",
                        help="read files whose symlinks lead out of a --data folder (default: refused)")
    parser.set_defaults(run=_prepare)


def _prepare(args) -> int:
    if not 0 <= args.threads <= 4096:
        raise Vist2Error(f"--threads must be in [0, 4096] (0 = all cores), got {args.threads}")
    if not (math.isfinite(args.batch_mb) and args.batch_mb > 0):
        raise Vist2Error("--batch-mb must be a positive finite number")
    for name in args.data:
        if not Path(name).exists():
            raise Vist2Error(f"--data path {name} does not exist")
    from vist2.train.prepare import check_output, prepare

    output = Path(args.output)
    check_output(output)
    if args.threads:
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # read when the tokenizers thread pool starts
    from vist2.tokenizer import load_tokenizer

    if args.preset:
        from vist2.presets import preset

        name = preset(args.preset).tokenizer
    else:
        name = args.tokenizer
    tokenizer = load_tokenizer(name)
    manifest = prepare(tuple(args.data), output, tokenizer, name, args.batch_mb, progress=not args.quiet,
                       command_line=args.command_line, follow_symlinks=args.follow_symlinks)
    print(f"prepared {manifest['documents']} documents, {manifest['tokens']} tokens ({manifest['dtype']}) "
          f"in {len(manifest['shards'])} shard(s) at {output}")
    return 0

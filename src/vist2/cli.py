"""The `vist2` command line: one subcommand per job, each a thin wrapper around a function.

Heavy modules are imported inside each command so `vist2 --help` stays instant.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import shlex
import sys
import traceback

from vist2.errors import Vist2Error
from vist2.flags import (add_chunk_flags, add_debug_flag, add_fill_flags, add_generation_options, add_model_source,
                         check_model_source, chunk_options_from, generation_config)
from vist2.inputs import (SEED, THREADS, check_device, integer, page_size, positive_number, read_text, utf8_text,
                          writable_file)
from vist2.bench.command import add_bench
from vist2.eval.command import add_eval
from vist2.serve.command import add_serve
from vist2.train.prepare_cli import add_prepare


class _Parser(argparse.ArgumentParser):
    """Bad flags: one line naming the command and what is wrong (no usage dump), status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="vist2",
        description="VIST2: render text to images, compress context into visual tokens, train and generate.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Each helper below registers one subcommand.
    _add_render(commands)
    _add_generate(commands)
    _add_verify(commands)
    _add_train(commands)
    _add_quickstart(commands)
    _add_layout(commands)
    add_bench(commands)
    add_prepare(commands)
    add_eval(commands)
    add_serve(commands)
    for name, sub in commands.choices.items():
        if name != "eval":  # eval's benchmarks take it themselves (vist2.eval.command)
            add_debug_flag(sub)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.command_line = "vist2 " + shlex.join(argv)  # recorded in result files
    debug = args.debug or os.environ.get("VIST2_DEBUG", "") not in ("", "0")
    try:
        code = args.run(args)
    except Vist2Error as error:  # bad input: one line, status 2
        return _user_error(args, str(error), debug)
    except KeyboardInterrupt:
        print(f"vist2 {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): not an error of ours
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        except (OSError, ValueError, AttributeError):  # stdout is no real file (e.g. under a test)
            pass
        return 141
    except Exception as error:  # a bug: short line; the traceback with --debug
        refused = _refused_write(error, args)
        if refused:
            return _user_error(args, refused, debug)
        if debug:
            traceback.print_exc()
        print(f"vist2 {args.command}: internal error: {type(error).__name__}: {error} "
              "(rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1
    return code or 0


def _user_error(args, message: str, debug: bool) -> int:
    """One line, status 2; under torchrun only rank 0 says it (every rank meets the same input)."""
    if debug:
        traceback.print_exc()
    if os.environ.get("RANK", "0") == "0" or debug:
        print(f"vist2 {args.command}: error: {message}", file=sys.stderr)
    return 2


# The disk refused a write: the user's to fix (free space, a writable folder), not a bug to report.
REFUSED_WRITES = {errno.ENOSPC: "free some space or choose another folder",
                  errno.EDQUOT: "free some space or choose another folder",
                  errno.EROFS: "choose a writable folder", errno.EACCES: "check its permissions",
                  errno.EPERM: "check its permissions"}


def _refused_write(error: BaseException, args) -> str | None:
    """The message for an error caused by one of REFUSED_WRITES (an OSError, or a Rust library's
    "(os error N)" as safetensors and tokenizers say it) anywhere in its chain; None otherwise."""
    seen: BaseException | None = error
    for _ in range(8):  # a chain of causes is short; this also ends a cycle
        if seen is None:
            return None
        number = seen.errno if isinstance(seen, OSError) else None
        rust = re.search(r"\(os error (\d+)\)", str(seen))
        number = number if number is not None else (int(rust.group(1)) if rust else None)
        if number in REFUSED_WRITES:
            path = getattr(seen, "filename", None) or getattr(args, "output", None) or getattr(args, "out", None)
            return f"{os.strerror(number).lower()}{f' ({path})' if path else ''}; {REFUSED_WRITES[number]}"
        seen = seen.__cause__ or seen.__context__
    return None


def _add_render(commands) -> None:
    parser = commands.add_parser("render", help="render one text chunk to a grayscale page image")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("text", nargs="?", type=utf8_text, help="the text to render")
    source.add_argument("--file", help="read the text from this UTF-8 file instead")
    parser.add_argument("--width", type=int, default=256, help="page width in pixels (default 256, at most 8192)")
    parser.add_argument("--height", type=int, default=256, help="page height in pixels (default 256, at most 8192)")
    parser.add_argument("--font", help="a .ttf/.ttc font file (default: the bundled WenQuanYi Micro Hei)")
    parser.add_argument("--font-index", type=int, default=1, help="face index in a .ttc (default 1, Mono)")
    parser.add_argument("--line-height", type=int, help="fixed line pitch in pixels (default 1.2 x font size)")
    parser.add_argument("-o", "--output", required=True, help="where to write the PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.set_defaults(run=_render)


def _render(args) -> int:
    from vist2.render import RenderConfig, Renderer

    writable_file(args.output, "--output", args.overwrite)
    text = args.text if args.file is None else read_text(args.file, "--file")
    config = RenderConfig(
        width=args.width,
        height=args.height,
        font_path=args.font,
        font_index=args.font_index,
        line_height=args.line_height,
    )
    page = Renderer(config).render(text)
    try:
        page.image.save(args.output)
    except (OSError, ValueError) as error:
        raise Vist2Error(f"cannot write {args.output}: {error}") from error
    print(f"font size {page.font_size}, {page.lines} lines, {page.missing} missing, {len(text)} chars -> {args.output}")
    return 0


MAX_LAYOUT_TOKENS = 4096  # the printed mask is (length x length) characters


def _add_layout(commands) -> None:
    parser = commands.add_parser(
        "layout", help="print a stage's interleaved layout: segments, position ids and attention mask",
        description="Build the layout a training stage uses for text of the given token counts and print it.",
    )
    parser.add_argument("--stage", choices=("captioning", "ocr", "olm", "sft"), default="olm")
    parser.add_argument("--chunk-tokens", "-K", type=int, default=8, help="text tokens per chunk, K (default 8)")
    parser.add_argument("--visual-tokens", "-b", type=int, default=2, help="visual tokens per page, beta (default 2)")
    parser.add_argument("--tokens", type=int, default=20,
                        help=f"text tokens: the document (ocr, olm), caption (captioning) or response (sft); "
                             f"at most {MAX_LAYOUT_TOKENS}")
    parser.add_argument("--query-tokens", type=int, default=19,
                        help=f"sft only: query tokens (default 19, at most {MAX_LAYOUT_TOKENS})")
    parser.add_argument("--page", default="128x32", help="fill: the page WxH that chunks fill (default 128x32)")
    add_fill_flags(parser)
    parser.add_argument("--blind-visual", action="store_true", help="visual blocks do not see their text chunk")
    parser.add_argument("--bidirectional-visual", action="store_true", help="full attention inside a visual block")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--png", metavar="FILE", help="also draw the mask to this PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --png file")
    parser.set_defaults(run=_layout)


def _layout(args) -> int:
    import json

    from vist2 import layout as L
    from vist2 import stages
    from vist2.tokenizer import byte_tokenizer

    for name in ("chunk_tokens", "visual_tokens", "tokens", "query_tokens"):
        low, value = int(name != "query_tokens"), getattr(args, name)
        if not low <= value <= MAX_LAYOUT_TOKENS:
            raise Vist2Error(f"--{name.replace('_', '-')} must be in [{low}, {MAX_LAYOUT_TOKENS}], got {value}")
    if args.png:
        if not args.png.lower().endswith(".png"):
            raise Vist2Error(f"--png {args.png}: the file name must end in .png")
        writable_file(args.png, "--png", args.overwrite)
    tokenizer = byte_tokenizer()  # one token per byte, so counts are exact
    ids = tokenizer.encode(LAYOUT_TEXT * (1 + args.tokens // len(LAYOUT_TEXT)), add_special_tokens=False)[: args.tokens]
    pad, K, beta = tokenizer.pad_token_id, args.chunk_tokens, args.visual_tokens
    fill = _layout_fill(args, tokenizer)
    if args.stage == "captioning":
        example = stages.captioning("caption image", ids, beta, pad)
    elif args.stage == "ocr":
        example = stages.ocr(tokenizer, ids, K, beta, pad, fill=fill)
    elif args.stage == "olm":
        example = stages.olm(tokenizer, ids, K, beta, pad, sees_text=not args.blind_visual, fill=fill)
    else:
        query = tokenizer.encode("q" * args.query_tokens, add_special_tokens=False)
        example = stages.sft(tokenizer, query, ids, K, beta, pad, sees_text=not args.blind_visual, fill=fill)
    description = L.describe(example.layout, args.bidirectional_visual)
    if args.png:
        L.draw_mask(example.layout, args.png, args.bidirectional_visual)
    if args.json:
        print(json.dumps(description))
        return 0
    for index, segment in enumerate(example.layout):
        kind = segment.kind if segment.kind == "visual" else ("persistent text" if segment.persistent else "chunk text")
        extras = [f"chunk {segment.chunk}"] if segment.chunk is not None else []
        extras += ["sees its text"] * segment.sees_text + ["loss"] * segment.loss
        print(f"{index:3d}  {kind:15s} length {segment.length:4d}  {', '.join(extras)}")
    print("positions:", " ".join(map(str, description["position_ids"])))
    for row in description["mask"]:
        print("".join("#" if allowed else "." for allowed in row))
    return 0


LAYOUT_TEXT = "Fill: 每页装满 as many tokens as fit, 中文字宽一倍. "  # widths vary, so chunk lengths vary


def _layout_fill(args, tokenizer):
    """fill: the policy on a page of --page at --min-font-size (None for fixed)."""
    from vist2.options import ChunkOptions
    from vist2.render import RenderConfig, Renderer

    if (args.chunking or "fixed") == "fixed":
        return None
    width, height = page_size(args.page)
    options = ChunkOptions(args.chunk_tokens, args.visual_tokens, True, False, args.chunking,
                           args.min_font_size or 0, args.max_chunk_tokens or 0)
    return options.fill(Renderer(RenderConfig(width=width, height=height)), tokenizer)


def _add_train(commands) -> None:
    from vist2.train.config import add_arguments

    parser = commands.add_parser(
        "train", help="train one stage (captioning, ocr, olm, sft); runs under `accelerate launch` too",
        description="Train one VIST2 stage. Defaults are the paper's (table 8) for the stage; every field can "
                    "be set by a flag or a JSON --config file (flags win).")
    add_arguments(parser)
    parser.set_defaults(run=_train)


def _train(args) -> int:
    from vist2.train import train
    from vist2.train.config import config_from_args

    result = train(config_from_args(args))
    if not result.main_process:  # under torchrun / accelerate launch only rank 0 reports
        return 0
    if result.skipped:
        print(f"skipped {len(result.skipped)} samples (first: {result.skipped[0]})")
    last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
    print(f"trained {result.steps} steps in {result.seconds:.0f} s{last}; model saved to {result.final}")
    return 0


def _add_generate(commands) -> None:
    parser = commands.add_parser("generate", help="generate a response in gcc, pcc or text mode")
    add_model_source(parser)
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", type=utf8_text, help="the user query")
    prompt.add_argument("--prompt-file", help="read the user query from this UTF-8 file")
    parser.add_argument("--mode", default="gcc", help="gcc (VIST2), pcc (query compressed) or text (default gcc)")
    add_generation_options(parser)
    add_chunk_flags(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object: text, mode, stats")
    parser.set_defaults(run=_generate)


def _generate(args) -> int:
    import json

    from vist2.generate import generate, load_model, stream

    prompt = args.prompt if args.prompt_file is None else read_text(args.prompt_file, "--prompt-file")
    config = generation_config(args, args.mode, args.max_new_tokens)
    if not prompt.strip():
        raise Vist2Error("the prompt is empty")
    check_model_source(args)
    check_device(args.device)
    model, tokenizer = load_model(args.model, args.preset, args.seed, args.device, args.dtype)
    options = chunk_options_from(args, model)
    if args.json:
        result = generate(model, tokenizer, prompt, config, options=options)
        print(json.dumps({"text": result.text, "mode": result.mode, "finish_reason": result.finish_reason,
                          "stats": result.stats.as_dict()}))
    else:
        for piece in stream(model, tokenizer, prompt, config, options=options):
            print(piece, end="", flush=True)
        print()
    return 0


def _add_verify(commands) -> None:
    parser = commands.add_parser("verify", help="check incremental gcc/pcc/text decoding against the masked forward")
    add_model_source(parser)
    parser.add_argument("--tolerance", type=float, help="largest allowed |logit difference| (default: 1e-4 in fp32)")
    add_chunk_flags(parser)
    parser.set_defaults(run=_verify)


def _verify(args) -> int:
    from vist2.generate import load_model
    from vist2.verify import tolerance, verify

    if args.tolerance is not None and not 0 <= args.tolerance < float("inf"):
        raise Vist2Error(f"--tolerance must be a finite number >= 0, got {args.tolerance}")
    check_model_source(args)
    check_device(args.device)
    model, tokenizer = load_model(args.model, args.preset, args.seed, args.device, args.dtype)
    options = chunk_options_from(args, model)
    limit = args.tolerance if args.tolerance is not None else tolerance(model)
    worst = verify(model, tokenizer, seed=args.seed, options=options)
    verdict = "ok" if worst <= limit else "FAILED"
    print(f"largest |logit difference| {worst:.3g} (tolerance {limit:g}): {verdict}")
    return 0 if worst <= limit else 1


def _add_quickstart(commands) -> None:
    parser = commands.add_parser(
        "quickstart", help="train a small VIST2 on CPU, offline, in about 10 minutes, and evaluate it",
        description="Build a small VIST2, train it (OCR then OLM) on text the install provides, evaluate on "
                    "held-out text and print a table; saves the model, a sample page and loss plots.")
    parser.add_argument("--output", default="vist2-quickstart", help="run folder (default ./vist2-quickstart)")
    parser.add_argument("--minutes", type=positive_number, default=10.0,
                        help="training time budget, > 0 (default 10)")
    parser.add_argument("--steps", type=integer(0), default=0, help="steps per stage instead of a time budget")
    parser.add_argument("--eval-chunks", type=integer(1), default=256, help="held-out pages to read (default 256)")
    parser.add_argument("--eval-windows", type=integer(1), default=64, help="held-out OLM windows (default 64)")
    parser.add_argument("--seed", type=SEED, default=0, help="seed for the model, data and sampling (default 0)")
    parser.add_argument("--threads", type=THREADS, default=1,
                        help="torch CPU threads (default 1: this small model gains little from more, "
                             "and loses much on a busy CPU)")
    parser.add_argument("--no-progress-bar", dest="progress_bar", action="store_false", help="no tqdm bar")
    parser.set_defaults(run=_quickstart)


def _quickstart(args) -> int:
    from vist2.quickstart import quickstart, read_back_table, table

    results = quickstart(args.output, args.minutes, args.steps, args.eval_chunks, args.eval_windows, args.seed,
                         args.progress_bar, args.threads)
    print(table(results))
    print(read_back_table(results["read_back"]))
    print(f"done in {results['seconds'] / 60:.1f} min; model, sample.png, loss_curves.png, results.json in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

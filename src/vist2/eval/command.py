"""`vist2 eval BENCHMARK`: one subcommand per benchmark module, all sharing the runner's flags.

A benchmark module (see `vist2.eval.runner`) is registered by adding its name to BENCHMARKS;
its `add_arguments(parser)` adds its own flags; SAMPLES (default --samples, None: all) and
MODES (the modes it has, default text, pcc and gcc) are optional. Modules must import nothing heavy at the top,
since they are imported whenever `vist2` builds its parser. A module with `main(args) -> int`
(e.g. one that scores a file) gets a plain subcommand without the runner's flags.
"""

from __future__ import annotations

import importlib

BENCHMARKS = [
    "vist2.eval.ruler",
    "vist2.eval.longbench",
    "vist2.eval.loogle",
    "vist2.eval.gsm8k",
    "vist2.eval.ocr",
    "vist2.eval.score",
]


def add_eval(commands) -> None:
    from vist2.flags import add_debug_flag

    parser = commands.add_parser("eval", help="score a model on a benchmark in text, pcc and gcc modes",
                                 description="Generate every sample of a benchmark in each mode and score it; "
                                             "writes results.json, predictions.jsonl (as it goes: rerun to "
                                             "resume) and a plot.")
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name in BENCHMARKS:
        module = importlib.import_module(name)
        doc = (module.__doc__ or module.NAME).strip().splitlines()[0]
        sub = benchmarks.add_parser(module.NAME, help=doc, description=module.__doc__)
        add_debug_flag(sub)
        if hasattr(module, "main"):
            module.add_arguments(sub)
            sub.set_defaults(run=module.main)
            continue
        add_common_arguments(sub, module.NAME, getattr(module, "SAMPLES", 10), getattr(module, "MODES", None))
        module.add_arguments(sub)
        sub.set_defaults(run=lambda args, module=module: _run(args, module))


def add_common_arguments(parser, name: str, samples: int | None = 10, modes: tuple[str, ...] | None = None) -> None:
    from vist2.flags import add_chunk_flags, add_generation_options, add_model_source
    from vist2.options import MODES

    add_model_source(parser)
    modes = ",".join(modes or MODES)
    parser.add_argument("--modes", default=modes, help=f"comma-separated modes (default {modes})")
    parser.add_argument("--samples", type=int, default=samples,
                        help=f"samples per task and length (default {samples or 'all'})")
    parser.add_argument("--out", default=f"vist2-eval-{name}",
                        help=f"output folder; only our own files are written there (default ./vist2-eval-{name})")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh, replacing our files in --out (default: resume the run found there)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="prompts generated together (default 1; time to first token then covers the batch)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    add_generation_options(parser, max_new_tokens=None)
    add_chunk_flags(parser)


def _run(args, module) -> int:
    from vist2.eval.runner import run

    run(args, module)
    return 0

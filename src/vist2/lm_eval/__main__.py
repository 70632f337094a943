"""`python -m vist2.lm_eval ARGS`: lm-eval's command line (`lm_eval ARGS`) with `--model vist2` registered.
A bad --model_args value is one line and status 2 (VIST2_DEBUG=1: the traceback)."""

import os
import sys
import traceback

import lm_eval.models  # noqa: F401  (lm-eval's own backends stay available next to ours)
from lm_eval.__main__ import cli_evaluate

import vist2.lm_eval  # noqa: F401  (registers "vist2")
from vist2.errors import Vist2Error

if __name__ == "__main__":
    try:
        cli_evaluate()
    except Vist2Error as error:
        if os.environ.get("VIST2_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        print(f"vist2.lm_eval: error: {error}", file=sys.stderr)
        sys.exit(2)

"""`--model vist2` for lm-evaluation-harness (install the `lm-eval` extra: pip install 'vist2[lm-eval]').

lm-eval 0.4 finds third-party models only in its registry (it has no entry point group for
them), so importing this package registers `Vist2LM` (`vist2.lm_eval.backend`) as "vist2",
and `python -m vist2.lm_eval` is lm-eval's own command line with it registered:

    python -m vist2.lm_eval --model vist2 --model_args preset=smollm2-135m,mode=text --tasks gsm8k --limit 20
    python -m vist2.lm_eval --model vist2 --model_args path=DIR,mode=gcc --tasks hellaswag --batch_size 8

or from Python: `import vist2.lm_eval` before `lm_eval.simple_evaluate(model="vist2", ...)`.

model_args: path=DIR | preset=NAME (seed=0: random weights), mode=text|pcc|gcc (default gcc),
dtype, chunk_tokens (K), chat_template (default False: the context is continued as plain text,
as lm-eval prompts a base model; True: it is the user turn of vist2's ChatML prompt),
max_length (context tokens kept, from the left; default the LLM's positions), max_gen_toks
(default 256). --batch_size N runs N requests at a time through the engine.
"""

from vist2.lm_eval.backend import Vist2LM

__all__ = ["Vist2LM"]

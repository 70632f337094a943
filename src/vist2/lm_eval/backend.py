"""`Vist2LM`: a VIST2 model as an lm-evaluation-harness `TemplateLM`, every request through the engine.

- generate_until: the context as the prompt of --model_args mode (text, pcc: compressed; gcc:
  compressed, and the response's chunks too), greedy unless do_sample, until a string of `until`
  or max_gen_toks tokens;
- loglikelihood: the continuation's ids teacher-forced after the context (`Engine.add(forced=...)`,
  in gcc compressed chunk by chunk as when generating): summed log-probabilities over the
  tokenizer's vocabulary and whether greedy decoding picks every one of them;
- loglikelihood_rolling: lm-eval's disjoint rolling windows of max_length tokens, each a loglikelihood.

Requests run `batch_size` at a time, sorted by length; results come back in request order.
A context longer than max_length tokens loses its start, as lm-eval's HF backend does.
"""

from __future__ import annotations

import json
import sys

import torch
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from vist2.engine import Engine
from vist2.errors import Vist2Error
from vist2.generate import load_model
from vist2.options import MODES, GenerationConfig, chunk_options
from vist2.prompt import chat_parts
from vist2.render import Renderer

SAMPLING_KEYS = {"temperature", "top_p", "top_k", "repetition_penalty", "seed"}


@register_model("vist2")
class Vist2LM(TemplateLM):
    def __init__(self, path: str | None = None, preset: str | None = None, mode: str = "gcc", seed: int = 0,
                 device: str | None = None, dtype: str = "float32", batch_size: int | str = 1,
                 max_batch_size: int | None = None, chunk_tokens: int | None = None, chat_template: bool = False,
                 max_length: int | None = None, max_gen_toks: int = 256, **unknown) -> None:
        super().__init__()
        if unknown:
            raise Vist2Error(f"--model_args {', '.join(sorted(unknown))}: unknown to vist2; it takes path or preset, "
                             "mode, seed, device, dtype, chunk_tokens, chat_template, max_length, max_gen_toks")
        if mode not in MODES:
            raise Vist2Error(f"--model_args mode={mode!r}: choose from {', '.join(MODES)}")
        if isinstance(batch_size, str) and not batch_size.isdigit():
            raise Vist2Error(f"--batch_size {batch_size!r}: vist2 takes a whole number (no 'auto')")
        if int(batch_size) < 1 or not isinstance(chat_template, bool):
            raise Vist2Error("--batch_size must be >= 1 and --model_args chat_template True or False")
        for name, value in (("max_length", max_length), ("max_gen_toks", max_gen_toks), ("chunk_tokens", chunk_tokens)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise Vist2Error(f"--model_args {name}={value!r}: must be a positive whole number")
        if device is None or (device.startswith("cuda") and not torch.cuda.is_available()):
            if device is not None:  # lm-eval's command line says cuda:0 unless told otherwise
                print(f"note: --device {device} is not available here; vist2 runs on the CPU", file=sys.stderr)
            device = "cpu"
        self.model, self.tokenizer = load_model(None if path is None else str(path), preset, seed, device, dtype)
        self.mode, self.chat_template, self.batch_size = mode, chat_template, int(batch_size)
        self.renderer = Renderer(self.model.config.render)
        self.options = chunk_options(self.model, self.renderer, chunk_tokens=chunk_tokens)
        self.max_length = max_length or self.model.llm.config.max_position_embeddings
        self.max_gen_toks = max_gen_toks
        user, assistant, _ = chat_parts(self.tokenizer) if chat_template else ([], [], [])
        self.wrapper = len(user) + len(assistant)  # positions the chat template adds around the context
        self._device = self.model.device

    # -- what TemplateLM asks for ---------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

    def _engine(self) -> Engine:
        return Engine(self.model, self.tokenizer, self.renderer, self.options)

    def _config(self, new_tokens: int, **sampling) -> GenerationConfig:
        return GenerationConfig(mode=self.mode, max_new_tokens=new_tokens, chat_template=self.chat_template, **sampling)

    def _context(self, ids: list[int], room: int) -> list[int]:
        """The context's last ids that leave `room` positions (and the chat template's) within max_length."""
        keep = max(self.max_length - room - self.wrapper, 1)
        return ids[-keep:] or [self.prefix_token_id]

    # -- loglikelihood --------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, cache: bool = True) -> list[tuple[float, bool]]:
        """(sum of log-probabilities, greedy) of each continuation after its context, batch by batch."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for i, (_, _, continuation) in enumerate(requests):
            if not continuation:  # nothing to predict
                results[i] = (0.0, True)
        order = sorted((i for i in range(len(requests)) if results[i] is None),
                       key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        vocabulary = len(self.tokenizer)
        with tqdm(total=len(requests), desc="vist2 loglikelihood", disable=disable_tqdm or self.rank != 0) as bar:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                engine = self._engine()
                running = []
                for i in batch:
                    _, context, continuation = requests[i]
                    config = self._config(len(continuation), ignore_eos=True)
                    running.append(engine.add(self._context(context, len(continuation)), config,
                                              forced=list(continuation), keep_logits=True))
                for _ in engine.run():
                    pass
                for i, request in zip(batch, running):
                    logits = torch.stack(request.kept)[:, :vocabulary].float().log_softmax(-1)
                    target = torch.tensor(requests[i][2], device=logits.device)
                    logprob = float(logits.gather(1, target[:, None]).sum())
                    greedy = bool((logits.argmax(-1) == target).all())
                    results[i] = (logprob, greedy)
                    if cache and requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
                bar.update(len(batch))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for index, (string,) in enumerate(request.args for request in requests):
            for context, continuation in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length - self.wrapper, context_len=1)):
                windows.append((None, context, continuation))
                owners.append(index)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm, cache=False)
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owners, scores):
            totals[index] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # -- generate_until -------------------------------------------------------------------------

    def _generation(self, gen_kwargs: dict) -> GenerationConfig:
        """lm-eval's gen_kwargs as a GenerationConfig: until, max_gen_toks, do_sample and sampling keys."""
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        new_tokens = kwargs.pop("max_gen_toks", self.max_gen_toks)
        do_sample = kwargs.pop("do_sample", False)
        unknown = set(kwargs) - SAMPLING_KEYS
        if unknown:
            raise Vist2Error(f"generation_kwargs {', '.join(sorted(unknown))}: vist2 takes until, max_gen_toks, "
                             f"do_sample and {', '.join(sorted(SAMPLING_KEYS))}")
        temperature = kwargs.pop("temperature", 1.0) if do_sample else 0.0
        kwargs.pop("temperature", None)
        return self._config(int(new_tokens), temperature=float(temperature), stop_strings=tuple(until), **kwargs)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        prepared = []
        for context, gen_kwargs in (request.args for request in requests):
            config = self._generation(gen_kwargs)
            ids = self.tok_encode(context) if context else [self.prefix_token_id]
            prepared.append((self._context(ids, config.max_new_tokens), config))
        # one engine per batch of equal settings, longest prompts first
        order = sorted(range(len(requests)), key=lambda i: (json.dumps(requests[i].args[1], sort_keys=True, default=str),
                                                            -len(prepared[i][0])))
        results: list[str | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc="vist2 generate_until", disable=disable_tqdm or self.rank != 0) as bar:
            start = 0
            while start < len(order):
                config = prepared[order[start]][1]
                batch = [order[start]]
                while len(batch) < self.batch_size and start + len(batch) < len(order) \
                        and prepared[order[start + len(batch)]][1] == config:
                    batch.append(order[start + len(batch)])
                engine = self._engine()
                running = [engine.add(prepared[i][0], config) for i in batch]
                for _ in engine.run():
                    pass
                for i, request in zip(batch, running):
                    results[i] = request.result(self.tokenizer).text
                    self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
                start += len(batch)
                bar.update(len(batch))
        return results

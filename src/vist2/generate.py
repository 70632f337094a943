"""Generation over one model in three modes (DESIGN 5):

- `text`: the plain LLM over the ChatML prompt, no compression (the baseline);
- `pcc`:  the query is compressed (tail rule), the response stays text (Glyph-style);
- `gcc`:  query compressed, and every K generated tokens are rendered, encoded, appended as
          a visual block and evicted from every layer's cache (VIST2).

`generate`, `stream` and `score` are thin users of `vist2.engine.Engine`, which runs the
requests of a batch each with its own state. The prompt is `vist2.prompt.build_prompt`, the
one `stages.sft` trains on; chunk options are arguments (`vist2.options.chunk_options`).

    result = generate(model, tokenizer, "Summarise ...", GenerationConfig(mode="gcc"))
    print(result.text, result.stats.as_dict())
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import torch

from vist2.engine import Engine
from vist2.errors import Vist2Error
from vist2.options import ChunkOptions, GenerationConfig
from vist2.request import GenerationResult, cut_at_stop


def load_model(model_dir: str | None = None, preset_name: str | None = None, seed: int = 0,
               device: str = "cpu", dtype: str = "float32", changes: dict | None = None):
    """(model, tokenizer) from a checkpoint folder, or a preset with random weights (seeded),
    in `dtype` (float32, bfloat16 or float16), its config built with `changes` (`Vist2Config.replace`)."""
    from vist2.model import build_model, read_checkpoint_config
    from vist2.presets import preset
    from vist2.tokenizer import load_tokenizer

    if (model_dir is None) == (preset_name is None):
        raise Vist2Error("give exactly one of a model folder or a preset")
    if model_dir is not None:
        config, _ = read_checkpoint_config(model_dir)
        changes = dict(changes or {})
        if config.attn_implementation != "sdpa":  # the engine passes boolean masks: SDPA (same weights)
            print(f"note: {model_dir} uses {config.attn_implementation}; generation runs it with sdpa",
                  file=sys.stderr)
            changes["attn_implementation"] = "sdpa"
        model = build_model(model_dir, device=device, changes=changes)
    else:
        config = preset(preset_name).replace(**changes or {})
        check_memory(config, preset_name, device)
        model = build_model(config=config, seed=seed, device=device)
    return model.to(getattr(torch, dtype)), load_tokenizer(model.config.tokenizer)


def _available_bytes(device: str) -> int | None:
    """Memory free for new tensors on `device`: MemAvailable on a Linux CPU, free memory on CUDA."""
    if torch.device(device).type == "cuda":
        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None  # not Linux: no check


def check_memory(config, name: str, device: str) -> None:
    """Refuse, before allocating, a preset whose fp32 weights alone exceed the memory available."""
    from vist2.model import meta_model

    needed = sum(p.numel() for p in meta_model(config).parameters()) * 4
    available = _available_bytes(device)
    if available is not None and needed > available:
        raise Vist2Error(f"preset {name!r} needs {needed / 2**30:.1f} GiB for its fp32 weights, more than the "
                         f"{available / 2**30:.1f} GiB available on {device}; choose a smaller preset")


def _prompt_list(prompt) -> list[str]:
    if isinstance(prompt, (bytes, bytearray)):
        raise Vist2Error("the prompt must be a str (or a list of str), got bytes; decode it first")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise Vist2Error("no prompts given")
    for p in prompts:
        if not isinstance(p, str):
            raise Vist2Error(f"the prompt must be a str, got {type(p).__name__}")
    return prompts


def generate(model, tokenizer, prompt: str | list[str], config: GenerationConfig = GenerationConfig(),
             renderer=None, options: ChunkOptions | None = None) -> GenerationResult | list[GenerationResult]:
    """Generate for one prompt (a result) or a batch of prompts (a list, any mode)."""
    prompts = _prompt_list(prompt)
    engine = Engine(model, tokenizer, renderer, options)
    requests = [engine.add(p, config) for p in prompts]
    for _ in engine.run():
        pass
    results = [request.result(tokenizer) for request in requests]
    return results[0] if isinstance(prompt, str) else results


def score(model, tokenizer, query_ids: list[int], forced_ids: list[int], mode: str, renderer=None,
          options: ChunkOptions | None = None) -> torch.Tensor:
    """Teacher-force `forced_ids` through the incremental path of `mode`: (N, V) fp32 logits,
    row j the logits that predicted forced_ids[j] (eviction and compression included)."""
    config = GenerationConfig(mode=mode, max_new_tokens=len(forced_ids), ignore_eos=True)
    engine = Engine(model, tokenizer, renderer, options)
    request = engine.add(list(query_ids), config, forced=list(forced_ids), keep_logits=True)
    for _ in engine.run():
        pass
    return torch.stack(request.kept)


class TextStream:
    """A request's text as pieces: push each step's new ids, get the text ready to show.
    An incomplete character and a possible start of a stop string are held back;
    the pieces joined equal the result's text once `rest(result_text)` is added."""

    def __init__(self, tokenizer, stop_strings: tuple[str, ...] = ()):
        self.tokenizer, self.stop_strings = tokenizer, stop_strings
        self.ids: list[int] = []
        self.shown = ""
        self.hold = max((len(s) for s in stop_strings), default=0)

    def push(self, ids: list[int]) -> str:
        self.ids += ids
        text, stopped = cut_at_stop(self.tokenizer.decode(self.ids, skip_special_tokens=True), self.stop_strings)
        if not stopped:
            text = text.rstrip("\ufffd")
            text = text[: max(len(self.shown), len(text) - max(self.hold - 1, 0))]
        piece = text[len(self.shown) :] if len(text) > len(self.shown) else ""
        self.shown += piece
        return piece

    def rest(self, final_text: str) -> str:
        piece = final_text[len(self.shown) :]
        self.shown = final_text
        return piece


def stream(model, tokenizer, prompt: str, config: GenerationConfig = GenerationConfig(),
           renderer=None, options: ChunkOptions | None = None) -> Iterator[str]:
    """Yield the text as it is produced; "".join of the pieces equals `generate(...).text`."""
    query = _prompt_list(prompt)[0]
    engine = Engine(model, tokenizer, renderer, options)
    request = engine.add(query, config)
    text = TextStream(tokenizer, config.stop_strings)
    for events in engine.run():
        for event in events:
            piece = text.push(event.tokens)
            if piece:
                yield piece
    rest = text.rest(request.result(tokenizer).text)
    if rest:
        yield rest

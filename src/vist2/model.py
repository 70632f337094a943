"""`Vist2Model`: vision tower + aligner + a Hugging Face causal LM, over interleaved layouts.

Visual blocks sit in the LLM's input sequence as embeddings: their rows of `input_ids`
hold a placeholder and are overwritten by the aligned visual tokens of their page. The
attention mask and position ids come from the layout (see `vist2.layout`), always passed
explicitly, so transformers never guesses packed sequences from repeated positions.

A checkpoint is a folder: `config.json` (the `Vist2Config`) + `model.safetensors`
(+ the tokenizer files). No pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from vist2.config import LLMConfig, Vist2Config
from vist2.errors import Vist2Error
from vist2.layout import block_mask_from_dense
from vist2.vision import Aligner, VisionTower

CHECKPOINT_FORMAT = "vist2"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DTYPES = ("float32", "bfloat16", "float16")  # of a checkpoint's weights


def build_llm(config: LLMConfig, attn_implementation: str) -> nn.Module:
    if config.path:
        try:
            return AutoModelForCausalLM.from_pretrained(
                config.path, local_files_only=True, trust_remote_code=False, attn_implementation=attn_implementation
            )
        except (OSError, ValueError) as error:
            reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
            raise Vist2Error(f"llm.path {config.path}: cannot load a model from it ({reason})") from None
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if config.model_type not in CONFIG_MAPPING:
        raise Vist2Error(f"llm.model_type {config.model_type!r} is not a model type transformers knows "
                         "(e.g. qwen3, llama)")
    try:
        hf_config = AutoConfig.for_model(config.model_type, **config.params)
        return AutoModelForCausalLM.from_config(hf_config, attn_implementation=attn_implementation)
    except (ValueError, KeyError, TypeError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise Vist2Error(f"llm (model_type {config.model_type!r}) cannot be built: {reason}") from None


def hf_params(hf_config) -> dict:
    """A Hugging Face config as the `params` of an `LLMConfig` / `VisionConfig` (its bookkeeping keys dropped)."""
    data = hf_config.to_diff_dict()
    for key in ("model_type", "transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype"):
        data.pop(key, None)
    return data


def meta_model(config: Vist2Config) -> Vist2Model:
    """A `Vist2Model` of `config` on the meta device: shapes only, no memory, no weights.

    A part given as a weights folder (`path`, e.g. the smollm2-135m LLM) is described by the
    folder's config.json instead, since `from_pretrained` cannot load onto the meta device."""
    changes = {}
    for part in ("llm", "vision"):
        sub = getattr(config, part)
        if sub.path:
            params = sub.params or hf_params(
                AutoConfig.from_pretrained(sub.path, local_files_only=True, trust_remote_code=False))
            changes.update({f"{part}.params": params, f"{part}.path": None})
    with torch.device("meta"):
        return Vist2Model(config.replace(**changes)).eval()


@dataclass
class Vist2Output:
    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None  # mean cross-entropy over labelled tokens


class Vist2Model(nn.Module):
    def __init__(self, config: Vist2Config):
        super().__init__()
        self.config = config
        self.vision = VisionTower(config.vision)
        self.llm = build_llm(config.llm, config.attn_implementation)
        self.aligner = Aligner(config.aligner, self.vision.model.config.hidden_size, self.llm.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.llm.parameters()).dtype

    def encode_pages(self, pages: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) pages in [0, 1] -> (N, beta, d_llm) visual tokens."""
        return self.aligner(self.vision(pages.to(self.device))).to(self.dtype)

    def embed(self, input_ids: torch.Tensor, visual: torch.Tensor | None = None,
              pages: torch.Tensor | None = None, visual_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the rows marked in `visual` (B, T) replaced by visual tokens,
        given as `pages` to encode or as already encoded `visual_tokens` (N, beta, d)."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        if visual is None or not bool(visual.any()):
            return embeds
        if visual_tokens is None:
            visual_tokens = self.encode_pages(pages)
        flat = visual_tokens.reshape(-1, embeds.shape[-1])
        if flat.shape[0] != int(visual.sum()):
            raise Vist2Error(f"{int(visual.sum())} visual positions but {flat.shape[0]} visual tokens")
        return embeds.masked_scatter(visual.unsqueeze(-1), flat.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask,
                visual: torch.Tensor | None = None, pages: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> Vist2Output:
        """Teacher-forced forward of a batch of layouts (see `vist2.stages.collate`). With flex_attention
        a dense bool `attention_mask` is turned into a BlockMask (a BlockMask passes through)."""
        embeds = self.embed(input_ids, visual, pages)
        if self.config.attn_implementation == "flex_attention" and isinstance(attention_mask, torch.Tensor):
            attention_mask = block_mask_from_dense(attention_mask)  # the layout's rule as a BlockMask
        out = self.llm(inputs_embeds=embeds, position_ids=position_ids, attention_mask=attention_mask, use_cache=False)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return Vist2Output(out.logits, loss)

    def parameter_groups(self) -> dict[str, nn.Module]:
        return {"vision": self.vision, "aligner": self.aligner, "llm": self.llm}

    def num_parameters(self) -> dict[str, int]:
        counts = {name: sum(p.numel() for p in part.parameters()) for name, part in self.parameter_groups().items()}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    def self_contained_config(self) -> Vist2Config:
        """The config with the HF sub-configs written out, so no weight paths are needed."""
        return self.config.replace(
            **{"vision.params": hf_params(self.vision.model.config), "vision.path": None,
               "llm.params": hf_params(self.llm.config), "llm.path": None}
        )

    def save_pretrained(self, directory: str | Path, tokenizer=None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        data = {"format": CHECKPOINT_FORMAT, "dtype": str(self.dtype).removeprefix("torch."),
                **self.self_contained_config().to_dict()}
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        save_model(self, str(directory / WEIGHTS_NAME))
        (directory / CONFIG_NAME).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        changes: dict | None = None) -> Vist2Model:
        """Load a checkpoint; `changes` (as `Vist2Config.replace` takes them, e.g. a chunk size or page
        size that leaves the weights' shapes alone) are applied to its config before the model is built."""
        config, dtype = read_checkpoint_config(directory)
        config = config.replace(**(changes or {}))
        weights = Path(directory) / WEIGHTS_NAME
        if not weights.is_file():
            raise Vist2Error(f"{directory} has no {WEIGHTS_NAME}")
        _check_weight_shapes(config, weights)  # before allocating: a wrong config could ask for any size
        model = cls(config).to(dtype)
        _check_tokenizer(model, directory)
        try:
            load_model(model, str(weights), strict=True, device=str(device))
        except (SafetensorError, RuntimeError, OSError) as error:
            raise Vist2Error(f"cannot load {weights}: it does not match {directory}/{CONFIG_NAME} "
                             f"or is corrupt:\n{error}") from None
        return model.to(device).eval()


def build_model(folder: str | Path | None = None, config: Vist2Config | None = None, seed: int = 0,
                device: str | torch.device = "cpu", changes: dict | None = None) -> Vist2Model:
    """The one way to get a model (generation and training): a checkpoint folder's (its config with
    `changes`), or a fresh one of `config` with random weights drawn from `seed`; in eval mode."""
    if (folder is None) == (config is None):
        raise Vist2Error("give exactly one of a model folder or a config")
    if folder is not None:
        return Vist2Model.from_pretrained(folder, device=device, changes=changes)
    torch.manual_seed(seed)
    return Vist2Model(config.replace(**changes or {})).to(device).eval()


def _check_weight_shapes(config: Vist2Config, weights: Path) -> None:
    """The weights file's tensors have the shapes `config` describes (read from its header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt") as handle:
            found = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise Vist2Error(f"cannot read {weights}: {error}") from None
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in Vist2Model(config).state_dict().items()}
    for key, shape in found.items():
        if key in expected and expected[key] != shape:
            raise Vist2Error(f"{weights}: tensor {key} has shape {list(shape)}, but {weights.parent}/{CONFIG_NAME} "
                             f"describes {list(expected[key])}; the config does not belong to these weights")


def _check_tokenizer(model: Vist2Model, directory: str | Path) -> None:
    """The checkpoint's tokenizer (its own files, else the one its config names) yields only ids
    the model has embeddings for."""
    from vist2.tokenizer import load_tokenizer

    name = model.config.tokenizer
    size, rows = len(load_tokenizer(name)), model.llm.get_input_embeddings().num_embeddings
    if size > rows:
        where = f"in {directory}" if Path(name) == Path(directory) else f"{name!r} named by {directory}/{CONFIG_NAME}"
        raise Vist2Error(f"the tokenizer {where} has {size} tokens but the model embeds only {rows}; "
                         "they do not belong together")


def read_checkpoint_config(directory: str | Path) -> tuple[Vist2Config, torch.dtype]:
    """Config and dtype of a checkpoint folder, with a clear error for anything else."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise Vist2Error(f"{directory} is not a vist2 checkpoint: no {CONFIG_NAME}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise Vist2Error(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or data.pop("format", None) != CHECKPOINT_FORMAT:
        raise Vist2Error(f"{directory} is not a vist2 checkpoint ({path} has no \"format\": \"vist2\")")
    dtype = data.pop("dtype", "float32")
    if dtype not in DTYPES:
        raise Vist2Error(f"{path}: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    for part in ("llm", "vision"):
        if isinstance(data.get(part), dict) and data[part].get("path") is not None:
            raise Vist2Error(f"{path}: {part}.path must be null in a checkpoint (its weights are in {WEIGHTS_NAME}), "
                             f"got {data[part]['path']!r}")
    config = Vist2Config.from_dict(data)
    if (Path(directory) / "tokenizer_config.json").is_file():
        config = config.replace(tokenizer=str(directory))
    return config, getattr(torch, dtype)

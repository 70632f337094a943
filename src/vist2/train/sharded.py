"""`--fsdp`: PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`) around a `Vist2Model`.

The same code runs on CPU (gloo) and GPU (nccl) under `torchrun --nproc_per_node N -m vist2
train ... --fsdp`: every decoder layer and vision layer is its own shard group, the rest
(embeddings, aligner, norms, head) the root's. Checkpoints hold the model and optimizer
state sharded, one file per rank, written by `torch.distributed.checkpoint` (DCP); the
model folders (`model/`, `final/`) are the full weights gathered on rank 0 as safetensors.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vist2.errors import Vist2Error

SHARDS = "sharded"  # folder under a checkpoint's state/


def _layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of the LLM and the vision tower (any HF model with `.layers`)."""
    found = [m for name, m in model.named_modules() if name.endswith(".layers") and isinstance(m, nn.ModuleList)]
    return [layer for layers in found for layer in layers]


def check_launch() -> None:
    """--fsdp needs torch.distributed started (torchrun sets the env; Accelerate opens the group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise Vist2Error("--fsdp needs a distributed launch: torchrun --nproc_per_node N -m vist2 train ... --fsdp")


def shard(model: nn.Module, device: torch.device) -> nn.Module:
    """Shard `model` in place, layer by layer then the root; returns it (now an FSDPModule)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for layer in _layers(model):  # fully_shard moves each group to the device as it shards it: no full copy there
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _options(full: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full)


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full weights on rank 0 (on CPU); every rank must call it, other ranks get {}."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(True))


def save(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Model + optimizer, sharded: each rank writes its own shards (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer, options=_options(False))
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder / SHARDS))


def load(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Read back what `save` wrote into the sharded model and optimizer (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not (folder / SHARDS).is_dir():
        raise Vist2Error(f"cannot resume with --fsdp: {folder} holds no {SHARDS}/ state "
                         "(was the run started without --fsdp?)")
    model_state, optimizer_state = get_state_dict(model, optimizer, options=_options(False))
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(folder / SHARDS))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=_options(False))

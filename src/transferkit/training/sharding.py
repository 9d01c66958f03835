"""Fully sharded data parallel (train.distributed=fsdp): each of N processes keeps 1/N of every
weight, gradient and optimizer state, and gathers a block's weights only while it runs.

torch's own FSDP2 (`fully_shard`) does the sharding, on gloo (CPUs) as on NCCL (GPUs): accelerate's
FSDP plugin is GPU-only. Each transformer block is its own unit (gathered, run, freed in turn), the
rest of the model the root's. Gradients are reduce-scattered as averages, as DDP averages them, so the
loop's loss scaling serves both.

What a sharded model asks of the code around it: every process must run the same number of forwards
(each one is a collective), so evaluation hands a process with no batch left a repeat whose result is
not counted; and what comes after training (the test, the saved folder) runs on the weights gathered
back into a plain copy of the model.
"""

from __future__ import annotations

import torch
from torch import nn


def shard(model: nn.Module) -> float:
    """Shard `model` in place over the processes of the default process group; returns the share of
    its weights this process holds (1/N, give or take a row)."""
    from torch.distributed.fsdp import fully_shard

    for block in blocks(model):
        fully_shard(block)
    fully_shard(model)
    params = list(model.parameters())
    return sum(p.to_local().numel() for p in params) / sum(p.numel() for p in params)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: the classes a transformers model names as never to be
    split across devices (`_no_split_modules`), else the members of each list of like modules (BERT's
    `encoder.layer`)."""
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    if names:
        return [m for m in model.modules() if type(m).__name__ in names]
    found = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            found.extend(module)
    return found


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def gathered_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight and buffer whole, on every process, where the shards were (a collective: every process calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))


def unsharded(model: nn.Module, fresh: nn.Module) -> nn.Module:
    """`fresh` (a plain copy of `model`'s structure) holding `model`'s trained weights, on every process."""
    state = {name: value.cpu() for name, value in gathered_state(model).items()}
    fresh.load_state_dict(state, strict=True)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    for name, p in fresh.named_parameters():
        p.requires_grad_(name in trained)  # what trained stays marked so (parameter counts, the saved adapter)
    return fresh

"""Data parallelism under torchrun, layered on the single-process trainer.

`torchrun --nproc_per_node=N -m groundup train …` sets RANK/WORLD_SIZE/LOCAL_RANK; the trainer then
wraps the model in DistributedDataParallel: every rank draws its own windows (see BatchSampler),
gradients are averaged across ranks in backward, and only rank 0 writes files. Backend: NCCL on
CUDA, gloo on CPU.

Models too big for one GPU need their weights sharded too: with `parallel = "fsdp"` the trainer
applies FSDP (`torch.distributed.fsdp.fully_shard`) instead: each rank keeps 1/N of every parameter,
gradient and AdamW moment (as DTensor shards) and all-gathers a block's weights just before using
it. Checkpoints stay the same files: `gather` makes full tensors for rank 0 to write, and
`shard_like` cuts a loaded full tensor back into this rank's shard. See docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this call created the process group, so shutdown() destroys it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by torchrun; returns this rank's info and device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # a caller (e.g. a lab training many runs) may hold one already
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        info.owns_group = True
    return info, device


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / info.world_size
    return value


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def skip_gradient_sync(model, skip: bool):
    """Accumulate this micro-batch's gradients locally, without the all-reduce (DDP) or
    reduce-scatter (FSDP); the last micro-batch of a step syncs everything accumulated."""
    if not skip:
        yield
    elif hasattr(model, "no_sync"):  # DistributedDataParallel
        with model.no_sync():
            yield
    else:  # fully_shard
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)


def weights_in_sync(tensors: dict[str, torch.Tensor], info: DistInfo) -> bool:
    """True when every rank holds bit-identical weights (compares a SHA-256 of each rank's bytes)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    if not info.enabled:
        return True
    mine = digest.hexdigest()
    everyone = [None] * info.world_size
    dist.all_gather_object(everyone, mine)
    return all(d == mine for d in everyone)


def shutdown(info: DistInfo) -> None:
    """Destroy the process group if init_distributed created it. (Under torchrun a group can't be
    created again after it is destroyed, so a caller that trains several runs holds it open.)"""
    if info.enabled and info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


# ---- FSDP ---------------------------------------------------------------------------------------
def shard_model(model, device: torch.device) -> None:
    """Fully shard `model` across the process group, in place: each transformer block is its own
    unit (gathered just for its forward and backward), the root holds the embeddings, final norm
    and head. Call before creating the optimizer: the parameters become DTensor shards."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def is_sharded(tensor: torch.Tensor) -> bool:
    if not dist.is_available():  # a torch build without torch.distributed shards nothing
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def gather(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full tensors from FSDP shards (an all-gather per sharded tensor: every rank must call it,
    with the same names in the same order); plain tensors pass through."""
    return {name: t.detach().full_tensor() if is_sharded(t) else t for name, t in tensors.items()}


def shard_like(reference: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`full` (the same on every rank, e.g. read from a checkpoint) as a tensor laid out like
    `reference`: this rank's shard if `reference` is sharded, else `full` itself. No communication."""
    if not is_sharded(reference):
        return full
    from torch.distributed.tensor import distribute_tensor

    full = full.detach().to(device=reference.device, dtype=reference.dtype)
    return distribute_tensor(full, reference.device_mesh, reference.placements, src_data_rank=None)

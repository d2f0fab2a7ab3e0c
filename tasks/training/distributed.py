"""Several training processes on one host (torchrun or ``accelerate launch`` starts them): joining the
process group, DDP or FSDP2 around the model, gradient sync once per optimizer step, figures summed over
processes, and the digest that shows DDP replicas stayed identical.

One process (``train.distributed`` off) goes through the same calls as a world of one.
"""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from tasks.core.settings import TrainSettings
from tasks.training.model import decoder_layers, pick_device


@dataclass(frozen=True)
class Processes:
    """This process's place in the run."""

    rank: int
    world: int
    device: torch.device  # this rank's device
    distributed: bool  # joined a process group (train.distributed)
    fsdp: bool  # base and LoRA weights sharded over the processes

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, checkpoints and saves."""
        return self.rank == 0

    @property
    def mode(self) -> str:
        return "fsdp" if self.fsdp else "ddp" if self.distributed else "single"


def join_processes(cfg: TrainSettings) -> Processes:
    rank, world, device = init_distributed(cfg.distributed, pick_device(cfg.device))
    if cfg.batch_size % (cfg.micro_batch_size * world):
        raise ValueError(f"train.batch_size {cfg.batch_size} must be a multiple of micro_batch_size x processes "
                         f"({cfg.micro_batch_size} x {world})")
    return Processes(rank=rank, world=world, device=device, distributed=cfg.distributed,
                     fsdp=cfg.distributed and cfg.parallelism == "fsdp")


def init_distributed(enabled: bool, device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device). ``train.distributed`` joins the process group that
    torchrun (or ``accelerate launch``) set up; a group already initialised by the caller is used as is.
    On CUDA each process takes the GPU of its rank on this host (LOCAL_RANK)."""
    if not enabled:
        return 0, 1, device
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")  # env:// rendezvous from the launcher
    rank, world = dist.get_rank(), dist.get_world_size()
    if device.type == "cuda":
        local = dist.get_node_local_rank(fallback_rank=rank)
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return rank, world, device


def wrap_for_processes(model, procs: Processes):
    """What the forward pass calls: FSDP shards ``model`` in place, DDP wraps it, one process leaves it."""
    if procs.fsdp:
        shard_fsdp(model, procs.device, procs.rank, procs.world)
    elif procs.distributed:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[procs.device.index] if procs.device.type == "cuda" else None)
    return model


def shard_fsdp(model, device: torch.device, rank: int, world: int) -> int:
    """FSDP2: ``fully_shard`` every decoder layer, then the root (embeddings, final norm, head).

    ``model`` holds real weights on rank 0 and meta tensors elsewhere
    (:func:`tasks.training.model.load_base_model_for_fsdp`); rank 0's full state dict is scattered
    into the shards and its buffers (rotary frequencies, not in the state dict) are broadcast.
    Returns how many layers were sharded.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    full = model.state_dict() if rank == 0 else {}
    buffers = {name: (b.shape, b.dtype) for name, b in model.named_buffers()}
    mesh = init_device_mesh(device.type, (world,))
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    for name, (shape, dtype) in buffers.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        value = owner._buffers[leaf].to(device) if rank == 0 else torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(value, src=0)
        owner._buffers[leaf] = value
    return len(layers)


def gradient_sync(model, peft_model, procs: Processes, sync: bool) -> AbstractContextManager:
    """Reduce gradients over processes only on a step's last micro-batch (``sync``), not on every one."""
    if procs.fsdp:
        peft_model.set_requires_gradient_sync(sync)  # FSDP2's no_sync: reduce-scatter once per step
    return model.no_sync() if not sync and hasattr(model, "no_sync") else nullcontext()


def over_processes(loss: float, tokens: int, procs: Processes) -> tuple[float, int]:
    """What is logged is over every process: mean loss, all tokens."""
    if procs.world == 1:
        return loss, tokens
    import torch.distributed as dist

    both = torch.tensor([loss, float(tokens)], dtype=torch.float64, device=procs.device)
    dist.all_reduce(both)
    return float(both[0]) / procs.world, int(both[1])


def barrier(procs: Processes) -> None:
    if procs.world > 1:
        import torch.distributed as dist

        dist.barrier()


def lora_digest(model) -> str:
    """sha256 over this process's trainable weights: DDP replicas that stayed in sync give the same digest."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

"""Data-parallel training over processes: ``torchrun --nproc_per_node N -m napari_4dstem_rvae.cli run ...``.

Every process (rank) holds the same model. Each minibatch of the epoch plan (drawn from the
same seeded generator on every rank, so all ranks agree on it) is dealt out: rank *r* reads
and encodes the patterns ``batch[r::N]`` only. After the backward pass the gradients are
summed over the ranks, weighted by each rank's share of the batch — the gradient of the mean
loss over the whole minibatch, as one process would compute it — so every rank takes the
same optimiser step and the models stay identical. This is what PyTorch's
``DistributedDataParallel`` does; the all-reduce is written out here because the model is
trained through :meth:`RVAE.loss`, not ``forward``, which DDP's hooks expect. The sampling
noise of the reparameterisation is drawn for the whole minibatch on every rank (the same seeded
generator) and dealt out the same way, so N processes train the model one process trains from
the same seed, up to the order of floating-point sums.

The backend is NCCL on CUDA devices and gloo on CPUs. Rank 0 writes the checkpoints and the
results; the other ranks train and stop.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["average_gradients", "init_from_environment", "is_main", "local_rows", "local_share", "world"]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the process group this process belongs to; ``(0, 1)`` alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or no process group)."""
    return world()[0] == 0


def init_from_environment(device: str = "auto") -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1,
    ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); nothing when started alone. NCCL when this rank
    trains on a CUDA device, else gloo. Returns :func:`world`."""
    import torch.distributed as dist

    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():  # pragma: no cover - torch builds without distributed
        raise RuntimeError("this PyTorch build has no torch.distributed; run one process")
    cuda = device in ("cuda", "auto") and torch.cuda.is_available()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local % torch.cuda.device_count())
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return world()


def local_share(index: torch.Tensor) -> torch.Tensor:
    """This rank's part of a minibatch of pattern indices (all of it alone)."""
    rank, size = world()
    return index if size == 1 else index[rank::size]


def local_rows(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This rank's rows (``[rank::size]``, as :func:`local_share`) of per-pattern tensors drawn
    for the whole minibatch."""
    return {name: local_share(value) for name, value in values.items()}


def average_gradients(model: torch.nn.Module, loss_value: float, local: int, total: int) -> float:
    """Turn this rank's gradients of its mean loss over ``local`` patterns into the gradients of
    the mean over all ``total`` patterns of the minibatch (summed over the ranks); returns the
    minibatch's mean loss. One all-reduce of one flat buffer (gradients and the loss)."""
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.requires_grad]
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    device = parts[0].device if parts else torch.device("cpu")
    loss = torch.tensor([loss_value if local else 0.0], dtype=parts[0].dtype if parts else torch.float32,
                        device=device)
    flat = torch.cat(parts + [loss]) * (float(local) / float(total))
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
    return float(flat[-1])


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Rank 0's weights and buffers to every rank (they start equal anyway: seeded)."""
    import torch.distributed as dist

    for value in model.state_dict().values():
        if torch.is_tensor(value) and value.numel():
            dist.broadcast(value, 0)


def share_of_threads(threads: Any) -> int | None:
    """Threads per rank when the user gave none: the cores this process may use, divided among
    the ranks on this node (``LOCAL_WORLD_SIZE``)."""
    if threads is not None:
        return int(threads)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")) or 1)
    if local <= 1:
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // local)

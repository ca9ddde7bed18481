"""Data-parallel training with ``torch.distributed`` (DDP; gloo on CPU, nccl on GPU).

Launch with ``torchrun --nproc-per-node N -m pyro_bamf train ... --distributed``. Every rank
builds the same split and draws the same global batches (same seed); rank ``r`` trains on
groups ``r, r + N, r + 2N, ...`` of each global batch. The likelihood and KL scales are those
of the global batch (:func:`pyro_bamf.training.loss_scales` on the whole batch), multiplied by
``N`` because DDP averages the ranks' gradients: the synchronised gradient is then exactly the
gradient of the global-batch objective. Model initialisation is identical on every rank (and
DDP broadcasts rank 0's parameters); the latent draws and dropout masks of rank ``r > 0`` come
from a generator seeded with ``(seed, r)``, so ranks do not repeat each other's noise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .batch import Batch


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job: ``rank`` of ``world_size``."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, checkpoints and writes the run directory."""
        return self.rank == 0

    def shard(self, batch: Batch) -> Batch:
        """This rank's groups of a global batch: ``rank, rank + N, ...``."""
        pick = slice(self.rank, None, self.world_size)
        labels = None if batch.labels is None else batch.labels[pick]
        return Batch(batch.users[pick], batch.items[pick], batch.history[pick],
                     batch.mask[pick], labels)  # fmt: skip

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks."""
        tensor = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the job described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ...)."""
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR") if name not in os.environ]
    if missing:
        raise ValueError(
            f"--distributed needs torchrun's environment ({', '.join(missing)} unset): launch "
            "with torchrun --nproc-per-node N -m pyro_bamf train ... --distributed"
        )
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return DistributedContext(dist.get_rank(), dist.get_world_size())


def finish_distributed() -> None:
    """Leave the job (a no-op outside one). No barrier: rank 0 may still be scoring the test
    pool long after the others are done, and torchrun waits for every worker anyway."""
    if dist.is_initialized():
        dist.destroy_process_group()

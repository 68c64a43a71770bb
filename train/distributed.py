"""Data-parallel training under torchrun (PyTorch DistributedDataParallel).

`torchrun --nproc_per_node N aectl train ...` sets RANK/WORLD_SIZE; we join the process group (gloo on CPU,
nccl on GPU) and wrap the model. Every rank draws the same global batch from the same seeded crop sampler and
trains on its own slice of it, so the sampler state in a checkpoint is valid for any world size (resume with
a different N works) and N ranks with global batch B follow the same trajectory as one process with batch B,
up to float reduction order. Only rank 0 writes checkpoints and logs.
"""
from __future__ import annotations

import gc
import hashlib
import os

import torch
import torch.distributed as dist

from aectl.runtime.errors import AectlError


class Distributed:
    def __init__(self, device: torch.device):
        try:
            self.world = int(os.environ.get("WORLD_SIZE", "1"))
            self.rank = int(os.environ.get("RANK", "0"))
            self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError as exc:
            raise AectlError(f"torchrun's environment is not whole numbers ({exc})") from None
        self._check_ranks()
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(self.local_rank)
            try:
                dist.init_process_group(backend)
            except ValueError as exc:  # WORLD_SIZE set without the rest of torchrun's variables (a stray one)
                raise AectlError(f"WORLD_SIZE={self.world} asks for distributed training, but {exc}; start it "
                                 "with torchrun, or unset WORLD_SIZE") from None

    def _check_ranks(self) -> None:
        """torchrun never sets these out of range; a stray or hand-made environment might. A RANK past WORLD_SIZE
        waited for ranks that never come, and WORLD_SIZE=1 with RANK=3 trained without writing anything."""
        if self.world < 1:
            raise AectlError(f"WORLD_SIZE={self.world} must be at least 1; start it with torchrun, or unset it")
        if not 0 <= self.rank < self.world:
            raise AectlError(f"RANK={self.rank} must be from 0 to WORLD_SIZE-1={self.world - 1}; start it with "
                             "torchrun, or unset RANK")
        if self.world > 1 and self.local_rank < 0:  # -1 means "not distributed" to some launchers
            raise AectlError(f"LOCAL_RANK={self.local_rank} must not be negative; start it with torchrun, or unset "
                             "LOCAL_RANK")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.enabled and device.type == "cuda" else device

    def check_batch(self, batch_size: int, min_batch: int = 1) -> None:
        """The global batch splits evenly, and each process gets at least `min_batch` crops (Preset.min_batch)."""
        if batch_size % self.world:
            raise AectlError(f"--batch-size {batch_size} (the global batch) must be divisible by the "
                             f"{self.world} processes")
        if batch_size // self.world < min_batch:
            raise AectlError(f"--batch-size {batch_size}: each of the {self.world} processes needs at least "
                             f"{min_batch} crops a step (BatchNorm's batch statistics)")

    def wrap(self, model: torch.nn.Module, rate_distortion: bool) -> torch.nn.Module:
        """DDP over the parameters the training loss reaches. The entropy model's quantiles have their own loss,
        whose gradient is identical on every rank (it depends only on replicated parameters), so they stay in
        step unsynced; MSE-only presets do not train the entropy model at all (it is fitted afterwards)."""
        if not self.enabled:
            return model
        ignore = ["entropy.quantiles"] if rate_distortion else \
            [name for name, _ in model.named_parameters() if name.startswith("entropy.")]
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
        device_ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def my_slice(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return batch
        per_rank = batch.shape[0] // self.world
        return batch[self.rank * per_rank:(self.rank + 1) * per_rank]

    def weight_digests(self, model: torch.nn.Module) -> list[str]:
        """sha256 of every rank's parameters, gathered on all ranks: a check that replicas never drifted."""
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        mine = digest.hexdigest()
        if not self.enabled:
            return [mine]
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, mine)
        return gathered

    def share(self, value=None):
        """Rank 0's `value` on every rank: the outcome of a step only rank 0 takes (locking the run folder), so
        that the other ranks stop with it instead of waiting for it in the next collective call."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group. Unreferenced DDP wrappers are collected first: they hold the group, and
        one freed later, during interpreter shutdown, aborts the process in gloo's teardown."""
        if self.enabled and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()

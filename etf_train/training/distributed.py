"""This process's place in a torchrun launch, the device it trains on, and the run folder all ranks share."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import EtfTrainError


@dataclass
class Dist:
    """This process's place in a torchrun launch (world_size 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float], device) -> list[float]:
        """Sum small per-rank statistics (counts, loss sums) over all ranks."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()


def agreed(world: Dist, step):
    """step() on every rank; when it raises EtfTrainError on any rank, every rank raises it (a refusal on rank 0
    alone would leave the other ranks waiting in their next collective)."""
    error, result = None, None
    try:
        result = step()
    except EtfTrainError as e:
        error = e
    if world.enabled:
        messages: list[str | None] = [None] * world.world_size
        dist.all_gather_object(messages, None if error is None else str(error))
        first = next((m for m in messages if m is not None), None)
        if first is not None and error is None:
            raise EtfTrainError(first)
    if error is not None:
        raise error
    return result


class StopVote:
    """Ranks agree at every step boundary whether a stop signal arrived on any of them.

    Each step starts a non-blocking all-reduce of this rank's flag on a CPU (gloo) group and reads the previous
    step's result: no rank waits for the others, and nothing touches the GPU. All ranks see the same vote at the
    same step, one step after the signal; `settle` reads the last vote at the end of an epoch.
    """

    def __init__(self, world: Dist):
        self.group = dist.new_group(backend="gloo") if world.enabled else None
        self.pending = None

    def __call__(self, local: bool) -> bool:
        if self.group is None:
            return local
        agreed_stop = self.settle()
        flag = torch.tensor([float(local)])
        self.pending = (dist.all_reduce(flag, group=self.group, async_op=True), flag)
        return agreed_stop

    def settle(self) -> bool:
        if self.pending is None:
            return False
        work, flag = self.pending
        work.wait()
        self.pending = None
        return bool(flag.item())


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise EtfTrainError(f"trainer.device={spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EtfTrainError(f"trainer.device={spec} but no CUDA device is visible; use trainer.device=cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise EtfTrainError(f"trainer.device={spec!r}: etf-train runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    return device


def setup_distributed(device_spec: str) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        device = resolve_device(device_spec)
        if device.type == "cuda":  # cuda:N for whatever allocates or records on "the current device" (events, streams)
            torch.cuda.set_device(device)
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_spec != "cpu"
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local), device


def shared_run_dir(run_dir: Path, world: Dist) -> Path:
    """Every rank writes into rank 0's Hydra folder; a folder Hydra made for another rank is removed."""
    if not world.enabled:
        return run_dir
    shared = [str(run_dir)]
    dist.broadcast_object_list(shared, src=0)
    if not world.main and Path(shared[0]).resolve() != run_dir.resolve():
        shutil.rmtree(run_dir, ignore_errors=True)
    return Path(shared[0])

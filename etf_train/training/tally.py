"""The running sums of an epoch's training steps."""

from __future__ import annotations

import time

import torch


class EpochTally:
    """An epoch's running training sums, kept on the device (no host sync per step); a partial-epoch checkpoint
    saves them, so a resumed epoch reports the same numbers as an uninterrupted one."""

    KEYS = ("loss_sum", "correct", "seen", "elapsed", "skipped")

    def __init__(self, device: torch.device, partial: dict | None):
        p = partial or dict.fromkeys(self.KEYS, 0)
        self.done = partial["step"] if partial else 0  # steps trained before the interruption
        self.loss_sum = torch.tensor(p["loss_sum"], device=device, dtype=torch.float64)
        self.correct = torch.tensor(p["correct"], device=device, dtype=torch.long)
        self.seen, self.skipped, self.elapsed_before = p["seen"], p["skipped"], p["elapsed"]
        self.bad_step = torch.zeros((), device=device, dtype=torch.long)  # first step with a non-finite loss
        self.start = time.perf_counter()

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.bad_step = torch.where((self.bad_step == 0) & ~torch.isfinite(loss), step, self.bad_step)
        self.loss_sum += loss.detach() * len(y)
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.seen += len(y)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def partial(self, epoch: int, step: int) -> dict:
        return {
            "epoch": epoch,
            "step": step,
            "loss_sum": self.loss_sum.item(),
            "correct": self.correct.item(),
            "seen": self.seen,
            "elapsed": self.elapsed(),
            "skipped": self.skipped,
        }


def all_finite(tensors) -> bool:
    """Whether every floating value is finite, from each tensor's min and max (NaN propagates through both) with one
    host sync: isfinite(t).all() would allocate and reduce a bool per value (docs/benchmarks.md)."""
    extremes = [torch.stack(torch.aminmax(t)).double() for t in tensors if t.is_floating_point() and t.numel()]
    return not extremes or bool(torch.isfinite(torch.cat(extremes)).all())

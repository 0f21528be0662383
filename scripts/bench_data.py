"""Benchmark the two loader paths of etf_train.data on augmented CIFAR-sized data.

One epoch of the train loader (random crop with padding 4, horizontal flip, normalisation) over N random
uint8 3x32x32 images, batch 256, through:
  dataloader  torch DataLoader: per-sample PIL transforms (as torchvision's CIFAR10 serves them), with
              0 and `--workers` worker processes; on CUDA, pinned memory and a non-blocking copy per batch
  device      DeviceLoader: the uint8 tensor held on the device, augmented there in batches, no workers
on the CPU and, when available, on CUDA. Timing: a few warm-up batches (worker start-up included there),
then one full epoch; images/s = N / epoch seconds (CUDA: synchronised at the end).

    python scripts/bench_data.py
    python scripts/bench_data.py --n 10000 --workers 4 --out /tmp/data.md
    python scripts/bench_data.py --threads 1    # torch intra-op threads of the main process (a busy shared machine)
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from etf_train.data import Augment, Splits, build_data, build_loaders, register_dataset, set_epoch

CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


class PILImages(Dataset):
    """uint8 (N, H, W, C) pixels served as (PIL image, label), as torchvision's CIFAR10 serves its arrays."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray):
        self.pixels, self.labels = pixels, labels

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int):
        return Image.fromarray(self.pixels[i]), int(self.labels[i])


def register_bench_dataset() -> None:
    @register_dataset("bench_cifar")
    def bench_cifar(n: int = 50_000, num_classes: int = 10, seed: int = 0) -> Splits:
        rng = np.random.default_rng(seed)
        pixels = [rng.integers(0, 256, size=(m, 32, 32, 3), dtype=np.uint8) for m in (n, 256)]
        labels = [np.arange(m) % num_classes for m in (n, 256)]
        return Splits(
            *(PILImages(p, y) for p, y in zip(pixels, labels)),
            *(torch.as_tensor(y) for y in labels),
            num_classes,
            (3, 32, 32),
            Augment(4, True, *CIFAR10_STATS),
            tuple(torch.from_numpy(p).permute(0, 3, 1, 2) for p in pixels),
        )


def machine() -> str:
    """One line on where a benchmark ran, for its table's caption."""
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"torch {torch.__version__}, {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"intra-op threads: {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} at the end{gpu}")


def emit(lines: list[str], out: Path | None) -> None:
    """Print a markdown table and, with --out, write it there too."""
    table = "\n".join(lines)
    print(table)
    if out:
        out.write_text(table + "\n")


def epoch_rate(bundle, batch_size: int, kind: str, device: torch.device, workers: int, warmup: int = 5) -> float:
    """Images per second of one epoch of the train loader, batches landing on `device`."""
    cuda = device.type == "cuda"
    train = build_loaders(
        bundle, batch_size, num_workers=workers, pin_memory=cuda, loader=kind, device=device if kind == "device" else None
    )[0]
    for step, (x, y) in enumerate(train):
        x.to(device, non_blocking=True)
        if step + 1 == warmup:
            break
    set_epoch(train, 1)
    if cuda:
        torch.cuda.synchronize()
    start, seen = time.perf_counter(), 0
    for x, y in train:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        seen += len(y)
    if cuda:
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50_000, help="train images (default 50000)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers of the second row")
    p.add_argument("--threads", type=int, help="torch intra-op threads of the main process (default: torch's)")
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    register_bench_dataset()
    bundle = build_data("bench_cifar", n=args.n)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for workers in sorted({0, args.workers}):
            rows.append(("dataloader", device, workers, epoch_rate(bundle, args.batch_size, "dataloader", device, workers)))
            print(*rows[-1], flush=True)
        rows.append(("device", device, 0, epoch_rate(bundle, args.batch_size, "device", device, 0)))
        print(*rows[-1], flush=True)

    lines = [
        f"One epoch of augmented 3x32x32 uint8 images (crop 4 + flip + normalise), N={args.n}, batch {args.batch_size}; "
        f"{machine()}.",
        "",
        "| path | batches on | workers | images/s | epoch s |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {k} | {d.type} | {w} | {r:,.0f} | {args.n / r:.2f} |" for k, d, w, r in rows]
    emit(lines, args.out)


if __name__ == "__main__":
    main()

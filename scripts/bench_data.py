"""Benchmark the two loader paths of etf_train.data: per-sample DataLoader transforms vs the device path.

Synthetic (default): one epoch of the train loader (random crop with padding 4, horizontal flip,
normalisation) over N random uint8 3x32x32 images, batch 256, through:
  dataloader  torch DataLoader: per-sample PIL transforms (as torchvision's CIFAR10 serves them), with
              0 and `--workers` worker processes; on CUDA, pinned memory and a non-blocking copy per batch
  device      DeviceLoader: the uint8 tensor held on the device, augmented there in batches, no workers
on the CPU and, when available, on CUDA.

--folder ROOT (an image folder, root/train/<class>/*, root/test/<class>/*): the `image_folder` dataset on a
subset of it (the first --per-class train images of every class and a fifth as many test images, hard links
in /tmp/<name>-<per-class>; --per-class 0: ROOT itself), CPU only:
  dataloader  dataset.cache=off: every epoch decodes the files (PIL) and transforms them one by one
  device      dataset.cache=on: the folder decoded once into uint8 tensors (cache file), then batched crop + flip
and the one-time costs: the folder scan alone (cache=off), the first build (scan, key, decode, write the
cache file) and a later build (scan, key, read the cache file).

Timing: a few warm-up batches (worker start-up included there), then one full epoch; images/s = N / epoch
seconds (CUDA: synchronised at the end).

    python scripts/bench_data.py
    python scripts/bench_data.py --n 10000 --workers 4 --out /tmp/data.md
    python scripts/bench_data.py --threads 1    # torch intra-op threads of the main process (a busy shared machine)
    python scripts/bench_data.py --folder /tmp/cifar10-jpg --per-class 500 --workers 2 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
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


def cpu_model() -> str:
    """The CPU's model name (lscpu's "Model name"); platform.processor() is often empty on Linux."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> str:
    """One line on where a benchmark ran, for its table's caption."""
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"torch {torch.__version__}, {os.cpu_count()} CPU cores ({cpu_model()}), "
        f"intra-op threads: {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} at the end{gpu}"
    )


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
        bundle, batch_size, num_workers=workers, pin_memory=cuda, mode=kind, device=device if kind == "device" else None
    )[0]
    for step, (x, _y) in enumerate(train):
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


def subset(root: Path, per_class: int) -> Path:
    """root's first per_class train images per class and per_class // 5 test images, as hard links (copies across
    file systems) in /tmp/<name>-<per_class>; made once, so their mtimes, hence the cache key, stay put."""
    if per_class == 0:
        return root
    out = Path("/tmp") / f"{root.name}-{per_class}"
    if out.is_dir():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for split, n in (("train", per_class), ("test", max(1, per_class // 5))):
        for cls in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            (tmp / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                try:
                    os.link(f, tmp / split / cls.name / f.name)
                except OSError:
                    shutil.copy2(f, tmp / split / cls.name / f.name)
    tmp.rename(out)
    return out


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_folder(args) -> list[str]:
    """The image folder rows: DataLoader path (files, cache=off) with 0 and --workers workers vs the cached device path."""
    root = subset(args.folder, args.per_class)
    shutil.rmtree(root / ".etf_cache", ignore_errors=True)  # the first build below decodes
    load = [os.getloadavg()]

    def build(cache):
        return build_data("image_folder", root=str(root), image_size=args.image_size, cache=cache)

    build("off")  # imports (torchvision, PIL) and the directory listing's first read: not the scan's cost
    files, scan = timed(lambda: build("off"))
    _, first = timed(lambda: build("on"))
    cached, later = timed(lambda: build("on"))
    n, cpu = len(files.train), torch.device("cpu")
    print(f"scan {scan:.2f} s, first build {first:.2f} s, later build {later:.2f} s", flush=True)
    paths = [(f"dataloader, {w} workers", files, "dataloader", w) for w in sorted({0, args.workers})]
    rows = []
    for name, bundle, kind, workers in [*paths, ("device (cached)", cached, "device", 0)]:
        rows.append((name, epoch_rate(bundle, args.batch_size, kind, cpu, workers)))
        print(*rows[-1], flush=True)
    load.append(os.getloadavg())
    device_rate, (before, after) = rows[-1][1], (" ".join(f"{v:.2f}" for v in la) for la in load)
    caption = (
        f"One epoch of the image_folder train loader (resize to {args.image_size} px, crop {args.image_size // 8} + flip "
        f"+ normalise) over {n:,} train images of {root} ({len(files.test):,} test images), batch {args.batch_size}; "
        f"{machine()}; load average (1, 5, 15 min) before {before}, after {after}."
    )
    once = (
        f"One-time: folder scan {scan:.2f} s (cache=off); first build {first:.2f} s (scan, key, decode "
        f"{n + len(files.test):,} images, write); later builds {later:.2f} s (scan, key, read the cache file)."
    )
    lines = [caption, "", "| path | images/s | data s / epoch | data time vs device |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {r:,.0f} | {n / r:.2f} | {device_rate / r:.1f}x |" for k, r in rows]
    return [*lines, "", once]


def bench_synthetic(args) -> list[str]:
    register_bench_dataset()
    bundle = build_data("bench_cifar", n=args.n)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for workers in sorted({0, args.workers}):
            rows.append(
                ("dataloader", device, workers, epoch_rate(bundle, args.batch_size, "dataloader", device, workers))
            )
            print(*rows[-1], flush=True)
        rows.append(("device", device, 0, epoch_rate(bundle, args.batch_size, "device", device, 0)))
        print(*rows[-1], flush=True)

    lines = [
        f"One epoch of augmented 3x32x32 uint8 images (crop 4 + flip + normalise), N={args.n}, batch {args.batch_size}; "
        + f"{machine()}.",
        "",
        "| path | batches on | workers | images/s | epoch s |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {k} | {d.type} | {w} | {r:,.0f} | {args.n / r:.2f} |" for k, d, w, r in rows]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50_000, help="train images (default 50000)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers of the second row"
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads of the main process (default: torch's)")
    p.add_argument("--folder", type=Path, help="an image folder (root/train/<class>/*, root/test/<class>/*)")
    p.add_argument("--per-class", type=int, default=500, help="--folder: train images per class (0: all of them)")
    p.add_argument("--image-size", type=int, default=32, help="--folder: dataset.image_size")
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    emit(bench_folder(args) if args.folder else bench_synthetic(args), args.out)


if __name__ == "__main__":
    main()

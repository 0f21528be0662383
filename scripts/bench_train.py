"""Training throughput: ResNet-18 (CIFAR variant, 32 px), K = 100, batch 256, each head and each data path.

Runs the real trainer step (etf_train.training.Run.train_epoch) on CIFAR-shaped uint8 images served the way
torchvision's CIFAR serves them (the `bench_cifar` dataset of scripts/bench_data.py): per-sample PIL
transforms through a DataLoader, or the device-resident path with batched augmentation. Each row: one
warm-up epoch, then one timed epoch of `--steps` steps. On CUDA: bf16 autocast and channels_last
(`--compile` adds torch.compile).

    python scripts/bench_train.py                      # CPU (and CUDA when present)
    python scripts/bench_train.py --steps 20 --device cuda --compile --out /tmp/train.md
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from bench_data import emit, machine, register_bench_dataset
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from etf_train.cli import config_dir
from etf_train.training import Run, SignalGuard

HEADS = ("learned", "fixed_etf", "nearest_etf")


def config(head: str, loader: str, device: str, steps: int, batch: int, workers: int, compile_: bool):
    cuda = device.startswith("cuda")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "backbone=resnet18",
                f"head={head}",
                f"trainer.device={device}",
                f"trainer.batch_size={batch}",
                f"trainer.channels_last={cuda}",
                f"trainer.compile={compile_}",
                "trainer.progress=false",
            ],
        )
    OmegaConf.set_struct(cfg, False)
    cfg.dataset = {**OmegaConf.to_container(cfg.dataset), "name": "bench_cifar", "n": steps * batch, "num_classes": 100}
    cfg.loader = {"mode": loader, "num_workers": workers if loader == "dataloader" else 0, "class_balanced": False}
    return cfg


def measure(cfg) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(cfg, Path(tmp))
        guard = SignalGuard()
        run.train_epoch(1, guard, None, None)  # warm-up: allocator, cuDNN autotuning, compilation, workers
        out = run.train_epoch(2, guard, None, None)
    steps = cfg.dataset.n // cfg.trainer.batch_size
    return {
        "img_s": out["throughput/train_img_s"],
        "step_ms": 1e3 * out["time/epoch_s"] / steps,
        "solver_ms": out.get("solver/ms", float("nan")),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="all", help="cpu | cuda | all (default: every available)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per row (CPU default 3)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = p.parse_args()
    register_bench_dataset()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    rows = []
    for device in devices:
        for loader in ("device", "dataloader"):
            for head in HEADS:
                r = measure(config(head, loader, device, args.steps, args.batch_size, args.workers, args.compile))
                rows.append((device, loader, head, r))
                print(device, loader, head, {k: round(v, 2) for k, v in r.items()}, flush=True)

    learned = {(d, ld): r["step_ms"] for d, ld, h, r in rows if h == "learned"}
    device_rate = {(d, h): r["img_s"] for d, ld, h, r in rows if ld == "device"}
    lines = [
        f"ResNet-18 (CIFAR stem), 32 px, K=100, batch {args.batch_size}, {args.steps} timed steps per row, "
        f"DataLoader workers {args.workers}; {machine()}.",
        "",
        "| device | data path | head | images/s | step ms | solver ms | step / learned | device path speed-up |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for d, ld, h, r in rows:
        speedup = device_rate[(d, h)] / r["img_s"] if ld == "dataloader" else 1.0
        lines.append(
            f"| {d} | {ld} | {h} | {r['img_s']:,.0f} | {r['step_ms']:.0f} | {r['solver_ms']:.2f} | "
            f"{r['step_ms'] / learned[(d, ld)]:.3f} | {speedup:.2f}x |"
        )
    emit(lines, args.out)


if __name__ == "__main__":
    main()

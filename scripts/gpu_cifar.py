"""GPU check, steps `decode` and `cifar` (run by gpu_steps.py): the real CIFAR-10, as JPEG class folders.

decode  unpack cifar10-jpg.tar.gz into WORK/cifar10-jpg and decode it once into etf-train's cache (dataset.cache=on),
        timed; scripts/gpu_check.py starts it in the background first thing (a dry run writes a small JPEG folder)
cifar   the device path's images/s over a train epoch served from the GPU; a 2-epoch nearest_etf run on the real
        data against the same run on synthetic on-GPU images of the same shapes and count (time/epoch_s); then
        `etf-train -m experiment=cifar10_jpg_resnet18 head=learned,fixed_etf,nearest_etf seed=1` for as many epochs
        as --budget-s allows, and etf-compare on the sweep
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_data import epoch_rate, register_bench_dataset
from gpu_steps import HEADS, Step, config, error_line
from omegaconf import OmegaConf
from PIL import Image

from etf_train import rundir
from etf_train.data import build_data
from etf_train.training import train

DRY = ["backbone=fast_cnn", "trainer.batch_size=20", "trainer.eval_batch_size=20"]
EPOCHS_MAX = 30
COMPARE_S = 40  # etf-compare and the margin after the sweep


def _tiny_folder(root: Path) -> None:
    """10 classes of random 32 px JPEGs, 6 train and 2 test each: the dry run's stand-in for CIFAR-10."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")


def _dataset(root: Path, *overrides: str):
    cfg = config("experiment=cifar10_jpg_resnet18", f"dataset.root={root}", *overrides)
    options = {k: v for k, v in OmegaConf.to_container(cfg.dataset).items() if k != "name"}
    return cfg, options


def decode(step: Step, args) -> None:
    root = step.work / "cifar10-jpg"
    start = time.perf_counter()
    if not (root / "train").is_dir():
        if args.cifar is not None:
            with tarfile.open(args.cifar) as tar:
                tar.extractall(root, filter="data")
        elif step.dry:
            _tiny_folder(root)
        else:
            step.check("CIFAR-10 tarball", False, "no --cifar given (scripts/gpu_check.sh --prepare copies it)")
            return
    unpacked = time.perf_counter() - start
    _, options = _dataset(root, "dataset.cache=on")
    start = time.perf_counter()
    try:
        bundle = build_data("image_folder", **options)
        ok, detail = bundle.train_x is not None, f"{len(bundle.train)} + {len(bundle.test)} images"
    except Exception as e:  # noqa: BLE001
        ok, detail = False, error_line(e)
    step.data = {"root": str(root), "unpack_s": unpacked, "decode_s": time.perf_counter() - start}
    step.summary = [
        f"- unpacked in {unpacked:.1f} s; decoded into the cache in {step.data['decode_s']:.1f} s "
        f"(one process, while the other steps ran): {detail}"
    ]
    step.check("decode CIFAR-10 into the cache", ok, detail)


def _wait_for_decode(step: Step, limit_s: float) -> dict | None:
    path = step.work / "decode.json"
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if path.is_file():
            record = json.loads(path.read_text())
            if record["checks"]:
                return record if all(c["ok"] for c in record["checks"]) else None
        time.sleep(1)
    return None


def _curves(run: Path) -> dict:
    curves = rundir.read_scalars(run)
    last = lambda tag: float(curves[tag][1][-1]) if tag in curves else math.nan  # noqa: E731

    def mean(tag):
        return (
            float(np.mean(curves[tag][1][1:] if len(curves[tag][1]) > 1 else curves[tag][1]))
            if tag in curves
            else math.nan
        )  # noqa: E731

    return {
        "epochs": len(curves["train/loss"][0]),
        "test/acc": last("test/acc"),
        "train/eval_acc": last("train/eval_acc"),
        "nc/nc1": last("nc/nc1"),
        "epoch_s": mean("time/epoch_s"),
        "img_s": mean("throughput/train_img_s"),
        "solver_ms": mean("solver/ms"),
    }


def cifar(step: Step, args) -> None:
    started = time.monotonic()
    decoded = _wait_for_decode(step, args.budget_s / 3)
    if not step.check("CIFAR-10 decoded", decoded is not None, "see decode.log"):
        return
    root = Path(decoded["data"]["root"])
    extra = DRY if step.dry else ["trainer.channels_last=true"]
    cfg, options = _dataset(root, *extra)
    bundle = build_data("image_folder", **options)
    batch = cfg.trainer.batch_size
    served = epoch_rate(bundle, batch, "device", torch.device(step.device), workers=0, warmup=1 if step.dry else 5)
    # the same run on real and on synthetic on-GPU images (same count, shapes, sampler, model): the data path's cost
    register_bench_dataset()
    same = ["experiment=cifar10_jpg_resnet18", "head=nearest_etf", "trainer.max_epochs=2", *extra]
    start = time.monotonic()
    real = _curves_of(train(config(*same, f"dataset.root={root}"), step.dir / "real_2ep"), step.dir / "real_2ep")
    epoch_wall = (time.monotonic() - start) / 2
    synthetic = _curves_of(
        train(config(*same, n=len(bundle.train)), step.dir / "synthetic_2ep"), step.dir / "synthetic_2ep"
    )
    ratio = real["last_epoch_s"] / synthetic["last_epoch_s"]
    step.data |= {
        "served_img_s": served,
        "train_img_s": real["last_img_s"],
        "real_vs_synthetic_epoch": ratio,
        "epoch_wall_s": epoch_wall,
    }
    step.summary = [
        f"- device path, one train epoch served from the {step.device} (batch {batch}): {served:,.0f} images/s; "
        f"training consumed {real['last_img_s']:,.0f} images/s (nearest_etf, epoch 2): {served / real['last_img_s']:.1f}x",
        f"- epoch 2 training time, real CIFAR-10 vs synthetic on-device images of the same shapes: "
        f"{real['last_epoch_s']:.2f} s vs {synthetic['last_epoch_s']:.2f} s ({ratio:.3f}x); wall per epoch with "
        f"evaluation and NC metrics: {epoch_wall:.1f} s",
    ]
    step.goal(
        "data path >= 10x training's images/s", served >= 10 * real["last_img_s"], f"{served / real['last_img_s']:.1f}x"
    )
    step.goal("real epoch within 1.1x of synthetic", ratio <= 1.1, f"{ratio:.3f}x")
    left = args.budget_s - (time.monotonic() - started) - COMPARE_S
    epochs = 1 if step.dry else max(1, min(EPOCHS_MAX, math.floor(left / (3 * epoch_wall * 1.15))))
    sweep = step.dir / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "etf_train",
        "-m",
        "experiment=cifar10_jpg_resnet18",
        "head=" + ",".join(HEADS),
        "seed=1",
        f"trainer.max_epochs={epochs}",
        f"dataset.root={root}",
        "trainer.progress=false",
        f"hydra.sweep.dir={sweep}",
        *extra,
    ]
    step.summary.append(
        f"- budget: {args.budget_s:.0f} s for this step; {left:.0f} s left for the sweep -> "
        f"{epochs} epochs x 3 heads x 1 seed: `{' '.join(cmd[3:])}`"
    )
    step.save()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(left, 30) + COMPARE_S / 2)
        print(proc.stdout[-5000:], proc.stderr[-5000:])
        ok, detail = proc.returncode == 0, f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        ok, detail = False, "the sweep ran past its time; runs so far are compared"
    step.check("CIFAR-10 sweep", ok, detail)
    rows = [
        "| head | epochs | test/acc | train/eval_acc | NC1 | train s/epoch | images/s | solver ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    runs = {
        rundir.read_record(r.parent.parent)["head"]["name"]: r.parent.parent
        for r in sweep.glob("**/.hydra/config.yaml")
    }
    for head, run in sorted(runs.items()):
        if rundir.event_files(run):
            c = _curves(run)
            step.data[f"cifar {head}"] = c
            rows.append(
                f"| {head} | {c['epochs']} | {c['test/acc']:.2f} | {c['train/eval_acc']:.2f} | {c['nc/nc1']:.3g} | "
                f"{c['epoch_s']:.2f} | {c['img_s']:,.0f} | {c['solver_ms']:.3f} |"
            )
    compare = subprocess.run(
        [sys.executable, "-m", "etf_train.compare", str(sweep), "--include-unfinished"], capture_output=True, text=True
    )
    step.summary += ["", *rows, "", "etf-compare:", "```", *compare.stdout.strip().splitlines()[-25:], "```"]
    step.check("etf-compare", compare.returncode == 0, compare.stderr.strip()[-300:])


def _curves_of(_last: dict, run: Path) -> dict:
    curves = rundir.read_scalars(run)
    return {
        "last_epoch_s": float(curves["time/epoch_s"][1][-1]),
        "last_img_s": float(curves["throughput/train_img_s"][1][-1]),
    }

"""The training loop: data -> backbone -> head -> cross-entropy -> step; evaluation, NC metrics, TensorBoard, checkpoints.

Config groups served here: trainer/, optimizer/, scheduler/ (and it wires backbone/, dataset/, head/, solver/).
Run folder contract (read by etf-compare): TensorBoard event files directly in the run folder, scalars
logged against the epoch number (1-based), ``checkpoints/last.pt`` rewritten atomically after every epoch.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from .backbones import create_backbone
from .data import build_data, build_loaders, set_epoch
from .errors import EtfTrainError
from .heads import Head, create_head
from .metrics import NCAccumulator

log = logging.getLogger("etf_train")

# Budget for caching train-set features between the two NC passes instead of running the backbone twice.
_FEATURE_CACHE_BYTES = 1 << 30


class Classifier(nn.Module):
    """backbone -> head; the head sees the labels in training (the nearest-ETF head needs them)."""

    def __init__(self, backbone: nn.Module, head: Head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x, y=None):
        return self.head(self.backbone(x), y)


# --------------------------------------------------------------------------------------- factories


def build_optimizer(cfg: DictConfig, params) -> torch.optim.Optimizer:
    """optimizer/: sgd | adamw."""
    opts = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "name"}
    if not opts.get("lr", 0) > 0:
        raise EtfTrainError(f"optimizer.lr must be > 0, got {opts.get('lr')}")
    if cfg.name == "sgd":
        return torch.optim.SGD(params, **opts)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, **{**opts, "betas": tuple(opts.get("betas", (0.9, 0.999)))})
    raise EtfTrainError(f"unknown optimizer {cfg.name!r}; choose sgd or adamw")


def build_scheduler(cfg: DictConfig, optimizer, max_epochs: int):
    """scheduler/: cosine | step | none, stepped once per epoch."""
    if cfg.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs, eta_min=cfg.min_lr)
    if cfg.name == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    if cfg.name == "none":
        return None
    raise EtfTrainError(f"unknown scheduler {cfg.name!r}; choose cosine, step or none")


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EtfTrainError(f"trainer.device={spec} but no CUDA device is visible; use trainer.device=cpu or auto")
    return device


def build_model(cfg: DictConfig, num_classes: int, in_shape, num_samples: int) -> Classifier:
    backbone = create_backbone(**cfg.backbone, in_shape=in_shape, num_samples=num_samples)
    head_opts = {k: v for k, v in OmegaConf.to_container(cfg.head).items() if k != "name"}
    if cfg.head.name == "nearest_etf":
        solver = OmegaConf.to_container(cfg.solver)
        head_opts["method"] = solver.pop("method")
        head_opts["solver_opts"] = {k: v for k, v in solver.items() if v is not None}
    return Classifier(backbone, create_head(cfg.head.name, num_classes, backbone.feature_dim, **head_opts))


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


# ------------------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a temporary file in the same folder, fsync, then rename over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, meta: dict) -> dict:
    """Load a checkpoint and refuse one written for another model (head, classes, backbone, features)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated, corrupt, or not a torch file
        raise EtfTrainError(f"cannot read checkpoint {path}: {type(e).__name__}; delete it or set trainer.resume=never") from None
    if not isinstance(state, dict) or "meta" not in state:
        raise EtfTrainError(f"{path} is not an etf-train checkpoint; set trainer.resume=never or point it elsewhere")
    diff = {k: (state["meta"].get(k), v) for k, v in meta.items() if state["meta"].get(k) != v}
    if diff:
        what = ", ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in diff.items())
        raise EtfTrainError(f"checkpoint {path} does not match this run ({what}); use another output folder or trainer.resume=never")
    return state


def _resume_path(spec: str, run_dir: Path) -> Path | None:
    if spec == "never":
        return None
    if spec == "auto":
        path = run_dir / "checkpoints" / "last.pt"
        return path if path.exists() else None
    path = Path(spec)
    if not path.is_file():
        raise EtfTrainError(f"trainer.resume={spec}: no such checkpoint file")
    return path


# ------------------------------------------------------------------------------------------- loop


def _to(batch, device):
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _show_progress(setting) -> bool:
    return sys.stderr.isatty() if setting == "auto" else bool(setting)


def train_epoch(model, loader, optimizer, device, autocast, epoch, progress) -> dict[str, float]:
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress, dynamic_ncols=True)
    for step, batch in enumerate(bar, 1):
        x, y = _to(batch, device)
        with autocast:
            logits = model(x, y)
        loss = F.cross_entropy(logits.float(), y)
        if not torch.isfinite(loss):
            raise EtfTrainError(
                f"non-finite loss ({loss.item()}) at epoch {epoch}, step {step}: training diverged; "
                "lower optimizer.lr (the last good checkpoint is kept)"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.head.after_step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.1f}",
                            img_s=f"{seen / (time.perf_counter() - start):.0f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return {
        "train/loss": loss_sum.item() / seen,
        "train/acc": 100.0 * correct.item() / seen,
        "time/epoch_s": elapsed,
        "throughput/train_img_s": seen / elapsed,
        **model.head.pop_solver_stats(),
    }


@torch.no_grad()
def evaluate(model, loader, device, autocast) -> dict[str, float]:
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for batch in loader:
        x, y = _to(batch, device)
        with autocast:
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return {"test/loss": loss_sum.item() / seen, "test/acc": 100.0 * correct.item() / seen}


@torch.no_grad()
def nc_metrics(model, loader, device, autocast, num_classes) -> dict[str, float]:
    """NC1-NC4 over the (un-augmented) train set, streaming: pass 1 moments, pass 2 nearest-class-centre."""
    model.eval()
    acc = NCAccumulator(num_classes, model.head.dim, device=device)
    cache, cached_bytes = [], 0
    for batch in loader:
        x, y = _to(batch, device)
        with autocast:
            f = model.backbone(x)
        h = model.head.normalize(f.float())
        acc.update_stats(h, y)
        cached_bytes += h.numel() * h.element_size()
        if cached_bytes <= _FEATURE_CACHE_BYTES:
            cache.append((h, model.head(f.float())))
    acc.all_reduce()
    if cached_bytes <= _FEATURE_CACHE_BYTES:
        for h, logits in cache:
            acc.update_ncc(h, logits)
    else:
        for batch in loader:
            x, _ = _to(batch, device)
            with autocast:
                f = model.backbone(x)
            acc.update_ncc(model.head.normalize(f.float()), model.head(f.float()))
    acc.all_reduce()
    return {f"nc/{k}": v for k, v in acc.compute(model.head.weight.detach().float()).items()}


def _check_config(cfg: DictConfig) -> None:
    t = cfg.trainer
    for key in ("max_epochs", "batch_size"):
        if not (isinstance(t[key], int) and t[key] >= 1):
            raise EtfTrainError(f"trainer.{key} must be a positive integer, got {t[key]!r}")
    if not (isinstance(cfg.metrics.every_n_epochs, int) and cfg.metrics.every_n_epochs >= 1):
        raise EtfTrainError(f"metrics.every_n_epochs must be a positive integer, got {cfg.metrics.every_n_epochs!r}")
    if t.precision not in ("auto", "bf16", "fp32"):
        raise EtfTrainError(f"trainer.precision must be auto, bf16 or fp32, got {t.precision!r}")


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """Run one experiment into ``run_dir``; returns the last epoch's scalars."""
    run_dir = Path(run_dir)
    _check_config(cfg)
    t = cfg.trainer
    seed_everything(cfg.seed, t.deterministic)
    device = resolve_device(t.device)

    dataset_opts = {k: v for k, v in OmegaConf.to_container(cfg.dataset).items() if k != "name"}
    bundle = build_data(cfg.dataset.name, **dataset_opts)
    train_loader, test_loader, eval_train_loader = build_loaders(
        bundle,
        t.batch_size,
        class_balanced=cfg.dataset.class_balanced,
        num_workers=cfg.dataset.num_workers,
        seed=cfg.seed,
        pin_memory=device.type == "cuda",
    )
    K = bundle.num_classes
    model = build_model(cfg, K, bundle.in_shape, len(bundle.train)).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if t.compile:
        model.backbone = torch.compile(model.backbone)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    scheduler = build_scheduler(cfg.scheduler, optimizer, t.max_epochs)
    bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    meta = {"head": cfg.head.name, "num_classes": K, "feature_dim": model.head.dim, "backbone": cfg.backbone.arch}
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    start_epoch = 0
    resume = _resume_path(str(t.resume), run_dir)
    if resume is not None:
        state = load_checkpoint(resume, meta)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start_epoch = state["epoch"]
        log.info("resumed from %s at epoch %d", resume, start_epoch)

    writer = SummaryWriter(str(run_dir), purge_step=start_epoch + 1 if start_epoch else None)
    progress = _show_progress(t.progress)
    log.info("run folder: %s  (tensorboard --logdir %s)", run_dir.resolve(), run_dir)
    log.info("%s on %s: K=%d, d=%d, %d train / %d test samples, %s head, device %s",
             cfg.backbone.arch, cfg.dataset.name, K, model.head.dim, len(bundle.train), len(bundle.test),
             cfg.head.name, device)
    scalars: dict[str, float] = {}
    try:
        for epoch in range(start_epoch + 1, t.max_epochs + 1):
            set_epoch(train_loader, epoch)
            scalars = {"lr": optimizer.param_groups[0]["lr"]}
            scalars.update(train_epoch(model, train_loader, optimizer, device, autocast, epoch, progress))
            scalars.update(evaluate(model, test_loader, device, autocast))
            if epoch % cfg.metrics.every_n_epochs == 0 or epoch == t.max_epochs:
                scalars.update(nc_metrics(model, eval_train_loader, device, autocast, K))
            if scheduler is not None:
                scheduler.step()
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, epoch)
            writer.flush()
            state = {"epoch": epoch, "meta": meta, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict() if scheduler is not None else None, "rng": _rng_state()}
            save_checkpoint(ckpt_path, state)
            log.info("epoch %d/%d  %s", epoch, t.max_epochs, _summary(scalars))
    finally:
        writer.close()
    if math.isnan(scalars.get("train/loss", 0.0)):
        raise EtfTrainError("training produced NaN")
    return scalars


def _summary(scalars: dict[str, float]) -> str:
    keys = ("train/loss", "train/acc", "test/acc", "nc/nc1", "solver/ms", "time/epoch_s")
    return "  ".join(f"{k}={scalars[k]:.4g}" for k in keys if k in scalars)

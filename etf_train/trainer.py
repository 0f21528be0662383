"""The training loop: data -> backbone -> head -> cross-entropy -> step; evaluation, NC metrics, TensorBoard, checkpoints.

Config groups served here: trainer/, optimizer/, scheduler/ (and it wires backbone/, dataset/, head/, solver/).
Run folder contract (read by etf-compare): TensorBoard event files directly in the run folder, scalars
logged against the epoch number (1-based), ``checkpoints/last.pt`` rewritten atomically after every epoch.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from .backbones import create_backbone
from .data import build_data, build_loaders, set_epoch
from .errors import EtfTrainError, NonFiniteError
from .heads import Head, create_head
from .metrics import NCAccumulator

log = logging.getLogger("etf_train")

# Marker beside checkpoints/last.pt once the last epoch is done.
FINISHED = "finished"

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
    opts = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "name"}
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
    head_opts = {k: v for k, v in OmegaConf.to_container(cfg.head, resolve=True).items() if k != "name"}
    if cfg.head.name == "nearest_etf":
        solver = OmegaConf.to_container(cfg.solver, resolve=True)
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


# ------------------------------------------------------------------------------- distribution, signals


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


def setup_distributed(device_spec: str) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), resolve_device(device_spec)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_spec != "cpu"
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local), device


class Preempted(Exception):
    """A stop signal arrived; a checkpoint was saved at the step boundary."""

    def __init__(self, signum: int, epoch: int, step: int):
        super().__init__(f"{signal.Signals(signum).name} at epoch {epoch}, step {step}")
        self.signum = signum


class SignalGuard:
    """SIGTERM, SIGUSR1 (SLURM pre-emption), SIGUSR2 (submitit's pre-emption signal) and SIGINT set a flag
    that the loop reads at step boundaries.

    After the checkpoint is written, ``chain`` hands the signal to whatever handler was installed before
    (e.g. submitit's requeue handler), so cluster tools keep working.
    """

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT") if hasattr(signal, name))

    def __init__(self):
        self.received: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def _handle(self, signum, frame):
        self.received = signum

    def chain(self) -> None:
        handler = self.previous.get(self.received)
        self.__exit__()
        if callable(handler) and handler not in (signal.default_int_handler,):
            handler(self.received, None)


# ------------------------------------------------------------------------------------------- loop


def _to(batch, device):
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _show_progress(setting) -> bool:
    return sys.stderr.isatty() if setting == "auto" else bool(setting)


@torch.no_grad()
def evaluate(model, loader, device, autocast, world: Dist) -> dict[str, float]:
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
    loss_sum, correct, seen = world.sum([loss_sum.item(), correct.item(), seen], device)
    return {"test/loss": loss_sum / seen, "test/acc": 100.0 * correct / seen}


@torch.no_grad()
def nc_metrics(model, loader, device, autocast, num_classes, world: Dist) -> dict[str, float]:
    """NC1-NC4 and eval-mode accuracy over the (un-augmented) train set, streaming: pass 1 moments and
    predictions, pass 2 nearest-class-centre."""
    model.eval()
    acc = NCAccumulator(num_classes, model.head.dim, device=device)
    cache, cached_bytes = [], 0
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for batch in loader:
        x, y = _to(batch, device)
        with autocast:
            f = model.backbone(x)
        h = model.head.normalize(f.float())
        logits = model.head(f.float())
        acc.update_stats(h, y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        cached_bytes += h.numel() * h.element_size()
        if cached_bytes <= _FEATURE_CACHE_BYTES:
            cache.append((h, logits))
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
    correct, seen = world.sum([correct.item(), seen], device)
    # train/acc is measured during the epoch, as the weights change (and, for nearest_etf, with a classifier fitted
    # to running means that include the batch); this is the train set under the end-of-epoch model.
    return {"train/eval_acc": 100.0 * correct / seen,
            **{f"nc/{k}": v for k, v in acc.compute(model.head.weight.detach().float()).items()}}


def _check_config(cfg: DictConfig) -> None:
    t = cfg.trainer
    for key in ("max_epochs", "batch_size"):
        if not (isinstance(t[key], int) and t[key] >= 1):
            raise EtfTrainError(f"trainer.{key} must be a positive integer, got {t[key]!r}")
    if not (isinstance(cfg.metrics.every_n_epochs, int) and cfg.metrics.every_n_epochs >= 1):
        raise EtfTrainError(f"metrics.every_n_epochs must be a positive integer, got {cfg.metrics.every_n_epochs!r}")
    if t.precision not in ("auto", "bf16", "fp32"):
        raise EtfTrainError(f"trainer.precision must be auto, bf16 or fp32, got {t.precision!r}")
    if t.nonfinite not in ("stop", "skip"):
        raise EtfTrainError(f"trainer.nonfinite must be stop or skip, got {t.nonfinite!r}")


def _shared_run_dir(run_dir: Path, world: Dist) -> Path:
    """Every rank writes into rank 0's Hydra folder; a folder Hydra made for another rank is removed."""
    if not world.enabled:
        return run_dir
    shared = [str(run_dir)]
    dist.broadcast_object_list(shared, src=0)
    if not world.main and Path(shared[0]).resolve() != run_dir.resolve():
        shutil.rmtree(run_dir, ignore_errors=True)
    return Path(shared[0])


class Run:
    """One experiment: everything built from the config, the epoch loop, checkpoints."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        _check_config(cfg)
        t = self.t = cfg.trainer
        self.cfg = cfg
        self.world, self.device = setup_distributed(t.device)
        self.run_dir = _shared_run_dir(run_dir, self.world)
        if t.batch_size % self.world.world_size:
            raise EtfTrainError(
                f"trainer.batch_size={t.batch_size} (the global batch) must divide evenly over {self.world.world_size} processes"
            )
        seed_everything(cfg.seed, t.deterministic)
        dataset_opts = {k: v for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items() if k != "name"}
        self.bundle = build_data(cfg.dataset.name, **dataset_opts)
        self.train_loader, self.test_loader, self.eval_train_loader = build_loaders(
            self.bundle,
            t.batch_size // self.world.world_size,
            class_balanced=cfg.dataset.class_balanced,
            num_workers=cfg.dataset.num_workers,
            seed=cfg.seed,
            rank=self.world.rank,
            world_size=self.world.world_size,
            pin_memory=self.device.type == "cuda",
            loader=cfg.dataset.loader,
            device=self.device,
        )
        self.K = self.bundle.num_classes
        model = build_model(cfg, self.K, self.bundle.in_shape, len(self.bundle.train)).to(self.device)
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if t.compile:
            model.backbone = torch.compile(model.backbone)
        self.model = model
        # DDP averages gradients; the nearest-ETF head all-reduces its class sums itself.
        self.ddp = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None) if self.world.enabled else model
        self.optimizer = build_optimizer(cfg.optimizer, model.parameters())
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, t.max_epochs)
        bf16 = t.precision == "bf16" or (t.precision == "auto" and self.device.type == "cuda")
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        self.meta = {"head": cfg.head.name, "num_classes": self.K, "feature_dim": model.head.dim,
                     "backbone": cfg.backbone.arch}
        self.ckpt_path = self.run_dir / "checkpoints" / "last.pt"
        self.progress = _show_progress(t.progress) and self.world.main

    # -- checkpoints

    def save(self, epoch: int, partial: dict | None = None) -> None:
        if not self.world.main:
            return
        state = {"epoch": epoch, "partial": partial, "meta": self.meta, "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "rng": _rng_state(),
                 "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}
        save_checkpoint(self.ckpt_path, state)

    def restore(self) -> tuple[int, dict | None, dict | None]:
        """Load the checkpoint trainer.resume points at: (completed epochs, partial-epoch state, RNG state)."""
        path = _resume_path(str(self.t.resume), self.run_dir)
        if path is None:
            return 0, None, None
        state = load_checkpoint(path, self.meta)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:  # e.g. another train-set size for the UFM features
            first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
            raise EtfTrainError(
                f"checkpoint {path} does not fit this model ({first}); use another output folder or trainer.resume=never"
            ) from None
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        partial = state.get("partial")
        where = f"epoch {partial['epoch']}, step {partial['step']}" if partial else f"the end of epoch {state['epoch']}"
        log.info("resumed from %s at %s", path, where)
        if partial is None:
            _set_rng_state(state["rng"])
        return state["epoch"], partial, state["rng"]

    # -- one epoch

    def train_epoch(self, epoch: int, guard: SignalGuard, partial: dict | None, rng: dict | None) -> dict[str, float]:
        self.model.train()
        skip = partial["step"] if partial else 0
        acc = {k: partial[k] for k in ("loss_sum", "correct", "seen", "elapsed", "skipped")} if partial else \
            {"loss_sum": 0.0, "correct": 0, "seen": 0, "elapsed": 0.0, "skipped": 0}
        loss_sum = torch.tensor(acc["loss_sum"], device=self.device, dtype=torch.float64)
        correct = torch.tensor(acc["correct"], device=self.device, dtype=torch.long)
        bad_step = torch.zeros((), device=self.device, dtype=torch.long)  # first step with a non-finite loss
        seen, skipped = acc["seen"], acc["skipped"]
        skip_bad = self.t.nonfinite == "skip"
        check_every = 1 if skip_bad or self.device.type == "cpu" else 50  # a host sync per check on GPUs
        start = time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {epoch}/{self.t.max_epochs}", leave=False,
                   disable=not self.progress, dynamic_ncols=True)
        for step, batch in enumerate(bar, 1):
            if step <= skip:  # batches done before the interruption: load (same RNG draws), don't train
                if step == skip:
                    _set_rng_state(rng)
                continue
            x, y = _to(batch, self.device)
            try:
                with self.autocast:
                    logits = self.ddp(x, y)
                loss = F.cross_entropy(logits.float(), y)
            except NonFiniteError as e:
                if not skip_bad:
                    raise NonFiniteError(f"epoch {epoch}, step {step}: {e}; or set trainer.nonfinite=skip") from None
                loss = logits = None
            if skip_bad and (loss is None or not torch.isfinite(loss)):  # no update; the next step zeroes grads
                skipped += 1
                continue
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.model.head.after_step()
            bad_step = torch.where((bad_step == 0) & ~torch.isfinite(loss), step, bad_step)
            if step % check_every == 0 and bad_step.item():
                self._diverged(epoch, int(bad_step))
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if self.progress and step % 10 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.1f}",
                                img_s=f"{seen / (time.perf_counter() - start + acc['elapsed']):.0f}")
            stop = guard.received is not None
            if self.world.enabled:  # ranks agree (every 20 steps, to spare a collective per step) before saving
                stop = step % 20 == 0 and bool(self.world.sum([float(stop)], self.device)[0])
            if stop:
                state = {"epoch": epoch, "step": step, "loss_sum": loss_sum.item(), "correct": correct.item(),
                         "seen": seen, "elapsed": acc["elapsed"] + time.perf_counter() - start, "skipped": skipped}
                self.save(epoch - 1, state)
                signum = guard.received or signal.SIGTERM
                guard.chain()
                raise Preempted(signum, epoch, step)
        if bad_step.item():
            self._diverged(epoch, int(bad_step))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = acc["elapsed"] + time.perf_counter() - start
        loss_total, n_correct, n_seen = self.world.sum([loss_sum.item(), correct.item(), seen], self.device)
        if n_seen == 0:
            raise NonFiniteError(f"every step of epoch {epoch} had a non-finite loss: lower optimizer.lr")
        out = {
            "train/loss": loss_total / n_seen,
            "train/acc": 100.0 * n_correct / n_seen,
            "time/epoch_s": elapsed,
            "throughput/train_img_s": n_seen / elapsed,
            **self.model.head.pop_solver_stats(),
        }
        if skip_bad:
            out["train/skipped_steps"] = float(skipped)
        return out

    def _diverged(self, epoch: int, step: int):
        raise NonFiniteError(
            f"non-finite loss at epoch {epoch}, step {step}: training diverged; lower optimizer.lr "
            f"(the last good checkpoint is kept), or set trainer.nonfinite=skip to skip such steps"
        )

    # -- the whole run

    def fit(self) -> dict[str, float]:
        completed, partial, rng = self.restore()
        if completed >= self.t.max_epochs:
            log.info("%s already finished %d epochs; nothing to do", self.ckpt_path, completed)
            return {}
        writer = SummaryWriter(str(self.run_dir), purge_step=completed + 1 if completed else None) if self.world.main else None
        if self.world.main:
            log.info("run folder: %s  (tensorboard --logdir %s)", self.run_dir.resolve(), self.run_dir)
            log.info("%s on %s: K=%d, d=%d, %d train / %d test samples, %s head, device %s, %d process(es)",
                     self.cfg.backbone.arch, self.cfg.dataset.name, self.K, self.model.head.dim,
                     len(self.bundle.train), len(self.bundle.test), self.cfg.head.name, self.device,
                     self.world.world_size)
        scalars: dict[str, float] = {}
        try:
            with SignalGuard() as guard:
                for epoch in range(completed + 1, self.t.max_epochs + 1):
                    set_epoch(self.train_loader, epoch)
                    scalars = {"lr": self.optimizer.param_groups[0]["lr"]}
                    scalars.update(self.train_epoch(epoch, guard, partial, rng))
                    partial = None
                    # The bare model: ranks' test shards may differ in batch count; DDP's forward would wait on a collective.
                    scalars.update(evaluate(self.model, self.test_loader, self.device, self.autocast, self.world))
                    if epoch % self.cfg.metrics.every_n_epochs == 0 or epoch == self.t.max_epochs:
                        scalars.update(nc_metrics(self.model, self.eval_train_loader, self.device, self.autocast, self.K, self.world))
                    if self.scheduler is not None:
                        self.scheduler.step()
                    if writer is not None:
                        for tag, value in scalars.items():
                            writer.add_scalar(tag, value, epoch)
                        writer.flush()
                    self.save(epoch)
                    if self.world.main:
                        log.info("epoch %d/%d  %s", epoch, self.t.max_epochs, _summary(scalars))
            if self.world.main:  # tells `etf-train` (cli.interrupted_run) that this run needs no resuming
                (self.ckpt_path.parent / FINISHED).touch()
        finally:
            if writer is not None:
                writer.close()
        return scalars


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """Run one experiment into ``run_dir``; returns the last epoch's scalars.

    A stop signal (SIGTERM, SIGUSR1, SIGINT) saves a checkpoint at the next step boundary and exits with
    status 128 + signal number; the same command with trainer.resume=auto continues from there.
    """
    try:
        return Run(cfg, Path(run_dir)).fit()
    except Preempted as p:
        print(f"etf-train: stopped by {p}; checkpoint saved in {Path(run_dir) / 'checkpoints'}; "
              "run the same command again to continue", file=sys.stderr)
        raise SystemExit(128 + p.signum) from None


def _summary(scalars: dict[str, float]) -> str:
    keys = ("train/loss", "train/acc", "test/acc", "nc/nc1", "solver/ms", "time/epoch_s")
    return "  ".join(f"{k}={scalars[k]:.4g}" for k in keys if k in scalars)

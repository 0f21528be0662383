"""The training loop: data -> backbone -> head -> cross-entropy -> step; evaluation, NC metrics, TensorBoard,
checkpoints. `Run` builds everything from the composed config; `train` is what the CLI calls.

Run folder contract: see rundir.py (scalars logged against the epoch number, 1-based).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from .. import options as opt
from .. import rundir
from ..data import build_data, build_loaders, set_epoch
from ..errors import EtfTrainError, NonFiniteError
from .checkpoint import (
    Preempted,
    SignalGuard,
    load_checkpoint,
    resume_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .distributed import setup_distributed, shared_run_dir
from .evaluate import evaluate, nc_metrics, to_device
from .factories import build_model, build_optimizer, build_scheduler, seed_everything

log = logging.getLogger("etf_train")


def check_config(cfg: DictConfig) -> None:
    t = cfg.trainer
    for key in ("max_epochs", "batch_size", "eval_batch_size"):
        opt.integer(f"trainer.{key}", t[key])
    opt.integer("metrics.every_n_epochs", cfg.metrics.every_n_epochs)
    opt.integer("seed", cfg.seed, 0)
    opt.choice("trainer.precision", t.precision, ("auto", "bf16", "fp32"))
    opt.choice("trainer.nonfinite", t.nonfinite, ("stop", "skip"))


def _show_progress(setting) -> bool:
    return sys.stderr.isatty() if setting == "auto" else bool(setting)


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
        return {"epoch": epoch, "step": step, "loss_sum": self.loss_sum.item(), "correct": self.correct.item(),
                "seen": self.seen, "elapsed": self.elapsed(), "skipped": self.skipped}


class Run:
    """One experiment: everything built from the config, the epoch loop, checkpoints."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        check_config(cfg)
        t = self.t = cfg.trainer
        self.cfg = cfg
        self.world, self.device = setup_distributed(t.device)
        self.run_dir = shared_run_dir(run_dir, self.world)
        if t.batch_size % self.world.world_size:
            raise EtfTrainError(
                f"trainer.batch_size={t.batch_size} (the global batch) must divide evenly over {self.world.world_size} processes"
            )
        seed_everything(cfg.seed, t.deterministic)
        self.bundle = build_data(cfg.dataset.name, **{k: v for k, v in OmegaConf.to_container(cfg.dataset).items() if k != "name"})
        self.train_loader, self.test_loader, self.eval_train_loader = build_loaders(
            self.bundle,
            t.batch_size // self.world.world_size,
            eval_batch_size=t.eval_batch_size,
            **OmegaConf.to_container(cfg.loader),
            seed=cfg.seed,
            rank=self.world.rank,
            world_size=self.world.world_size,
            pin_memory=self.device.type == "cuda",
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
        self.optimizer = build_optimizer(cfg.optimizer, model.named_parameters())
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer)
        bf16 = t.precision == "bf16" or (t.precision == "auto" and self.device.type == "cuda")
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        self.meta = {"head": cfg.head.name, "num_classes": self.K, "feature_dim": model.head.dim,
                     "backbone": cfg.backbone.arch}
        self.ckpt_path = rundir.checkpoint(self.run_dir)
        self.progress = _show_progress(t.progress) and self.world.main

    # -- checkpoints

    def save(self, epoch: int, partial: dict | None = None) -> None:
        if not self.world.main:
            return
        state = {"epoch": epoch, "partial": partial, "meta": self.meta, "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "rng": rng_state(),
                 "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}
        save_checkpoint(self.ckpt_path, state)

    def restore(self) -> tuple[int, dict | None, dict | None]:
        """Load the checkpoint trainer.resume points at: (completed epochs, partial-epoch state, RNG state)."""
        path = resume_path(str(self.t.resume), self.run_dir)
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
            set_rng_state(state["rng"])
        return state["epoch"], partial, state["rng"]

    # -- one epoch

    def _step(self, epoch: int, step: int, x, y):
        """One optimisation step: (loss, logits), or None for a skipped non-finite step (trainer.nonfinite=skip)."""
        try:
            with self.autocast:
                logits = self.ddp(x, y)
            loss = F.cross_entropy(logits.float(), y)
        except NonFiniteError as e:
            if self.t.nonfinite != "skip":
                raise NonFiniteError(f"epoch {epoch}, step {step}: {e}; or set trainer.nonfinite=skip") from None
            return None
        if self.t.nonfinite == "skip" and not torch.isfinite(loss):  # no update; the next step zeroes grads
            return None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.model.head.after_step()
        return loss, logits

    def _stop_requested(self, guard: SignalGuard, step: int) -> bool:
        stop = guard.received is not None
        if self.world.enabled:  # ranks agree (every 20 steps, to spare a collective per step) before saving
            stop = step % 20 == 0 and bool(self.world.sum([float(stop)], self.device)[0])
        return stop

    def train_epoch(self, epoch: int, guard: SignalGuard, partial: dict | None, rng: dict | None) -> dict[str, float]:
        self.model.train()
        tally = EpochTally(self.device, partial)
        check_every = 1 if self.t.nonfinite == "skip" or self.device.type == "cpu" else 50  # a host sync per check on GPUs
        bar = tqdm(self.train_loader, desc=f"epoch {epoch}/{self.t.max_epochs}", leave=False,
                   disable=not self.progress, dynamic_ncols=True)
        for step, batch in enumerate(bar, 1):
            if step <= tally.done:  # batches done before the interruption: load (same RNG draws), don't train
                if step == tally.done:
                    set_rng_state(rng)
                continue
            x, y = to_device(batch, self.device)
            out = self._step(epoch, step, x, y)
            if out is None:
                tally.skipped += 1
                continue
            tally.add(step, *out, y)
            if step % check_every == 0 and tally.bad_step.item():
                self._diverged(epoch, int(tally.bad_step))
            if self.progress and step % 10 == 0:
                bar.set_postfix(loss=f"{tally.loss_sum.item() / tally.seen:.3f}",
                                acc=f"{100 * tally.correct.item() / tally.seen:.1f}",
                                img_s=f"{tally.seen / tally.elapsed():.0f}")
            if self._stop_requested(guard, step):
                self.save(epoch - 1, tally.partial(epoch, step))
                signum = guard.received or signal.SIGTERM
                guard.chain()
                raise Preempted(signum, epoch, step)
        if tally.bad_step.item():
            self._diverged(epoch, int(tally.bad_step))
        return self._epoch_scalars(epoch, tally)

    def _epoch_scalars(self, epoch: int, tally: EpochTally) -> dict[str, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = tally.elapsed()
        loss_total, n_correct, n_seen = self.world.sum([tally.loss_sum.item(), tally.correct.item(), tally.seen], self.device)
        if n_seen == 0:
            raise NonFiniteError(f"every step of epoch {epoch} had a non-finite loss: lower optimizer.lr")
        out = {
            "train/loss": loss_total / n_seen,
            "train/acc": 100.0 * n_correct / n_seen,
            "time/epoch_s": elapsed,
            "throughput/train_img_s": n_seen / elapsed,
            **self.model.head.pop_solver_stats(),
        }
        if self.t.nonfinite == "skip":
            out["train/skipped_steps"] = float(tally.skipped)
        return out

    def _diverged(self, epoch: int, step: int):
        raise NonFiniteError(
            f"non-finite loss at epoch {epoch}, step {step}: training diverged; lower optimizer.lr "
            f"(the last good checkpoint is kept), or set trainer.nonfinite=skip to skip such steps"
        )

    # -- the whole run

    def run_epoch(self, epoch: int, guard: SignalGuard, partial: dict | None, rng: dict | None) -> dict[str, float]:
        """Train one epoch, evaluate, and step the schedule: the epoch's scalars."""
        set_epoch(self.train_loader, epoch)
        scalars = {"lr": self.optimizer.param_groups[0]["lr"]}
        scalars.update(self.train_epoch(epoch, guard, partial, rng))
        # The bare model: ranks' test shards may differ in batch count; DDP's forward would wait on a collective.
        scalars.update(evaluate(self.model, self.test_loader, self.device, self.autocast, self.world))
        if epoch % self.cfg.metrics.every_n_epochs == 0 or epoch == self.t.max_epochs:
            scalars.update(nc_metrics(self.model, self.eval_train_loader, self.device, self.autocast, self.K, self.world))
        if self.scheduler is not None:
            self.scheduler.step()
        return scalars

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
                    scalars = self.run_epoch(epoch, guard, partial, rng)
                    partial = None
                    if writer is not None:
                        for tag, value in scalars.items():
                            writer.add_scalar(tag, value, epoch)
                        writer.flush()
                    self.save(epoch)
                    if self.world.main:
                        log.info("epoch %d/%d  %s", epoch, self.t.max_epochs, _summary(scalars))
            if self.world.main:  # tells `etf-train` (cli.interrupted_run) that this run needs no resuming
                rundir.mark_finished(self.run_dir)
        finally:
            if writer is not None:
                writer.close()
        return scalars


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """Run one experiment into ``run_dir``; returns the last epoch's scalars.

    A stop signal (SIGTERM, SIGUSR1, SIGUSR2, SIGINT) saves a checkpoint at the next step boundary and exits with
    status 128 + signal number; the same command with trainer.resume=auto continues from there.
    """
    try:
        return Run(cfg, Path(run_dir)).fit()
    except Preempted as p:
        print(f"etf-train: stopped by {p}; checkpoint saved in {rundir.checkpoint(Path(run_dir)).parent}; "
              "run the same command again to continue", file=sys.stderr)
        raise SystemExit(128 + p.signum) from None


def _summary(scalars: dict[str, float]) -> str:
    keys = ("train/loss", "train/acc", "test/acc", "nc/nc1", "solver/ms", "time/epoch_s")
    return "  ".join(f"{k}={scalars[k]:.4g}" for k in keys if k in scalars)

"""The training loop: data -> backbone -> head -> cross-entropy -> step; evaluation, NC metrics, TensorBoard,
checkpoints. `Run` builds everything from the composed config and runs the epochs (one epoch: epoch.py); `train` is
what the CLI calls.

Run folder contract: see rundir.py (scalars logged against the epoch number, 1-based).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from .. import rundir, tags
from ..data import build_data, build_loaders, build_mix
from ..errors import EtfTrainError, NonFiniteError, as_etf_error
from ..heads import heads_with
from ..losses import build_loss
from ..metrics import reliability_diagram
from .announce import Eta, sources, start_block
from .checkpoint import Preempted, SignalGuard, rng_state, save_checkpoint
from .distributed import StopVote, agreed, setup_distributed, shared_run_dir
from .epoch import Epochs
from .factories import (
    build_autocast,
    build_model,
    build_optimizer,
    build_scheduler,
    check_config,
    check_world,
    optimizer_record,
    resolve_precision,
    seed_everything,
    set_cuda_math,
    step_size_option,
    warn_small_leftover,
)
from .logbook import Logbook, log_to_file, quiet_log_files, show_progress, summary
from .resume import RunFolder, restore

log = logging.getLogger("etf_train")


class Run(Epochs):
    """One experiment: everything built from the config, the epoch loop, checkpoints.

    The run folder is claimed first (resume.RunFolder: one live process per folder, and a resume only with the
    settings the run was started with); `record` is (overrides, Hydra's settings) for `.hydra/`, from the CLI.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, record: tuple | None = None):
        check_config(cfg)
        quiet_log_files()
        t = self.t = cfg.trainer
        self.cfg, self.record = cfg, record
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.world, self.device = setup_distributed(t.device)
        # the record names what ran: the precision (auto differs by device), the process count (BatchNorm statistics
        # are per process) and the code, so a resume or a comparison cannot mix them unseen
        self.config["trainer"] |= {
            "precision": resolve_precision(t.precision, self.device),
            "processes": self.world.world_size,
        }
        self.config["code_version"] = rundir.code_version()
        self.run_dir = shared_run_dir(run_dir, self.world)
        self.folder = RunFolder(self.run_dir, self.world.main)
        self.resume_from = agreed(self.world, lambda: self.folder.claim(str(t.resume), self.config))
        try:
            self._build(cfg)
        except BaseException:
            self.folder.end()
            raise

    def _build(self, cfg: DictConfig) -> None:
        t = self.t
        check_world(cfg, self.world.world_size)
        seed_everything(cfg.seed, t.deterministic)
        set_cuda_math(t.cudnn_benchmark, t.tf32, t.deterministic)
        self.bundle = build_data(**self.config["dataset"])
        if self.bundle.files is not None:  # a folder's contents: restore() refuses a checkpoint made on other files
            self.config["dataset"]["files"] = self.bundle.files
        self.loss = build_loss(head_name=cfg.head.name, etf_heads=heads_with("fixed_geometry"), **self.config["loss"])
        mix = build_mix(**self.config["mix"], num_classes=self.bundle.num_classes)
        self.train_loader, self.test_loader, self.eval_train_loader = build_loaders(
            self.bundle,
            t.batch_size // self.world.world_size,
            eval_batch_size=t.eval_batch_size,
            **self.config["loader"],
            seed=cfg.seed,
            rank=self.world.rank,
            world_size=self.world.world_size,
            pin_memory=self.device.type == "cuda",
            device=self.device,
            mix=mix,
        )
        self.K = self.bundle.num_classes
        warn_small_leftover(cfg, len(self.bundle.train), self.K)
        model = build_model(cfg, self.K, self.bundle.in_shape, len(self.bundle.train)).to(self.device)
        self.config["sizes"] = {
            **self.bundle.sizes(),
            "feature_dim": model.head.dim,  # for etf-compare's header
            "steps_per_epoch": len(self.train_loader),
        }
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if t.compile:  # in place: the state dict keeps its keys (no `_orig_mod.`), so checkpoints load either way
            model.backbone.compile()
        self.model = model
        # DDP averages gradients; the nearest-ETF head all-reduces its class sums itself.
        self.ddp = (
            DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.world.enabled
            else model
        )
        self.optimizer = build_optimizer(cfg.optimizer, model)
        self.config["optimizer"] |= optimizer_record(self.optimizer)
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer)
        self.autocast = build_autocast(self.config["trainer"]["precision"], self.device)
        self.meta = {
            "head": cfg.head.name,
            "num_classes": self.K,
            "feature_dim": model.head.dim,
            "backbone": cfg.backbone.name,
        }
        self.ckpt_path = rundir.checkpoint(self.run_dir)
        self.progress = show_progress(t.progress) and self.world.main
        self.eta = Eta(t.max_epochs, cpu=self.device.type == "cpu")
        self.stop_vote = StopVote(self.world)
        self.saved_at = time.monotonic()
        self.class_counts = self.bundle.shot_counts(cfg.dataset.imbalance_ratio)

    # -- checkpoints

    def _checkpoint_due(self, epoch: int) -> bool:
        """An end-of-epoch checkpoint: every trainer.checkpoint_every_s seconds (0: every epoch), at a numbered epoch
        and at the last one. Tiny epochs (UFM) would otherwise spend their time writing; a crash replays the epochs
        since the last checkpoint, bit for bit, and their events are rewritten (Logbook's purge_step)."""
        every = self.t.save_every_n_epochs
        return (
            epoch == self.t.max_epochs
            or bool(every and epoch % every == 0)
            or time.monotonic() - self.saved_at >= self.t.checkpoint_every_s
        )

    def save(self, epoch: int, partial: dict | None = None) -> None:
        self.saved_at = time.monotonic()
        if not self.world.main:
            return
        state = {
            "epoch": epoch,
            "partial": partial,
            "meta": self.meta,
            "config": self.config,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }
        save_checkpoint(self.ckpt_path, state)
        every = self.t.save_every_n_epochs
        if partial is None and every and epoch % every == 0:  # a second name for the file, which later saves replace
            numbered = self.ckpt_path.with_name(f"epoch_{epoch:03d}.pt")
            numbered.unlink(missing_ok=True)
            try:
                os.link(self.ckpt_path, numbered)
            except OSError:  # a file system without hard links
                shutil.copyfile(self.ckpt_path, numbered)

    def restore(self) -> tuple[int, dict | None, dict | None]:
        """Load the checkpoint the claim chose (resume.restore): (completed epochs, partial-epoch state, RNG state)."""
        given = self.resume_from is not None and self.resume_from.resolve() != self.ckpt_path.resolve()
        return restore(self.resume_from, self.meta, self.config, given, self.model, self.optimizer, self.scheduler)

    # -- the whole run

    def _remedy(self, error: NonFiniteError) -> NonFiniteError:
        """A diverged run's line ends with what the user can change: the step size the optimiser has (AGD's gain,
        not a learning rate), and skipping such steps."""
        skip = ", or set trainer.nonfinite=skip to skip such steps" if self.t.nonfinite == "stop" else ""
        return NonFiniteError(
            f"{error}; lower {step_size_option(self.cfg.optimizer)} (the last good checkpoint is kept){skip}"
        )

    def fit(self) -> dict[str, float]:
        """Train the remaining epochs: the last epoch's scalars. The folder is released at the end, whatever happens;
        an error after the start is recorded (checkpoints/failed) and written to the run's log."""
        failure = None
        try:
            return self._fit()
        except Preempted:
            raise
        except (
            Exception
        ) as e:  # out of memory or a library's error too: marked, logged whole, one line for the terminal
            foreign = not isinstance(e, EtfTrainError)
            error = self._remedy(e) if isinstance(e, NonFiniteError) else as_etf_error(e, self.run_dir / rundir.LOG)
            failure = str(error).splitlines()[0] if str(error) else type(error).__name__
            if self.folder.started and self.world.main:
                log_to_file(f"etf-train: error: {failure}", exc_info=foreign)
            raise error from (e if foreign else None)
        finally:
            self.folder.end(failure)

    def _fit(self) -> dict[str, float]:
        completed, partial, rng = self.restore()
        self.folder.start(self.config, self.record)
        if completed >= self.t.max_epochs:  # e.g. a finished job of a sweep that is run again
            log.info("%s already finished %d epochs; nothing to do", self.run_dir, completed)
            if self.world.main:
                rundir.mark_finished(self.run_dir)
            return {
                tag: float(values[-1])
                for tag, (steps, values) in rundir.read_scalars(self.run_dir).items()
                if steps[-1] == completed
            }
        book = Logbook(self.run_dir, self.config, completed + 1, self.record) if self.world.main else None
        if self.world.main:
            log.info("run folder: %s  (tensorboard --logdir %s)", self.run_dir.resolve(), self.run_dir)
            block = start_block(
                self.config,
                sources(self.record, self.config),
                d=self.model.head.dim,
                steps=len(self.train_loader),
                device=self.device,
                processes=self.world.world_size,
            )
            log.info("the run (in [ ]: where a setting came from, if not etf-train's defaults):\n%s", "\n".join(block))
        self.eta.begin(completed + 1)
        scalars: dict[str, float] = {}
        finished = False
        try:
            with SignalGuard() as guard:
                for epoch in range(completed + 1, self.t.max_epochs + 1):
                    scalars = self.run_epoch(epoch, guard, partial, rng)
                    partial = None
                    if book is not None:
                        book.scalars(epoch, scalars)
                    if self._checkpoint_due(epoch):
                        self.save(epoch)
                    self.eta.update(epoch)
                    if self.world.main:
                        log.info("epoch %d/%d  %s  %s", epoch, self.t.max_epochs, summary(scalars), self.eta.text())
                    # a signal during the evaluation or NC pass: stop at this epoch's end, not a step into the next
                    stop = self.stop_vote(guard.received is not None) | self.stop_vote.settle()  # every rank votes
                    if stop and epoch < self.t.max_epochs:
                        self.save(epoch)
                        raise self._stop(guard, epoch, len(self.train_loader))
            if guard.received is not None and self.world.main:
                log.warning(
                    "%s arrived during the last epoch's evaluation: the run finished, nothing to resume",
                    signal.Signals(guard.received).name,
                )
            if book is not None:
                book.figure(tags.RELIABILITY, reliability_diagram(self.calibration, "test split"), self.t.max_epochs)
            if self.world.main:  # tells `etf-train` (cli.interrupted_run) that this run needs no resuming
                rundir.mark_finished(self.run_dir)
            finished = True
        finally:
            if book is not None:
                book.close(finished)
        return scalars


def train(cfg: DictConfig, run_dir: str | Path, record: tuple | None = None) -> dict[str, float]:
    """Run one experiment into ``run_dir``; returns the last epoch's scalars.

    A stop signal (SIGTERM, SIGUSR1, SIGUSR2, SIGINT) saves a checkpoint at the next step boundary and exits with
    status 128 + signal number; the same command with trainer.resume=auto continues from there.
    """
    try:
        return Run(cfg, Path(run_dir), record).fit()
    except Preempted as p:
        print(
            f"etf-train: stopped by {p}; checkpoint saved in {rundir.checkpoint(Path(run_dir)).parent}; "
            "run the same command again to continue",
            file=sys.stderr,
        )
        raise SystemExit(128 + p.signum) from None

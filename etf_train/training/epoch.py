"""One epoch of a Run (training/loop.py): its steps, the stop-signal checks at step boundaries, divergence, and the
evaluation and NC passes after it. A mixin: the attributes it reads are those Run builds."""

from __future__ import annotations

import signal

import torch
from tqdm import tqdm

from .. import tags
from ..data import set_epoch
from ..errors import NonFiniteError
from ..losses import hard_labels
from .checkpoint import Preempted, SignalGuard, set_rng_state
from .evaluate import as_train_set, evaluate, evaluate_train_set, to_device
from .factories import optimizer_scalars
from .tally import EpochTally, all_finite


class Epochs:
    def _step(self, epoch: int, step: int, x, y):
        """One optimisation step: (loss, logits), or None for a skipped non-finite step (trainer.nonfinite=skip)."""
        skip = self.t.nonfinite == "skip"
        # a skipped step puts back the buffers the training forward moves (BatchNorm statistics, nearest_etf's P)
        buffers = [(b, b.clone()) for b in self.model.buffers()] if skip else []
        try:
            with self.autocast:
                logits, h = self.ddp(x, y, features=True) if self.loss.needs_features else (self.ddp(x, y), None)
            loss = self.loss(logits, y, head=self.model.head, h=h)
        except NonFiniteError as e:
            if not skip:
                raise NonFiniteError(f"epoch {epoch}, step {step}: {e}") from None
            loss = None
        if skip and (loss is None or not torch.isfinite(loss)):  # no update; the next step zeroes grads
            for buffer, saved in buffers:
                buffer.copy_(saved)
            return None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.model.head.after_step()
        return loss, logits

    def _preempt(self, guard: SignalGuard, tally: EpochTally, epoch: int, step: int):
        self.save(epoch - 1, tally.partial(epoch, step))
        raise self._stop(guard, epoch, step)

    @staticmethod
    def _stop(guard: SignalGuard, epoch: int, step: int) -> Preempted:
        signum = guard.received or signal.SIGTERM  # another rank's signal, under torchrun
        guard.chain()
        return Preempted(signum, epoch, step)

    def train_epoch(self, epoch: int, guard: SignalGuard, partial: dict | None, rng: dict | None) -> dict[str, float]:
        self.model.train()
        tally = EpochTally(self.device, partial)
        check_every = (
            1 if self.t.nonfinite == "skip" or self.device.type == "cpu" else 50
        )  # a host sync per check on GPUs
        steps = len(self.train_loader)  # once: a merging sampler's len() builds the epoch's batches
        bar = tqdm(
            self.train_loader,
            total=steps,
            desc=" ".join(filter(None, (f"epoch {epoch}/{self.t.max_epochs}", self.eta.text()))),
            leave=False,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        for step, batch in enumerate(bar, 1):
            if step <= tally.done:  # batches done before the interruption: load (same RNG draws), don't train
                if step == tally.done:
                    set_rng_state(rng)
                continue
            x, y = to_device(batch, self.device)
            out = self._step(epoch, step, x, y)
            self.eta.stepped(steps)
            if out is None:
                tally.skipped += 1
            else:
                tally.add(step, *out, hard_labels(y))
                if step % check_every == 0 and tally.bad_step.item():
                    self._diverged(epoch, int(tally.bad_step))
            if self.progress and step % 10 == 0 and tally.seen:
                bar.set_postfix(
                    loss=f"{tally.loss_sum.item() / tally.seen:.3f}",
                    acc=f"{100 * tally.correct.item() / tally.seen:.1f}",
                    img_s=f"{tally.seen / tally.elapsed():.0f}",
                )
            if self.stop_vote(guard.received is not None):
                self._preempt(guard, tally, epoch, step)
        if self.stop_vote.settle():  # a signal during the epoch's last step, on some rank
            self._preempt(guard, tally, epoch, steps)
        if tally.bad_step.item():
            self._diverged(epoch, int(tally.bad_step))
        # A finite loss can still take an inf step, or fill BatchNorm's running statistics with inf.
        if not all_finite(self.model.state_dict().values()):
            raise NonFiniteError(f"the weights are no longer finite after epoch {epoch}: training diverged")
        return self._epoch_scalars(epoch, tally)

    def _epoch_scalars(self, epoch: int, tally: EpochTally) -> dict[str, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = tally.elapsed()
        loss_total, n_correct, n_seen = self.world.sum(
            [tally.loss_sum.item(), tally.correct.item(), tally.seen], self.device
        )
        if n_seen == 0:
            raise NonFiniteError(f"every step of epoch {epoch} had a non-finite loss")
        out = {
            tags.TRAIN_LOSS: loss_total / n_seen,
            tags.TRAIN_ACC: 100.0 * n_correct / n_seen,
            tags.EPOCH_S: elapsed,
            tags.TRAIN_IMG_S: n_seen / elapsed,
            **self.model.head.pop_solver_stats(),
        }
        if self.t.nonfinite == "skip":
            out[tags.SKIPPED_STEPS] = float(tally.skipped)
        return out | optimizer_scalars(self.optimizer)

    def _diverged(self, epoch: int, step: int):
        raise NonFiniteError(f"non-finite loss at epoch {epoch}, step {step}: training diverged")

    def run_epoch(self, epoch: int, guard: SignalGuard, partial: dict | None, rng: dict | None) -> dict[str, float]:
        """Train one epoch, evaluate, and step the schedule: the epoch's scalars."""
        set_epoch(self.train_loader, epoch)
        scalars = {tags.LR: self.optimizer.param_groups[0]["lr"]}
        scalars.update(self.train_epoch(epoch, guard, partial, rng))
        last = epoch == self.t.max_epochs
        metrics_epoch = epoch % self.cfg.metrics.every_n_epochs == 0 or last
        shared = metrics_epoch and self.bundle.test_is_eval_train  # UFM: one pass, the test and the NC metrics
        erank_sw = self.cfg.metrics.erank_sw
        # The bare model: ranks' test shards may differ in batch count; DDP's forward would wait on a collective.
        # NC metrics of a test split that is the train set itself (UFM) would repeat nc/* as nc_test/*
        test, self.calibration = evaluate(
            self.model,
            self.eval_train_loader if shared else self.test_loader,
            self.device,
            self.autocast,
            self.world,
            self.K,
            nc=metrics_epoch and (self.bundle.held_out or shared),
            erank_sw=erank_sw,
            class_names=self.bundle.class_names,
            class_counts=self.class_counts,
            per_class=self.K <= 100 or last,
        )
        scalars.update(as_train_set(test) if shared else test)
        if metrics_epoch and not shared:
            noisy = None if self.bundle.noisy is None else self.bundle.noisy[self.world.rank :: self.world.world_size]
            scalars.update(
                evaluate_train_set(
                    self.model, self.eval_train_loader, self.device, self.autocast, self.K, self.world, noisy, erank_sw
                )
            )
        if self.scheduler is not None:
            self.scheduler.step()
        return scalars

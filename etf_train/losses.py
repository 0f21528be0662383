"""Training losses: one registry, one call signature for every loss.

    loss = build_loss(name, head_name=cfg.head.name, etf_heads=heads_with("fixed_geometry"), **options)
    value = loss(logits, target, head=model.head, h=h)             # a scalar, averaged over the batch

logits: (B, K), computed in float32 here (logits.float()), so bf16 autocast logits are fine.
target: hard labels (B,) long, or soft labels (B, K) float whose rows sum to 1 (mixup / cutmix, data/mix.py).
Every loss reads soft labels t as its hard form with one_hot(y) replaced by t, so a one-hot t gives the hard value.
Only dot regression reads the head (its classifier head.weight, (K, d)) and the normalised features h (B, d);
`loss.needs_features` says so.

Label smoothing and MaxSup side by side (z = logits, p = softmax(z), CE = -log p_y = logsumexp(z) - z_y):
    label smoothing s:  (1 - s) CE + s mean_k(-log p_k)  =  CE + s (z_y   - mean_k z_k)
    MaxSup alpha:                                           CE + alpha (z_max - mean_k z_k)
(-log p_k = logsumexp(z) - z_k, so the uniform part adds s (logsumexp(z) - mean_k z_k), and (1 - s) CE takes
s (logsumexp(z) - z_y) away.) Label smoothing penalises the target logit's lead over the mean, MaxSup the top
logit's, right or wrong (Zhou et al. 2025). For soft labels z_y reads sum_k t_k z_k.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import options as opt
from .errors import EtfTrainError
from .registry import Registry

LOSSES = Registry("loss")
register_loss = LOSSES.register


@dataclass(frozen=True)
class Loss:
    """A configured loss: `fn(z, target, head, h) -> scalar` with z the float32 logits.

    needs_features: fn reads head.weight and h (the trainer then passes them); fixed_geometry: it applies only to
    heads whose classifier is a simplex ETF they do not learn (Head.fixed_geometry)."""

    fn: Callable[[Tensor, Tensor, Any, Tensor | None], Tensor]
    needs_features: bool = False
    fixed_geometry: bool = False

    def __call__(self, logits: Tensor, target: Tensor, *, head: Any = None, h: Tensor | None = None) -> Tensor:
        if self.needs_features and (head is None or h is None):
            raise ValueError("this loss reads the classifier and the features: pass head= and h=")
        return self.fn(logits.float(), target, head, h)


def hard_labels(target: Tensor) -> Tensor:
    """The dominant label: hard labels as they are, argmax_k t_k for soft ones (train/acc of a mixed batch).  (B,)"""
    return target if target.dim() == 1 else target.argmax(1)


def _soft(target: Tensor, num_classes: int) -> Tensor:
    """Y: one_hot(y) for hard labels, the soft labels themselves otherwise; float32.  (B, K)"""
    return F.one_hot(target, num_classes).float() if target.dim() == 1 else target.float()


def _ce_target(target: Tensor) -> Tensor:
    """What F.cross_entropy takes: class indices as they are, probabilities in float32 (the logits' dtype here)."""
    return target if target.dim() == 1 else target.float()


@register_loss("ce")
def ce() -> Loss:
    """Cross-entropy, per sample -sum_k t_k log p_k (hard labels: -log p_y); F.cross_entropy(logits.float(), y)."""
    return Loss(lambda z, t, head, h: F.cross_entropy(z, _ce_target(t)))


@register_loss("label_smoothing")
def label_smoothing(smoothing: float = 0.1) -> Loss:
    """Cross-entropy against (1 - s) t + s/K (Szegedy et al. 2016) = CE + s (z_y - mean_k z_k); s = 0 is `ce`."""
    s = opt.number("loss.smoothing", smoothing, 0.0, below=1.0)
    return Loss(lambda z, t, head, h: F.cross_entropy(z, _ce_target(t), label_smoothing=s))


@register_loss("mse")
def mse(k: float = 1.0, m: float = 1.0) -> Loss:
    """Square loss on the logits with Hui & Belkin's (2021) rescaling for many classes, per sample

        (1/K) [ k (z_y - m)^2 + sum_{c != y} z_c^2 ],   averaged over the batch;

    k weights the true class, m is its target value; k = m = 1 is plain MSE ||z - one_hot(y)||^2 / K.
    Soft labels: (1/K) sum_c (1 + (k - 1) t_c) (z_c - m t_c)^2, which is the above for t = one_hot(y)."""
    k = opt.number("loss.k", k, above=0)
    m = opt.number("loss.m", m, above=0)

    def loss(z, t, head, h):
        Y = _soft(t, z.shape[1])  # (B, K)
        return ((1 + (k - 1) * Y) * (z - m * Y).square()).mean()

    return Loss(loss)


@register_loss("focal")
def focal(gamma: float = 2.0) -> Loss:
    """Focal loss (Lin et al. 2017), per sample (1 - p_t)^gamma CE with p_t = sum_k t_k p_k (hard: p_y) and
    CE = -sum_k t_k log p_k; gamma = 0 is cross-entropy (the `ce` loss itself, so the same bits)."""
    gamma = opt.number("loss.gamma", gamma, 0.0)
    if gamma == 0:
        return ce()

    def loss(z, t, head, h):
        logp = F.log_softmax(z, 1)  # (B, K)
        Y = _soft(t, z.shape[1])
        ce_i = -(Y * logp).sum(1)  # (B,)
        p_t = (Y * logp.exp()).sum(1)  # (B,)
        # 1 - p_t is 0 (or -1 ulp) for a sure sample; clamped, so its weight's gradient is 0, not inf * 0, for gamma < 1
        weight = (1 - p_t).clamp_min(torch.finfo(z.dtype).tiny).pow(gamma)
        return (weight * ce_i).mean()

    return Loss(loss)


@register_loss("maxsup")
def maxsup(alpha: float = 0.1) -> Loss:
    """Max suppression (Zhou et al. 2025, "MaxSup"): CE + alpha (z_max - mean_k z_k), batch-averaged; CE soft for
    soft labels. Label smoothing is CE + s (z_y - mean_k z_k) (module docstring). A constant alpha (the authors'
    code raises it from 0.1 to 0.2 over training)."""
    alpha = opt.number("loss.alpha", alpha, 0.0)
    return Loss(lambda z, t, head, h: F.cross_entropy(z, _ce_target(t)) + alpha * (z.amax(1) - z.mean(1)).mean())


@register_loss("dot_regression")
def dot_regression() -> Loss:
    """Dot regression (Yang et al. 2022) for a fixed ETF classifier W (rows of norm E_W) and features of norm E_H:

        L = 1/(2 E_W E_H) (w_y^T h - E_W E_H)^2,   averaged over the batch;

    here h = tau f/||f|| (E_H = tau) and the ETF rows have unit norm (E_W = 1): (w_y^T h - tau)^2 / (2 tau).
    Soft labels: sum_c t_c (w_c^T h - tau)^2 / (2 tau). It reads W and h, not the logits (so no bias term); for
    nearest_etf W is the step's solution, reached by the gradient through h only."""

    def loss(z, t, head, h):
        if not head.normalize_features:
            raise EtfTrainError("loss=dot_regression regresses onto features of norm tau: set head.normalize=true")
        tau = head.tau
        dots = h.float() @ head.weight.float().T  # (B, K) w_c^T h
        return (_soft(t, z.shape[1]) * (dots - tau).square()).sum(1).mean() / (2 * tau)

    return Loss(loss, needs_features=True, fixed_geometry=True)


def build_loss(name: str, *, head_name: str, etf_heads: Sequence[str] = (), **options: Any) -> Loss:
    """The loss `name` (configs/loss/<name>.yaml) with its options; head_name (the head config's name) is checked
    against the heads the loss applies to (etf_heads: those with a fixed geometry, heads.heads_with), so a bad
    pairing stops before training."""
    loss = LOSSES.build(name, **options)
    if loss.fixed_geometry and head_name not in etf_heads:
        raise EtfTrainError(
            f"loss={name} needs a fixed simplex ETF classifier (head={' or head='.join(etf_heads)}); "
            f"head={head_name} learns its own"
        )
    return loss


__all__ = ["LOSSES", "Loss", "build_loss", "hard_labels", "register_loss"]

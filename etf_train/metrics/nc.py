"""Streaming neural-collapse metrics over a whole split (train or test), in float64, all-reduce aware.

Two passes over the data:
  pass 1  `update_stats(h, y)`        per-class counts n_c, per-class sums and per-class sums of ||h||^2.
  pass 2  `update_ncc(h, y, logits)`  with the pass-1 means mu_c and the thin SVD Hc = U S V^T of their centred
                                      matrix: the within-class second moment seen along the class-mean directions,
                                      sum_i (U^T (h_i - mu_{y_i}))^2 (r,), for nc1; with erank_sw, all of it,
                                      sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T (d x d, accumulated as its upper
                                      block triangle, `panels`; per-class ones would be d x d x K); and the
                                      nearest-class-centre disagreement (logits optional).
Both moments are formed from centred features, so no cancellation can hide a collapsed S_W. The d x d one is
the NC pass's largest cost where the features are cheap to make (N d^2 / 2 multiply-adds: about a learned head's
training epoch at UFM-10 sizes, docs/benchmarks.md), hence optional.
Under torch.distributed call `all_reduce()` after each pass (every rank, same order), then `compute(W)`.

Notation: K classes, d feature dimension, N samples, mu_c class means, mu_G = sum_c n_c mu_c / N,
Hc = [mu_c - mu_G] (d x K), M = I_K - 1 1^T / K.
  S_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T
  S_B = (1/K) Hc Hc^T
  nc1           tr(S_W S_B^+) / K
  nc2_w, nc2_h  || G / ||G||_F - M / sqrt(K-1) ||_F  with G = W W^T, resp. Hc^T Hc
  equinorm_*    std / mean of the row norms of W, resp. column norms of Hc (std with Bessel's correction)
  equiangular_* mean over pairs i < j of |cos_ij + 1/(K-1)|
  nc3           || W Hc / ||W Hc||_F - M / sqrt(K-1) ||_F
  nc4           fraction of samples where argmin_c ||h - mu_c|| != argmax logits
  cdnv          class-distance normalised variance (Galanti, Gyorgy, Hutter 2022), mean over pairs i < j of
                (Var_i + Var_j) / (2 ||mu_i - mu_j||^2), Var_c = (1/n_c) sum_{y_i = c} ||h_i - mu_c||^2 = tr(Sigma_c)
  rank_h        numerical rank of Hc: singular values > max(d, K) * eps * s_max (numpy.linalg.matrix_rank's default)
  erank_sw      effective rank of S_W as its participation ratio (tr S_W)^2 / ||S_W||_F^2 = (sum lambda)^2 / sum lambda^2:
                d for an isotropic S_W, 1 for one direction, 0 for S_W = 0; O(d^2) from the d x d moment, where an
                entropy-based effective rank (Roy & Vetterli 2007) would need the eigenvalues, O(d^3), twice an epoch
                (40-70 ms at d = 512); only with erank_sw=True
  norm_ratio_h, norm_ratio_w   max / min of the column norms of Hc, resp. row norms of W (minority collapse)
  bias_collapse || W mu_G + b ||, for a classifier with bias b (K,)

Classes absent from the data (possible in a short or subsampled run) are left out: every H-side
metric, nc1, nc3 and the NCC candidates use only the K' classes present, with K' in place of K
(nc3 pairs the rows of W of those classes with Hc). The W-only metrics (nc2_w, equinorm_w,
equiangular_w, norm_ratio_w) describe the classifier and use all K rows; bias_collapse uses all K rows and
the mean mu_G of the samples seen.
Nothing is specific to the train split: an accumulator fed the test loader gives the same metrics there
(its nc4 then uses the test-set class means as centres).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from etf_train.errors import EtfTrainError, NonFiniteError

from .geometry import (
    cdnv,
    equiangularity,
    equinorm,
    nc1_from_projections,
    nc2,
    norm_ratio,
    numerical_rank,
    participation_ratio,
)

METRIC_KEYS = (
    "nc1",
    "nc2_w",
    "nc2_h",
    "equinorm_w",
    "equinorm_h",
    "equiangular_w",
    "equiangular_h",
    "nc3",
    "nc4",
    "cdnv",
    "rank_h",
    "erank_sw",
    "norm_ratio_h",
    "norm_ratio_w",
    "bias_collapse",
)


def panels(d: int, count: int = 4) -> list[tuple[int, int]]:
    """[start, end) of `count` near-equal blocks of 0..d: a symmetric d x d matrix is its upper block triangle,
    block row i from column start_i on, count (count + 1) / 2 of the count^2 blocks (10 of 16: the products that
    form it cost 5/8 of a full one)."""
    edges = [round(i * d / count) for i in range(count + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def symmetric_from_upper(upper: Tensor) -> Tensor:
    """The symmetric matrix whose upper block triangle (`panels`) `upper` holds; its lower blocks are ignored.
    (d, d) -> (d, d)"""
    full = upper.clone()
    for a, b in panels(upper.shape[-1]):
        full[b:, a:b] = upper[a:b, b:].T
    return full


class _Pass2(NamedTuple):
    """What pass 1 fixes for pass 2 (and compute reads): the class means, the nearest-centre offsets and the
    class-mean directions."""

    mu: Tensor  # (K, d) every class's mean (0 for an absent class)
    offset: Tensor  # (K,) ||mu_c||^2, inf for an absent class: it can never be nearest
    present: Tensor  # (K,) bool, the classes with samples
    mu_G: Tensor  # (d,) the global mean
    Hc: Tensor  # (d, K') the centred means of the classes present
    U: Tensor  # (d, r) left singular vectors of Hc, r = min(d, K')
    S: Tensor  # (r,) its singular values, descending


class NCAccumulator:
    """Streaming accumulators for NC1-NC4 (see the module docstring); all state is float64 on `device`.

    The phases are enforced so that a distributed run cannot silently mix local and global sums:
    update_stats* -> all_reduce -> update_ncc* -> all_reduce -> compute. Without a process group
    (or with sync=False, for purely process-local data) all_reduce changes no numbers and may be skipped.
    erank_sw=False leaves out erank_sw and the d x d moment only it needs.
    """

    def __init__(self, num_classes: int, dim: int, device=None, *, sync: bool = True, erank_sw: bool = True):
        if num_classes < 2 or dim < 1:
            raise EtfTrainError(
                f"NC metrics need num_classes >= 2 and dim >= 1, got num_classes={num_classes}, dim={dim}"
            )
        self.num_classes, self.dim, self.sync = num_classes, dim, sync
        f64 = dict(dtype=torch.float64, device=device)
        self.counts = torch.zeros(num_classes, **f64)  # (K,)
        self.sums = torch.zeros(num_classes, dim, **f64)  # (K, d)
        self.sq_norms = torch.zeros(num_classes, **f64)  # (K,)  sum_{y_i = c} ||h_i||^2, for the class traces of cdnv
        # (d, d)  sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T, upper block triangle
        self.within = torch.zeros(dim, dim, **f64) if erank_sw else None
        self.projected = torch.zeros(min(dim, num_classes), **f64)  # (r,) first r entries: see _Pass2.U
        self.ncc = torch.zeros(2, **f64)  # (disagreements, samples seen) of pass 2
        self._stats_reduced = False
        self._ncc_reduced = False
        self._pass2: _Pass2 | None = None  # fixed once pass 2 starts

    def _distributed(self) -> bool:
        return self.sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def _check_features(self, h: Tensor) -> Tensor:
        if h.dim() != 2 or h.shape[1] != self.dim:
            raise EtfTrainError(f"NC metrics expect features of shape (batch, {self.dim}), got {tuple(h.shape)}")
        return h.detach().to(device=self.counts.device, dtype=torch.float64)

    def _check_labels(self, h: Tensor, y: Tensor) -> Tensor:
        if y.shape != h.shape[:1] or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise EtfTrainError(
                f"NC metrics expect integer labels of shape ({h.shape[0]},), got {y.dtype} {tuple(y.shape)}"
            )
        y = y.detach().to(device=self.counts.device, dtype=torch.long)
        if ((y < 0) | (y >= self.num_classes)).any():
            raise EtfTrainError(
                f"labels must lie in [0, {self.num_classes}); got min {int(y.min())}, max {int(y.max())}"
            )
        return y

    def _start_pass2(self) -> _Pass2:
        if self._pass2 is None:
            present = self.counts > 0
            if not present.any():
                raise EtfTrainError("update_ncc called before any update_stats: pass 1 must run first")
            mu = self.sums / self.counts.clamp(min=1)[:, None]  # (K, d)
            mu_G = self.sums.sum(dim=0) / self.counts.sum()  # (d,)
            Hc = (mu[present] - mu_G).T  # (d, K')
            if not bool(torch.isfinite(Hc).all()):  # a diverged run's features (NaN where their norm overflowed)
                raise NonFiniteError("the features are no longer finite in the NC metrics' pass: training diverged")
            U, S, _ = torch.linalg.svd(Hc, full_matrices=False)  # (d, r), (r,)
            # ||h - mu_c||^2 = ||h||^2 + (||mu_c||^2 - 2 h.mu_c); absent classes can never be nearest.
            offset = mu.square().sum(dim=1).masked_fill(~present, math.inf)  # (K,)
            self._pass2 = _Pass2(mu, offset, present, mu_G, Hc, U, S)
        return self._pass2

    def update_stats(self, h: Tensor, y: Tensor) -> None:
        """Pass 1: add a batch of features h (B, d) with integer labels y (B,) in [0, K)."""
        if self._stats_reduced or self._pass2 is not None:
            raise EtfTrainError(
                "update_stats called after pass 1 was closed (all_reduce or update_ncc); use a new NCAccumulator"
            )
        h = self._check_features(h)
        y = self._check_labels(h, y)
        self.counts += torch.bincount(y, minlength=self.num_classes)
        self.sums.index_add_(0, y, h)
        self.sq_norms.index_add_(0, y, torch.linalg.vector_norm(h, dim=1).square())

    def update_ncc(self, h: Tensor, y: Tensor, logits: Tensor | None = None) -> None:
        """Pass 2 (the same samples again): the within-class second moment around the pass-1 means and, given the
        logits, the samples whose nearest class centre differs from logits.argmax."""
        if self._ncc_reduced:
            raise EtfTrainError("update_ncc called after pass 2 was all-reduced; use a new NCAccumulator")
        if self._distributed() and not self._stats_reduced:
            raise EtfTrainError(
                "update_ncc needs the global class means: call all_reduce() after pass 1 on every rank first"
            )
        h = self._check_features(h)
        y = self._check_labels(h, y)
        if logits is not None and logits.shape != (h.shape[0], self.num_classes):
            raise EtfTrainError(
                f"NC metrics expect logits of shape ({h.shape[0]}, {self.num_classes}), got {tuple(logits.shape)}"
            )
        fixed = self._start_pass2()
        centred = h - fixed.mu.index_select(0, y)  # (B, d); index_select: twice as fast as mu[y] here
        self.projected[: fixed.U.shape[1]] += (centred @ fixed.U).square().sum(dim=0)
        if self.within is not None:
            for a, b in panels(self.dim):  # symmetric: the upper block triangle is all of it
                self.within[a:b, a:].addmm_(centred[:, a:b].T, centred[:, a:])
        if logits is not None:
            nearest = torch.addmm(fixed.offset, h, fixed.mu.T, alpha=-2.0).argmin(dim=1)  # (B,), no (B, d) 2 h
            predicted = logits.detach().to(self.counts.device).argmax(dim=1)
            self.ncc[0] += (nearest != predicted).sum()
            self.ncc[1] += h.shape[0]

    def all_reduce(self) -> None:
        """Sum the accumulators of the current pass over all processes (first call: pass 1, second: pass 2).

        A no-op for the numbers without an initialised process group or with sync=False; the call
        still closes the pass. Must be called by every rank in the same order (it is a collective).
        """
        if not self._stats_reduced:
            tensors, self._stats_reduced = (self.counts, self.sums, self.sq_norms), True
        elif not self._ncc_reduced:
            tensors, self._ncc_reduced = (self.within, self.projected, self.ncc), True
        else:
            return
        if self.sync and dist.is_available() and dist.is_initialized():
            for t in tensors:
                if t is not None:
                    dist.all_reduce(t)

    def compute(self, W: Tensor | None, b: Tensor | None = None) -> dict[str, float]:
        """The metrics of the module docstring. W: (K, d) classifier, or None to omit nc2_w, equinorm_w,
        equiangular_w, nc3 and norm_ratio_w; b: (K,) its bias, for bias_collapse (omitted without one);
        nc4 is present only when pass 2 had logits, erank_sw only with erank_sw=True."""
        # a rank without samples starts pass 2 only here, on the all-reduced sums
        if self._pass2 is None and not (self._ncc_reduced and self._distributed()):
            raise EtfTrainError("compute needs both passes: update_stats over the split, then update_ncc over it again")
        if self._distributed() and not (self._stats_reduced and self._ncc_reduced):
            raise EtfTrainError(
                "compute would see only this rank's samples: call all_reduce() after each pass on every rank first"
            )
        if b is not None and W is None:
            raise EtfTrainError("bias_collapse || W mu_G + b || needs the classifier W along with its bias b")
        N = self.counts.sum()
        mu, _, present, mu_G, Hc, U, S = self._start_pass2()
        if int(present.sum()) < 2:
            raise EtfTrainError(f"NC metrics need samples of at least 2 classes, got {int(present.sum())} (N={int(N)})")
        n = self.counts[present]  # (K',)
        mu = mu[present]  # (K', d)
        G_h = Hc.T @ Hc  # (K', K')
        # E||h - mu_c||^2 = E||h||^2 - ||mu_c||^2; the clamp removes rounding below 0 for collapsed classes.
        var = (self.sq_norms[present] / n - mu.square().sum(dim=1)).clamp_min(0)  # (K',)
        out = {
            "nc1": nc1_from_projections(self.projected[: U.shape[1]], S, self.dim) / N,
            "nc2_h": nc2(G_h),
            "equinorm_h": equinorm(G_h.diagonal().sqrt()),
            "equiangular_h": equiangularity(G_h),
            "cdnv": cdnv(var, G_h),
            "rank_h": numerical_rank(S, tuple(Hc.shape)),
            "norm_ratio_h": norm_ratio(G_h.diagonal().sqrt()),
        }
        if self.within is not None:
            # centring h by means it helped form leaves ~d eps E||h||^2 of rounding in tr S_W; the ratio is
            # scale-free, so N S_W serves
            tol = self.dim * torch.finfo(self.within.dtype).eps * float(self.sq_norms.sum())
            out["erank_sw"] = participation_ratio(symmetric_from_upper(self.within), tol)
        if W is not None:
            if W.shape != (self.num_classes, self.dim):
                raise EtfTrainError(
                    f"classifier W must have shape ({self.num_classes}, {self.dim}), got {tuple(W.shape)}"
                )
            W = W.detach().to(device=self.counts.device, dtype=torch.float64)
            G_w = W @ W.T  # (K, K)
            out |= {
                "nc2_w": nc2(G_w),
                "equinorm_w": equinorm(G_w.diagonal().sqrt()),
                "equiangular_w": equiangularity(G_w),
                "nc3": nc2(W[present] @ Hc),
                "norm_ratio_w": norm_ratio(G_w.diagonal().sqrt()),
            }
        if b is not None:
            if b.shape != (self.num_classes,):
                raise EtfTrainError(f"classifier bias b must have shape ({self.num_classes},), got {tuple(b.shape)}")
            out["bias_collapse"] = torch.linalg.vector_norm(W @ mu_G + b.detach().to(W))
        if self.ncc[1] > 0:
            out["nc4"] = self.ncc[0] / self.ncc[1]
        return {k: float(out[k]) for k in METRIC_KEYS if k in out}


def nc_metrics(
    h: Tensor, y: Tensor, logits: Tensor | None, W: Tensor | None, num_classes: int, b: Tensor | None = None
) -> dict[str, float]:
    """One-shot NC metrics (all of them) of in-memory features h (N, d), labels y (N,), optional logits (N, K) for
    nc4, classifier W (K, d) and its bias b (K,); process-local (never all-reduced)."""
    acc = NCAccumulator(num_classes, h.shape[-1], device=h.device, sync=False)
    acc.update_stats(h, y)
    acc.update_ncc(h, y, logits)
    return acc.compute(W, b)

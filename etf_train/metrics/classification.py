"""Classification metrics over a split (train or test), streaming and all-reduce aware.

Per batch `update(logits, y)`; under torch.distributed `all_reduce()` once on every rank; then `compute()`.
Every state is a float64 sum over samples, so the cross-process reduction is one all_reduce per tensor:
  per class [samples, top-1 hits, top-5 hits]                                `counts`, (3, K)
  per confidence bin [samples, sum of top-1 confidences, sum of top-1 hits]   `calibration`, (3, 15)
Not torchmetrics: these are a few bincounts, while importing torchmetrics takes seconds in every process (the
trainer's and each DDP test worker's) and its MulticlassCalibrationError keeps every sample's confidence
(O(N) state, concatenated across ranks) without exposing the bins the reliability diagram needs.

Definitions (accuracies in %, like test/acc; ece a fraction):
  acc_top5          samples whose label is among the 5 largest logits; only for K >= 10 (at K = 5 it is always 100)
  acc_class/<name>  top-1 recall of the class: hits / samples of the class; classes absent from the split are omitted
  ece               sum_b (n_b / N) |acc_b - conf_b| (Guo et al. 2017, L1), 15 equal-width bins B_b = ((b-1)/15, b/15]
                    of the top-1 softmax confidence; conf_b, acc_b the bin's mean confidence and top-1 accuracy
  acc_many, acc_medium, acc_few   mean of acc_class over the classes of each train-frequency group
                    (`shot_groups`; only with class_counts); a group with no class present in the split is omitted
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import EtfTrainError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ECE_BINS = 15
SHOT_GROUPS = ("many", "medium", "few")
TOP5_MIN_CLASSES = 10
# Liu et al. 2019 ("Large-scale long-tailed recognition in an open world"): many > 100, few < 20 train samples.
MANY_ABOVE, FEW_BELOW = 100, 20
# Largest class of CIFAR-100-LT, the smallest benchmark that uses those thresholds unscaled.
SHOT_REFERENCE = 500


def shot_groups(class_counts: Tensor) -> Tensor:
    """Train-frequency group of each class: 0 many (n_c > 100 s), 1 medium (20 s <= n_c <= 100 s), 2 few (n_c < 20 s),
    with s = min(n_max, 500) / 500.

    Unscaled (s = 1) when the largest class has >= 500 samples, as for ImageNet-LT, Places-LT and CIFAR-100-LT
    (35 / 35 / 30 classes at imbalance 100). A smaller train set (a limit_train subset, UFM) scales both by
    n_max / 500, so the groups stay the same fractions of the head class (n_max = 50: many > 10, few < 2) where fixed
    thresholds would put every class in "few"; the integer counts then blur the edges (at n_max = 50, 34 / 42 / 24).
    class_counts: (K,) train samples per class -> (K,) long in {0, 1, 2}
    """
    n = class_counts.long()
    ref = min(int(n.max()), SHOT_REFERENCE)
    # n > 100 ref / 500 and n < 20 ref / 500 in integers, so no threshold is off by a rounding.
    many = n * SHOT_REFERENCE > MANY_ABOVE * ref
    few = n * SHOT_REFERENCE < FEW_BELOW * ref
    return torch.where(many, 0, torch.where(few, 2, 1))


def calibration_bins(probs: Tensor, y: Tensor, n_bins: int = ECE_BINS) -> Tensor:
    """Per bin b of the top-1 confidence, ((b-1)/n_bins, b/n_bins]: [samples, sum of confidences, sum of top-1 hits].
    probs: (B, K) softmax, y: (B,) -> (3, n_bins) in probs' dtype"""
    conf, pred = probs.max(dim=1)  # (B,)
    inner = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype, device=conf.device)[1:-1]  # (n_bins - 1,)
    b = torch.bucketize(conf, inner)  # inner[b-1] < conf <= inner[b]: right-closed bins, conf = 1 in the last
    rows = torch.stack([torch.ones_like(conf), conf, (pred == y).to(conf.dtype)])  # (3, B)
    return conf.new_zeros(3, n_bins).index_add_(1, b, rows)


def expected_calibration_error(calibration: Tensor) -> Tensor:
    """ECE = sum_b (n_b / N) |acc_b - conf_b| = sum_b |hits_b - sum conf_b| / N.  calibration: (3, n_bins) -> scalar"""
    count, conf_sum, hit_sum = calibration
    return (hit_sum - conf_sum).abs().sum() / count.sum()


class ClassificationAccumulator:
    """Top-5, per-class, long-tail group accuracy and ECE over a split (see the module docstring).

    class_counts: (K,) train samples per class; given (the caller's choice: a long-tailed train set,
    imbalance_ratio > 1), compute() adds acc_many, acc_medium, acc_few. Phases: update* -> all_reduce -> compute.
    Without a process group (or with sync=False, for process-local data) all_reduce changes no numbers.
    """

    def __init__(self, num_classes: int, device=None, class_counts: Tensor | None = None, *, sync: bool = True):
        if num_classes < 2:
            raise EtfTrainError(f"classification metrics need num_classes >= 2, got {num_classes}")
        self.num_classes, self.sync = num_classes, sync
        self.groups = None
        if class_counts is not None:
            class_counts = torch.as_tensor(class_counts)
            if (
                class_counts.shape != (num_classes,)
                or class_counts.is_floating_point()
                or bool((class_counts < 0).any())
            ):
                raise EtfTrainError(
                    f"class_counts must be {num_classes} non-negative integers, got {class_counts.dtype} {tuple(class_counts.shape)}"
                )
            self.groups = shot_groups(class_counts).to(device)  # (K,)
        self.counts = torch.zeros(3, num_classes, dtype=torch.float64, device=device)  # (3, K)
        self.calibration = torch.zeros(3, ECE_BINS, dtype=torch.float64, device=device)  # (3, bins)
        self._reduced = False

    def _distributed(self) -> bool:
        return self.sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def update(self, logits: Tensor, y: Tensor) -> None:
        """Add a batch: logits (B, K), integer labels y (B,) in [0, K)."""
        if self._reduced:
            raise EtfTrainError("update called after all_reduce; use a new ClassificationAccumulator")
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise EtfTrainError(f"expected logits of shape (batch, {self.num_classes}), got {tuple(logits.shape)}")
        if y.shape != logits.shape[:1] or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise EtfTrainError(
                f"expected integer labels of shape ({logits.shape[0]},), got {y.dtype} {tuple(y.shape)}"
            )
        device = self.calibration.device
        logits = logits.detach().to(device=device, dtype=torch.float64)
        y = y.detach().to(device=device, dtype=torch.long)
        if ((y < 0) | (y >= self.num_classes)).any():
            raise EtfTrainError(
                f"labels must lie in [0, {self.num_classes}); got min {int(y.min())}, max {int(y.max())}"
            )
        top = logits.topk(min(5, self.num_classes), dim=1).indices  # (B, 5); reported only for K >= 10
        hit1 = logits.argmax(dim=1) == y  # (B,)  the first maximum, as test/acc (topk's order of ties is unspecified)
        hit5 = (top == y[:, None]).any(dim=1)  # (B,)
        self.counts.index_add_(1, y, torch.stack([torch.ones_like(hit1), hit1, hit5]).to(self.counts.dtype))
        self.calibration += calibration_bins(logits.softmax(dim=1), y)

    def all_reduce(self) -> None:
        """Sum the states over all processes, once; closes the accumulator for updates. A collective: every rank
        calls it."""
        if self._reduced:
            return
        self._reduced = True
        if self._distributed():
            dist.all_reduce(self.counts)
            dist.all_reduce(self.calibration)

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, float]:
        """The metrics of the module docstring; class_names (K,) name the acc_class/<name> keys (default: the index)."""
        if self._distributed() and not self._reduced:
            raise EtfTrainError("compute would see only this rank's samples: call all_reduce() on every rank first")
        if not self.calibration[0].sum():
            raise EtfTrainError("classification metrics need at least one sample: call update first")
        names = [str(c) for c in range(self.num_classes)] if class_names is None else list(class_names)
        if len(names) != self.num_classes:
            raise EtfTrainError(f"class_names must name {self.num_classes} classes, got {len(names)}")
        support, hits, hits5 = self.counts  # (K,) each
        present = support > 0
        acc = 100.0 * hits / support.clamp_min(1)  # (K,)
        out = {}
        if self.num_classes >= TOP5_MIN_CLASSES:
            out["acc_top5"] = 100.0 * hits5.sum() / support.sum()
        out["ece"] = expected_calibration_error(self.calibration)
        out |= {f"acc_class/{names[c]}": acc[c] for c in present.nonzero().flatten().tolist()}
        if self.groups is not None:
            for g, group in enumerate(SHOT_GROUPS):
                members = present & (self.groups == g)
                if members.any():
                    out[f"acc_{group}"] = acc[members].mean()
        return {k: float(v) for k, v in out.items()}


def reliability_diagram(calibration: Tensor, title: str = "") -> Figure:
    """Reliability diagram of accumulated calibration bins (ClassificationAccumulator.calibration, after all_reduce):
    per bin, top-1 accuracy (bars) against the bin's mean confidence (markers; the diagonal is perfect calibration),
    and below, the share of samples per bin. An Agg figure without pyplot state, for SummaryWriter.add_figure.
    calibration: (3, n_bins)"""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count, conf_sum, hit_sum = calibration.detach().double().cpu()
    n_bins = count.numel()
    filled = count > 0
    centre = ((torch.arange(n_bins, dtype=torch.float64) + 0.5) / n_bins)[filled].numpy()
    acc = (hit_sum / count.clamp_min(1))[filled].numpy()
    conf = (conf_sum / count.clamp_min(1))[filled].numpy()
    fig = Figure(figsize=(4.0, 5.0), dpi=100)
    FigureCanvasAgg(fig)  # Agg explicitly, no pyplot global state
    # fixed margins: tight_layout would measure every label, most of the figure's cost in a short run
    fig.subplots_adjust(left=0.17, right=0.96, top=0.93, bottom=0.1, hspace=0.08)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    top.bar(centre, acc, width=1 / n_bins, edgecolor="black", linewidth=0.5, label="accuracy")
    top.plot(centre, conf, "r_", markersize=10, label="mean confidence")
    top.set(
        ylim=(0, 1),
        ylabel="top-1 accuracy",
        title=f"{title} ECE = {float(expected_calibration_error(calibration)):.4f}".strip(),
    )
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(centre, (count / count.sum())[filled].numpy(), width=1 / n_bins, color="grey")
    bottom.set(xlim=(0, 1), xlabel="top-1 confidence", ylabel="share")
    return fig

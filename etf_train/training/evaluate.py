"""Evaluation passes with the end-of-epoch model, in eval mode on clean data: the test split (loss, accuracy,
classification metrics, and its NC metrics) and the train set (eval-mode accuracy, NC metrics, label-noise fit).

Both stream the split once (`_pass`); the NC metrics need a second look at the features (nearest class centre
against the pass-1 means), served from the first pass's features when they fit FEATURE_CACHE_BYTES.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .. import tags
from ..data import noisy_fit
from ..metrics import ClassificationAccumulator, NCAccumulator
from ..metrics.nc import METRIC_KEYS
from .distributed import Dist

# Budget for caching a split's features between the two NC passes instead of running the backbone twice.
FEATURE_CACHE_BYTES = 1 << 30


def to_device(batch, device):
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _pass(
    model, loader, device, autocast, num_classes: int, visit: Callable, nc: bool, erank_sw: bool
) -> dict[str, float]:
    """model (eval mode) over loader: visit(h, logits, y) per batch; with nc, the NC metrics of the split (all-reduced
    over ranks; erank_sw among them or not), with the classifier and its effective bias; {} without."""
    model.eval()
    acc = NCAccumulator(num_classes, model.head.dim, device=device, erank_sw=erank_sw) if nc else None
    cache, cached_bytes = [], 0

    def features(x):
        with autocast:
            f = model.backbone(x)
        h = model.head.normalize(f.float())
        return h, model.head.classify(h)

    for batch in loader:
        x, y = to_device(batch, device)
        h, logits = features(x)
        visit(h, logits, y)
        if acc is not None:
            h = h.to(torch.float64)  # the accumulator's dtype: converted once for both passes
            acc.update_stats(h, y)
            cached_bytes += h.numel() * h.element_size()
            if cached_bytes <= FEATURE_CACHE_BYTES:
                cache.append((h, logits, y))
    if acc is None:
        return {}
    acc.all_reduce()
    if cached_bytes > FEATURE_CACHE_BYTES:  # too large to keep: the backbone runs again
        cache = ((*features(x), y) for x, y in (to_device(batch, device) for batch in loader))
    for h, logits, y in cache:
        acc.update_ncc(h, y, logits)
    acc.all_reduce()
    bias = model.head.bias
    return acc.compute(model.head.weight.detach().float(), None if bias is None else bias.detach().float())


@torch.no_grad()
def evaluate(
    model,
    loader,
    device,
    autocast,
    world: Dist,
    num_classes: int,
    *,
    nc: bool = False,
    erank_sw: bool = True,
    class_names=None,
    class_counts=None,
    per_class: bool = True,
) -> tuple[dict[str, float], torch.Tensor]:
    """The test split: test/loss (cross-entropy, whatever the training loss), test/acc (%), test/acc_top5,
    test/ece, test/acc_class/<name> (per_class), test/acc_many|medium|few (with class_counts), and with nc the
    NC metrics of the split as nc_test/* (erank_sw among them or not). Also the calibration bins, for a reliability
    diagram."""
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    cls = ClassificationAccumulator(num_classes, device, class_counts)

    def visit(h, logits, y):
        nonlocal loss_sum, correct, seen
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        cls.update(logits, y)

    nc_out = _pass(model, loader, device, autocast, num_classes, visit, nc, erank_sw)
    cls.all_reduce()
    loss_sum, correct, seen = world.sum([loss_sum.item(), correct.item(), seen], device)
    out = {tags.TEST_LOSS: loss_sum / seen, tags.TEST_ACC: 100.0 * correct / seen}
    out |= {
        tags.on_test(k): v for k, v in cls.compute(class_names).items() if per_class or not k.startswith("acc_class/")
    }
    out |= {tags.nc_test(k): v for k, v in nc_out.items()}
    return out, cls.calibration


@torch.no_grad()
def evaluate_train_set(
    model, loader, device, autocast, num_classes, world: Dist, noisy=None, erank_sw: bool = True
) -> dict[str, float]:
    """NC metrics (erank_sw among them or not) and eval-mode accuracy over the (un-augmented) train set, with the
    labels training sees (label noise included). noisy: (this rank's samples,) bool in the loader's order, marking
    noisy labels: adds train/noisy_fit, the fraction of them the model predicts with their noisy label."""
    correct = torch.zeros((), device=device, dtype=torch.long)
    fit = torch.zeros(2, device=device, dtype=torch.long)  # (noisy samples fitted, noisy samples)
    seen = 0

    def visit(h, logits, y):
        nonlocal correct, fit, seen
        correct += (logits.argmax(1) == y).sum()
        if noisy is not None:
            fit += torch.stack(noisy_fit(logits.argmax(1), y, noisy[seen : seen + len(y)]))
        seen += len(y)

    nc_out = _pass(model, loader, device, autocast, num_classes, visit, True, erank_sw)
    correct, seen, n_fit, n_noisy = world.sum([correct.item(), seen, *fit.tolist()], device)
    # train/acc is measured during the epoch, as the weights change (and, for nearest_etf, with a classifier fitted
    # to running means that include the batch); this is the train set under the end-of-epoch model.
    out = {tags.EVAL_ACC: 100.0 * correct / seen, **{tags.nc(k): v for k, v in nc_out.items()}}
    if noisy is not None:
        out[tags.NOISY_FIT] = n_fit / max(n_noisy, 1)
    return out


def as_train_set(test: dict[str, float]) -> dict[str, float]:
    """evaluate()'s scalars of a test split that is the train set itself (DataBundle.test_is_eval_train), with what
    evaluate_train_set would give from the same pass: nc_test/* as nc/*, and test/acc as train/eval_acc."""
    nc_test = {tags.nc_test(k): k for k in METRIC_KEYS}
    out = {k: v for k, v in test.items() if k not in nc_test}
    return (
        out | {tags.nc(nc_test[k]): v for k, v in test.items() if k in nc_test} | {tags.EVAL_ACC: test[tags.TEST_ACC]}
    )

"""Evaluation passes with the end-of-epoch model: the test split, and the NC metrics over the train set."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import noisy_fit
from ..metrics import NCAccumulator
from .distributed import Dist

# Budget for caching train-set features between the two NC passes instead of running the backbone twice.
FEATURE_CACHE_BYTES = 1 << 30


def to_device(batch, device):
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model, loader, device, autocast, world: Dist) -> dict[str, float]:
    """test/loss and test/acc (%) over the loader's samples, summed over ranks."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for batch in loader:
        x, y = to_device(batch, device)
        with autocast:
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    loss_sum, correct, seen = world.sum([loss_sum.item(), correct.item(), seen], device)
    return {"test/loss": loss_sum / seen, "test/acc": 100.0 * correct / seen}


@torch.no_grad()
def nc_metrics(model, loader, device, autocast, num_classes, world: Dist, noisy=None) -> dict[str, float]:
    """NC1-NC4 and eval-mode accuracy over the (un-augmented) train set, streaming: pass 1 moments and
    predictions, pass 2 nearest-class-centre (from cached features when they fit FEATURE_CACHE_BYTES).

    The labels are the ones training sees (label noise included). noisy: (this rank's samples,) bool, in the
    loader's order, marking noisy labels: adds train/noisy_fit, the fraction of them the model predicts."""
    model.eval()
    acc = NCAccumulator(num_classes, model.head.dim, device=device)
    cache, cached_bytes = [], 0
    correct = torch.zeros((), device=device, dtype=torch.long)
    fit = torch.zeros(2, device=device, dtype=torch.long)  # (noisy samples fitted, noisy samples)
    seen = 0

    def features(x):
        with autocast:
            f = model.backbone(x)
        return model.head.normalize(f.float()), model.head(f.float())

    for batch in loader:
        x, y = to_device(batch, device)
        h, logits = features(x)
        acc.update_stats(h, y)
        correct += (logits.argmax(1) == y).sum()
        if noisy is not None:
            fit += torch.stack(noisy_fit(logits.argmax(1), y, noisy[seen:seen + len(y)]))
        seen += len(y)
        cached_bytes += h.numel() * h.element_size()
        if cached_bytes <= FEATURE_CACHE_BYTES:
            cache.append((h, logits))
    acc.all_reduce()
    if cached_bytes > FEATURE_CACHE_BYTES:
        cache = (features(to_device(batch, device)[0]) for batch in loader)
    for h, logits in cache:
        acc.update_ncc(h, logits)
    acc.all_reduce()
    correct, seen, n_fit, n_noisy = world.sum([correct.item(), seen, *fit.tolist()], device)
    # train/acc is measured during the epoch, as the weights change (and, for nearest_etf, with a classifier fitted
    # to running means that include the batch); this is the train set under the end-of-epoch model.
    out = {"train/eval_acc": 100.0 * correct / seen,
           **{f"nc/{k}": v for k, v in acc.compute(model.head.weight.detach().float()).items()}}
    if noisy is not None:
        out["train/noisy_fit"] = n_fit / max(n_noisy, 1)
    return out

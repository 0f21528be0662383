"""NCAccumulator's protocol and its distributed path without processes: torch.distributed's calls are replaced by
a world of ranks simulated here, so the order checks and the all-reduced sums run in-process (the gloo test in
test_metrics.py runs outside issue 30's mutation selection). Refusals are compared word for word."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from etf_train.errors import EtfTrainError, NonFiniteError
from etf_train.metrics import NCAccumulator

K, D, B = 3, 5, 12  # B != D: a message naming the batch size cannot name the feature size by mistake


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = (
        torch.randn(B, D, generator=g, dtype=torch.float64)
        + 3 * torch.eye(K, D, dtype=torch.float64)[torch.arange(B) % K]
    )
    y = torch.arange(B) % K
    return h, y, torch.randn(B, K, generator=g)


def world(monkeypatch, others: list[torch.Tensor]):
    """A process group of 2: all_reduce adds the other rank's tensors, in the order they are reduced."""
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: t.add_(others.pop(0)))


def local(*batches) -> dict[str, float]:
    """The metrics of one process that saw every batch."""
    acc = NCAccumulator(K, D, sync=False)
    for h, y, _ in batches:
        acc.update_stats(h, y)
    for h, y, logits in batches:
        acc.update_ncc(h, y, logits)
    return acc.compute(torch.eye(K, D, dtype=torch.float64), torch.zeros(K))


def test_two_ranks_give_the_metrics_of_one_process_over_both_their_batches(monkeypatch):
    mine, theirs = data(0), data(1)
    other = NCAccumulator(K, D, sync=False)
    other.update_stats(theirs[0], theirs[1])
    pass1 = [other.counts.clone(), other.sums.clone(), other.sq_norms.clone()]
    world(monkeypatch, pass1)
    acc = NCAccumulator(K, D)
    acc.update_stats(mine[0], mine[1])
    acc.all_reduce()
    assert not pass1
    # the other rank's pass 2 around the same global means: one process's pass 2 over its batch alone
    twin = NCAccumulator(K, D, sync=False)
    twin.counts, twin.sums, twin.sq_norms = acc.counts.clone(), acc.sums.clone(), acc.sq_norms.clone()
    twin.update_ncc(theirs[0], theirs[1], theirs[2])
    world(monkeypatch, [twin.within, twin.projected, twin.ncc])
    acc.update_ncc(mine[0], mine[1], mine[2])
    acc.all_reduce()
    got = acc.compute(torch.eye(K, D, dtype=torch.float64), torch.zeros(K))
    assert got == pytest.approx(local(mine, theirs), rel=1e-9, abs=0)


def test_a_rank_without_samples_computes_from_the_others(monkeypatch):
    theirs = data(1)
    other = NCAccumulator(K, D, sync=False)
    other.update_stats(theirs[0], theirs[1])
    reduced = [other.counts.clone(), other.sums.clone(), other.sq_norms.clone()]
    other.update_ncc(theirs[0], theirs[1], theirs[2])
    reduced += [other.within, other.projected, other.ncc]
    world(monkeypatch, reduced)
    acc = NCAccumulator(K, D)
    acc.all_reduce()
    acc.all_reduce()
    assert not reduced
    got = acc.compute(torch.eye(K, D, dtype=torch.float64), torch.zeros(K))
    assert got == pytest.approx(local(theirs), rel=1e-9, abs=0)


def test_the_distributed_order_is_enforced_in_these_words(monkeypatch):
    h, y, logits = data()
    world(monkeypatch, [torch.zeros(K), torch.zeros(K, D), torch.zeros(K)])
    acc = NCAccumulator(K, D)
    acc.update_stats(h, y)
    with pytest.raises(EtfTrainError) as e:
        acc.update_ncc(h, y)
    assert str(e.value) == (
        "update_ncc needs the global class means: call all_reduce() after pass 1 on every rank first"
    )
    acc.all_reduce()
    acc.update_ncc(h, y, logits)
    with pytest.raises(EtfTrainError) as e:
        acc.compute(None)
    assert str(e.value) == (
        "compute would see only this rank's samples: call all_reduce() after each pass on every rank first"
    )


def test_without_a_process_group_all_reduce_only_closes_the_passes():
    h, y, logits = data()
    acc = NCAccumulator(K, D)
    acc.update_stats(h, y)
    acc.all_reduce()
    with pytest.raises(EtfTrainError) as e:
        acc.update_stats(h, y)
    assert str(e.value) == (
        "update_stats called after pass 1 was closed (all_reduce or update_ncc); use a new NCAccumulator"
    )
    acc.update_ncc(h, y, logits)
    acc.all_reduce()
    acc.all_reduce()  # a third call changes nothing
    with pytest.raises(EtfTrainError) as e:
        acc.update_ncc(h, y, logits)
    assert str(e.value) == "update_ncc called after pass 2 was all-reduced; use a new NCAccumulator"
    ref = NCAccumulator(K, D, sync=False)
    ref.update_stats(h, y)
    ref.update_ncc(h, y, logits)
    assert acc.compute(None) == ref.compute(None)


@pytest.mark.parametrize(
    "call, says",
    [
        (lambda a, h, y, lg: a.update_ncc(h, y), "update_ncc called before any update_stats: pass 1 must run first"),
        (
            lambda a, h, y, lg: a.compute(None),
            "compute needs both passes: update_stats over the split, then update_ncc over it again",
        ),
        (
            lambda a, h, y, lg: a.update_stats(h, y.float()),
            "NC metrics expect integer labels of shape (12,), got torch.float32 (12,)",
        ),
        (
            lambda a, h, y, lg: a.update_stats(h, y[:5]),
            "NC metrics expect integer labels of shape (12,), got torch.int64 (5,)",
        ),
        (
            lambda a, h, y, lg: a.update_stats(h, y.bool()),
            "NC metrics expect integer labels of shape (12,), got torch.bool (12,)",
        ),
        (
            lambda a, h, y, lg: a.update_stats(h[:, :4], y),
            "NC metrics expect features of shape (batch, 5), got (12, 4)",
        ),
    ],
)
def test_a_wrong_call_is_refused_in_these_words(call, says):
    h, y, logits = data()
    with pytest.raises(EtfTrainError) as e:
        call(NCAccumulator(K, D), h, y, logits)
    assert str(e.value) == says


def test_logits_of_the_wrong_shape_and_a_bias_without_a_classifier_are_refused():
    h, y, logits = data()
    acc = NCAccumulator(K, D)
    acc.update_stats(h, y)
    with pytest.raises(EtfTrainError) as e:
        acc.update_ncc(h, y, logits[:, :2])
    assert str(e.value) == "NC metrics expect logits of shape (12, 3), got (12, 2)"
    acc.update_ncc(h, y, logits)
    with pytest.raises(EtfTrainError) as e:
        acc.compute(None, torch.zeros(K))
    assert str(e.value) == "bias_collapse || W mu_G + b || needs the classifier W along with its bias b"


@pytest.mark.parametrize("k, d", [(1, 5), (3, 0)])
def test_too_few_classes_or_dimensions_are_refused(k, d):
    with pytest.raises(EtfTrainError) as e:
        NCAccumulator(k, d)
    assert str(e.value) == f"NC metrics need num_classes >= 2 and dim >= 1, got num_classes={k}, dim={d}"


def test_one_feature_dimension_and_one_sample_a_class_are_enough():
    """The smallest problem: d = 1, and each class's mean is its one sample (NC1's within-class spread is 0)."""
    acc = NCAccumulator(2, 1)
    h, y = torch.tensor([[1.0], [-1.0]]), torch.tensor([0, 1])
    acc.update_stats(h, y)
    acc.update_ncc(h[:1], y[:1], torch.tensor([[0.0, 1.0]]))  # one sample with logits: nc4 is 1 of 1
    acc.update_ncc(h[1:], y[1:])
    got = acc.compute(None)
    assert got["nc1"] == 0.0 and got["nc4"] == 1.0


def test_a_process_group_of_one_needs_no_all_reduce(monkeypatch):
    """With a world of 1 the passes run as in a plain process: no all_reduce is required between them."""
    world(monkeypatch, [])
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 1)
    h, y, logits = data()
    acc = NCAccumulator(K, D)
    acc.update_stats(h, y)
    acc.update_ncc(h, y, logits)
    assert acc.compute(None)["nc1"] > 0


def test_closing_both_passes_without_a_sample_is_refused_as_a_missing_pass():
    acc = NCAccumulator(K, D, sync=False)
    acc.all_reduce()
    acc.all_reduce()
    with pytest.raises(EtfTrainError) as e:
        acc.compute(None)
    assert str(e.value) == "compute needs both passes: update_stats over the split, then update_ncc over it again"


def test_features_that_diverged_are_named_so():
    h, y, _ = data()
    h[0, 0] = float("inf")
    acc = NCAccumulator(K, D)
    acc.update_stats(h, y)
    with pytest.raises(NonFiniteError) as e:
        acc.update_ncc(h, y)
    assert str(e.value) == "the features are no longer finite in the NC metrics' pass: training diverged"


def test_collapsed_features_of_any_scale_have_no_within_class_spread():
    """Every sample at its class mean, at 1e6: centring leaves ~1e-18 of rounding in tr S_W, which must not read
    as a spread over directions (erank_sw 0, not a participation ratio of noise)."""
    g = torch.Generator().manual_seed(0)
    mu = 1e6 * torch.randn(K, D, generator=g, dtype=torch.float64) + 0.1
    y = torch.arange(21) % K
    acc = NCAccumulator(K, D)
    acc.update_stats(mu[y], y)
    acc.update_ncc(mu[y], y)
    assert float(acc.within.trace()) > 0  # the rounding is there
    assert acc.compute(None)["erank_sw"] == 0.0

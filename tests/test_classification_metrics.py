"""Classification metrics: the streaming accumulator against hand counts and numpy computations written here."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from etf_train.errors import EtfTrainError
from etf_train.metrics.classification import (
    ECE_BINS,
    ClassificationAccumulator,
    calibration_bins,
    reliability_diagram,
    shot_groups,
)


def random_logits(K=12, N=400, seed=0, absent=()):
    """Logits that are right about half the time with spread-out confidences; labels skip `absent`."""
    g = torch.Generator().manual_seed(seed)
    present = torch.tensor([c for c in range(K) if c not in absent])
    y = present[torch.randint(0, len(present), (N,), generator=g)]
    logits = 1.5 * torch.randn(N, K, generator=g, dtype=torch.float64)
    logits[torch.arange(N), y] += 2.0 * torch.rand(N, generator=g, dtype=torch.float64)
    return logits, y


def run(logits, y, K, chunks=5, **kwargs):
    acc = ClassificationAccumulator(K, **kwargs)
    for lc, yc in zip(logits.tensor_split(chunks), y.tensor_split(chunks)):
        acc.update(lc, yc)
    acc.all_reduce()
    return acc


def numpy_ece(logits, y, bins=15):
    """Guo et al. 2017 ECE, loop over right-closed bins ((b-1)/bins, b/bins]."""
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    conf, hit = p.max(axis=1), p.argmax(axis=1) == y
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        member = (conf > lo) & (conf <= hi)
        if member.any():
            total += member.mean() * abs(hit[member].mean() - conf[member].mean())
    return total


def test_per_class_and_top5_match_hand_counts():
    """Catches top-5 from the wrong end or top-1 only, per-class precision for recall, and absent classes reported as 0 %."""
    K = 12
    logits, y = random_logits(K, absent=(7,))
    m = run(logits, y, K).compute()
    L, t = logits.numpy(), y.numpy()
    top5 = np.argsort(-L, axis=1)[:, :5]
    assert m["acc_top5"] == pytest.approx(100 * np.mean([t[i] in top5[i] for i in range(len(t))]), rel=1e-12)
    pred = L.argmax(axis=1)
    for c in range(K):
        if c == 7:
            assert "acc_class/7" not in m
        else:
            assert m[f"acc_class/{c}"] == pytest.approx(100 * np.mean(pred[t == c] == c), rel=1e-12), c
    assert 20 < m["acc_top5"] < 100 and 0 < m["acc_class/0"] < 100  # non-trivial, so the comparison can fail
    # A case small enough to count by eye: K = 10, logits = -rank, so the top 5 are the first five listed.
    order = torch.tensor(
        [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0], [3, 0, 1, 2, 4, 5, 6, 7, 8, 9]]
    )
    logits = torch.empty(3, 10, dtype=torch.float64).scatter_(
        1, order, -torch.arange(10.0, dtype=torch.float64).expand(3, -1)
    )
    m = run(logits, torch.tensor([0, 4, 2]), 10, chunks=1).compute(class_names=[f"c{i}" for i in range(10)])
    # sample 0: label 0 predicted; sample 1: label 4 at rank 6 (miss); sample 2: label 2 at rank 4 (top-5 hit, top-1 miss)
    assert m["acc_top5"] == pytest.approx(200 / 3)
    per_class = {k: v for k, v in m.items() if k.startswith("acc_class/")}
    assert per_class == {"acc_class/c0": 100.0, "acc_class/c2": 0.0, "acc_class/c4": 0.0}


def test_no_top5_below_ten_classes():
    """Catches acc_top5 logged for K < 10, where it is near 100 % for any model (always 100 at K = 5)."""
    logits, y = random_logits(K=9)
    m = run(logits, y, 9).compute()
    assert "acc_top5" not in m and {f"acc_class/{c}" for c in range(9)} <= set(m)


def test_ece_matches_a_hand_computation_with_15_bins():
    """Catches a wrong bin count, bins weighted equally, an L2 or max norm, and the label's probability as confidence."""
    # Top-1 confidences 0.95, 0.95, 0.5, 0.45 (bins 15, 15, 8, 7 of ((b-1)/15, b/15]); hits 1, 0, 1, 0.
    p = torch.tensor([[0.95, 0.05, 0.0], [0.05, 0.95, 0.0], [0.5, 0.3, 0.2], [0.3, 0.25, 0.45]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 0])
    # bin 15: acc 1/2, conf 0.95, weight 2/4; bin 8: acc 1, conf 0.5; bin 7: acc 0, conf 0.45
    want = 0.5 * abs(0.5 - 0.95) + 0.25 * abs(1 - 0.5) + 0.25 * abs(0 - 0.45)
    m = run(p.clamp_min(1e-300).log(), y, 3, chunks=2).compute()  # softmax(log p) = p
    assert m["ece"] == pytest.approx(want, rel=1e-12)
    bins = calibration_bins(p, y)
    assert bins.shape == (3, ECE_BINS)
    assert bins[0].tolist() == [0] * 6 + [1, 1] + [0] * 6 + [2]
    logits, y = random_logits()
    m = run(logits, y, 12).compute()
    assert m["ece"] == pytest.approx(numpy_ece(logits.numpy(), y.numpy()), rel=1e-12) and m["ece"] > 0.01


def test_bins_are_right_closed():
    """Catches left-closed bins ([lo, hi)), which move a confidence on an edge up and put confidence 1 in a 16th bin."""
    p = torch.eye(3, dtype=torch.float64)
    bins = calibration_bins(p, torch.tensor([0, 1, 0]))
    assert bins[:, -1].tolist() == [3.0, 3.0, 2.0] and bins[:, :-1].abs().sum() == 0
    edge = float(torch.linspace(0, 1, ECE_BINS + 1, dtype=torch.float64)[9])  # 9/15 as the bins' own edge
    bins = calibration_bins(torch.tensor([[edge, 1 - edge]], dtype=torch.float64), torch.tensor([0]))
    assert bins[0].nonzero().flatten().tolist() == [8]  # (8/15, 9/15], not (9/15, 10/15]


def test_shot_groups_on_a_constructed_long_tail():
    """Catches off-by-one thresholds (100 and 20 are medium), no scaling below n_max = 500, and scaling above it."""
    counts = torch.tensor([1280, 500, 101, 100, 50, 20, 19, 5])
    assert shot_groups(counts).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    counts = torch.tensor([500, 101, 100, 20, 19])  # n_max = 500: unscaled
    assert shot_groups(counts).tolist() == [0, 0, 1, 1, 2]
    counts = torch.tensor([50, 11, 10, 2, 1])  # n_max = 50: many > 10, few < 2
    assert shot_groups(counts).tolist() == [0, 0, 1, 1, 2]
    # CIFAR-100-LT at imbalance 100 (n_c = round(500 * 100^(-c/99))): the published 35 / 35 / 30 split.
    groups = shot_groups(torch.tensor([round(500 * 100 ** (-c / 99)) for c in range(100)]))
    assert [int((groups == g).sum()) for g in range(3)] == [35, 35, 30]


def test_group_accuracy_is_the_mean_over_present_classes_of_the_group():
    """Catches group accuracy weighted by samples, absent classes counted as 0 %, and empty groups reported."""
    K = 12
    counts = torch.tensor([400, 300, 200, 150, 90, 60, 40, 25, 15, 10, 8, 5])  # n_max < 500: many > 80, few < 16
    logits, y = random_logits(K, N=600, absent=(4,))
    m = run(logits, y, K, class_counts=counts).compute()
    pred, t = logits.numpy().argmax(axis=1), y.numpy()
    per_class = {c: 100 * np.mean(pred[t == c] == c) for c in range(K) if c != 4}
    assert m["acc_many"] == pytest.approx(np.mean([per_class[c] for c in (0, 1, 2, 3)]), rel=1e-12)
    assert m["acc_medium"] == pytest.approx(np.mean([per_class[c] for c in (5, 6, 7)]), rel=1e-12)
    assert m["acc_few"] == pytest.approx(np.mean([per_class[c] for c in (8, 9, 10, 11)]), rel=1e-12)
    m = run(logits, y, K, class_counts=torch.full((K,), 600)).compute()  # every class many-shot
    assert "acc_many" in m and "acc_medium" not in m and "acc_few" not in m
    assert "acc_many" not in run(logits, y, K).compute()  # no class_counts: no groups


def test_reliability_diagram_draws_the_accumulated_bins(tmp_path):
    """Catches misplaced or empty bars, a figure leaked into pyplot's registry, and one add_figure cannot render."""
    logits, y = random_logits()
    acc = run(logits, y, 12)
    fig = reliability_diagram(acc.calibration, title="test")
    top = fig.axes[0]
    count, _, hit_sum = acc.calibration
    filled = (count > 0).nonzero().flatten().tolist()
    bars = sorted(top.patches, key=lambda r: r.get_x())
    assert len(bars) == len(filled) and 0 < len(filled) < ECE_BINS
    for bar, b in zip(bars, filled):
        assert bar.get_height() == pytest.approx(float(hit_sum[b] / count[b]))
        assert bar.get_x() + bar.get_width() / 2 == pytest.approx((b + 0.5) / ECE_BINS)
    assert "ECE = " in top.get_title()
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(tmp_path) as writer:
        writer.add_figure("test/reliability", fig, global_step=1)
    assert any(f.stat().st_size > 1000 for f in tmp_path.glob("events.out.tfevents.*"))


def test_phase_and_input_errors():
    """Catches updates after the reduction (counted on one rank only) and malformed inputs accepted silently."""
    logits, y = random_logits()
    acc = ClassificationAccumulator(12)
    with pytest.raises(EtfTrainError, match="at least one sample"):
        acc.compute()
    with pytest.raises(EtfTrainError, match="logits"):
        acc.update(logits[:, :5], y)
    with pytest.raises(EtfTrainError, match="integer labels"):
        acc.update(logits, y.double())
    with pytest.raises(EtfTrainError, match=r"\[0, 12\)"):
        acc.update(logits, y + 1)
    with pytest.raises(EtfTrainError, match="class_counts"):
        ClassificationAccumulator(12, class_counts=torch.ones(11, dtype=torch.long))
    acc.update(logits, y)
    with pytest.raises(EtfTrainError, match="class_names"):
        acc.compute(class_names=["a"])
    acc.all_reduce()
    with pytest.raises(EtfTrainError, match="after all_reduce"):
        acc.update(logits, y)


def _worker(rank, world, init_file, logits, y, counts, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mine = torch.arange(len(y)) % world == rank  # interleaved: unequal class counts per rank
        acc = ClassificationAccumulator(12, class_counts=counts)
        for lc, yc in zip(logits[mine].tensor_split(3), y[mine].tensor_split(3)):
            acc.update(lc, yc)
        try:
            acc.compute()
            raise AssertionError("compute on this rank's counts under a process group did not raise")
        except EtfTrainError:
            pass
        acc.all_reduce()
        torch.save((acc.compute(), acc.calibration), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_two_process_gloo_equals_single_process_on_union(tmp_path):
    """Catches a state left unreduced (per-class and top-5 counts, calibration bins) or reduced twice."""
    logits, y = random_logits()
    counts = torch.tensor([400, 300, 200, 150, 90, 60, 40, 25, 15, 10, 8, 5])
    mp.spawn(_worker, args=(2, tmp_path / "init", logits, y, counts, tmp_path), nprocs=2, join=True)
    single = run(logits, y, 12, class_counts=counts)
    want = single.compute()
    for rank in range(2):
        got, calibration = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-12), key
        assert torch.allclose(calibration, single.calibration, rtol=1e-12, atol=0)
    assert math.isfinite(want["ece"])

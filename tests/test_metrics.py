"""NC metrics: the streaming accumulator against dense float64 computations written from the formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from etf_train.errors import EtfTrainError
from etf_train.etf import random_stiefel, simplex_etf
from etf_train.metrics import METRIC_KEYS, NCAccumulator, nc_metrics


def dense_reference(h, y, logits, W, K, b=None):
    """Every metric straight from its definition, in float64, over the classes present."""
    h = h.double()
    classes = sorted(set(y.tolist()))
    k = len(classes)
    N = h.shape[0]
    mu = torch.stack([h[y == c].mean(dim=0) for c in classes])  # (k, d)
    mu_G = h.mean(dim=0)
    Hc = (mu - mu_G).T  # (d, k)
    own_mean = torch.stack([mu[classes.index(c)] for c in y.tolist()])  # (N, d)
    S_W = sum(torch.outer(v, v) for v in h - own_mean) / N
    S_B = Hc @ Hc.T / k
    out = {"nc1": torch.trace(S_W @ torch.linalg.pinv(S_B)) / k}

    def nc2(G, m):
        M = torch.eye(m, dtype=torch.float64) - torch.ones(m, m, dtype=torch.float64) / m
        return torch.linalg.norm(G / torch.linalg.norm(G) - M / math.sqrt(m - 1))

    def equiangular(vectors):  # rows
        m = len(vectors)
        terms = [
            abs(float(vectors[i] @ vectors[j] / (vectors[i].norm() * vectors[j].norm())) + 1 / (m - 1))
            for i in range(m)
            for j in range(i + 1, m)
        ]
        return sum(terms) / len(terms)

    out["nc2_h"] = nc2(Hc.T @ Hc, k)
    norms = Hc.norm(dim=0)
    out["equinorm_h"] = norms.std() / norms.mean()
    out["equiangular_h"] = equiangular(Hc.T)
    if W is not None:
        W = W.double()
        out["nc2_w"] = nc2(W @ W.T, K)
        norms = W.norm(dim=1)
        out["equinorm_w"] = norms.std() / norms.mean()
        out["equiangular_w"] = equiangular(W)
        out["nc3"] = nc2(W[classes] @ Hc, k)
    if logits is not None:
        nearest = [classes[int(torch.argmin(torch.linalg.norm(mu - hi, dim=1)))] for hi in h]
        out["nc4"] = sum(int(p != q) for p, q in zip(nearest, logits.argmax(dim=1).tolist())) / N
    out |= dense_collapse_extras(h, y, W, b)
    return {key: float(v) for key, v in out.items()}


def dense_collapse_extras(h, y, W, b):
    """cdnv, rank_h, erank_sw, norm ratios and bias collapse in numpy, from the samples, over the classes present."""
    h, y, W, b = (None if t is None else (t.double() if t.is_floating_point() else t).numpy() for t in (h, y, W, b))
    classes = np.unique(y)
    groups = [h[y == c] for c in classes]
    mu = np.stack([g.mean(axis=0) for g in groups])  # (k, d)
    var = [np.mean(np.sum((g - g.mean(axis=0)) ** 2, axis=1)) for g in groups]
    k = len(classes)
    pairs = [(var[i] + var[j]) / (2 * np.sum((mu[i] - mu[j]) ** 2)) for i in range(k) for j in range(i + 1, k)]
    Hc = (mu - h.mean(axis=0)).T  # (d, k)
    centred = h - mu[np.searchsorted(classes, y)]
    S_W = centred.T @ centred / len(y)
    hc_norms = np.linalg.norm(Hc, axis=0)
    out = {
        "cdnv": np.mean(pairs),
        "rank_h": np.linalg.matrix_rank(Hc),
        "erank_sw": np.trace(S_W) ** 2 / np.sum(S_W**2),  # participation ratio
        "norm_ratio_h": hc_norms.max() / hc_norms.min(),
    }
    if W is not None:
        w_norms = np.linalg.norm(W, axis=1)
        out["norm_ratio_w"] = w_norms.max() / w_norms.min()
    if b is not None:
        out["bias_collapse"] = np.linalg.norm(W @ h.mean(axis=0) + b)
    return out


def random_problem(K=5, d=12, sizes=(70, 50, 40, 25, 15), seed=0, absent=()):
    """Clustered features with uneven class sizes, a random classifier and logits, shuffled."""
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes) if c not in absent])
    y = y[torch.randperm(len(y), generator=g)]
    centres = 2.0 * torch.randn(K, d, generator=g, dtype=torch.float64)
    h = centres[y] + torch.randn(len(y), d, generator=g, dtype=torch.float64)
    W = torch.randn(K, d, generator=g, dtype=torch.float64)
    logits = h @ W.T + 0.5 * torch.randn(len(y), K, generator=g, dtype=torch.float64)
    return h, y, logits, W


def random_bias(K=5, seed=0):
    return torch.randn(K, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64)


def stream(h, y, logits, W, K, chunks, device=None, b=None, erank_sw=True):
    acc = NCAccumulator(K, h.shape[1], device=device, erank_sw=erank_sw)
    for hc, yc in zip(h.tensor_split(chunks), y.tensor_split(chunks)):
        acc.update_stats(hc, yc)
    acc.all_reduce()
    for hc, yc, lc in zip(h.tensor_split(chunks), y.tensor_split(chunks), logits.tensor_split(chunks)):
        acc.update_ncc(hc, yc, lc)
    acc.all_reduce()
    return acc.compute(W, b)


def assert_close(got, want, rtol=1e-9, atol=1e-12):
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=rtol, abs=atol), key


@pytest.mark.parametrize(
    "K,d,absent",
    [(5, 12, ()), (5, 3, ()), (6, 12, (2,))],
    ids=["K<d", "d<K-1 (rank d)", "absent class"],
)
def test_streaming_matches_dense_definitions(K, d, absent):
    """Catches a wrong formula, class weighting or absent-class handling in any metric, old or new."""
    sizes = (70, 50, 40, 25, 15, 33)[:K]
    h, y, logits, W = random_problem(K, d, sizes, absent=absent)
    b = random_bias(K)
    want = dense_reference(h, y, logits, W, K, b)
    got = stream(h, y, logits, W, K, chunks=7, b=b)
    assert set(got) == set(METRIC_KEYS)
    assert_close(got, want)
    # Non-trivial values, so the comparison can fail.
    assert got["nc1"] > 1e-3 and 0 < got["nc4"] < 1 and got["nc3"] > 1e-3
    assert got["cdnv"] > 1e-3 and got["erank_sw"] > 1.5 and got["bias_collapse"] > 1e-3
    assert got["norm_ratio_h"] > 1.05 and got["norm_ratio_w"] > 1.05
    assert got["rank_h"] == min(d, K - 1 - len(absent))


def test_without_erank_sw_every_other_metric_is_unchanged_and_no_d_by_d_state():
    """Catches metrics.erank_sw=false changing another metric (nc1 reads the same projected moment either way),
    reporting erank_sw anyway, or still holding the d x d moment it was turned off to save."""
    K, d = 6, 40
    h, y, logits, W = random_problem(K, d, (70, 50, 40, 25, 15, 33), absent=(2,))
    b = random_bias(K)
    full = stream(h, y, logits, W, K, chunks=7, b=b)
    part = stream(h, y, logits, W, K, chunks=7, b=b, erank_sw=False)
    assert part == {k: v for k, v in full.items() if k != "erank_sw"} and "erank_sw" in full
    acc = NCAccumulator(K, d, erank_sw=False)
    acc.update_stats(h, y)
    acc.update_ncc(h, y, logits)
    held = [t.numel() for t in vars(acc).values() if isinstance(t, torch.Tensor)]
    assert max(held) == K * d  # the class sums; with erank_sw, d x d


@pytest.mark.parametrize("spread", [1e-2, 1e-9])
def test_nc1_near_collapse_keeps_its_digits(spread):
    """Catches a within-class moment taken from uncentred features (h U - (mu U)_y, or sum h h^T - sum n mu mu^T):
    their rounding, about eps ||h||, against a within-class spread of 1e-11 ||h|| (1e-9 here) moves NC1 by 5e-8."""
    K, d = 5, 12
    g = torch.Generator().manual_seed(3)
    y = torch.arange(K).repeat(30)
    means = 50.0 * torch.randn(K, d, generator=g, dtype=torch.float64)
    h = means[y] + spread * torch.randn(len(y), d, generator=g, dtype=torch.float64)
    want = dense_reference(h, y, None, None, K)["nc1"]
    assert 1e-24 < want < 1e-2
    assert nc_metrics(h, y, None, None, K)["nc1"] == pytest.approx(want, rel=1e-9, abs=0)
    assert stream(h, y, h[:, :K], None, K, chunks=4, erank_sw=False)["nc1"] == pytest.approx(want, rel=1e-9, abs=0)


def test_chunking_does_not_change_the_result():
    """Catches state that depends on the batch split (e.g. a per-batch mean where a sum is needed)."""
    h, y, logits, W = random_problem()
    one = stream(h, y, logits, W, 5, chunks=1, b=random_bias())
    for chunks in (2, 13, len(y)):
        assert_close(stream(h, y, logits, W, 5, chunks, b=random_bias()), one, rtol=1e-11)


def test_exact_collapse_gives_zero_metrics():
    """Catches metrics that do not vanish (or reach K-1, 1) at exact collapse, and rounding noise read as erank_sw."""
    K, d = 5, 12
    etf = simplex_etf(random_stiefel(d, K, generator=torch.Generator().manual_seed(1), dtype=torch.float64))  # (K, d)
    y = torch.arange(K).repeat(20)[torch.randperm(20 * K, generator=torch.Generator().manual_seed(2))]
    h = 5.0 * etf[y]
    m = nc_metrics(h, y, h @ etf.T, etf, K, b=-etf @ h.mean(dim=0))
    assert set(m) == set(METRIC_KEYS)
    assert m["nc1"] < 1e-6
    for key in ("nc2_h", "nc2_w", "nc3", "equinorm_h", "equinorm_w", "equiangular_h", "equiangular_w"):
        assert m[key] < 1e-6, key
    assert m["nc4"] == 0.0
    # No within-class spread at all: cdnv 0 and a zero S_W (effective rank 0, not its rounding noise's);
    # the means span the K-1 dimensions of the ETF with equal norms; b = -W mu_G cancels exactly.
    # Var_c = E||h||^2 - ||mu_c||^2 rounds to about -4e-15 for some classes here: cdnv must not go negative (log plots).
    assert 0 <= m["cdnv"] < 1e-12 and m["erank_sw"] == 0.0 and m["rank_h"] == K - 1
    assert m["norm_ratio_h"] == pytest.approx(1, abs=1e-12) and m["norm_ratio_w"] == pytest.approx(1, abs=1e-12)
    assert m["bias_collapse"] < 1e-12
    # Uneven counts move the count-weighted mu_G off the ETF centre: the H-side geometry is then
    # not an exact ETF by definition, but within-class variability and NCC disagreement stay zero.
    keep = torch.cat([torch.nonzero(y == c).flatten()[: 4 * (c + 1)] for c in range(K)])
    m = nc_metrics(h[keep], y[keep], h[keep] @ etf.T, etf, K)
    assert m["nc1"] < 1e-6 and m["nc4"] == 0.0 and m["nc2_w"] < 1e-6 and m["nc2_h"] > 0.1


def test_optional_keys():
    """Catches W-, b- or pass-2-dependent keys reported without their input."""
    h, y, logits, W = random_problem()
    h_side = {"nc1", "nc2_h", "equinorm_h", "equiangular_h", "cdnv", "rank_h", "erank_sw", "norm_ratio_h"}
    assert set(nc_metrics(h, y, None, None, 5)) == h_side
    assert set(nc_metrics(h, y, logits, None, 5)) == h_side | {"nc4"}
    assert set(nc_metrics(h, y, None, W, 5)) == set(METRIC_KEYS) - {"nc4", "bias_collapse"}
    assert set(nc_metrics(h, y, None, W, 5, b=random_bias())) == set(METRIC_KEYS) - {"nc4"}


def test_known_cdnv_and_effective_rank():
    """Catches cdnv without the 2 or with (n-1) variances, and erank_sw on another spectrum or unnormalised."""
    # Class 0 spreads +-sqrt(2) along e0 (Var 2), class 1 +-2 along e1 (Var 4); means 3 apart: cdnv = 6 / 18.
    # S_W = diag(2 * 2, 2 * 4, 0) / 4 = diag(1, 2, 0): p = (1/3, 2/3).
    r2 = math.sqrt(2.0)
    h = torch.tensor([[r2, 0, 0], [-r2, 0, 0], [3, 2, 0], [3, -2, 0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    m = nc_metrics(h, y, None, None, 2)
    assert m["cdnv"] == pytest.approx(1 / 3, rel=1e-12)
    assert m["erank_sw"] == pytest.approx((1 + 2) ** 2 / (1 + 4), rel=1e-12)  # (tr S_W)^2 / ||S_W||_F^2 = 1.8
    assert m["rank_h"] == 1
    # Offsets +-a_k e_k with a^2 = (1, 1, 2) in every class: S_W has eigenvalues proportional to (1, 1, 2, 0, ...),
    # participation ratio (1 + 1 + 2)^2 / (1 + 1 + 4) = 8/3.
    K, d = 4, 6
    offsets = torch.zeros(6, d, dtype=torch.float64)
    for k, a in enumerate((1.0, 1.0, r2)):
        offsets[2 * k, k], offsets[2 * k + 1, k] = a, -a
    means = 10.0 * torch.eye(d, dtype=torch.float64)[3 : 3 + K - 1]  # (3, d): three classes ...
    means = torch.cat([means, torch.zeros(1, d, dtype=torch.float64)])  # ... and one at the origin
    h = (means[:, None, :] + offsets[None]).reshape(-1, d)
    y = torch.arange(K).repeat_interleave(len(offsets))
    m = nc_metrics(h, y, None, None, K)
    assert m["erank_sw"] == pytest.approx(8 / 3, rel=1e-12)
    assert m["rank_h"] == K - 1


def test_rank_h_sees_exactly_degenerate_means():
    """Catches rank_h of the uncentred means, and a tolerance that counts Hc's null direction or drops a small real one."""
    K, d = 5, 8
    means = torch.tensor([[0, 0], [4, 0], [0, 4], [4, 4], [8, 2]], dtype=torch.float64)  # (K, 2): a plane ...
    means = torch.cat([means, torch.zeros(K, d - 3, dtype=torch.float64), torch.ones(K, 1, dtype=torch.float64)], dim=1)
    # ... off the origin (last coordinate 1): uncentred rank 3, centred 2
    spread = torch.cat([torch.eye(d), -torch.eye(d)]).double()  # symmetric: the class means stay exact
    h = (means[:, None, :] + spread[None]).reshape(-1, d)
    y = torch.arange(K).repeat_interleave(len(spread))
    assert nc_metrics(h, y, None, None, K)["rank_h"] == 2
    means[:, 2 : 2 + K] += 3 * torch.eye(K, dtype=torch.float64)  # general position: K-1 (the null direction stays)
    h = (means[:, None, :] + spread[None]).reshape(-1, d)
    assert nc_metrics(h, y, None, None, K)["rank_h"] == K - 1
    # Vertices e_2..e_5 and their negative sum span K-1 = 4 directions; shrinking one by 1e-9 leaves a real
    # singular value ~1e-9 s_max, far above numpy's tolerance max(d, K) eps s_max: still rank K-1.
    means = torch.zeros(K, d, dtype=torch.float64)
    means[:4, 2:6], means[4, 2:6] = 4 * torch.eye(4, dtype=torch.float64), -4.0
    means[:, 5] *= 1e-9
    h = (means[:, None, :] + spread[None]).reshape(-1, d)
    assert nc_metrics(h, y, None, None, K)["rank_h"] == K - 1


def test_bias_collapse_uses_the_global_mean_of_the_samples():
    """Catches a bias collapse with the unweighted mean of the class means instead of mu_G, or ||b|| alone."""
    h, y, _, W = random_problem()  # uneven class sizes: the two means differ
    mu_G = h.mean(dim=0)
    assert nc_metrics(h, y, None, W, 5, b=-W @ mu_G)["bias_collapse"] < 1e-12
    b = torch.randn(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    want = float(torch.linalg.norm(W @ mu_G + b))
    assert nc_metrics(h, y, None, W, 5, b=b)["bias_collapse"] == pytest.approx(want, rel=1e-12)
    # float32 head parameters, as the trainer passes them
    assert nc_metrics(h, y, None, W.float(), 5, b=(-W @ mu_G).float())["bias_collapse"] < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_input_is_accumulated_in_float64(dtype):
    h, y, logits, W = random_problem()
    h, logits, W = h.to(dtype), logits.to(dtype), W.to(dtype)
    # The reference sees the same rounded values, so only the accumulation precision differs.
    assert_close(stream(h, y, logits, W, 5, chunks=4), dense_reference(h.double(), y, logits, W.double(), 5))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    h, y, logits, W = random_problem(K=6, d=12, sizes=(70, 50, 40, 25, 15, 33), absent=(2,))
    on_gpu = stream(h.float().cuda(), y.cuda(), logits.float().cuda(), W.float().cuda(), 6, chunks=5, device="cuda")
    assert_close(on_gpu, stream(h.float(), y, logits.float(), W.float(), 6, chunks=5))


def test_all_reduce_is_a_no_op_without_process_group():
    assert not dist.is_initialized()
    h, y, logits, W = random_problem()
    acc = NCAccumulator(5, 12)
    acc.update_stats(h, y)
    acc.all_reduce()
    acc.update_ncc(h, y, logits)
    acc.all_reduce()
    acc.all_reduce()
    assert_close(acc.compute(W), dense_reference(h, y, logits, W, 5))


def test_phase_and_input_errors():
    """Catches malformed inputs (features, labels, W, b) accepted silently and passes run out of order."""
    h, y, logits, W = random_problem()
    acc = NCAccumulator(5, 12)
    with pytest.raises(EtfTrainError, match="before any update_stats"):
        acc.update_ncc(h, y, logits)
    with pytest.raises(EtfTrainError, match="shape"):
        acc.update_stats(h[:, :5], y)
    with pytest.raises(EtfTrainError, match="integer labels"):
        acc.update_stats(h, y.double())
    with pytest.raises(EtfTrainError, match=r"\[0, 5\)"):
        acc.update_stats(h, y + 1)
    with pytest.raises(EtfTrainError, match="needs both passes"):
        acc.compute(None)
    with pytest.raises(EtfTrainError, match="logits"):
        acc.update_ncc(h, y, logits[:, :4])
    one = NCAccumulator(5, 12)
    one.update_stats(h[y == 0], y[y == 0])
    one.update_ncc(h[y == 0], y[y == 0])
    with pytest.raises(EtfTrainError, match="at least 2 classes"):
        one.compute(None)
    acc.update_stats(h, y)
    acc.update_ncc(h, y, logits)
    with pytest.raises(EtfTrainError, match="classifier W"):
        acc.compute(W.T)
    with pytest.raises(EtfTrainError, match="needs the classifier W"):
        acc.compute(None, random_bias())
    with pytest.raises(EtfTrainError, match="bias b"):
        acc.compute(W, random_bias(4))
    with pytest.raises(EtfTrainError, match="pass 1 was closed"):
        acc.update_stats(h, y)


def test_imagenet_scale_is_fast_and_memory_light():
    """Catches O(K d^2) state or compute at K=1000, d=2048, and non-finite metrics there."""
    # About 2 s on 2 idle cores (no time assertion: shared CI load varies tenfold). K x d x d float64
    # would be 34 GB; the accumulator holds O(K d + d^2), so this runs at all.
    K, d, N = 1000, 2048, 3000
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, K, (N,), generator=g)
    h = torch.randn(N, d, generator=g) + torch.randn(K, d, generator=g)[y]
    W, b = torch.randn(K, d, generator=g), torch.randn(K, generator=g)
    acc = NCAccumulator(K, d)
    for hc, yc in zip(h.split(512), y.split(512)):
        acc.update_stats(hc, yc)
    acc.all_reduce()
    for hc, yc in zip(h.split(512), y.split(512)):
        acc.update_ncc(hc, yc, hc @ W.T)
    acc.all_reduce()
    m = acc.compute(W, b)
    assert set(m) == set(METRIC_KEYS)
    assert all(math.isfinite(v) for v in m.values()) and m["nc1"] > 0 and m["cdnv"] > 0
    state = acc.counts.numel() + acc.sums.numel() + acc.sq_norms.numel() + acc.within.numel() + acc.ncc.numel()
    assert state == K + K * d + K + d * d + 2


def _worker(rank, world, init_file, h, y, logits, W, b, K, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mine = torch.arange(len(y)) % world == rank  # interleaved, unequal class counts per rank
        h, y, logits = h[mine], y[mine], logits[mine]
        acc = NCAccumulator(K, h.shape[1])
        for hc, yc in zip(h.tensor_split(3), y.tensor_split(3)):
            acc.update_stats(hc, yc)
        # Local means would give a silently wrong nc4, local sums wrong metrics.
        for premature in (lambda: acc.update_ncc(h, y, logits), lambda: acc.compute(W)):
            try:
                premature()
                raise AssertionError("using local pass-1 sums under a process group did not raise")
            except EtfTrainError:
                pass
        acc.all_reduce()
        acc.update_ncc(h, y, logits)
        acc.all_reduce()
        torch.save(acc.compute(W, b), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_two_process_gloo_equals_single_process_on_union(tmp_path):
    """Catches an accumulator (sq_norms included) left out of the all-reduce, and local sums used under a process group."""
    h, y, logits, W = random_problem()
    b = random_bias()
    mp.spawn(_worker, args=(2, tmp_path / "init", h, y, logits, W, b, 5, tmp_path), nprocs=2, join=True)
    want = stream(h, y, logits, W, 5, chunks=1, b=b)
    for rank in range(2):
        assert_close(torch.load(tmp_path / f"rank{rank}.pt"), want, rtol=1e-11)

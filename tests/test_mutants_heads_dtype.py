"""The nearest-ETF head's working precision and its seeded reference point (issue 30's mutation run): bf16 features
(autocast) are solved in float32, a float64 head computes in float64, eval mode follows the features' dtype, and
head.seed draws the same basis every time."""

from __future__ import annotations

import torch

from etf_train.heads.base import reference_point
from etf_train.heads.nearest_etf import NearestETFHead

K, D, B = 4, 6, 16


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, D, generator=g) + 2 * torch.eye(K, D)[torch.arange(B) % K], torch.arange(B) % K


def test_bf16_features_are_solved_in_float32_as_their_float32_values_would_be():
    f, y = batch()
    f16 = f.bfloat16()
    got = NearestETFHead(K, D).train()(f16, y)
    want = NearestETFHead(K, D).train()(f16.float(), y)  # the same (rounded) features, in float32 from the start
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0.1)  # bf16 rounding of the normalised features (tau = 5)


def test_a_float64_head_computes_float32_features_in_float64():
    f, y = batch()
    got = NearestETFHead(K, D).double().train()(f, y)
    want = NearestETFHead(K, D).double().train()(f.double(), y)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_eval_mode_follows_the_features_dtype():
    f, y = batch()
    head = NearestETFHead(K, D).train()
    head(f, y)
    head.eval()
    want = head(f)
    got = head(f.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0, atol=0.15)


def test_a_random_basis_is_drawn_from_its_seed_alone():
    torch.manual_seed(1)
    a = reference_point(D, K, "random", 3)
    torch.manual_seed(2)  # the global stream plays no part
    assert torch.equal(a, reference_point(D, K, "random", 3))
    assert not torch.allclose(a, reference_point(D, K, "random", 4))
    torch.testing.assert_close(a.T @ a, torch.eye(K), rtol=0, atol=1e-6)


def test_the_solver_options_reach_the_solver():
    """max_iters=1 stops the Riemannian solver after one iteration (the stats report it); the default runs more."""
    f, y = batch()
    counted = {}
    for iters in (1, None):
        head = NearestETFHead(K, D, solver={"name": "riemannian", "max_iters": iters}).train()
        head(f, y)
        counted[iters] = head.pop_solver_stats()["solver/iters"]
    assert counted[1] == 1.0 and counted[None] > 1.0


def test_cross_entropy_against_soft_targets_of_any_float_dtype_is_float32():
    """Probabilities are taken in the logits' float32, whatever dtype a mixing step gave them."""
    from etf_train.losses import build_loss

    z = torch.randn(3, 4)
    t = torch.softmax(torch.randn(3, 4), 1)
    loss = build_loss("ce", head_name="learned")
    got = loss(z, t.double())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, -(torch.log_softmax(z, 1) * t).sum(1).mean())


def test_the_solver_timer_reads_the_clock_in_milliseconds(monkeypatch):
    from etf_train.heads import nearest_etf

    ticks = iter([10.0, 10.25])
    monkeypatch.setattr(nearest_etf.time, "perf_counter", lambda: next(ticks))
    assert nearest_etf._Timer(torch.device("cpu")).stop().elapsed_ms() == 250.0

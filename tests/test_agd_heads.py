"""One AGD step of etf-train through each head of the authors' UFM setting, against a re-derivation written here
from method.md in float64 (the same initial table and the same batch): the loss of each head, its gradient by
autograd (through an SVD for the nearest ETF, not through the polar backward), AGD's step, and the learned head's row
renormalisation (issue 26, item 4)."""

from __future__ import annotations

import math

import pytest
import torch

from etf_train.data import set_epoch
from etf_train.training import Run

from .conftest import make_cfg

# UFM-10's authors' setting, small: K = 4, 8 samples a class, d = 6, batch 16 (2 steps an epoch)
SMALL = [
    "experiment=ufm10_authors",
    "dataset.num_classes=4",
    "dataset.per_class=8",
    "backbone.dim=6",
    "trainer.batch_size=16",
    "trainer.device=cpu",
    "trainer.progress=false",
]
TAU, DELTA, GAIN = 5.0, 1e-3, 10.0


def agd_step(weights: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """W_l <- W_l - gain (eta / L) s_l g_l / ||g_l||_F, s_l = sqrt(d_out / d_in), eta = log((1 + sqrt(1 + 4G)) / 2),
    G = (1/L) sum_l s_l ||g_l||_F (method.md, "The authors' optimiser")."""
    L = len(weights)
    scales = [math.sqrt(w.shape[0] / w.shape[1]) for w in weights]
    G = sum(s * g.norm() for s, g in zip(scales, grads)) / L
    eta = torch.log((1 + torch.sqrt(1 + 4 * G)) / 2)
    return [w - GAIN * eta / L * s * g / g.norm() for w, s, g in zip(weights, scales, grads)]


def reference(head: str, table: torch.Tensor, linear: torch.Tensor | None, idx: torch.Tensor, y: torch.Tensor):
    """The table (and learned classifier) after one step, from method.md's formulas."""
    K, d = int(y.max()) + 1, table.shape[1]
    M = torch.eye(K, dtype=torch.float64) - 1.0 / K
    identity = torch.eye(d, K, dtype=torch.float64)  # the authors' reference point on St(d, K)
    E = table.clone().requires_grad_()
    f = E[idx]
    h = TAU * f / f.norm(dim=1, keepdim=True)
    params = [E]
    if head == "learned_authors":  # no bias, rows renormalised after the step
        W = linear.clone().requires_grad_()
        params.append(W)
        logits = h @ W.T
    elif head == "fixed_etf_authors":  # identity basis, bias -W mean(h) of the batch without gradient
        W = math.sqrt(K / (K - 1)) * M @ identity.T
        logits = h @ W.T - W @ h.detach().mean(0)
    else:  # nearest ETF at its first step: a_1 = 1, so the running means are this batch's
        mu = h.mean(0)
        means = torch.stack([h[y == k].mean(0) - mu for k in range(K)], dim=1)  # (d, K)
        H = means / means.norm()
        A = 2 / math.sqrt(K - 1) * H @ M + DELTA * identity
        U, _, Vh = torch.linalg.svd(A, full_matrices=False)
        W = math.sqrt(K / (K - 1)) * M @ (U @ Vh).T
        logits = h @ W.T - W @ mu
    loss = torch.nn.functional.cross_entropy(logits, y)
    new = agd_step([p.detach() for p in params], list(torch.autograd.grad(loss, params)))
    if head == "learned_authors":
        new[1] = new[1] / new[1].norm(dim=1, keepdim=True)
    return new


@pytest.mark.parametrize("head", ["learned_authors", "fixed_etf_authors", "nearest_etf"])
def test_one_agd_step_through_each_head_matches_method_md(tmp_path, head):
    run = Run(make_cfg(*SMALL, f"head={head}"), tmp_path / "run")
    try:
        table = run.model.backbone.weight
        learned = run.model.head.linear.weight if head == "learned_authors" else None
        before = [p.detach().double().clone() for p in (table, learned) if p is not None]
        set_epoch(run.train_loader, 1)
        idx, y = next(iter(run.train_loader))
        assert run._step(1, 1, idx, y) is not None
        after = [p.detach().double() for p in (table, learned) if p is not None]
    finally:
        run.folder.end()
    expected = reference(head, *before, *([None] if learned is None else []), idx, y)
    assert len(expected) == len(after) == (2 if learned is not None else 1)
    for got, want, old in zip(after, expected, before):
        assert not torch.allclose(got, old)  # the step moved it
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6)

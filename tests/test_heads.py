import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from etf_train import (
    EtfTrainError,
    FixedETFHead,
    LearnedHead,
    NearestETFHead,
    centring_matrix,
    create_head,
    nearest_etf,
)


def batch(B=24, d=16, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, d, generator=g), torch.arange(B) % K


def test_all_heads_share_the_normalisation():
    f, y = batch()
    for name in ("learned", "fixed_etf", "nearest_etf"):
        head = create_head(name, 4, 16, tau=3.0)
        assert torch.allclose(head.normalize(f).norm(dim=1), torch.full((24,), 3.0))
        assert head(f, y).shape == (24, 4)
        assert create_head(name, 4, 16, normalize=False).normalize(f) is f


def test_learned_head_renorm_rows():
    head = LearnedHead(4, 16, renorm=True)
    head.linear.weight.data.mul_(7)
    head.after_step()
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(4))


@pytest.mark.parametrize("basis", ["identity", "random"])
def test_fixed_etf_is_frozen_simplex_etf(basis):
    head = FixedETFHead(5, 16, basis=basis, seed=3)
    W = head.weight
    assert not any(p.requires_grad for p in head.parameters())
    assert torch.allclose(W @ W.T, 5 / 4 * centring_matrix(5), atol=1e-6)


def test_nearest_etf_head_follows_method_md():
    K, d = 4, 16
    head = NearestETFHead(K, d, tau=5.0)
    f, y = batch(d=d, K=K)
    f.requires_grad_()
    logits = head(f, y)
    # Recompute the first step by hand: a_1 = 1, so the running means are the batch's centred class means.
    h = 5.0 * F.normalize(f.detach(), dim=1)
    mu = h.mean(0)
    means = torch.stack([h[y == c].mean(0) for c in range(K)], 1) - mu[:, None]
    P = nearest_etf(means / means.norm(), torch.eye(d, K))
    W = math.sqrt(K / (K - 1)) * (P.T - P.T.mean(0))
    assert torch.allclose(logits, h @ W.T - W @ mu, atol=1e-5)
    assert torch.allclose(head.P, P, atol=1e-4) and int(head.step) == 1
    logits.logsumexp(1).sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()
    # second step: a_2 = 2/3 mixes the old (detached) means with the new batch means
    f2, y2 = batch(d=d, K=K, seed=1)
    head(f2, y2)
    h2 = 5.0 * F.normalize(f2, dim=1)
    new = torch.stack([h2[y2 == c].mean(0) for c in range(K)], 1) - h2.mean(0)[:, None]
    assert torch.allclose(head.means, means / 3 + 2 * new / 3, atol=1e-5)
    stats = head.pop_solver_stats()
    assert stats["solver/ms"] > 0 and head.pop_solver_stats() == {}


def test_nearest_etf_absent_and_single_class_batches_stay_finite():
    head = NearestETFHead(4, 16)
    f, _ = batch()
    for y in (torch.zeros(24, dtype=torch.long), torch.tensor([0, 1] * 12)):
        logits = head(f, y)
        assert torch.isfinite(logits).all()
    assert torch.allclose(head.P.T @ head.P, torch.eye(4), atol=1e-5)
    assert torch.equal(head.means[:, 2:], torch.zeros(16, 2))  # never-seen classes keep their value


def test_nearest_etf_backward_none_stops_gradient_through_p():
    f, y = batch()
    grads = {}
    for mode in ("polar", "none"):
        torch.manual_seed(0)
        x = f.clone().requires_grad_()
        F.cross_entropy(NearestETFHead(4, 16, backward=mode)(x, y), y).backward()
        grads[mode] = x.grad
    assert not torch.allclose(grads["polar"], grads["none"])


def test_eval_mode_uses_last_solution():
    head = NearestETFHead(4, 16)
    f, y = batch()
    head(f, y)
    P = head.P.clone()
    head.eval()
    head(f)
    head(f, y)
    assert torch.equal(head.P, P) and int(head.step) == 1


def test_riemannian_solver_stats():
    head = NearestETFHead(4, 16, solver={"method": "riemannian", "max_iters": 30})
    f, y = batch()
    head(f, y)
    stats = head.pop_solver_stats()
    assert {"solver/ms", "solver/iters", "solver/grad_norm"} <= stats.keys()


def test_bad_head_inputs():
    with pytest.raises(EtfTrainError, match="d >= number of classes"):
        create_head("nearest_etf", 10, 8)
    with pytest.raises(EtfTrainError, match="d >= number of classes"):
        create_head("fixed_etf", 10, 8)
    with pytest.raises(EtfTrainError, match="unknown head"):
        create_head("cosine", 10, 8)
    with pytest.raises(EtfTrainError, match="basis"):
        create_head("fixed_etf", 3, 8, basis="hadamard")
    with pytest.raises(EtfTrainError, match="solver group applies to head=nearest_etf only; head=learned"):
        create_head("learned", 3, 8, solver={"method": "riemannian"})
    with pytest.raises(EtfTrainError, match="head fixed_etf: unknown option.*bogus"):
        create_head("fixed_etf", 3, 8, bogus=1)
    for bad in ({"tau": "abc"}, {"tau": 0}, {"min_rate": 0}, {"min_rate": 1.5}, {"delta": -1},
                {"solver": {"method": "newton"}}, {"normalize": "no"}):
        with pytest.raises(EtfTrainError) as info:
            create_head("nearest_etf", 3, 8, **bad)
        assert "\n" not in str(info.value)


def test_readme_library_example_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = [b for b in blocks if "NearestETFHead" in b]
    assert example, "README has no NearestETFHead example"
    exec(compile(example[0], "README.md", "exec"), {})

import copy
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
from etf_train.heads import HEADS
from etf_train.sphere import sphere


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


def test_sphere_matches_the_normalisation_written_out_and_its_gradient():
    """The fused node against tau * F.normalize(f) and autograd through it, in float64: catches a wrong scale, a missing
    projection term in the backward, and a wrong gradient of the rows where the clamp max(||f||, 1e-12) holds."""
    g = torch.Generator().manual_seed(1)
    f = torch.randn(6, 9, generator=g, dtype=torch.float64)
    f[2] = 0.0  # a zero row: the clamp holds, h = 0 and dL/df = r g
    f[4] *= 1e-13
    upstream = torch.randn(6, 9, generator=g, dtype=torch.float64)
    a, b = f.clone().requires_grad_(), f.clone().requires_grad_()
    h = sphere(a, 2.5)
    (h * upstream).sum().backward()
    ref = 2.5 * F.normalize(b, dim=1)
    (ref * upstream).sum().backward()
    assert torch.allclose(h, ref, rtol=1e-14, atol=0) and torch.allclose(a.grad, b.grad, rtol=1e-12, atol=0)
    assert torch.allclose(h[[0, 1, 3, 5]].norm(dim=1), torch.full((4,), 2.5, dtype=torch.float64))
    assert torch.equal(sphere(f, 2.5), h.detach())  # the no-grad path: the same numbers
    x = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: sphere(t, 1.7), (x,))
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        (gx,) = torch.autograd.grad(sphere(x, 1.0).sum(), x, create_graph=True)
        gx.sum().backward()


def test_learned_head_renorm_rows():
    head = LearnedHead(4, 16, renorm=True)
    head.linear.weight.data.mul_(7)
    head.after_step()
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(4))


@pytest.mark.parametrize("basis", ["identity", "random"])
def test_fixed_etf_is_frozen_simplex_etf(basis):
    head = FixedETFHead(5, 16, basis=basis, seed=3 if basis == "random" else 0)
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


def test_nearest_etf_ddn_backward_trains_through_the_head_like_polar():
    """Catches the ddn node saving the head's P buffer as prev, which the head overwrites before backward
    ("modified by an inplace operation"): three steps through the head, gradients equal to the polar backward's."""
    g = torch.Generator().manual_seed(3)
    heads = {m: NearestETFHead(4, 16, backward=m).double() for m in ("polar", "ddn")}
    for _ in range(3):
        f = torch.randn(24, 16, generator=g, dtype=torch.float64)
        y = torch.arange(24) % 4
        grads = {}
        for mode, head in heads.items():
            x = f.clone().requires_grad_()
            F.cross_entropy(head(x, y), y).backward()
            grads[mode] = x.grad
        assert torch.allclose(grads["ddn"], grads["polar"], rtol=1e-7, atol=1e-10)
        assert torch.equal(heads["ddn"].P, heads["polar"].P)


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
    head = NearestETFHead(4, 16, solver={"name": "riemannian", "max_iters": 30})
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
        create_head("learned", 3, 8, solver={"name": "riemannian"})
    with pytest.raises(EtfTrainError, match="head fixed_etf: unknown option.*bogus"):
        create_head("fixed_etf", 3, 8, bogus=1)
    for bad in (
        {"tau": "abc"},
        {"tau": 0},
        {"min_rate": 0},
        {"min_rate": 1.5},
        {"delta": -1},
        {"solver": {"name": "lanczos"}},
        {"normalize": "no"},
    ):
        with pytest.raises(EtfTrainError) as info:
            create_head("nearest_etf", 3, 8, **bad)
        assert "\n" not in str(info.value)
    # solver options: max_iters=0 left P at its reference point all run; options a method does not read
    for solver, line in (
        ({"name": "riemannian", "max_iters": 0}, "head.solver.max_iters must be a positive integer"),
        ({"name": "riemannian", "max_inner": 0}, "head.solver.max_inner must be a positive integer"),
        ({"name": "riemannian", "grad_tol": -1.0}, "head.solver.grad_tol must be a finite number > 0"),
        ({"name": "svd", "max_iters": 30}, "head.solver.max_iters does not apply to solver=svd"),
    ):
        with pytest.raises(EtfTrainError, match=line):
            create_head("nearest_etf", 3, 8, solver=solver)
    create_head("nearest_etf", 3, 8, solver={"name": "riemannian", "max_iters": 5, "grad_tol": None, "max_inner": None})
    # head.seed draws nothing with the identity basis: a head.seed sweep gave identical heads, pooled as replicates
    for name in ("fixed_etf", "nearest_etf"):
        with pytest.raises(EtfTrainError, match="head.seed=7 applies to head.basis=random only"):
            create_head(name, 3, 8, seed=7)
        a, b = (create_head(name, 3, 8, basis="random", seed=s).weight for s in (1, 2))
        assert not torch.allclose(a, b)


def test_readme_library_example_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = [b for b in blocks if "NearestETFHead" in b]
    assert example, "README has no NearestETFHead example"
    exec(compile(example[0], "README.md", "exec"), {})


# --- independent re-computations (mutation gaps) -------------------------------------------------


def _h64(f, tau):
    """tau f / ||f|| in float64, written out."""
    f = f.double()
    return tau * f / f.square().sum(1, keepdim=True).sqrt()


def _etf_rows64(P):
    """sqrt(K/(K-1)) (P^T - mean over the rows of P^T), float64, without simplex_etf."""
    K = P.shape[1]
    Pt = P.double().T
    return math.sqrt(K / (K - 1)) * (Pt - Pt.mean(0, keepdim=True))


def test_an_epochs_small_leftover_batch_moves_the_eval_bias_by_its_share_only():
    """A review found nearest_etf's eval accuracy at 45 % instead of 98 % (UFM, 64 samples in batches of 21): each
    epoch ended in a batch of one sample, whose mean became the eval-mode mu_G, so that sample's class logits
    W h - W h all tied."""
    K, d, tau = 4, 10, 3.0
    head = NearestETFHead(K, d, tau=tau)
    head.train()
    means = []
    for t, B in enumerate((24, 24, 1)):
        f, y = batch(B=B, d=d, K=K, seed=30 + t)
        head(f, y)
        means.append(_h64(f, tau).mean(0))
    assert torch.allclose(head.global_mean.double(), means[1] + (means[2] - means[1]) / 24, atol=1e-6)
    head.eval()
    W = _etf_rows64(head.P)
    logits = head(f).double()  # the leftover sample itself: its logits no longer all tie
    assert float(logits.max() - logits.min()) > 0.5 * float((W @ (_h64(f, tau)[0] - means[1])).abs().max())
    state = copy.deepcopy(head.state_dict())
    head.train()
    f, y = batch(B=24, d=d, K=K, seed=40)  # the next epoch's first (full) batch sets it again
    head(f, y)
    assert torch.allclose(head.global_mean.double(), _h64(f, tau).mean(0), atol=1e-6)
    del state["global_count"]  # a checkpoint from before the count: it loads, and the next batch sets the mean
    old = NearestETFHead(K, d, tau=tau)
    old.load_state_dict(state)
    old(*batch(B=3, d=d, K=K, seed=41))
    assert torch.allclose(old.global_mean.double(), _h64(batch(B=3, d=d, K=K, seed=41)[0], tau).mean(0), atol=1e-6)


def test_nearest_etf_eval_logits_use_last_p_and_the_last_training_batch_mean():
    """Catches eval mode using the eval batch's mean, a wrong bias sign/scale, W built wrongly from P, or a running
    average of the batch means (it lagged the moving features: early eval accuracies far below the trained head's;
    the authors' model keeps b = -W mu_G of its last training step)."""
    K, d, tau = 4, 10, 3.0
    head = NearestETFHead(K, d, tau=tau)
    head.train()
    for t in range(1, 4):
        f, y = batch(B=24, d=d, K=K, seed=10 + t)
        head(f, y)
    mu = _h64(f, tau).mean(0)  # the last training batch's
    assert torch.allclose(head.global_mean.double(), mu, atol=1e-6)
    head.eval()
    f, y = batch(B=16, d=d, K=K, seed=99)  # a batch whose own mean differs from the running one
    W = _etf_rows64(head.P)
    h = _h64(f, tau)
    expected = h @ W.T - W @ mu
    assert not torch.allclose(W @ h.mean(0), W @ mu, atol=1e-3)  # the test can tell the two means apart
    assert torch.allclose(head(f).double(), expected, atol=1e-5)
    assert torch.allclose(head(f, y).double(), expected, atol=1e-5)  # labels do not switch eval mode to training


def test_fixed_etf_logits_by_hand_identity_basis():
    """Catches a wrong ETF scale/centring, a basis other than the first K columns of I_d, a missing tau or an added bias."""
    K, d, tau = 5, 12, 2.5
    head = FixedETFHead(K, d, tau=tau)
    P0 = torch.eye(d, dtype=torch.float64)[:, :K]
    W = math.sqrt(K / (K - 1)) * (P0.T - P0.T.mean(0, keepdim=True))  # (K, d)
    f, _ = batch(B=20, d=d, K=K, seed=3)
    expected = _h64(f, tau) @ W.T
    assert torch.allclose(head(f).double(), expected, atol=1e-5)
    assert torch.allclose(head(7.0 * f).double(), expected, atol=1e-5)  # scale-free: only the direction of f counts


def _running_means_step(means, h, y, K, a):
    """One hand-written update of the running centred class means (absent classes keep their value)."""
    mu = h.mean(0)
    new = means.clone()
    for c in range(K):
        if (y == c).any():
            new[:, c] = (1 - a) * means[:, c] + a * (h[y == c].mean(0) - mu)
    return new


def test_nearest_etf_running_means_follow_min_rate_floor():
    """Catches a missing/ignored min_rate floor (min instead of max), an off-by-one in t, or a wrong mixing of old and batch means."""
    K, d, tau, floor = 3, 8, 2.0, 0.3
    head = NearestETFHead(K, d, tau=tau, min_rate=floor)
    means = torch.zeros(d, K, dtype=torch.float64)
    rates = []
    for t in range(1, 10):
        f, y = batch(B=12, d=d, K=K, seed=100 + t)
        head(f, y)
        a = max(2.0 / (t + 1), floor)
        rates.append(a)
        means = _running_means_step(means, _h64(f, tau), y, K, a)
        assert torch.allclose(head.means.double(), means, atol=1e-5), t
    assert rates[-4:] == [floor] * 4 and 2.0 / 7 < floor  # steps 6..9 ran on the floor


def test_nearest_etf_absent_class_keeps_its_running_mean():
    """Catches an update of an absent class's running mean (e.g. towards -mu_G) or a step counter that skips such batches."""
    K, d, tau = 4, 10, 5.0
    head = NearestETFHead(K, d, tau=tau)
    means = torch.zeros(d, K, dtype=torch.float64)
    labels = [torch.arange(16) % K, torch.arange(16) % K, torch.tensor([0, 1, 3, 3] * 4), torch.arange(16) % K]
    for t, y in enumerate(labels, start=1):
        f, _ = batch(B=16, d=d, K=K, seed=200 + t)
        before = head.means.clone()
        head(f, y)
        means = _running_means_step(means, _h64(f, tau), y, K, 2.0 / (t + 1))
        if t == 3:
            assert torch.equal(head.means[:, 2], before[:, 2])
        assert torch.allclose(head.means.double(), means, atol=1e-5), t


def test_nearest_etf_head_gradcheck_over_two_steps():
    """Catches a wrong or missing gradient path through h, the class means, H = m/||m|| or P(H) (e.g. a stray detach or a VJP without M)."""
    K, d, B = 3, 6, 9
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])  # unbalanced: the centred means do not sum to zero, so H 1 != 0
    g = torch.Generator().manual_seed(5)
    f1 = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    f2 = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    head0 = NearestETFHead(K, d, tau=2.0).double()

    def step(start):
        return lambda f: copy.deepcopy(start)(f, y)

    assert torch.autograd.gradcheck(step(head0), (f1,))  # first step: P_prev = I_{d x K}, a_1 = 1
    advanced = copy.deepcopy(head0)
    with torch.no_grad():
        advanced(f1, y)
    assert int(advanced.step) == 1 and not torch.equal(advanced.P, head0.P)
    assert torch.autograd.gradcheck(step(advanced), (f2,))  # second step: non-trivial P_prev and running means


# --- soft labels (mixup / cutmix batches) ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_etf_one_hot_soft_labels_give_the_hard_label_bits(dtype):
    """Catches a soft-label path that changes the hard-label arithmetic (counts, means, P, logits or gradients differ in any bit)."""
    K, d = 4, 10
    heads = [NearestETFHead(K, d).to(dtype), NearestETFHead(K, d).to(dtype)]
    g = torch.Generator().manual_seed(7)
    for step in range(3):
        f = torch.randn(18, d, generator=g, dtype=dtype)
        y = torch.randint(0, K - 1, (18,), generator=g)  # class K-1 absent
        outs = []
        for head, target in zip(heads, (y, F.one_hot(y, K).float())):
            x = f.clone().requires_grad_()
            logits = head(x, target)
            F.cross_entropy(logits, y).backward()
            outs.append((logits.detach(), x.grad, head.P.clone(), head.means.clone(), head.global_mean.clone()))
        for a, b in zip(*outs):
            assert torch.equal(a, b), step


def test_nearest_etf_soft_labels_give_label_weighted_class_means():
    """Catches soft labels turned hard (argmax), counts floored at 1 (a class seen only with weight < 1), or unweighted sums."""
    K, d, tau = 3, 6, 2.0
    f, _ = batch(B=5, d=d, K=K, seed=8)
    Y = torch.tensor(
        [[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [0.0, 0.7, 0.3], [0.0, 1.0, 0.0], [0.9, 0.0, 0.1]]
    )  # class 2: weight 0.4
    head = NearestETFHead(K, d, tau=tau)
    head(f, Y)
    h = _h64(f, tau)
    Yd = Y.double()
    mu = h.mean(0)  # rows of Y sum to 1: the label-weighted global mean is the plain batch mean
    means = (h.T @ Yd) / Yd.sum(0) - mu[:, None]  # (d, K): a_1 = 1, so the running means are the batch's
    assert torch.allclose(head.means.double(), means, atol=1e-5)
    assert torch.allclose(head.global_mean.double(), mu, atol=1e-6)


def test_fixed_etf_batch_centering_is_the_authors_bias():
    """center=batch: logits = h W^T - W mean_batch(h), the bias carrying no gradient (the authors' fixed ETF)."""
    f, y = batch(B=12, d=8, K=4, seed=5)
    f.requires_grad_(True)
    head = create_head("fixed_etf", 4, 8, center="batch")
    h = 5.0 * f / f.norm(dim=1, keepdim=True)
    W = head.weight
    expected = h @ W.T - (W @ h.mean(0)).detach()
    logits = head(f, y)
    torch.testing.assert_close(logits, expected)
    g = torch.randn_like(logits)
    (grad,) = torch.autograd.grad((logits * g).sum(), f)
    (want,) = torch.autograd.grad((expected * g).sum(), f)
    torch.testing.assert_close(grad, want)
    head.eval()
    torch.testing.assert_close(head(f), expected)  # evaluation batches get their own bias too
    with pytest.raises(EtfTrainError, match="head.center"):
        create_head("fixed_etf", 4, 8, center="running")


# --- the whole training step against method.md written out, step by step --------------------------


class _ReferenceHead:
    """method.md's nearest-ETF head written out in float64 (explicit M, per-class loops, P = U V^T from
    torch.linalg.svd with autograd through the SVD): an independent route to the head's outputs and gradients."""

    def __init__(self, K, d, tau, delta=1e-3, min_rate=1e-4):
        self.K, self.tau, self.delta, self.min_rate = K, tau, delta, min_rate
        self.means = torch.zeros(d, K, dtype=torch.float64)
        self.P = torch.eye(d, K, dtype=torch.float64)
        self.mu = torch.zeros(d, dtype=torch.float64)
        self.t = 0

    def __call__(self, f, Y):
        """f: (B, d) features, Y: (B, K) label weights (one-hot rows for hard labels) -> logits (B, K)"""
        K = self.K
        M = torch.eye(K, dtype=torch.float64) - 1.0 / K
        h = self.tau * f / f.norm(dim=1, keepdim=True)
        mu_G = sum(Y[b].sum() * h[b] for b in range(len(h))) / Y.sum()
        self.t += 1
        a = max(2.0 / (self.t + 1), self.min_rate)
        columns = []
        for k in range(K):
            c = Y[:, k].sum()
            if c > 0:
                batch_mean = (Y[:, k, None] * h).sum(0) / c - mu_G
                columns.append((1 - a) * self.means[:, k] + a * batch_mean)
            else:
                columns.append(self.means[:, k])
        means = torch.stack(columns, 1)
        H = means / means.norm()
        A = (2.0 / math.sqrt(K - 1)) * H @ M + self.delta * self.P
        U, _, Vh = torch.linalg.svd(A, full_matrices=False)
        P = U @ Vh
        W = math.sqrt(K / (K - 1)) * M @ P.T
        self.means, self.P = means.detach(), P.detach()
        self.mu = mu_G.detach()
        return h @ W.T - W @ mu_G


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 2e-4)])
def test_nearest_etf_training_steps_equal_method_md_written_out(dtype, tol):
    """Catches any change to what a training step computes: logits, the gradient into the features (through h, the class
    means, H and P), the running means, P and mu_G over steps with all classes, an absent class and soft labels."""
    K, d, B, tau = 5, 24, 30, 2.0
    head, ref = NearestETFHead(K, d, tau=tau).to(dtype), _ReferenceHead(K, d, tau)
    g = torch.Generator().manual_seed(11)
    for step in range(5):
        f = torch.randn(B, d, generator=g, dtype=torch.float64)
        y = torch.randint(0, K - 1 if step == 2 else K, (B,), generator=g)  # step 2: class K-1 absent
        Y = F.one_hot(y, K).double()
        if step == 3:  # a mixed batch: soft labels
            Y = 0.6 * Y + 0.4 * F.one_hot(torch.roll(y, 1), K).double()
        x, xr = f.to(dtype).clone().requires_grad_(), f.clone().requires_grad_()
        logits = head(x, y if step != 3 else Y.to(dtype))
        expected = ref(xr, Y)
        w = torch.randn(B, K, generator=g, dtype=torch.float64)  # a loss whose gradient reaches every logit
        (logits.double() * w).sum().backward()
        (expected * w).sum().backward()
        rel = lambda a, b: float((a.double() - b).norm() / b.norm())  # noqa: E731
        assert rel(logits.detach(), expected.detach()) < tol, step
        assert rel(x.grad, xr.grad) < tol, step
        assert rel(head.P, ref.P) < tol and rel(head.means, ref.means) < tol and rel(head.global_mean, ref.mu) < tol, (
            step
        )


@pytest.mark.parametrize("name", HEADS.names())
def test_every_registered_head_keeps_the_trainer_contract(name):
    """What the trainer relies on, for each head in the registry (a new head is tested here as soon as it is
    registered): (B, K) finite logits in training (with labels) and in eval mode, a (K, d) weight, gradients that
    reach the features, boolean declarations, and a state dict that restores the eval-mode logits."""
    f, y = batch(B=24, d=16, K=4)
    head = create_head(name, 4, 16)
    head.train()
    f = f.requires_grad_()
    logits = head(f, y)
    assert logits.shape == (24, 4) and torch.isfinite(logits).all()
    F.cross_entropy(logits, y).backward()
    assert f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    head.after_step()
    assert head.weight.shape == (4, 16)
    assert head.bias is None or head.bias.shape == (4,)
    assert isinstance(head.fixed_geometry, bool) and isinstance(head.batch_centred, bool)
    assert isinstance(head.pop_solver_stats(), dict)
    head.eval()
    with torch.no_grad():
        before = head(f.detach())
        copy_ = create_head(name, 4, 16)
        copy_.load_state_dict(head.state_dict())
        copy_.eval()
        assert torch.equal(copy_(f.detach()), before)

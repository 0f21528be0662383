"""etf_train/losses.py against formulas written out here, on a fixed batch, for hard and soft labels."""

from __future__ import annotations

import csv
import inspect
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from etf_train.cli import config_dir
from etf_train.compare import main as compare_main
from etf_train.errors import EtfTrainError
from etf_train.heads import create_head, heads_with
from etf_train.losses import LOSSES, build_loss, hard_labels

from .conftest import etf_train_here

ETF = heads_with("fixed_geometry")  # the heads dot regression applies to

# A fixed batch: B = 3 samples, K = 4 classes.
Z = [[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 3.0, -2.0], [-1.0, 1.5, 0.0, 4.0]]
Y = [0, 2, 1]
# Soft labels: two-label mixes (lam, 1 - lam), as mixup makes them.
T = [[0.7, 0.0, 0.0, 0.3], [0.0, 0.25, 0.75, 0.0], [0.0, 1.0, 0.0, 0.0]]
# Dot regression: unit-norm rows w_c (d = 3) and features h of norm tau = 2.
TAU = 2.0
W = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0]]
H = [[2.0, 0.0, 0.0], [0.0, 1.2, 1.6], [-1.2, 0.0, 1.6]]


def logp(z):
    """log softmax of one row, in Python floats."""
    top = max(z)
    lse = top + math.log(sum(math.exp(v - top) for v in z))
    return [v - lse for v in z]


def onehot(y, K=4):
    return [1.0 if c == y else 0.0 for c in range(K)]


def mean(values):
    return sum(values) / len(values)


def soft_ce(z, t):
    return -sum(tk * lk for tk, lk in zip(t, logp(z)))


def expected(name, targets, **o):
    """The loss written out per sample, averaged over the batch; targets: rows of label weights."""
    K = 4
    per = []
    for z, t, h in zip(Z, targets, H):
        if name == "ce":
            per.append(soft_ce(z, t))
        elif name == "label_smoothing":
            s = o["smoothing"]
            per.append(soft_ce(z, [(1 - s) * tk + s / K for tk in t]))
        elif name == "mse":
            k, m = o["k"], o["m"]
            per.append(sum((1 + (k - 1) * tk) * (zk - m * tk) ** 2 for zk, tk in zip(z, t)) / K)
        elif name == "focal":
            p_t = sum(tk * math.exp(lk) for tk, lk in zip(t, logp(z)))
            per.append((1 - p_t) ** o["gamma"] * soft_ce(z, t))
        elif name == "maxsup":
            per.append(soft_ce(z, t) + o["alpha"] * (max(z) - mean(z)))
        elif name == "dot_regression":
            dots = [sum(wi * hi for wi, hi in zip(w, h)) for w in W]
            per.append(sum(tc * (dc - TAU) ** 2 for tc, dc in zip(t, dots)) / (2 * TAU))
    return mean(per)


def fixed_head():
    """A stand-in for an ETF head: unit-norm rows W and the sphere radius tau."""
    return SimpleNamespace(weight=torch.tensor(W), tau=TAU, normalize_features=True)


CASES = [
    ("ce", {}),
    ("label_smoothing", {"smoothing": 0.2}),
    ("mse", {"k": 1.0, "m": 1.0}),
    ("mse", {"k": 3.0, "m": 2.0}),
    ("focal", {"gamma": 2.0}),
    ("focal", {"gamma": 0.5}),
    ("maxsup", {"alpha": 0.3}),
    ("dot_regression", {}),
]


def call(name, options, z, target):
    loss = build_loss(name, etf_heads=ETF, head_name="fixed_etf", **options)
    return loss(z, target, head=fixed_head(), h=torch.tensor(H))


@pytest.mark.parametrize(("name", "options"), CASES, ids=lambda c: str(c))
def test_each_loss_matches_its_formula_for_hard_and_soft_labels(name, options):
    """Catches a wrong formula (scale, sign, a missing 1/K or 1/(2 tau), sum instead of mean) or a soft-label form that is not the hard one with one_hot(y) -> t."""
    z = torch.tensor(Z)
    hard = call(name, options, z, torch.tensor(Y))
    assert hard.dim() == 0 and hard.dtype == torch.float32
    assert math.isclose(float(hard), expected(name, [onehot(y) for y in Y], **options), rel_tol=1e-5)
    soft = call(name, options, z, torch.tensor(T))
    assert math.isclose(float(soft), expected(name, T, **options), rel_tol=1e-5)
    one_hot = call(name, options, z, F.one_hot(torch.tensor(Y), 4).float())
    assert torch.allclose(one_hot, hard, rtol=1e-6, atol=0)


def test_ce_is_the_trainers_cross_entropy_bit_for_bit():
    """Catches ce computing anything but F.cross_entropy(logits.float(), y) (e.g. a soft-label path for hard labels, or no float32 cast)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (64,), generator=g)
    for dtype in (torch.float32, torch.bfloat16):
        logits = (3 * torch.randn(64, 10, generator=g)).to(dtype)
        got = build_loss("ce", etf_heads=ETF, head_name="learned")(logits, y)
        assert got.dtype == torch.float32 and torch.equal(got, F.cross_entropy(logits.float(), y))


@pytest.mark.parametrize(("name", "options"), CASES, ids=lambda c: str(c))
def test_every_loss_computes_bf16_logits_in_float32(name, options):
    """Catches a loss that computes in bf16 under autocast (a float32 result is asked for: bf16 keeps 8 bits of
    mantissa, too few for a loss summed over a batch)."""
    z16 = torch.tensor(Z).to(torch.bfloat16)
    for target in (torch.tensor(Y), torch.tensor(T)):
        got = call(name, options, z16, target)
        assert got.dtype == torch.float32
        assert torch.equal(got, call(name, options, z16.float(), target)), (name, target)


@pytest.mark.parametrize(("name", "option"), [("label_smoothing", "smoothing"), ("focal", "gamma")])
def test_label_smoothing_zero_and_focal_zero_are_ce_bit_for_bit(name, option):
    """Catches label_smoothing=0 or gamma=0 taking another arithmetic path than ce (so a no-op option would change results)."""
    g = torch.Generator().manual_seed(1)
    logits, y = 4 * torch.randn(50, 7, generator=g, requires_grad=True), torch.randint(0, 7, (50,), generator=g)
    ce = build_loss("ce", etf_heads=ETF, head_name="learned")
    other = build_loss(name, etf_heads=ETF, head_name="learned", **{option: 0.0})
    (grad_ce,) = torch.autograd.grad(ce(logits, y), logits)
    (grad_other,) = torch.autograd.grad(other(logits, y), logits)
    assert torch.equal(other(logits, y), ce(logits, y)) and torch.equal(grad_other, grad_ce)


def test_label_smoothing_and_maxsup_are_ce_plus_their_logit_penalties():
    """Catches a label-smoothing regulariser form that is not exactly CE + s (z_y - mean z) (the side-by-side form documented against MaxSup)."""
    z, y = torch.tensor(Z, dtype=torch.float64), torch.tensor(Y)
    ce = F.cross_entropy(z, y)
    s, alpha = 0.3, 0.4
    ls = F.cross_entropy(z, y, label_smoothing=s)
    assert torch.allclose(ls, ce + s * (z[torch.arange(3), y] - z.mean(1)).mean(), atol=1e-12)
    maxsup = build_loss("maxsup", etf_heads=ETF, head_name="learned", alpha=alpha)(z, y)
    assert math.isclose(float(maxsup), float(ce + alpha * (z.max(1).values - z.mean(1)).mean()), rel_tol=1e-6)


@pytest.mark.parametrize(("name", "options"), CASES, ids=lambda c: str(c))
def test_gradients_are_finite_for_extreme_logits(name, options):
    """Catches NaN/inf gradients when softmax saturates (e.g. (1 - p_t)^gamma with gamma < 1 at p_t = 1, or log of 0)."""
    sign = torch.tensor([[1.0, -1.0, 1.0, -1.0], [-1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, 1.0]])
    for target in (torch.tensor(Y), torch.tensor(T)):
        z = (1e4 * sign).requires_grad_()
        h = torch.tensor(H, requires_grad=True)
        loss = build_loss(name, etf_heads=ETF, head_name="fixed_etf", **options)(z, target, head=fixed_head(), h=h)
        loss.backward()
        grad = h.grad if name == "dot_regression" else z.grad  # dot regression reads h, not the logits
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), (name, target)


def test_dot_regression_on_a_real_etf_head_and_its_features():
    """Catches dot regression using the logits (with the nearest-ETF bias) instead of w_y^T h, or another E_H than tau."""
    K, d, tau = 4, 6, 3.0
    head = create_head("fixed_etf", K, d, tau=tau, basis="random", seed=2)
    f = torch.randn(5, d, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 3, 0])
    h = head.normalize(f)
    W = head.weight.double()
    by_hand = ((h.double() @ W.T)[torch.arange(5), y] - tau).square().mean() / (2 * tau)
    loss = build_loss("dot_regression", etf_heads=ETF, head_name="fixed_etf")(head(f), y, head=head, h=h)
    assert math.isclose(float(loss), float(by_hand), rel_tol=1e-5)


def test_losses_train_the_nearest_etf_head_with_soft_labels():
    """Catches a loss or the head failing on soft labels inside the real head's forward/backward (shapes, dtypes, no gradient)."""
    head = create_head("nearest_etf", 4, 8)
    g = torch.Generator().manual_seed(4)
    f = torch.randn(12, 8, generator=g, requires_grad=True)
    y = torch.arange(12) % 4
    target = 0.6 * F.one_hot(y, 4) + 0.4 * F.one_hot(y.roll(1), 4)
    for name, options in CASES:
        logits = head(f, target)
        loss = build_loss(name, etf_heads=ETF, head_name="nearest_etf", **options)(
            logits, target, head=head, h=head.normalize(f)
        )
        (grad,) = torch.autograd.grad(loss, f)
        assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_hard_labels_is_the_dominant_label():
    """Catches train/acc scored against the wrong label of a mixed batch (argmax over the batch axis, or the partner's label)."""
    assert torch.equal(hard_labels(torch.tensor(Y)), torch.tensor(Y))
    assert torch.equal(hard_labels(torch.tensor(T)), torch.tensor([0, 2, 1]))


def test_bad_names_options_and_pairings_stop_at_build_time_in_one_line():
    """Catches bad loss settings that would only fail (or silently misbehave) mid-training, and errors without the config key."""
    bad = [
        (("cross_entropy",), {}, "unknown loss 'cross_entropy'"),
        (("label_smoothing",), {"smoothing": -0.1}, "loss.smoothing"),
        (("label_smoothing",), {"smoothing": 1.0}, "loss.smoothing"),
        (("label_smoothing",), {"smoothing": "abc"}, "loss.smoothing"),
        (("focal",), {"gamma": -1.0}, "loss.gamma"),
        (("mse",), {"k": 0.0}, "loss.k"),
        (("maxsup",), {"alpha": float("nan")}, "loss.alpha"),
        (("ce",), {"smoothing": 0.1}, "loss ce: unknown option.*smoothing.*none"),
        (("focal",), {"gama": 1.0}, "loss focal: unknown option.*gama.*gamma"),
    ]
    for args, options, match in bad:
        with pytest.raises(EtfTrainError, match=match) as info:
            build_loss(*args, etf_heads=ETF, head_name="learned", **options)
        assert "\n" not in str(info.value)
    with pytest.raises(EtfTrainError, match="loss=dot_regression needs a fixed simplex ETF.*head=learned") as info:
        build_loss("dot_regression", etf_heads=ETF, head_name="learned")
    assert "\n" not in str(info.value)
    for head_name in ("fixed_etf", "nearest_etf"):
        build_loss("dot_regression", etf_heads=ETF, head_name=head_name)
    loss = build_loss("dot_regression", etf_heads=ETF, head_name="fixed_etf")
    raw = SimpleNamespace(weight=torch.tensor(W), tau=TAU, normalize_features=False)
    with pytest.raises(EtfTrainError, match="head.normalize=true"):
        loss(torch.tensor(Z), torch.tensor(Y), head=raw, h=torch.tensor(H))
    with pytest.raises(ValueError, match="pass head= and h="):
        loss(torch.tensor(Z), torch.tensor(Y))


def test_every_loss_has_a_yaml_spelling_out_its_options():
    """Catches a loss without a config file, or a yaml whose keys or defaults drift from the builder's."""
    files = sorted((config_dir() / "loss").glob("*.yaml"))
    assert {f.stem for f in files} == set(LOSSES.names())
    for f in files:
        cfg = OmegaConf.to_container(OmegaConf.load(f))
        assert cfg.pop("name") == f.stem
        params = inspect.signature(LOSSES.get(f.stem)).parameters
        assert cfg == {k: p.default for k, p in params.items()}, f.stem


def test_every_loss_and_mix_runs_through_the_real_cli_and_compares(tmp_path, monkeypatch, capfd):
    """The loss and mix groups through `etf-train -m` on digits (1 epoch each): catches a group that composes but
    does not train, a loss the trainer calls wrongly, or a sweep etf-compare cannot group by loss."""

    def etf_train(*args, cwd):  # the CLI's main() in this process
        return etf_train_here(*args, cwd=cwd, monkeypatch=monkeypatch, capfd=capfd)

    quick = [
        "dataset.limit_train=200",
        "dataset.limit_test=100",
        "backbone.width=8",
        "trainer.max_epochs=1",
        "trainer.progress=false",
    ]
    losses = etf_train(
        "-m",
        *quick,
        "head=fixed_etf",
        "loss=ce,label_smoothing,mse,focal,maxsup,dot_regression",
        "hydra.sweep.dir=losses",
        cwd=tmp_path,
    )
    assert losses.returncode == 0, losses.stderr[-2000:]
    mixes = etf_train("-m", *quick, "head=nearest_etf", "mix=none,mixup,cutmix", "hydra.sweep.dir=mixes", cwd=tmp_path)
    assert mixes.returncode == 0, mixes.stderr[-2000:]
    for folder, count in (("losses", 6), ("mixes", 3)):
        runs = list((tmp_path / folder).glob("*/checkpoints/finished"))
        assert len(runs) == count, folder
    sweep = etf_train(
        "-m",
        *quick,
        "trainer.max_epochs=2",
        "loss=ce,label_smoothing",
        "head=learned,nearest_etf",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert (
        compare_main(
            [
                str(tmp_path / "sweep"),
                "--group-by",
                "loss.name",
                "head",
                "--metrics",
                "train/acc",
                "--acc-thresholds",
                "50",
                "--nc1-thresholds",
            ]
        )
        == 0
    )
    with (tmp_path / "sweep" / "comparison.csv").open() as f:
        groups = sorted(row["group"] for row in csv.DictReader(f))
    assert groups == [
        f"loss.name={loss}, head={head}" for loss in ("ce", "label_smoothing") for head in ("learned", "nearest_etf")
    ]

"""AGD: one step against an independent re-derivation, the orthogonal init, refusals, zero gradients, the
state-dict round trip, and the real training path (Hydra config -> train)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from etf_train.errors import EtfTrainError
from etf_train.rundir import read_scalars
from etf_train.training import Run, train
from etf_train.training.agd import AGD

from .conftest import TINY, TINY_UFM, make_cfg, run_interrupted_then_resumed


def _tiny_model(seed: int = 0) -> nn.Module:
    """A conv with a non-square kernel, then two linear layers (one tall, one wide): three AGD tensors."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, (3, 2), bias=False),  # (B, 2, 4, 3) -> (B, 3, 2, 2)
        nn.Flatten(),
        nn.Linear(12, 7, bias=False),
        nn.Tanh(),
        nn.Linear(7, 4, bias=False),
    ).double()


def _backward(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 2, 4, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (5,), generator=g)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()


def _reference_step(weights, grads, gain: float, L: int):
    """The update written out slice by slice in Python floats, from the formulas in method.md."""
    slices = []  # (tensor index, kernel index, scale, gradient norm)
    for k, g in enumerate(grads):
        d_out, d_in = g.shape[0], g.shape[1]
        kernel = list(g.shape[2:])
        positions = [()] if not kernel else [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]
        s = math.sqrt(d_out / d_in) / math.sqrt(math.prod(kernel))
        for pos in positions:
            gs = g[(slice(None), slice(None), *pos)]
            slices.append((k, pos, s, math.sqrt(sum(v * v for v in gs.flatten().tolist()))))
    G = sum(s * n for _, _, s, n in slices) / L
    eta = math.log((1 + math.sqrt(1 + 4 * G)) / 2)
    new = [w.clone() for w in weights]
    for k, pos, s, n in slices:
        idx = (slice(None), slice(None), *pos)
        new[k][idx] -= gain * eta / L * s * grads[k][idx] / n
    return new, eta


@pytest.mark.parametrize("depth", [None, 5])
def test_one_step_matches_an_independent_derivation(depth):
    """Catches a wrong scale s, a whole-tensor instead of per-kernel-position norm, a wrong eta, or depth ignored."""
    model = _tiny_model()
    optimizer = AGD(model.parameters(), gain=3.0, depth=depth)
    L = 3 if depth is None else depth
    assert optimizer.depth == L
    _backward(model)
    weights = [p.detach().clone() for p in model.parameters()]
    expected, eta = _reference_step(weights, [p.grad.clone() for p in model.parameters()], 3.0, L)
    optimizer.step()
    assert optimizer.last_eta.dtype == torch.float64 and optimizer.last_eta.shape == ()
    assert optimizer.last_eta.item() == pytest.approx(eta, rel=1e-13)
    for p, w, e in zip(model.parameters(), weights, expected):
        assert not torch.equal(p, w)
        torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-14)


def test_a_new_gain_and_a_parameter_without_gradient_change_the_next_step():
    """The per-position coefficients are kept on the device between steps: a scheduler's new gain, or a tensor that
    takes no step (no gradient), must reach the next update (a stale copy would step with the old ones)."""
    model = _tiny_model()
    optimizer = AGD(model.parameters(), gain=3.0)
    _backward(model)
    optimizer.step()
    for gain, frozen in ((7.0, None), (7.0, 1)):
        optimizer.param_groups[0]["lr"] = gain  # the gain sits in lr's slot
        _backward(model, seed=2)
        params = list(model.parameters())
        if frozen is not None:
            params[frozen].grad = None
        stepped = [p for p in params if p.grad is not None]
        weights = [p.detach().clone() for p in stepped]
        expected, _ = _reference_step(weights, [p.grad.clone() for p in stepped], gain, 3)
        optimizer.step()
        for p, e in zip(stepped, expected):
            torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-14)


def test_init_is_orthogonal_with_the_agd_scale():
    """Catches a missing init, a wrong scale, the conv orthogonalised as one flattened matrix, or the UFM table
    transposed."""
    torch.manual_seed(0)
    tall, wide = nn.Linear(6, 10, bias=False).double(), nn.Linear(10, 4, bias=False).double()
    conv = nn.Conv2d(3, 5, (3, 2), bias=False).double()
    table = nn.Embedding(40, 8).double()  # UFM: N = 40 samples, d = 8
    AGD([tall.weight, wide.weight, conv.weight, table.weight])
    eye = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731
    torch.testing.assert_close(tall.weight.T @ tall.weight, (10 / 6) * eye(6))
    torch.testing.assert_close(wide.weight @ wide.weight.T, (4 / 10) * eye(4))
    for i in range(3):
        for j in range(2):
            w = conv.weight[:, :, i, j]  # (5, 3): tall
            torch.testing.assert_close(w.T @ w, (5 / 3) / 6 * eye(3))
    assert not torch.allclose(conv.weight[:, :, 0, 0], conv.weight[:, :, 2, 1])  # a draw per kernel position
    torch.testing.assert_close(table.weight.T @ table.weight, (40 / 8) * eye(8))


def test_one_dim_parameters_are_refused_in_one_line_by_name():
    """Catches 1-D parameters accepted (AGD would crash or skip them) or an error that does not say what to do."""
    model = nn.Sequential(*[nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)) for _ in range(2)])
    with pytest.raises(EtfTrainError) as info:
        AGD(model.named_parameters())
    message = str(info.value)
    assert "\n" not in message
    assert "0.0.bias, 0.1.weight, 0.1.bias, 1.0.bias, 1.1.weight and 1 more" in message
    assert "backbone.bias=false and head.bias=false" in message
    with pytest.raises(EtfTrainError, match=r"#1 \(3,\)"):  # unnamed parameters: position and shape
        AGD(nn.Linear(3, 3).parameters())
    frozen = nn.Linear(3, 3)
    frozen.bias.requires_grad_(False)
    assert AGD(frozen.named_parameters()).depth == 1  # a frozen vector is not AGD's business


def test_zero_gradients_give_no_nan():
    """Catches g / ||g|| evaluated as 0/0 for a zero gradient (a whole tensor, or one kernel position)."""
    model = _tiny_model()
    optimizer = AGD(model.parameters())
    conv, first, second = model[0].weight, model[2].weight, model[4].weight
    _backward(model)
    first.grad.zero_()
    conv.grad[:, :, 1, 0] = 0
    second.grad = None
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.equal(first, before[1]) and torch.equal(second, before[2])
    assert torch.equal(conv[:, :, 1, 0], before[0][:, :, 1, 0]) and not torch.equal(conv, before[0])
    conv.grad.zero_()
    optimizer.step()  # no gradient at all: eta = log(1) = 0
    assert optimizer.last_eta.item() == 0.0


def test_pop_eta_is_the_mean_since_the_last_call():
    """Catches a mean that is not reset, or one over the wrong steps."""
    model = _tiny_model()
    optimizer = AGD(model.parameters())
    assert optimizer.pop_eta() is None and optimizer.last_eta is None
    etas = []
    for seed in range(3):
        _backward(model, seed)
        optimizer.step()
        etas.append(optimizer.last_eta.item())
    assert optimizer.pop_eta() == pytest.approx(sum(etas) / 3, rel=1e-12)
    assert optimizer.pop_eta() is None


def test_state_dict_round_trip_gives_bit_identical_steps():
    """Catches state lost or mangled by a checkpoint (e.g. the running eta), or an init that would overwrite loaded
    weights when built after them."""
    model = _tiny_model(0)
    optimizer = AGD(model.parameters(), gain=2.0)
    for seed in range(3):
        _backward(model, seed)
        optimizer.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    restored = _tiny_model(1)  # other weights, and another AGD init: both replaced by the checkpoint
    restored_optimizer = AGD(restored.parameters(), gain=2.0)
    restored.load_state_dict(saved["model"])
    restored_optimizer.load_state_dict(saved["optimizer"])
    for seed in range(3, 6):
        for m, o in ((model, optimizer), (restored, restored_optimizer)):
            _backward(m, seed)
            o.step()
    for a, b in zip(model.parameters(), restored.parameters()):
        assert torch.equal(a, b)
    assert optimizer.pop_eta() == restored_optimizer.pop_eta()  # over all six steps in both


# ------------------------------------------------------------------------------ the real training path

UFM = [o for o in TINY_UFM if not o.startswith("optimizer.")]  # the SGD rate does not apply


@pytest.mark.parametrize(
    "setting",
    [
        [*TINY, "backbone.bias=false", "head=nearest_etf"],
        [*TINY, "backbone.bias=false", "head=learned", "head.bias=false"],
        [*UFM, "head=nearest_etf"],
    ],
    ids=["small_cnn-nearest_etf", "small_cnn-learned", "ufm-nearest_etf"],
)
def test_agd_trains_through_the_config(tmp_path, setting):
    """Catches optimizer=agd not composing or building (config, factory, names), or AGD not decreasing the loss."""
    cfg = make_cfg(*setting, "optimizer=agd", "scheduler=none")
    train(cfg, tmp_path)
    # depth=null is each model's own count of weight tensors (1 for the ETF heads on UFM, 2 with a learned
    # classifier: the step-size confound of docs/results.md); the record names it, so etf-compare can tell
    tensors = len(
        torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["optimizer"]["param_groups"][0]["params"]
    )
    assert OmegaConf.load(tmp_path / ".hydra" / "config.yaml").optimizer.effective_depth == tensors
    assert tensors == 1 if "dataset=ufm" in setting else tensors > 1
    curves = read_scalars(tmp_path)
    loss = curves["train/loss"][1]
    assert list(curves["train/loss"][0]) == [1, 2]
    assert loss[1] < loss[0] and loss[1] < math.log(4), loss
    assert list(curves["lr"][1]) == [10.0, 10.0]  # the gain, shown as the rate
    eta = curves["optim/agd_eta"][1]  # log((1 + sqrt(1 + 4G)) / 2) > 0 for any non-zero gradient, epoch mean
    assert list(curves["optim/agd_eta"][0]) == [1, 2] and all(0 < e < 10 for e in eta), eta


def test_agd_init_comes_before_a_resume(tmp_path, monkeypatch):
    """Catches the AGD init missing from the run, or overwriting the weights a resume loads (the resumed run would
    then differ from an uninterrupted one)."""
    setting = [*TINY, "backbone.bias=false", "optimizer=agd", "scheduler=none", "optimizer.depth=7"]
    conv = Run(make_cfg(*setting), tmp_path / "fresh").model.backbone[0].weight.detach()  # (8, 1, 3, 3)
    flat = conv.flatten(2).permute(2, 0, 1)  # (9, 8, 1): one column per kernel position
    torch.testing.assert_close((flat.transpose(1, 2) @ flat).flatten(), torch.full((9,), 8 / 9))
    straight = train(make_cfg(*setting), tmp_path / "straight")
    resumed = run_interrupted_then_resumed(monkeypatch, make_cfg(*setting), tmp_path / "resumed", after_epoch=1)
    for key in ("train/loss", "test/loss", "nc/nc1"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5), key


def test_the_trainer_names_what_agd_refuses(tmp_path):
    """Catches the trainer handing AGD unnamed parameters (the error could not say which), or the factory rewording
    AGD's error as a bad option."""
    cfg = make_cfg(*TINY, "optimizer=agd", "backbone.bias=false", "head=learned")
    with pytest.raises(EtfTrainError, match=r"^optimizer=agd has no rule for 1-D .*: head\.linear\.bias; remove"):
        train(cfg, tmp_path)


def test_the_same_seed_gives_every_head_the_same_agd_backbone(tmp_path):
    """A learned classifier's init drew from the global stream before AGD re-initialised every weight from it, so
    under AGD the learned heads started from another backbone than the ETF heads of the same seed (max difference
    1.17 on UFM): replicate seeds were not paired across heads."""
    backbones = {}
    for head in ("nearest_etf", "learned_authors", "fixed_etf"):
        run = Run(make_cfg(*UFM, f"head={head}", "optimizer=agd", "scheduler=none", "seed=3"), tmp_path / head)
        run.folder.end()
        backbones[head] = run.model.backbone.state_dict()
    for head in ("learned_authors", "fixed_etf"):
        for k, v in backbones["nearest_etf"].items():
            assert torch.equal(v, backbones[head][k]), (head, k)


def test_a_diverged_agd_run_is_told_to_lower_its_gain(tmp_path):
    """Every divergence hint said "lower optimizer.lr", which AGD does not have: its step size is optimizer.gain."""
    with pytest.raises(
        EtfTrainError,
        match=r"training diverged; lower optimizer\.gain \(the last good checkpoint is "
        r"kept\), or set trainer\.nonfinite=skip",
    ) as info:
        train(
            make_cfg(
                *(o for o in TINY_UFM if not o.startswith("optimizer.")),
                "optimizer=agd",
                "scheduler=none",
                "optimizer.gain=1e38",
            ),
            tmp_path,
        )
    assert "optimizer.lr" not in str(info.value) and "\n" not in str(info.value)

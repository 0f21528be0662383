"""The heads' and AGD's options at their boundaries (issue 30's mutation run left these untested): the defaults, the
option a bad value is named by, AGD's gain bound, its running eta and its empty-epoch scalars. Expected values are
written out here."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from etf_train.errors import EtfTrainError
from etf_train.heads import create_head
from etf_train.heads.fixed_etf import FixedETFHead
from etf_train.heads.learned import LearnedHead
from etf_train.training.agd import AGD


def test_a_learned_head_by_default_scales_by_5_has_a_bias_and_keeps_its_row_norms():
    head = LearnedHead(4, 6)
    assert head.tau == 5.0 and head.bias is not None and head.bias.shape == (4,) and head.renorm is False


@pytest.mark.parametrize(
    ("name", "options", "says"),
    [
        ("learned", {"bias": "yes"}, r"^head\.bias must be true or false"),
        ("learned", {"renorm": "yes"}, r"^head\.renorm must be true or false"),
        ("fixed_etf", {"center": "mean"}, r"^head\.center='mean' must be one of none, batch$"),
    ],
)
def test_a_bad_head_option_is_named(name, options, says):
    with pytest.raises(EtfTrainError, match=says):
        create_head(name, 4, 6, **options)


def test_a_fixed_etf_too_wide_for_its_features_names_the_head():
    with pytest.raises(EtfTrainError, match=r"head=fixed_etf needs feature dimension d >= number of classes K"):
        FixedETFHead(8, 4)


def test_a_fixed_etf_classifies_in_the_features_dtype():
    head = FixedETFHead(3, 5)
    assert head.classify(torch.randn(2, 5, dtype=torch.float64)).dtype == torch.float64


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))


def test_agd_by_default_takes_gain_10_and_counts_its_weight_tensors():
    model = _model()
    optimizer = AGD(model.parameters())
    assert optimizer.param_groups[0]["lr"] == 10.0 and optimizer.depth == 2


@pytest.mark.parametrize(
    ("options", "says"), [({"gain": 0}, r"^optimizer\.gain must be"), ({"depth": 0}, r"^optimizer\.depth must be")]
)
def test_agd_names_a_bad_option(options, says):
    with pytest.raises(EtfTrainError, match=says):
        AGD(_model().parameters(), **options)


def test_agd_takes_a_gain_below_1_and_refuses_a_model_without_weights():
    assert AGD(_model().parameters(), gain=0.5).param_groups[0]["lr"] == 0.5
    frozen = _model().requires_grad_(False)
    with pytest.raises(EtfTrainError, match="^optimizer=agd got no trainable weight tensors$"):
        AGD(frozen.parameters())


def test_agd_reports_the_mean_eta_of_its_steps_and_nothing_for_an_epoch_without_one():
    model = _model()
    optimizer = AGD(model.parameters())
    assert optimizer.epoch_scalars() == {}
    etas = []
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).square().sum().backward()
        optimizer.step()
        etas.append(float(optimizer.last_eta))
    (eta,) = optimizer.epoch_scalars().values()
    assert eta == pytest.approx(sum(etas) / 3, rel=1e-6) and not math.isclose(etas[0], etas[2])
    assert optimizer.epoch_scalars() == {}  # popped: the next epoch starts from none
    optimizer.zero_grad()
    model(torch.randn(5, 3)).square().sum().backward()
    optimizer.step()
    (eta,) = optimizer.epoch_scalars().values()  # the next epoch's one step alone: the sum restarted at 0
    assert eta == pytest.approx(float(optimizer.last_eta), rel=1e-6)


def test_the_solver_scalars_are_the_mean_over_the_epochs_solves():
    """solver/ms, iters and grad_norm over three solves (the Riemannian solver reports iterations and the gradient's
    norm per class batch; the closed form neither); then nothing is left for the next epoch."""
    head = create_head("nearest_etf", num_classes=3, dim=4)

    def solve(ms: float, iters: list[int] | None, grad: list[float] | None = None):
        timer = SimpleNamespace(elapsed_ms=lambda: ms)
        info = SimpleNamespace(
            iters=None if iters is None else torch.tensor(iters), grad_norm=None if grad is None else torch.tensor(grad)
        )
        return timer, info

    head._stats[:] = [solve(2.0, [3, 5], [0.5, 1.5]), solve(4.0, [6], [0.25]), solve(9.0, None)]
    assert head.pop_solver_stats() == {
        "solver/ms": pytest.approx(5.0),
        "solver/iters": pytest.approx((4 + 6) / 2),  # of the two solves that iterated
        "solver/grad_norm": pytest.approx((1.0 + 0.25) / 2),
    }
    assert head.pop_solver_stats() == {}
    head._stats[:] = [solve(1.0, None), solve(2.0, None)]
    assert head.pop_solver_stats() == {"solver/ms": pytest.approx(1.5)}

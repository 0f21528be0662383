"""The heads' and losses' refusals word for word, their limits on both sides, and the heads' defaults against their
configs (issue 30's mutation run: `match=` finds a message inside a changed one, so these compare whole texts)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from etf_train.errors import EtfTrainError
from etf_train.heads import HEADS, create_head
from etf_train.heads.base import reference_point
from etf_train.heads.nearest_etf import NearestETFHead
from etf_train.losses import build_loss

REPO = Path(__file__).resolve().parents[1]

D_TOO_SMALL = (
    "head={} needs feature dimension d >= number of classes K, but the backbone gives d=8 and the dataset has K=10: "
    "choose a backbone with a wider feature layer (e.g. backbone.dim=10)"
)


@pytest.mark.parametrize(
    "build, says",
    [
        (lambda: NearestETFHead(10, 16, delta=0), "head.delta must be a finite number > 0, got 0"),
        (lambda: NearestETFHead(10, 16, min_rate=1.5), "head.min_rate must be a finite number > 0 and <= 1, got 1.5"),
        (
            lambda: NearestETFHead(10, 16, solver={"name": "qr"}),
            "solver='qr' must be one of svd, gram, riemannian, newton",
        ),
        (lambda: NearestETFHead(10, 8), D_TOO_SMALL.format("nearest_etf")),
        (lambda: create_head("fixed_etf", 10, 8), D_TOO_SMALL.format("fixed_etf")),
        (lambda: NearestETFHead(1, 8), "a classifier needs at least 2 classes, got 1"),
        (lambda: NearestETFHead(10, 16, tau=0), "head.tau must be a finite number > 0, got 0"),
        (lambda: NearestETFHead(10, 16, normalize="no"), "head.normalize must be true or false, got 'no'"),
        (lambda: reference_point(16, 10, "other", 0), "head.basis='other' must be one of identity, random"),
        (lambda: reference_point(16, 10, "random", -1), "head.seed must be an integer >= 0, got -1"),
        (
            lambda: reference_point(16, 10, "identity", 3),
            "head.seed=3 applies to head.basis=random only (the identity basis has no draw); set head.basis=random, "
            "or sweep the run's seed=...",
        ),
        (
            lambda: create_head("learned", 10, 16, solver={"name": "svd"}),
            "the solver group applies to head=nearest_etf only; head=learned has no solver: drop solver=...",
        ),
        (
            lambda: build_loss("dot_regression", head_name="learned", etf_heads=("fixed_etf", "nearest_etf")),
            "loss=dot_regression needs a fixed simplex ETF classifier (head=fixed_etf or head=nearest_etf); "
            "head=learned learns its own",
        ),
    ],
)
def test_a_bad_head_or_loss_option_is_refused_in_these_words(build, says):
    with pytest.raises(EtfTrainError) as e:
        build()
    assert str(e.value) == says


@pytest.mark.parametrize("given", [{}, {"h": torch.zeros(2, 16)}, {"head": "a head"}])
def test_a_loss_that_reads_the_classifier_needs_both_head_and_features(given):
    loss = build_loss("dot_regression", head_name="fixed_etf", etf_heads=("fixed_etf",))
    with pytest.raises(ValueError) as e:
        loss(torch.zeros(2, 10), torch.tensor([0, 1]), **given)
    assert str(e.value) == "this loss reads the classifier and the features: pass head= and h="


def test_a_simplex_etf_fits_in_as_many_dimensions_as_classes():
    """d = K is enough (a simplex ETF spans K - 1 dimensions); only d < K is refused."""
    for name in ("fixed_etf", "nearest_etf"):
        assert create_head(name, 10, 10).weight.shape == (10, 10)


def test_a_solver_without_a_name_is_the_svd():
    """The solver group always names its solver; options without one (a head built in code) get the default."""
    assert NearestETFHead(10, 16, solver={"max_iters": None}).method == "svd"


@pytest.mark.parametrize("name", ["fixed_etf", "learned", "nearest_etf"])
def test_a_heads_defaults_in_code_are_its_configs(name):
    """A head built in code (tests, notebooks) behaves as `head=<name>` does: every default its class declares
    equals configs/head/<name>.yaml's value."""
    config = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "head" / f"{name}.yaml"))
    declared = {
        k: p.default
        for k, p in inspect.signature(HEADS.get(name)).parameters.items()
        if p.default is not inspect.Parameter.empty and k != "solver"
    }
    assert declared and declared == {k: config[k] for k in declared}
    head = create_head(name, 10, 16)
    assert head.tau == 5.0 and head.normalize_features is True


def test_a_nearest_etf_heads_step_counter_is_an_integer_from_0():
    """Its step counter is an integer buffer (it is saved in checkpoints and feeds a_t = 2 / (t + 1))."""
    head = NearestETFHead(10, 16)
    assert head.step.dtype == torch.long and int(head.step) == 0


def test_a_nearest_etf_heads_first_step_checks_its_reference_point():
    """A reference point off the Stiefel manifold (here from a tampered state) is refused at the first step, not
    trained from."""
    head = NearestETFHead(4, 6).train()
    head.P.mul_(2)  # P^T P = 4 I
    with pytest.raises(EtfTrainError) as e:
        head(torch.randn(8, 6), torch.arange(8) % 4)
    assert str(e.value).startswith("nearest_etf: prev is not on St(d, K): max |prev^T prev - I| = 3.00e+00 > ")

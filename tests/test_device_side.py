"""What the nearest-ETF step decides on the device, so that a GPU never waits for the host: the Riemannian solver's
stopping tests, and the finite flag with which a NaN in the solve leaves the head's buffers as they were."""

from __future__ import annotations

import os

import pytest
import torch

from etf_train import NearestETFHead, nearest_etf
from etf_train.solver import procrustes_target, riemannian_trust_region

from .test_solver import SYNCING_OPS, _closed_form, problem

f64 = torch.float64


def _warm(d, K, seed):
    """A problem whose start is the solution of a nearby one, as in training (the previous step's P)."""
    H, prev = problem(d, K, seed=seed)
    near = _closed_form(H + 0.05 * torch.randn(d, K, generator=torch.Generator().manual_seed(seed), dtype=f64), prev)
    return H, near


@pytest.mark.parametrize(("d", "K"), [(64, 10), (128, 30)])
def test_riemannian_without_early_exit_reaches_the_closed_form(d, K):
    """Fixed counts (the GPU path): the masks freeze finished problems, and FIXED_INNER inner iterations are enough
    for float64 accuracy; a loop that stopped too soon or a mask that let a finished problem move fails here."""
    H, prev = _warm(d, K, seed=3)
    A = procrustes_target(H, prev, 1e-3)
    fixed, info = riemannian_trust_region(A, prev, max_iters=30, early_exit=False)
    assert (fixed - _closed_form(H, prev)).abs().max() < 1e-10
    assert int(info.iters) < 30  # converged problems stop counting though the loop runs on


def test_riemannian_stopping_tests_stay_on_the_device():
    """No operation that reads a value on the host without early exit; with it, the loop's exit test reads one."""
    H, prev = _warm(32, 5, seed=1)
    A = procrustes_target(H, prev, 1e-3)
    found = {}
    for early_exit in (True, False):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            riemannian_trust_region(A, prev, max_iters=5, max_inner=5, early_exit=early_exit)
        found[early_exit] = {e.name for e in prof.events()} & set(SYNCING_OPS)
    assert found[True] and not found[False], found


def test_the_solve_returns_a_finite_flag_on_the_device():
    H, prev = problem(16, 4)
    _, info = nearest_etf(H, prev, method="newton", check=False, return_info=True)
    assert info.finite.dtype == torch.bool and info.finite.shape == () and bool(info.finite)
    H[3, 1] = float("nan")
    P, info = nearest_etf(H, prev, method="newton", check=False, return_info=True)  # Newton does not raise
    assert torch.isnan(P).any() and not bool(info.finite)


def _svd_of_nan_returns_nan(monkeypatch):
    """cuSOLVER's SVD may return NaN for NaN input where LAPACK's raises: stand in for it on the CPU."""
    svd = torch.linalg.svd

    def quiet(A, full_matrices=True):
        U, S, Vh = svd(torch.nan_to_num(A), full_matrices=full_matrices)
        return (U, S, Vh) if torch.isfinite(A).all() else (U * torch.nan, S * torch.nan, Vh * torch.nan)

    monkeypatch.setattr(torch.linalg, "svd", quiet)


@pytest.mark.parametrize("solver", ["newton", "svd"])
def test_a_nan_in_the_solve_leaves_every_buffer_as_it_was(solver, monkeypatch):
    """A batch whose features hold a NaN gives NaN logits (the loss the trainer checks) and moves no buffer: the
    running means, P, the eval-mode mean and count, and the step. The next finite batch trains on as before."""
    if solver == "svd":
        _svd_of_nan_returns_nan(monkeypatch)
    torch.manual_seed(0)
    head = NearestETFHead(4, 16, solver={"name": solver}).double().train()
    y = torch.arange(8) % 4
    head(torch.randn(8, 16, dtype=f64), y)  # one good step first, so the buffers are not their initial values
    before = {name: b.clone() for name, b in head.named_buffers()}
    h = torch.randn(8, 16, dtype=f64)
    h[5, 2] = float("nan")
    logits = head(h, y)
    assert torch.isnan(logits).any()
    for name, b in head.named_buffers():
        assert torch.equal(b, before[name]), name
    head(torch.randn(8, 16, dtype=f64), y)
    assert int(head.step) == 2 and torch.isfinite(head.P).all() and not torch.equal(head.P, before["P"])


# ----------------------------------------------------------------------------------------- device selection


def test_trainer_device_cuda_n_becomes_the_current_device(monkeypatch):
    """Whatever records or allocates on "the current device" (CUDA events, streams, cuBLAS handles) then uses N."""
    from etf_train.training.distributed import setup_distributed

    chosen = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    _, device = setup_distributed("cuda:1")
    assert device == torch.device("cuda", 1) and chosen == [device]
    setup_distributed("cpu")
    assert chosen == [device]  # a CPU run leaves CUDA alone


def test_the_solver_timer_records_on_the_stream_of_the_runs_device(monkeypatch):
    from etf_train.heads.nearest_etf import _Timer

    recorded = []

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self, stream=None):
            recorded.append(stream)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: ("stream of", device))
    _Timer(torch.device("cuda", 1)).stop()
    assert recorded == [("stream of", torch.device("cuda", 1))] * 2


@pytest.mark.parametrize(
    ("args", "set_"),
    [(("trainer.deterministic=true",), True), (("-m", "trainer.deterministic=false,true"), True), ((), False)],
)
def test_the_cli_sets_cublas_workspace_before_any_cuda_work(args, set_, monkeypatch):
    """cuBLAS reads CUBLAS_WORKSPACE_CONFIG at the process's first call; in a sweep an earlier job makes it."""
    from etf_train.cli import set_process_env
    from etf_train.command import Command

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    set_process_env(Command(args))
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == (":4096:8" if set_ else None)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"

"""CUDA tests, selected with `pytest -m cuda` (scripts/gpu_check.sh runs them on the GPU machine); skipped on a
machine without a CUDA device. Each compares the device against the CPU or against what the run logged."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from etf_train import NearestETFHead
from etf_train.posthoc import main as etf_eval
from etf_train.rundir import read_record, read_scalars
from etf_train.training import train

from .conftest import TINY, make_cfg

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("head", ["learned", "fixed_etf", "nearest_etf"])
def test_each_head_trains_on_cuda(tmp_path, head, precision):
    """Catches a CPU tensor meeting a CUDA one anywhere in a training epoch, evaluation or NC pass, and a precision
    other than the one asked for."""
    train(make_cfg(*TINY, f"head={head}", "trainer.device=cuda", f"trainer.precision={precision}"), tmp_path)
    curves = read_scalars(tmp_path)
    assert all(math.isfinite(v) for v in curves["train/loss"][1])
    assert read_record(tmp_path)["trainer"]["precision"] == precision
    if head == "nearest_etf":
        assert all(v > 0 for v in curves["solver/ms"][1])


@pytest.mark.parametrize(("d", "K"), [(512, 10), (512, 100)])
@pytest.mark.parametrize("method", ["svd", "gram", "newton"])
def test_head_in_float32_on_cuda_follows_float64_on_the_cpu(d, K, method):
    """Two training steps of the nearest-ETF head at training sizes: P and the features' gradient in float32 on the
    device against float64 on the CPU (catches a solver or backward that loses accuracy on cuSOLVER)."""
    g = torch.Generator().manual_seed(0)
    heads = {
        "cpu": NearestETFHead(K, d, solver={"name": method}).double(),
        "cuda": NearestETFHead(K, d, solver={"name": method}).cuda(),
    }
    y = torch.arange(4 * K) % K
    for _ in range(2):
        f = torch.randn(4 * K, d, generator=g, dtype=torch.float64)
        grads = {}
        for where, head in heads.items():
            x = (f.clone() if where == "cpu" else f.float().cuda()).requires_grad_()
            F.cross_entropy(head(x, y.to(x.device)), y.to(x.device)).backward()
            grads[where] = x.grad.cpu().double()
        assert (heads["cuda"].P.cpu().double() - heads["cpu"].P).abs().max() < 1e-4
        assert (grads["cuda"] - grads["cpu"]).abs().max() < 1e-3 * grads["cpu"].abs().max()


@pytest.mark.parametrize("compiled", [False, True])
def test_etf_eval_on_cuda_gives_the_logged_figures(tmp_path, compiled):
    """etf-eval --device cuda of a plain and of a compiled run: the test figures the run logged (a compiled run's
    checkpoint once held `_orig_mod.` keys that no rebuilt model fits)."""
    train(make_cfg(*TINY, "trainer.device=cuda", "trainer.max_epochs=1", f"trainer.compile={compiled}"), tmp_path)
    assert etf_eval([str(tmp_path), "--device", "cuda"]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    logged = {tag: float(values[-1]) for tag, (_, values) in read_scalars(tmp_path).items()}
    assert again["test/loss"] == pytest.approx(logged["test/loss"], rel=1e-3)
    assert abs(again["test/acc"] - logged["test/acc"]) <= 100 / 32 + 1e-6  # one of the 32 test images at most

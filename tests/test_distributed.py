"""DistributedDataParallel on CPU: torchrun, gloo backend, two processes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from etf_train.rundir import read_scalars

from .conftest import TINY

WORKER = Path(__file__).with_name("ddp_worker.py")
# LayerNorm, not BatchNorm: per-rank batch statistics would make 2 processes differ from 1 by design.
DDP = [*(o for o in TINY if not o.startswith("backbone.")), "backbone=mlp", "backbone.norm=layer", "backbone.hidden=32", "backbone.dim=16",
       "trainer.device=cpu", "trainer.max_epochs=2", "trainer.batch_size=16"]


def torchrun(nproc, out, *overrides):
    exe = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(exe), "--standalone", f"--nproc_per_node={nproc}", str(WORKER), str(out), *overrides],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(nproc)]


@pytest.mark.parametrize("head", ["nearest_etf", pytest.param("learned", marks=pytest.mark.slow)])
def test_two_processes_agree_and_match_one_process(tmp_path, head):
    two = torchrun(2, tmp_path / "two", *DDP, f"head={head}")
    one = torchrun(1, tmp_path / "one", *DDP, f"head={head}")
    for k, v in two[0]["model"].items():
        assert torch.equal(v, two[1]["model"][k]), f"{k} differs between ranks"
        assert torch.allclose(v.float(), one[0]["model"][k].float(), atol=1e-4, rtol=1e-4), f"{k}: 2 vs 1 process"
    if head == "nearest_etf":
        assert int(two[0]["model"]["head.step"]) == int(one[0]["model"]["head.step"]) > 0
    for tag in ("train/loss", "train/acc", "test/acc", "nc/nc1"):
        assert two[0]["scalars"][tag] == pytest.approx(one[0]["scalars"][tag], rel=1e-3, abs=1e-4), tag
    # one output folder, one TensorBoard writer (rank 0)
    run = tmp_path / "two" / "run"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert list(read_scalars(run)["train/loss"][0]) == [1, 2]


def test_class_balanced_batches_and_uneven_test_shards_under_ddp(tmp_path):
    # 17 test samples: rank 0 evaluates 2 batches of 8, rank 1 one batch; evaluation must not wait on DDP.
    two = torchrun(2, tmp_path / "two", *DDP, "loader.class_balanced=true", "dataset.limit_test=17",
                   "trainer.max_epochs=1")
    for k, v in two[0]["model"].items():
        assert torch.equal(v, two[1]["model"][k])

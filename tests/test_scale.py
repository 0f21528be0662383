"""K = 1000 classes with d = 2048 features (ResNet-50 on ImageNet): the nearest-ETF head must train in little memory."""

import subprocess
import sys

from etf_train.rundir import read_scalars
from etf_train.training import train

from .conftest import make_cfg

MEASURE = r"""
import resource, torch
import torch.nn.functional as F
from etf_train import NearestETFHead
torch.manual_seed(0)
K, d, B = 1000, 2048, 256
f = torch.randn(B, d, requires_grad=True)
y = torch.randint(0, K, (B,))
head = NearestETFHead(K, d)
F.cross_entropy(head(f, y), y).backward()  # first step: allocator and LAPACK workspaces warm up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(3):
    f.grad = None
    F.cross_entropy(head(f, y), y).backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
buffers = sum(b.numel() * b.element_size() for b in head.buffers())
print(buffers / 2**20, (after - before) / 2**10, int(head.step))
"""


def test_k1000_head_memory_stays_in_megabytes():
    out = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    buffers_mb, growth_mb, steps = map(float, out.stdout.split())
    assert steps == 4
    assert buffers_mb < 20  # P and the running means: 2 x d x K float32 = 15.6 MB
    # Further steps allocate nothing lasting; the authors' dense DDN matrix would be K(K+1)/2 x K^2 floats (~2 TB).
    assert growth_mb < 200, f"peak memory grew by {growth_mb:.0f} MB over 3 steps"


def test_k1000_trains_through_the_runner(tmp_path):
    cfg = make_cfg(
        "dataset=synthetic",
        "dataset.num_classes=1000",
        "dataset.image_size=4",
        "dataset.channels=1",
        "dataset.train_per_class=2",
        "dataset.test_per_class=1",
        "backbone=mlp",
        "backbone.hidden=64",
        "backbone.dim=2048",
        "head=nearest_etf",
        "trainer.batch_size=500",
        "trainer.max_epochs=1",
        "trainer.progress=false",
    )
    last = train(cfg, tmp_path)
    assert last["train/loss"] == last["train/loss"] and "nc/nc1" in last
    assert read_scalars(tmp_path)["solver/ms"][1][0] > 0

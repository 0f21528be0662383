"""Fault injection: kill -9 a deterministic CPU run anywhere (inside a checkpoint write too), run the same command
again until it finishes, and the result is bit-identical to an uninterrupted run, with no duplicated or missing
epochs in the event files."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from etf_train.rundir import read_scalars
from etf_train.training.checkpoint import SAVE_DELAY_ENV

from .conftest import TINY

# 12 steps an epoch, 3 epochs, bit-identical reruns on CPU
SETTINGS = [*TINY, "trainer.batch_size=8", "trainer.max_epochs=3", "trainer.deterministic=true", "head=nearest_etf"]
TAGS = ("train/loss", "train/acc", "test/acc", "nc/nc1", "lr")


def start(run: Path, delay: float | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({SAVE_DELAY_ENV: str(delay)} if delay else {})}
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("etf-train")), *SETTINGS, f"hydra.run.dir={run}"],
        cwd=run.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(run: Path) -> None:
    """The same command again (and again, should it be killed too) until the run is finished."""
    proc = start(run)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    assert (run / "checkpoints" / "finished").exists()


def assert_same_as(run: Path, reference: Path) -> None:
    a, b = (torch.load(r / "checkpoints" / "last.pt", weights_only=False) for r in (run, reference))
    assert a["epoch"] == b["epoch"] == 3
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), f"{run.name}: {k} differs"
    ca, cb = read_scalars(run), read_scalars(reference)
    for tag in TAGS:
        assert list(ca[tag][0]) == list(cb[tag][0]) == [1, 2, 3], (run.name, tag)
        assert list(ca[tag][1]) == list(cb[tag][1]), (run.name, tag)
    assert not list(run.glob("checkpoints/.*.tmp")) or (run / "checkpoints" / "finished").exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("faults") / "reference"
    began = time.time()
    finish(run)
    return run, time.time() - began


def test_kill_inside_a_checkpoint_write_then_the_same_command(tmp_path, reference):
    ref, _ = reference
    run = tmp_path / "run"
    proc = start(run, delay=30)  # every write sleeps between the temporary file and the rename
    tmp = run / "checkpoints" / ".last.pt.tmp"
    deadline = time.time() + 120
    while not tmp.exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert tmp.exists() and not (run / "checkpoints" / "last.pt").exists()  # killed mid-write of the first one
    finish(run)
    assert_same_as(run, ref)


@pytest.mark.parametrize(
    "points", [pytest.param(1, id="1-point"), pytest.param(20, marks=pytest.mark.slow, id="20-points")]
)
def test_kill_at_random_points_then_the_same_command(tmp_path, reference, points):
    ref, duration = reference
    rng = random.Random(points)
    for i in range(points):
        run = tmp_path / f"run{i}"
        proc = start(run, delay=0.2)  # writes take long enough to be hit now and then
        time.sleep(rng.uniform(0.5, duration + 1.0))  # start-up, training, writes, the final marker
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        finish(run)  # killed before Hydra made the folder too: the same command then starts it, and ends the same
        assert_same_as(run, ref)

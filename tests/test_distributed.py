"""DistributedDataParallel on CPU: torchrun, gloo backend, two processes."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from etf_train import EtfTrainError
from etf_train.rundir import read_record, read_scalars
from etf_train.training import train

from .conftest import TINY, make_cfg

WORKER = Path(__file__).with_name("ddp_worker.py")
# LayerNorm, not BatchNorm: per-rank batch statistics would make 2 processes differ from 1 by design.
DDP = [
    *(o for o in TINY if not o.startswith("backbone.")),
    "backbone=mlp",
    "backbone.norm=layer",
    "backbone.hidden=32",
    "backbone.dim=16",
    "trainer.device=cpu",
    "trainer.max_epochs=2",
    "trainer.batch_size=16",
]


def torchrun(nproc, out, *overrides):
    exe = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(exe), "--standalone", f"--nproc_per_node={nproc}", str(WORKER), str(out), *overrides],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
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


@pytest.mark.slow  # a torchrun launch of its own (~14 s); the default run keeps one DDP parity test
def test_class_balanced_batches_and_uneven_test_shards_under_ddp(tmp_path):
    # 17 test samples: rank 0 evaluates 2 batches of 8, rank 1 one batch; evaluation must not wait on DDP.
    two = torchrun(
        2, tmp_path / "two", *DDP, "loader.class_balanced=true", "dataset.limit_test=17", "trainer.max_epochs=1"
    )
    for k, v in two[0]["model"].items():
        assert torch.equal(v, two[1]["model"][k])


@pytest.mark.slow  # a torchrun launch of its own (~14 s); the default run keeps one DDP parity test
def test_soft_labels_and_another_loss_keep_the_ranks_identical(tmp_path):
    """Mixup's soft labels reach the nearest-ETF head as label-weighted class sums: if those sums (or the counts)
    were not all-reduced, each rank would build its own ETF and the heads' buffers would drift apart."""
    two = torchrun(2, tmp_path / "two", *DDP, "head=nearest_etf", "loss=mse", "mix=mixup", "trainer.max_epochs=1")
    assert int(two[0]["model"]["head.step"]) > 0
    for k, v in two[0]["model"].items():
        assert torch.equal(v, two[1]["model"][k]), f"{k} differs between ranks"


def _torchrun_cli(run, *overrides, env=None):
    """torchrun with 2 processes, in a process group of its own (a test can signal the group, as Slurm does)."""
    exe = Path(sys.executable).with_name("torchrun")
    args = [str(exe), "--standalone", "--nproc_per_node=2", "-m", "etf_train", *overrides, f"hydra.run.dir={run}"]
    return subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        cwd=run.parent,
        start_new_session=True,
    )


def _torchrun_stopped_by_sigterm(run: Path, settings: list[str], sig=signal.SIGTERM, group=False) -> None:
    """Stop a torchrun job once its first checkpoint exists: `sig` to torchrun, or with `group` to every process of
    the job (torchrun, both ranks and their DataLoader workers), as Slurm's scancel and time limit send it."""
    proc = _torchrun_cli(run, *settings)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    name = signal.Signals(sig).name
    assert proc.returncode != 0 and err.count(f"etf-train: stopped by {name} at epoch") >= 1, err[-3000:]
    assert "killed by signal" not in err, err[-3000:]  # (torchrun itself prints a traceback when signalled)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    # The checkpoint is where the stop line says. A signal during the steps of epoch E saves E's first S steps; one
    # during E's evaluation (which one it meets depends on timing) stops at E's end, its last step, as loop.py says.
    epoch, step = map(int, re.search(rf"stopped by {name} at epoch (\d+), step (\d+)", err).groups())
    assert 0 < epoch < 20 and step > 0, err[-3000:]
    if state["partial"] is None:
        assert state["epoch"] == epoch
    else:
        assert (state["epoch"], state["partial"]["epoch"], state["partial"]["step"]) == (epoch - 1, epoch, step)
    assert not (run / "checkpoints" / "finished").exists() and not (run / ".etf-train.lock").exists()


SIGTERM_SETTINGS = [*DDP, "trainer.max_epochs=20", "trainer.deterministic=true", "trainer.progress=false"]


def test_sigterm_under_torchrun_saves_at_a_step_boundary_on_every_rank(tmp_path):
    """Ranks used to agree on a stop only every 20 steps: with 3 steps an epoch a signal was ignored until torchrun
    killed the job, with no checkpoint and no line. Then: the record did not name the process count, and BatchNorm
    statistics are per process (batch_size / processes samples), so a 2-process run continued on 1 process changed
    its training mid-run in silence (and etf-compare pooled 1- with 2-process runs unflagged)."""
    run = tmp_path / "run"
    _torchrun_stopped_by_sigterm(run, SIGTERM_SETTINGS)
    assert read_record(run)["trainer"]["processes"] == 2
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["config"]["trainer"]["processes"] == 2
    with pytest.raises(EtfTrainError, match=r"trainer.processes: 2 -> 1"):
        train(make_cfg(*SIGTERM_SETTINGS), run)


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.slow)])
def test_a_signal_to_the_whole_torchrun_job_with_dataloader_workers_saves(tmp_path, sig):
    """Slurm signals every process of the job: the DataLoader workers used to die first and take the rank with them
    ('DataLoader worker ... killed by signal'), leaving no checkpoint of the interrupted epoch."""
    run = tmp_path / "run"
    _torchrun_stopped_by_sigterm(
        run, [*SIGTERM_SETTINGS, "loader.mode=dataloader", "loader.num_workers=1"], sig, group=True
    )


@pytest.mark.slow
def test_sigterm_under_torchrun_then_the_same_command_equals_an_uninterrupted_run(tmp_path):
    """The resume half of the test above (two more torchrun launches, ~35 s)."""
    reference = _torchrun_cli(tmp_path / "reference", *SIGTERM_SETTINGS)
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-3000:]
    run = tmp_path / "run"
    _torchrun_stopped_by_sigterm(run, SIGTERM_SETTINGS)
    resumed = _torchrun_cli(run, *SIGTERM_SETTINGS)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    a, b = (torch.load(r / "checkpoints" / "last.pt", weights_only=False) for r in (run, tmp_path / "reference"))
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert list(read_scalars(run)["train/loss"][0]) == list(range(1, 21))

"""One run per folder: refused starts change nothing on disk, resumes refuse changed settings, runs never mix,
sweeps continue where they stopped (the real CLI, and the real trainer in-process)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from etf_train import EtfTrainError, rundir
from etf_train.rundir import LOCK, read_scalars
from etf_train.training import train
from etf_train.training.checkpoint import SAVE_DELAY_ENV
from etf_train.training.resume import refuse_changes

from .conftest import (
    TINY,
    Crash,
    etf_train,
    etf_train_here,
    interrupted,
    make_cfg,
    snapshot,
)

QUICK = [*TINY, "trainer.max_epochs=2"]


def crash_after_epoch_1(monkeypatch, cfg, run_dir):
    """A 2-epoch run killed right after its epoch-1 checkpoint (as kill -9 would leave it)."""
    with monkeypatch.context() as m:
        interrupted(m, after_epoch=1)
        with pytest.raises(Crash):
            train(cfg, run_dir)
    assert not (run_dir / LOCK).exists()


def test_refused_resume_leaves_the_run_folder_byte_for_byte(tmp_path, monkeypatch, capfd):
    """Hydra used to rewrite .hydra/config.yaml before the trainer refused: the folder then claimed another head."""
    run = tmp_path / "runs" / "x"
    assert (
        etf_train_here(*QUICK, f"hydra.run.dir={run}", cwd=tmp_path, monkeypatch=monkeypatch, capfd=capfd).returncode
        == 0
    )
    (run / "checkpoints" / "finished").unlink()
    before = snapshot(run)
    proc = etf_train_here(
        *QUICK, "head=learned", f"hydra.run.dir={run}", cwd=tmp_path, monkeypatch=monkeypatch, capfd=capfd
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "was started with other settings (head.name: nearest_etf -> learned" in proc.stderr
    assert snapshot(run) == before
    assert OmegaConf.load(run / ".hydra" / "config.yaml").head.name == "nearest_etf"


def test_a_refused_start_in_a_new_folder_leaves_no_folder(tmp_path, monkeypatch, capfd):
    proc = etf_train_here(
        *QUICK, "head.tau=abc", f"hydra.run.dir={tmp_path}/new", cwd=tmp_path, monkeypatch=monkeypatch, capfd=capfd
    )
    assert proc.returncode == 2 and "head.tau must be a finite number > 0, got 'abc'" in proc.stderr
    assert not (tmp_path / "new").exists()


def test_resume_refuses_changed_settings_and_accepts_neutral_ones(tmp_path, monkeypatch):
    """Changing max_epochs or lr on resume used to keep the old schedule silently while .hydra showed the new."""
    run = tmp_path / "run"
    crash_after_epoch_1(monkeypatch, make_cfg(*QUICK), run)
    before = snapshot(run)
    for change, listed in (
        ("trainer.max_epochs=5", "trainer.max_epochs: 2 -> 5"),
        ("optimizer.lr=0.5", "optimizer.lr: 0.05 -> 0.5"),
        ("seed=7", "seed: 1 -> 7"),
        # a run logged at two intervals under a record naming one: coarser thresholds unseen
        ("metrics.every_n_epochs=2", "metrics.every_n_epochs: 1 -> 2"),
    ):
        with pytest.raises(EtfTrainError, match="was started with other settings") as info:
            train(make_cfg(*QUICK, change), run)
        assert listed in str(info.value) and "\n" not in str(info.value)
        assert snapshot(run) == before
    # progress bar, worker count, eval batch, device: cannot change the results
    train(
        make_cfg(
            *QUICK, "trainer.progress=true", "loader.num_workers=1", "trainer.eval_batch_size=7", "trainer.device=cpu"
        ),
        run,
    )
    assert list(read_scalars(run)["train/loss"][0]) == [1, 2]
    assert (run / "checkpoints" / "finished").exists()


def test_the_record_names_the_precision_that_ran_so_auto_cannot_hide_a_switch(tmp_path, monkeypatch):
    """precision=auto is bf16 autocast on CUDA and fp32 on CPU, but the record said "auto" and trainer.device is
    neutral: a GPU run resumed on a CPU switched precision mid-run, and etf-compare pooled bf16 with fp32 runs."""
    run = tmp_path / "run"
    crash_after_epoch_1(monkeypatch, make_cfg(*QUICK), run)  # trainer.precision=auto, on this CPU
    assert OmegaConf.load(run / ".hydra" / "config.yaml").trainer.precision == "fp32"
    # and the code that ran: the commit of this checkout (etf-compare names mixed versions)
    repo = Path(__file__).resolve().parents[1]
    git = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    recorded = OmegaConf.load(run / ".hydra" / "config.yaml").code_version
    assert recorded.startswith("0.1.0") and (git.returncode != 0 or f"+g{git.stdout.strip()[:10]}" in recorded)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["config"]["trainer"]["precision"] == "fp32"
    with pytest.raises(EtfTrainError, match="trainer.precision: fp32 -> bf16"):
        train(make_cfg(*QUICK, "trainer.precision=bf16"), run)
    # continued under other code (a fix pulled in between): allowed, and the record says so
    monkeypatch.setattr(rundir, "code_version", lambda: "0.2.0+gnew")
    train(make_cfg(*QUICK, "trainer.precision=fp32"), run)  # what auto resolved to: the same run
    assert (run / "checkpoints" / "finished").exists()
    assert OmegaConf.load(run / ".hydra" / "config.yaml").code_version == f"{recorded} then 0.2.0+gnew"
    train(make_cfg(*QUICK), run)  # the same code again: said once
    assert OmegaConf.load(run / ".hydra" / "config.yaml").code_version == f"{recorded} then 0.2.0+gnew"


def test_a_finished_run_that_starts_over_is_no_longer_marked_finished(tmp_path, monkeypatch):
    """With its checkpoint gone, a finished run starts over in its folder; the old marker stayed while the new
    attempt trained and after it was killed, so etf-compare counted a run killed at epoch 1 as finished."""
    run = tmp_path / "run"
    train(make_cfg(*QUICK), run)
    (run / "checkpoints" / "last.pt").unlink()
    crash_after_epoch_1(monkeypatch, make_cfg(*QUICK), run)
    assert not (run / "checkpoints" / "finished").exists()
    train(make_cfg(*QUICK), run)
    assert (run / "checkpoints" / "finished").exists()


def test_resume_refuses_another_image_folder_and_another_eval_batch_for_a_batch_centred_head():
    """dataset.root was neutral: a run resumed on another image folder trained on other images under its old record;
    and head.center=batch takes the mean of each eval batch, so trainer.eval_batch_size changes its logged metrics."""

    def run(dataset, root, center="none", eval_batch=512):
        return {
            "dataset": {"name": dataset, "root": root},
            "head": {"name": "fixed_etf", "center": center},
            "trainer": {"eval_batch_size": eval_batch},
        }

    refuse_changes(run("cifar10", "/a"), run("cifar10", "/b"), "r")  # the same CIFAR-10, moved
    refuse_changes(run("cifar10", "/a"), run("cifar10", "/a", eval_batch=3), "r")
    for folder_dataset in ("image_folder", "imagenet"):
        with pytest.raises(EtfTrainError, match=r"dataset.root: /a -> /b"):
            refuse_changes(run(folder_dataset, "/a"), run(folder_dataset, "/b"), "r")
    with pytest.raises(EtfTrainError, match=r"trainer.eval_batch_size: 512 -> 3"):
        refuse_changes(run("cifar10", "/a", "batch"), run("cifar10", "/a", "batch", 3), "r")


def _started(cwd: Path, *args: str) -> subprocess.Popen:
    """`etf-train ARGS` started in the background (two at once: the tests of runs started in the same second)."""
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("etf-train")), *args],
        cwd=cwd,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_resume_never_in_a_folder_holding_a_run_is_refused(tmp_path, monkeypatch, capfd):
    """A fresh start in a used folder mixed two runs' events (TensorBoard showed epochs 1,2,1,2)."""
    run = tmp_path / "run"
    assert (
        etf_train_here(*QUICK, f"hydra.run.dir={run}", cwd=tmp_path, monkeypatch=monkeypatch, capfd=capfd).returncode
        == 0
    )
    before = snapshot(run)
    proc = etf_train_here(
        *QUICK, "trainer.resume=never", f"hydra.run.dir={run}", cwd=tmp_path, monkeypatch=monkeypatch, capfd=capfd
    )
    assert proc.returncode == 2 and "trainer.resume=never starts a new run, but" in proc.stderr
    assert snapshot(run) == before


@pytest.mark.parametrize("attempt", [0, *(pytest.param(i, marks=pytest.mark.slow) for i in range(1, 5))])
def test_two_runs_started_in_the_same_second_get_two_folders(tmp_path, attempt):
    # the folder names the head choice: head=learned_authors runs were named `learned` (name: learned), like learned's
    heads = {1: "nearest_etf", 2: "learned_authors"}
    procs = [_started(tmp_path, *QUICK, f"seed={s}", f"head={heads[s]}") for s in (1, 2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    runs = sorted(p.parent.parent for p in tmp_path.glob("outputs/*/*/.hydra/config.yaml"))
    assert len(runs) == 2
    assert sorted(OmegaConf.load(r / ".hydra" / "config.yaml").seed for r in runs) == [1, 2]
    assert all(len(list(r.glob("events.out.tfevents.*"))) == 1 for r in runs)
    for r in runs:  # <time>_<head choice>_seedN_<id>
        seed = OmegaConf.load(r / ".hydra" / "config.yaml").seed
        assert r.name.split("_", 1)[1].rsplit("_", 1)[0] == f"{heads[seed]}_seed{seed}"


@pytest.mark.parametrize("attempt", [0, *(pytest.param(i, marks=pytest.mark.slow) for i in range(1, 4))])
def test_two_sweeps_started_in_the_same_second_get_two_folders(tmp_path, attempt):
    """Sweep folders were named by the second alone: two sweeps started together shared one, each job refused in
    the other's folder, and the folder held one head from each sweep, compared as one finished sweep."""
    procs = [_started(tmp_path, "-m", *QUICK, "head=learned,fixed_etf", f"seed={s}") for s in (1, 2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    sweeps = sorted(tmp_path.glob("outputs/multirun/*/*"))
    assert len(sweeps) == 2
    for sweep in sweeps:
        seeds = [OmegaConf.load(job / ".hydra" / "config.yaml").seed for job in sorted(sweep.glob("head=*"))]
        assert len(seeds) == 2 and len(set(seeds)) == 1


@pytest.mark.parametrize("attempt", [0, *(pytest.param(i, marks=pytest.mark.slow) for i in range(1, 4))])
def test_a_second_process_in_a_live_run_folder_is_refused_and_a_stale_lock_is_taken_over(
    tmp_path, attempt, monkeypatch, capfd
):
    run = tmp_path / "run"
    slow = [*TINY, "trainer.max_epochs=3"]
    # each checkpoint write of the first process sleeps 2 s: it still runs when the second (in-process) one starts
    first = subprocess.Popen(
        [str(Path(sys.executable).with_name("etf-train")), *slow, f"hydra.run.dir={run}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", SAVE_DELAY_ENV: "2"},
    )
    deadline = time.time() + 120
    while not (run / LOCK).exists() and time.time() < deadline:
        time.sleep(0.05)
    owner = json.loads((run / LOCK).read_text())
    proc = etf_train_here(*slow, f"hydra.run.dir={run}", cwd=tmp_path, monkeypatch=monkeypatch, capfd=capfd)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert proc.returncode == 2 and f"is in use by pid {owner['pid']}" in proc.stderr, proc.stderr
    assert len(list(run.glob("events.out.tfevents.*"))) == 1 and not (run / LOCK).exists()
    # a lock left by a killed process: its pid is gone, so the next start takes the folder over
    (run / "checkpoints" / "finished").unlink()
    (run / LOCK).write_text(json.dumps({**owner, "pid": 2**22 + 17}))
    assert (
        etf_train_here(*slow, f"hydra.run.dir={run}", cwd=tmp_path, monkeypatch=monkeypatch, capfd=capfd).returncode
        == 0
    )
    assert not (run / LOCK).exists()


@pytest.mark.parametrize(
    "launcher",
    [[], pytest.param(["hydra/launcher=joblib", "hydra.launcher.n_jobs=1"], marks=pytest.mark.slow)],
    ids=["basic", "joblib"],
)
def test_the_same_sweep_command_continues_the_interrupted_sweep(tmp_path, monkeypatch, capfd, launcher):
    """A re-run of an interrupted sweep used to start over in a new folder; with a hydra/... choice (joblib, Slurm)
    it still did: Hydra files those among its own overrides, not the task's."""
    sweep = ["-m", *launcher, *QUICK, "head=learned,nearest_etf", "seed=1"]

    def etf_train(*args, cwd):
        return etf_train_here(*args, cwd=cwd, monkeypatch=monkeypatch, capfd=capfd)

    assert etf_train(*sweep, cwd=tmp_path).returncode == 0
    (folder,) = tmp_path.glob("outputs/multirun/*/*")
    done, redo = folder / "head=learned", folder / "head=nearest_etf"  # seed=1 is a constant: not in the names
    kept = {k: v for k, v in snapshot(done).items() if k != "cli.log"}
    for p in [*redo.glob("events.out.tfevents.*"), *redo.glob("checkpoints/*")]:
        p.unlink()  # as if killed before its first checkpoint
    proc = etf_train(*sweep, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"continuing the interrupted sweep in {folder.relative_to(tmp_path)}" in proc.stderr
    assert list(tmp_path.glob("outputs/multirun/*/*")) == [folder]
    assert {k: v for k, v in snapshot(done).items() if k != "cli.log"} == kept  # not trained again:
    assert "already finished 2 epochs; nothing to do" in (done / "cli.log").read_text()  # only its log says so
    assert (redo / "checkpoints" / "finished").exists() and list(read_scalars(redo)["train/loss"][0]) == [1, 2]
    # all finished: the same command now starts a new sweep
    time.sleep(1.1)
    assert etf_train(*sweep, cwd=tmp_path).returncode == 0
    assert len(list(tmp_path.glob("outputs/multirun/*/*"))) == 2


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_an_empty_output_folder_is_refused(tmp_path, key):
    args = ["-m"] if key == "hydra.sweep.dir" else []
    proc = etf_train(*args, *QUICK, f"{key}=", cwd=tmp_path)
    assert proc.returncode == 2 and f"{key}= is empty" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    """It slept one second before the signal, and failed under load (the handler was not in place yet)."""
    from etf_train.interrupt import READY_ENV

    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("etf-train")), *QUICK],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, READY_ENV: str(ready)},
    )
    deadline = time.monotonic() + 120
    while not ready.exists():  # the start-up handler is in place; Hydra, torch and the data are still ahead
        assert proc.poll() is None and time.monotonic() < deadline, "etf-train ended before its start-up handler"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines() == ["etf-train: interrupted (Ctrl-C) outside training; no training step was lost"]
    assert not list(tmp_path.glob("outputs/*/*/checkpoints"))


@pytest.mark.parametrize("where", ["install", "set_process_env", "prepare"])
def test_ctrl_c_at_each_step_before_hydra_is_one_line(tmp_path, monkeypatch, capfd, where):
    """CI once got a traceback: the signal landed after the handler was in place but before main()'s try. Here it
    lands on the last line of each start-up step, the handler's own installation included."""
    from etf_train import cli, interrupt

    step = getattr(interrupt if where == "install" else cli, where)

    def then_ctrl_c(*args, **kwargs):
        step(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(interrupt if where == "install" else cli, where, then_ctrl_c)
    try:
        proc = etf_train_here(*QUICK, cwd=tmp_path, monkeypatch=monkeypatch, capfd=capfd)
    except KeyboardInterrupt:
        pytest.fail(f"a Ctrl-C at the end of {where}() escaped main(): a traceback")
    assert proc.returncode == 130
    assert proc.stderr.splitlines() == ["etf-train: interrupted (Ctrl-C) outside training; no training step was lost"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("delay_s", [0.002, 0.011, 0.037])
def test_ctrl_c_inside_omegaconf_is_raised_once_it_has_returned(delay_s):
    """Raised inside omegaconf's flag restoring, a KeyboardInterrupt once surfaced as an AttributeError traceback
    from Hydra's config loading (exit 1). The start-up handler must raise it only outside omegaconf."""
    import threading
    import traceback

    from etf_train.interrupt import startup_sigint

    previous = signal.signal(signal.SIGINT, startup_sigint)
    cfg = OmegaConf.create({f"k{i}": {"v": list(range(8))} for i in range(50)})
    try:
        threading.Timer(delay_s, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt) as info:
            for _ in range(10**6):
                OmegaConf.set_struct(cfg, True)
                cfg.k3.v = list(range(8))  # flag_override inside: the code the interrupt once broke
                OmegaConf.set_struct(cfg, False)
                sum(range(300))  # some time outside omegaconf
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGINT, previous)
    where = traceback.extract_tb(info.value.__traceback__)[-1].filename
    assert "omegaconf" not in where, where


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    """A failed write used to end in 'unexpected pos ...' with a 600 KB temporary file left behind."""
    from etf_train.training import Run

    run = tmp_path / "run"
    save = Run.save

    def disk_fills_after_epoch_1(self, epoch, partial=None):
        if epoch == 2:  # the next write goes to /dev/full, which fails every write with ENOSPC
            os.symlink("/dev/full", run / "checkpoints" / ".last.pt.tmp")
        save(self, epoch, partial)

    monkeypatch.setattr(Run, "save", disk_fills_after_epoch_1)
    with pytest.raises(
        EtfTrainError,
        match=r"cannot write checkpoint .*last.pt: the disk is full .*the previous "
        r"checkpoint is kept",
    ) as info:
        train(make_cfg(*QUICK), run)
    assert "\n" not in str(info.value)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["failed", "last.pt"]


def test_an_error_after_the_start_goes_to_the_run_log_too(tmp_path, monkeypatch, capfd):
    proc = etf_train_here(
        *QUICK,
        "head=learned",
        "head.normalize=false",
        "optimizer.lr=1e30",
        f"hydra.run.dir={tmp_path}/r",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
        capfd=capfd,
    )
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert line.startswith("etf-train: error: non-finite loss at epoch 1")
    assert line in (tmp_path / "r" / "cli.log").read_text()
    assert (tmp_path / "r" / "checkpoints" / "failed").read_text().strip() == line.removeprefix("etf-train: error: ")


def test_a_dated_output_folder_that_cannot_be_made_is_one_line(tmp_path):
    """Hydra's own mkdir of outputs/<date>/... used to end in a traceback (a file in the way, or no permission)."""
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / time.strftime("%Y-%m-%d")).write_text("a file where the day's folder goes")
    proc = etf_train(*QUICK, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.startswith("etf-train: error: cannot write the output folder") and "is not a folder" in proc.stderr
    )


def test_a_run_on_an_image_folder_resumes_only_on_the_files_it_trained_on(tmp_path, monkeypatch):
    """The record held only the config: images added or moved to another class between a crash and the same command
    were trained on in silence, one run on two datasets; etf-eval evaluated its checkpoints on the new files."""
    import numpy as np

    from etf_train.posthoc import evaluate_run

    from .conftest import write_folder

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    write_folder(data, "train", {"a": 4, "b": 4}, 8, rng)
    write_folder(data, "test", {"a": 2, "b": 2}, 8, rng)
    cfg = make_cfg(
        "dataset=image_folder",
        f"dataset.root={data}",
        "dataset.image_size=8",
        "backbone=mlp",
        "head=learned",
        "trainer.max_epochs=2",
        "trainer.batch_size=4",
        "trainer.progress=false",
        "trainer.checkpoint_every_s=0",
    )
    run = tmp_path / "run"
    crash_after_epoch_1(monkeypatch, cfg, run)
    assert OmegaConf.load(run / ".hydra" / "config.yaml").dataset.files.startswith("8 train + 4 test files, sha256 ")
    (data / "train" / "a" / "00.png").rename(data / "train" / "b" / "moved.png")  # a relabelling: same counts
    with pytest.raises(EtfTrainError, match=r"dataset.files: 8 train \+ 4 test files, sha256 \w+ -> 8 train \+ 4 test"):
        train(cfg, run)
    with pytest.raises(EtfTrainError, match="the data under dataset.root changed since the run"):
        evaluate_run(run)
    (data / "train" / "b" / "moved.png").rename(data / "train" / "a" / "00.png")  # as it was: the run continues
    train(cfg, run)
    assert (run / "checkpoints" / "finished").exists()
    assert evaluate_run(run)[0]["test/acc"] >= 0


def test_keys_a_record_gained_later_never_refuse_an_older_run():
    """A record from before `dataset.flip` ran with the flip (so only flip=false differs), and one from before
    `sizes` (K, sample counts, d: what etf-compare's header reads) has no sizes to differ in."""
    old = {"dataset": {"name": "cifar10"}, "seed": 1}
    changed = rundir.changed_settings
    assert changed(old, {"dataset": {"name": "cifar10", "flip": True}, "seed": 1}) == []
    assert changed(old, {"dataset": {"name": "cifar10", "flip": False}, "seed": 1}) == ["dataset.flip: True -> False"]
    sized = {**old, "sizes": {"num_classes": 10, "train_samples": 500}}
    assert changed(old, sized) == []
    # sizes follow from the settings (which are compared themselves): a difference in them alone is no change
    assert changed(sized, {**old, "sizes": {"num_classes": 10, "train_samples": 400}}) == []


def test_the_record_names_the_sizes_a_report_needs(tmp_path, cfg_factory):
    """K, train and test sample counts, the feature dimension and the optimiser steps an epoch, as TINY sets them
    (4 classes x 24 + 8, d = 16, batch 32: 40 samples in 2 steps)."""
    train(cfg_factory(*TINY, "trainer.max_epochs=1", "dataset.limit_train=40"), tmp_path)
    assert rundir.read_record(tmp_path)["sizes"] == {
        "num_classes": 4,
        "train_samples": 40,
        "test_samples": 32,
        "feature_dim": 16,
        "steps_per_epoch": 2,
    }

"""A CPU sweep's jobs side by side (etf_train/parallel.py, hydra/launcher=parallel): when it is the default, that it
runs jobs at once with the sequential launcher's numbers, and that a stop signal saves every running job, starts no
other, and ends the sweep as a sequential one ends, so that the same command continues it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from etf_train import parallel
from etf_train.command import Command
from etf_train.rundir import read_scalars
from hydra_plugins.etf_train_launcher.parallel_launcher import swept

from .conftest import TINY_UFM

SWEEP = ["-m", "head=learned,fixed_etf"]


@pytest.mark.parametrize(
    ("args", "cores", "cuda", "want"),
    [
        (SWEEP, 2, False, ["hydra/launcher=parallel"]),
        (SWEEP, 1, False, []),  # one core: nothing to run side by side
        (SWEEP, 4, True, []),  # GPU jobs share the device as before
        ([*SWEEP, "hydra/launcher=basic"], 4, False, []),  # the user's own choice
        ([*SWEEP, "hydra.launcher.n_jobs=3"], 4, False, []),
        (["hparams_search=optuna"], 4, False, []),  # trials follow each other
        (["head=learned"], 4, False, []),  # a single run
    ],
)
def test_a_sweep_runs_in_parallel_by_default_only_on_a_cpu_machine(args, cores, cuda, want, monkeypatch):
    monkeypatch.setattr(parallel, "usable_cores", lambda: cores)
    assert parallel.default_launcher(Command(tuple(args)), lambda: cuda) == want


def test_a_job_is_named_by_its_swept_overrides():
    jobs = [["head=learned", "seed=1", "x=3"], ["head=learned", "seed=2", "x=3"], ["head=fixed_etf", "seed=1", "x=3"]]
    assert swept(jobs) == ["head=learned,seed=1", "head=learned,seed=2", "head=fixed_etf,seed=1"]
    assert swept([["x=3"]]) == [""]


def _span(folder: Path, name: str, seconds: float):
    def job():
        (folder / f"{name}.start").write_text(str(time.monotonic()))
        time.sleep(seconds)
        (folder / f"{name}.end").write_text(str(time.monotonic()))
        return name

    return job


def test_jobs_run_side_by_side_at_most_at_once_and_report_in_order(tmp_path):
    jobs = [_span(tmp_path, str(i), 2.0) for i in range(3)]
    jobs.append(lambda: sys.exit(3))  # a job that ends without a result
    outcomes = parallel.run_in_processes(jobs, at_once=2)
    assert [o.result for o in outcomes] == ["0", "1", "2", None] and [o.exitcode for o in outcomes] == [0, 0, 0, 3]
    spans = [tuple(float((tmp_path / f"{i}.{e}").read_text()) for e in ("start", "end")) for i in range(3)]
    others = [sum(a < t < b for a, b in spans) for t, _ in spans]  # the other jobs running as each starts
    assert others[1] == 1 and max(others) == 1  # the second starts beside the first; never three at once


def test_a_stop_signal_reaches_the_running_jobs_and_starts_no_other(tmp_path):
    """SIGTERM to the sweep's process alone: passed on to both running jobs (here they die of it; an etf-train job
    saves first), the third never starts, and the sweep exits 128 + 15."""
    jobs = [_span(tmp_path, str(i), 30) for i in range(3)]
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    start = time.monotonic()
    with pytest.raises(SystemExit) as info:
        parallel.run_in_processes(jobs, at_once=2)
    assert info.value.code == 128 + signal.SIGTERM and time.monotonic() - start < 20
    assert {p.name for p in tmp_path.iterdir()} == {"0.start", "1.start"}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the caller's handler is back


# ------------------------------------------------------------------------------------ through etf-train

UFM = [a for a in TINY_UFM if not a.startswith("trainer.max_epochs")]


def _etf_train(*args, cwd, **popen):
    exe = Path(sys.executable).with_name("etf-train")
    return subprocess.Popen([str(exe), *args], cwd=cwd, text=True, **popen)


needs_two_cores = pytest.mark.skipif(parallel.usable_cores() < 2, reason="a parallel sweep needs 2 usable cores")


@needs_two_cores
def test_the_default_sweep_runs_its_jobs_at_once_with_the_sequential_numbers(tmp_path):
    out = {}
    for launcher in ("default", "basic"):
        extra = [] if launcher == "default" else ["hydra/launcher=basic"]
        proc = _etf_train(
            *SWEEP, *extra, *UFM, "trainer.max_epochs=3", f"hydra.sweep.dir={tmp_path / launcher}", cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out[launcher] = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, out[launcher][-3000:]
    assert "Launching 2 jobs locally, 2 at a time" in out["default"]
    assert "][head=fixed_etf][INFO] - epoch 3/3" in out["default"]  # each job's lines name it
    assert "Launching 2 jobs locally\n" in out["basic"]
    for job in ("head=learned", "head=fixed_etf"):
        a, b = read_scalars(tmp_path / "default" / job), read_scalars(tmp_path / "basic" / job)
        for tag in ("train/loss", "test/acc", "nc/nc1", "nc/nc3"):
            np.testing.assert_array_equal(a[tag][1], b[tag][1])


def _interrupt_when(args, cwd: Path, ready) -> str:
    """etf-train in its own process group, Ctrl-C to the group once ready() holds: its output (exit 130)."""
    proc = _etf_train(*args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode == 130 and "Traceback" not in out, out[-3000:]
    return out


@needs_two_cores
def test_ctrl_c_saves_every_running_job_and_the_same_command_continues_the_sweep(tmp_path):
    """Two jobs run, a third waits; Ctrl-C to the terminal's process group once both have a checkpoint. The same
    command then continues the sweep: both resume where they stopped (and stop again at the next Ctrl-C)."""
    args = ["-m", "head=learned,fixed_etf,nearest_etf", *UFM, "trainer.max_epochs=4000"]
    checkpoints = lambda: list(tmp_path.glob("outputs/multirun/*/*/*/checkpoints/last.pt"))  # noqa: E731
    out = _interrupt_when(args, tmp_path, lambda: len(checkpoints()) == 2)
    stopped = re.findall(r"stopped by SIGINT at (epoch \d+, step \d+); checkpoint saved in (\S+)/checkpoints;", out)
    (sweep,) = tmp_path.glob("outputs/multirun/*/*")
    assert {Path(folder).name for _, folder in stopped} == {p.name for p in sweep.glob("head=*")}
    assert {p.name for p in sweep.glob("head=*")} == {"head=learned", "head=fixed_etf"}  # the third never started

    saved = {p: p.stat().st_mtime_ns for p in checkpoints()}
    out = _interrupt_when(args, tmp_path, lambda: all(p.stat().st_mtime_ns > t for p, t in saved.items()))
    assert f"continuing the interrupted sweep in {sweep.relative_to(tmp_path)}" in out
    assert list(tmp_path.glob("outputs/multirun/*/*")) == [sweep]
    for where, folder in stopped:  # each resumed at the step its Ctrl-C saved (an epoch's last step: its end)
        epoch = where.split(",")[0].split()[1]
        resumed = re.findall(rf"resumed from {re.escape(folder)}/checkpoints/last.pt at (.*)", out)
        assert resumed and resumed[0] in (where, f"the end of epoch {epoch}"), (where, resumed)
    assert out.count("etf-train: stopped by SIGINT at epoch") == 2 and not (sweep / "head=nearest_etf").exists()

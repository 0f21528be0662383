"""A full disk or an unwritable file anywhere in a run folder (event writer, log, checkpoint, markers) is one line and
keeps the last good checkpoint (issue 25, item 5). The end-to-end cases fill a small tmpfs, which needs root
(CAP_SYS_ADMIN); the others make single files fail with /dev/full or an injected ENOSPC and run anywhere."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from etf_train import rundir

from .conftest import TINY, etf_train, etf_train_here

# Slow enough (about 0.1 s an epoch) that the disk fills mid-run, short enough to finish once there is room again.
LONG = [*TINY, "dataset.train_per_class=96", "trainer.max_epochs=30"]


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip("mounting a small tmpfs needs root with CAP_SYS_ADMIN")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Write zeros until the disk says it is full."""
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(bytes(1 << 16))
                fh.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def only_our_lines(stderr: str) -> list[str]:
    """stderr's lines, checked to be etf-train's own: no traceback, no logging error, no thread's traceback."""
    lines = [line for line in stderr.splitlines() if line.strip() and "[INFO]" not in line]
    assert all(line.startswith("etf-train: ") for line in lines), stderr
    return lines


def test_a_disk_that_fills_during_a_run_is_one_line_and_the_same_command_continues(small_disk):
    """The event writer, the log and the markers used to end in a dozen tracebacks (the writer thread's, 'Logging
    error' for every log line, the failed marker's), leaving the lock behind."""
    run = small_disk / "run"
    args = [*LONG, f"hydra.run.dir={run}"]
    exe = Path(sys.executable).with_name("etf-train")
    proc = subprocess.Popen(
        [str(exe), *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"},
    )
    log = run / rundir.LOG
    deadline = time.monotonic() + 120
    while not (log.exists() and "epoch 3/" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the disk was filled"
        time.sleep(0.02)
    filler = fill(small_disk)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2
    errors = [line for line in only_our_lines(stderr) if line.startswith("etf-train: error: ")]
    assert len(errors) == 1 and "the disk is full" in errors[0], stderr
    assert not (run / rundir.LOCK).exists()
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] >= 3

    filler.unlink()  # room again: the same command continues from the last checkpoint and finishes
    again = etf_train(*args, cwd=small_disk)
    assert again.returncode == 0, again.stderr
    assert rundir.is_finished(run) and not (run / rundir.FAILED).exists()
    steps, _ = rundir.read_scalars(run)["train/loss"]
    assert list(steps) == list(range(1, 31))


def test_a_full_disk_before_the_start_is_one_line(small_disk):
    """Hydra's first write in the run folder used to fail with a traceback."""
    fill(small_disk)
    proc = etf_train(*TINY, f"hydra.run.dir={small_disk}/run", cwd=small_disk)
    assert proc.returncode == 2
    assert only_our_lines(proc.stderr) == [
        f"etf-train: error: cannot write the output folder {small_disk}/run: the disk is full (0 MB free there)"
    ]
    assert not (small_disk / "run").exists()


def test_a_log_that_cannot_be_written_is_said_once_and_the_run_goes_on(tmp_path, monkeypatch, capfd):
    """Python's logging printed a 'Logging error' traceback for every line logged."""
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.LOG).symlink_to("/dev/full")  # every write fails with ENOSPC
    proc = etf_train_here(*TINY, f"hydra.run.dir={run}", cwd=tmp_path, monkeypatch=monkeypatch, capfd=capfd)
    assert proc.returncode == 0, proc.stderr
    [line] = only_our_lines(proc.stderr)
    assert re.fullmatch(
        rf"etf-train: warning: cannot write the log {run / rundir.LOG}: the disk is full \(\d+ MB free "
        r"there\)",
        line,
    ), line
    assert rundir.is_finished(run)


@pytest.mark.parametrize(
    ("code", "words"), [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "the file system is read-only")]
)
def test_an_event_file_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, capfd, code, words):
    """TensorBoard's writer thread printed its traceback, the run's error another, and the lock stayed."""
    from tensorboard.summary.writer import record_writer

    write = record_writer.RecordWriter.write
    calls = []

    def disk_fills(self, data):
        calls.append(1)
        if len(calls) > 8:  # the start's events and epoch 1 are written; a later epoch's are not
            raise OSError(code, os.strerror(code))
        write(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", disk_fills)
    run = tmp_path / "run"
    proc = etf_train_here(
        *TINY, "trainer.max_epochs=6", f"hydra.run.dir={run}", cwd=tmp_path, monkeypatch=monkeypatch, capfd=capfd
    )
    assert proc.returncode == 2
    [line] = only_our_lines(proc.stderr)
    assert line.startswith(f"etf-train: error: cannot write {run}: {words}"), line
    assert "run the same command again to continue from the last checkpoint" in line
    assert (run / rundir.FAILED).read_text().strip() == line.removeprefix("etf-train: error: ")
    assert not (run / rundir.LOCK).exists()
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] >= 1


def test_a_failed_marker_that_cannot_be_written_still_gives_the_line(tmp_path, monkeypatch, capfd):
    """Writing the marker was unguarded: its own error replaced the run's, and the lock stayed."""
    write_text = Path.write_text

    def full_for_markers(self, *args, **kwargs):
        if self.name == rundir.FAILED.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_for_markers)
    run = tmp_path / "run"
    proc = etf_train_here(
        *TINY,
        "head=learned",
        "head.normalize=false",
        "optimizer.lr=1e30",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
        capfd=capfd,
    )
    assert proc.returncode == 2
    [line] = only_our_lines(proc.stderr)
    assert line.startswith("etf-train: error: non-finite loss at epoch 1")
    assert not (run / rundir.FAILED).exists() and not (run / rundir.LOCK).exists()

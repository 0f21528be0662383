"""The real `etf-train` command in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

from etf_train.rundir import read_scalars

from .conftest import TINY, etf_train, etf_train_here

ROOT = Path(__file__).parents[1]


def test_cli_runs_into_hydra_run_dir(tmp_path):
    out = tmp_path / "run"
    proc = etf_train(*TINY, "head=nearest_etf", "trainer.max_epochs=1", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / ".hydra" / "config.yaml").is_file()
    assert "train/acc" in read_scalars(out)
    assert f"tensorboard --logdir {out}" in proc.stdout + proc.stderr
    # where to compare it with its neighbours, and a URL for the comparison view (smoothing 0, colour per head)
    assert (
        f"etf-train: compare: tensorboard --logdir {tmp_path}    then open http://localhost:6006/?smoothing=0"
        in proc.stdout
        and "runColorGroup=regex" in proc.stdout
        and "pinnedCards=" in proc.stdout
    )


def test_cli_default_output_folder_is_outputs_date_time(tmp_path):
    proc = etf_train(*TINY, "trainer.max_epochs=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = list((tmp_path / "outputs").glob("*/*/.hydra"))
    assert len(runs) == 1


def test_cli_bad_input_is_one_line_and_nonzero(tmp_path):
    proc = etf_train(*TINY, "backbone.dim=2", f"hydra.run.dir={tmp_path}/r", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("etf-train: error: head=nearest_etf needs feature dimension")
    assert "Traceback" not in proc.stderr


def test_cli_unknown_choice_gets_hydras_message(tmp_path):
    proc = etf_train("head=cosine", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'head/cosine'" in proc.stderr and "Traceback" not in proc.stderr


def test_python_dash_m_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "etf_train", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert (
        proc.returncode == 0
        and "head: fixed_etf, fixed_etf_authors, learned, learned_authors, nearest_etf" in proc.stdout
    )


def test_cli_bad_input_matrix(tmp_path, monkeypatch, capfd):
    """docs/reliability.md: each bad input ends with one clear line and a non-zero status, no traceback."""
    (tmp_path / "afile").write_text("in the way")
    cases = [
        (["dataset=imagenett"], 1, "Could not find 'dataset/imagenett'"),
        (["backbone=resnet19"], 1, "Could not find 'backbone/resnet19'"),
        (
            [*TINY, "backbone.dim=2"],
            2,
            "etf-train: error: head=nearest_etf needs feature dimension d >= number of classes",
        ),
        (
            ["dataset=cifar10", f"dataset.root={tmp_path}/none", "dataset.download=false"],
            2,
            "etf-train: error: dataset cifar10",
        ),
        (["dataset=image_folder", f"dataset.root={tmp_path}/empty"], 2, "etf-train: error: dataset image_folder"),
        ([*TINY, "trainer.batch_size=-4"], 2, "etf-train: error: trainer.batch_size must be a positive integer"),
        ([*TINY, "optimizer.lr=0"], 2, "etf-train: error: optimizer.lr must be a finite number > 0"),
        ([*TINY, "hydra.run.dir=afile/run"], 2, "etf-train: error: cannot write the output folder"),
        ([*TINY, f"trainer.resume={tmp_path}/none.pt"], 2, "etf-train: error: trainer.resume="),
        (
            [*TINY, "head=learned", "head.normalize=false", "optimizer.lr=1e30"],
            2,
            "etf-train: error: non-finite loss at epoch 1",
        ),
        ([*TINY, "trainer.device=gpu"], 2, "etf-train: error: trainer.device='gpu' is not a device"),
        ([*TINY, "optimizer.lr=abc"], 2, "etf-train: error: optimizer.lr must be a finite number > 0, got 'abc'"),
        ([*TINY, "head.tau=abc"], 2, "etf-train: error: head.tau must be a finite number > 0, got 'abc'"),
        ([*TINY, "seed=abc"], 2, "etf-train: error: seed must be an integer >= 0, got 'abc'"),
        ([*TINY, "optimizer.momentum=-1"], 2, "etf-train: error: optimizer=sgd refused its options: Invalid momentum"),
        (
            [*TINY, "trainer.nonfinite=skip", "optimizer.lr=1e6"],
            2,  # steps skipped, the features still diverge
            "etf-train: error: the features are no longer finite in the NC metrics' pass: training diverged",
        ),
        (
            [*TINY, "head=learned", "solver=riemannian"],
            2,
            "etf-train: error: the solver group applies to head=nearest_etf only; head=learned has no solver",
        ),
    ]
    started = {9, 15}  # runs that trained (then stopped): their folders hold the run and its failure

    for i, (args, code, message) in enumerate(cases):
        own_dir = not any(a.startswith("hydra.run.dir") for a in args)
        # the CLI's main() in this process (the subprocess tests above cover the process itself)
        proc = etf_train_here(
            *args,
            *([f"hydra.run.dir={tmp_path}/run{i}"] if own_dir else []),
            cwd=tmp_path,
            monkeypatch=monkeypatch,
            capfd=capfd,
        )
        assert proc.returncode == code, (args, proc.stderr[-1500:])
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr[-1500:])
        if code == 2:
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
            if not own_dir:
                continue
            # a refused start leaves nothing behind; a started run records its failure
            assert (
                (tmp_path / f"run{i}" / "checkpoints" / "failed").exists()
                if i in started
                else not (tmp_path / f"run{i}").exists()
            ), (args, sorted((tmp_path / f"run{i}").rglob("*")))


def test_openmp_threads_wait_passively_unless_told_otherwise(tmp_path, monkeypatch, capfd):
    """A busy neighbour made torch's spinning OpenMP threads 10-20x slower: etf-train sets OMP_WAIT_POLICY=PASSIVE
    before torch loads, and keeps a value the user exported."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert etf_train_here("--version", cwd=tmp_path, monkeypatch=monkeypatch, capfd=capfd).returncode == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    etf_train_here("--version", cwd=tmp_path, monkeypatch=monkeypatch, capfd=capfd)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"

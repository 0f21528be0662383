"""The real `etf-train` command in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

from etf_train.compare import read_scalars

from .conftest import TINY

ROOT = Path(__file__).parents[1]


def etf_train(*args, cwd):
    exe = Path(sys.executable).with_name("etf-train")
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_cli_runs_into_hydra_run_dir(tmp_path):
    out = tmp_path / "run"
    proc = etf_train(*TINY, "head=nearest_etf", "trainer.max_epochs=1", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / ".hydra" / "config.yaml").is_file()
    assert "train/acc" in read_scalars(out)
    assert f"tensorboard --logdir {out}" in proc.stdout + proc.stderr


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
    assert proc.returncode == 0 and "head: fixed_etf, learned, nearest_etf" in proc.stdout

"""A non-editable install must carry configs/ (force-included into the wheel as etf_train/configs)."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_wheel_carries_every_config(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("etf_train-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"etf_train/configs/{p.relative_to(ROOT / 'configs')}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert expected and expected <= names
    assert "etf_train/cli.py" in names  # cli.config_dir() finds etf_train/configs beside it once installed
    # the default CPU sweep launcher; Hydra finds plugins only in the hydra_plugins namespace package (no __init__.py)
    assert "hydra_plugins/etf_train_launcher/parallel_launcher.py" in names
    assert "hydra_plugins/__init__.py" not in names

"""etf-compare and etf-eval on what users hand them: an event file of another run in a run folder is named and left
out; every command-line and file-system mistake is one line (`etf-eval: error: ...`), exit 2, no traceback."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from etf_train import compare, posthoc
from etf_train.compare import load_runs, read_scalars
from etf_train.compare.serve import view_folder
from etf_train.training import train

from .conftest import TINY, make_cfg, run_interrupted_then_resumed

TOO_LONG = "x" * 300  # past NAME_MAX (255) of every common file system
FULL = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a file that is always full")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs of two seeds, the first made first (so the second's events carry later wall times)."""
    root = tmp_path_factory.mktemp("received")
    for seed in (1, 2):
        train(make_cfg(*TINY, f"seed={seed}"), root / f"seed{seed}")
    return root / "seed1", root / "seed2"


def _events(run: Path) -> list[Path]:
    return sorted(run.glob("events.out.tfevents.*"))


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("etf-compare: warning: ")]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[t][0], b[t][0]) and np.array_equal(a[t][1], b[t][1]) for t in a
    )


# ----------------------------------------------------------------------------- item 7: whose event file


def test_an_event_file_of_another_run_is_named_and_left_out(runs, tmp_path, capsys):
    """A copy of seed 2's event file in seed 1's folder replaced seed 1's numbers (its events are later) in silence:
    each fresh start logs its config, which names another seed than the folder's record."""
    own = read_scalars(runs[0])
    run = shutil.copytree(runs[0], tmp_path / "run")
    (foreign,) = _events(runs[1])
    shutil.copy2(foreign, run / foreign.name)
    capsys.readouterr()
    (loaded,) = load_runs([run])
    assert _same(loaded.scalars, own)
    (line,) = _warnings(capsys.readouterr().err)
    assert f"{run / foreign.name}: an event file of another run" in line and "seed: 2 -> 1" in line
    assert view_folder({"head=learned": [loaded]}, tmp_path / "view") == ["learned/seed1"]  # --serve shows it not
    assert [p.name for p in _events(tmp_path / "view" / "learned" / "seed1")] == [p.name for p in _events(runs[0])]


def test_a_resumed_attempts_event_file_of_another_run_is_left_out_too(runs, tmp_path, monkeypatch, capsys):
    """A resumed attempt logged no config, so its file passed for any run's: every attempt now logs it."""
    other = tmp_path / "other"
    run_interrupted_then_resumed(monkeypatch, make_cfg(*TINY, "seed=2"), other, after_epoch=1)
    resumed = _events(other)[-1]
    run = shutil.copytree(runs[0], tmp_path / "run")
    shutil.copy2(resumed, run / resumed.name)
    capsys.readouterr()
    (loaded,) = load_runs([run])
    (line,) = _warnings(capsys.readouterr().err)
    assert f"{run / resumed.name}: an event file of another run" in line and "seed: 2 -> 1" in line
    assert _same(loaded.scalars, read_scalars(runs[0]))


def test_a_resumed_runs_files_and_files_without_a_config_are_kept(tmp_path, monkeypatch, capsys):
    """Guards the check above: a resumed run has several files, its record may name two code versions
    (`X then Y`), and an older etf-train logged no config at all; every such file is the run's own."""
    run = tmp_path / "run"
    run_interrupted_then_resumed(monkeypatch, make_cfg(*TINY), run, after_epoch=1)
    assert len(_events(run)) == 2
    record = run / ".hydra" / "config.yaml"
    config = yaml.safe_load(record.read_text())
    record.write_text(yaml.safe_dump({**config, "code_version": f"{config['code_version']} then 9.9.9"}))
    old = tmp_path / "old"
    shutil.copytree(run, old)
    first = _events(old)[0]
    first.unlink()  # the fresh start's file, the one with the config, gone: what an older run's folder holds
    capsys.readouterr()
    loaded = {r.path.name: r for r in load_runs([run, old])}
    assert not _warnings(capsys.readouterr().err)
    assert _same(loaded["run"].scalars, read_scalars(run)) and list(loaded["run"].scalars["test/acc"][0]) == [1, 2]
    assert _same(loaded["old"].scalars, read_scalars(old))


# ----------------------------------------------------------------------------- item 8: one line each


def _one_line(main, argv, capsys, prog: str) -> str:
    assert main(argv) == 2
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if " warning: " not in line)
    assert err.startswith(f"{prog}: error: ") and len(err.splitlines()) == 1, err
    return err


# what a user may give as an output path, relative to a folder holding `file`: (path, the system's reason)
OUT = {
    "a file": ("file", "/file is a file, not a folder"),
    "under a file": ("file/sub", "Not a directory"),
    "too long": (TOO_LONG, "File name too long"),
    "a NUL": ("a\0b", "embedded null byte"),
}
EXPORT = {
    "a folder": (".", "Is a directory"),
    "under a file": ("file/f.npz", "/file is a file, not a folder"),
    "too long": (f"{TOO_LONG}.npz", "File name too long"),
    "a NUL": ("a\0b.npz", "embedded null byte"),
}


@pytest.fixture
def place(tmp_path):
    (tmp_path / "file").write_text("")
    return tmp_path


@pytest.mark.parametrize("case", OUT)
def test_etf_eval_refuses_an_out_folder_it_cannot_write_before_evaluating(runs, place, case, capsys, monkeypatch):
    """--out where nothing can be written was a traceback, after the whole evaluation."""
    monkeypatch.setattr(posthoc, "evaluate_run", lambda *a: pytest.fail("evaluated before checking the outputs"))
    path, why = place / OUT[case][0], OUT[case][1]
    line = _one_line(posthoc.main, [str(runs[0]), "--out", str(path)], capsys, "etf-eval")
    assert line.startswith(f"etf-eval: error: --out {path}: cannot write there (") and why in line


@pytest.mark.parametrize("case", EXPORT)
def test_etf_eval_refuses_an_export_it_cannot_write_before_evaluating(runs, place, case, capsys, monkeypatch):
    """Likewise --export; a folder given as the export was written as `<folder>.npz` beside it."""
    monkeypatch.setattr(posthoc, "evaluate_run", lambda *a: pytest.fail("evaluated before checking the outputs"))
    path, why = place / EXPORT[case][0], EXPORT[case][1]
    line = _one_line(posthoc.main, [str(runs[0]), "--out", str(place), "--export", str(path)], capsys, "etf-eval")
    assert line.startswith(f"etf-eval: error: --export {path}: cannot write it (") and why in line


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs /sys, a folder even root cannot write")
def test_etf_eval_and_etf_compare_refuse_a_folder_that_cannot_be_written(runs, capsys, monkeypatch):
    """A folder that exists but takes no files was a traceback (etf-eval: after the whole evaluation)."""
    monkeypatch.setattr(posthoc, "evaluate_run", lambda *a: pytest.fail("evaluated before checking the outputs"))
    assert "--out /sys: cannot write there" in _one_line(
        posthoc.main, [str(runs[0]), "--out", "/sys"], capsys, "etf-eval"
    )
    assert "--export /sys/f.npz: cannot write it" in _one_line(
        posthoc.main, [str(runs[0]), "--export", "/sys/f.npz"], capsys, "etf-eval"
    )
    assert "--out /sys: cannot write there" in _one_line(
        compare.main, [str(runs[0]), "--out", "/sys", "--metrics", "test/acc"], capsys, "etf-compare"
    )


def test_a_run_folder_on_a_read_only_disk_without_out_is_named_as_the_default(runs, capsys, monkeypatch):
    """A received run on read-only storage (simulated: root writes anywhere) and no --out: etf-eval evaluated it
    whole, then gave a traceback; etf-compare a traceback."""

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(posthoc, "evaluate_run", lambda *a: pytest.fail("evaluated before checking the outputs"))
    says = f"{runs[0]} (the default --out): cannot write there (Read-only file system)"
    assert says in _one_line(posthoc.main, [str(runs[0])], capsys, "etf-eval")
    assert says in _one_line(compare.main, [str(runs[0]), "--metrics", "test/acc"], capsys, "etf-compare")


@FULL
def test_a_full_disk_under_etf_evals_outputs_is_one_line(runs, tmp_path, capsys):
    """A full disk under eval.json was a traceback; /dev/full as the export wrote /dev/full.npz (numpy adds the
    suffix to a name) and said it wrote /dev/full."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "eval.json").symlink_to("/dev/full")
    assert f"cannot write {out / 'eval.json'} (No space left on device)" in _one_line(
        posthoc.main, [str(runs[0]), "--out", str(out)], capsys, "etf-eval"
    )
    assert "cannot write /dev/full (No space left on device)" in _one_line(
        posthoc.main, [str(runs[0]), "--out", str(tmp_path), "--export", "/dev/full"], capsys, "etf-eval"
    )
    assert not Path("/dev/full.npz").exists()


@pytest.mark.parametrize(
    "device, says",
    [
        ("nonsense", "--device 'nonsense' is not a device"),
        ("cuda:99", "--device cuda:99: "),
        ("mps", "--device mps: etf-eval runs on"),
    ],
)
def test_etf_eval_device_mistakes_are_one_line(runs, tmp_path, device, says, capsys):
    """A device torch does not know, or one this machine lacks, was a RuntimeError traceback."""
    assert says in _one_line(
        posthoc.main, [str(runs[0]), "--out", str(tmp_path), "--device", device], capsys, "etf-eval"
    )


def test_etf_eval_input_paths_the_file_system_refuses_are_one_line(runs, tmp_path, capsys):
    """A run folder or checkpoint path longer than the file system takes was an OSError traceback."""
    assert "File name too long" in _one_line(posthoc.main, [str(tmp_path / TOO_LONG)], capsys, "etf-eval")
    assert "File name too long" in _one_line(
        posthoc.main,
        [str(runs[0]), "--checkpoint", str(tmp_path / TOO_LONG), "--out", str(tmp_path)],
        capsys,
        "etf-eval",
    )


@pytest.mark.parametrize("case", OUT)
def test_etf_compare_refuses_an_out_folder_it_cannot_write(runs, place, case, capsys):
    """Each was a traceback once the comparison was done."""
    path, why = place / OUT[case][0], OUT[case][1]
    line = _one_line(compare.main, [str(runs[0]), "--out", str(path), "--metrics", "test/acc"], capsys, "etf-compare")
    assert line.startswith(f"etf-compare: error: --out {path}: cannot write there (") and why in line


@FULL
def test_etf_compare_output_files_it_cannot_write_are_one_line(runs, tmp_path, capsys):
    """An output name taken by a folder, or a full disk under one, was a traceback."""
    (tmp_path / "a" / "curves.csv").mkdir(parents=True)
    assert f"cannot write {tmp_path / 'a' / 'curves.csv'} (Is a directory)" in _one_line(
        compare.main, [str(runs[0]), "--out", str(tmp_path / "a"), "--metrics", "test/acc"], capsys, "etf-compare"
    )
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "comparison.png").symlink_to("/dev/full")
    assert f"cannot write {tmp_path / 'b' / 'comparison.png'} (No space left on device)" in _one_line(
        compare.main, [str(runs[0]), "--out", str(tmp_path / "b"), "--metrics", "test/acc"], capsys, "etf-compare"
    )


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--dpi", "100000"], "--dpi must lie in 1..1200, got 100000"),
        (["--port", "-5"], "--port must lie in 0..65535, got -5"),
        (["--serve", "--host", "192.0.2.1"], "--host 192.0.2.1: cannot listen there"),
    ],
)
def test_etf_compare_option_mistakes_are_one_line(runs, tmp_path, argv, says, capsys):
    """--dpi 100000 ran out of memory (std::bad_alloc), --port -5 printed a link to port -5, and a --host that is
    not this machine's (192.0.2.1: a documentation address) was a socket traceback."""
    assert says in _one_line(
        compare.main, [str(runs[0]), "--out", str(tmp_path), "--metrics", "test/acc", *argv], capsys, "etf-compare"
    )


def test_etf_compare_input_the_file_system_refuses_is_one_line(runs, tmp_path, capsys):
    """A folder path too long, and a run whose failure marker is a folder, were tracebacks (in etf-compare, and in
    the summary `etf-train -m` prints when a sweep ends)."""
    assert "File name too long" in _one_line(compare.main, [str(tmp_path / TOO_LONG)], capsys, "etf-compare")
    run = shutil.copytree(runs[0], tmp_path / "run")
    (run / "checkpoints" / "finished").unlink()
    (run / "checkpoints" / "failed").mkdir()
    says = f"{run / 'checkpoints' / 'failed'}: Is a directory"
    assert says in _one_line(compare.main, [str(run), "--out", str(tmp_path)], capsys, "etf-compare")
    assert f"etf-train: no comparison: {says}" in compare.sweep_end(tmp_path)


def test_the_real_commands_say_one_line(runs, tmp_path):
    """As a shell runs them: no traceback reaches the terminal."""
    (tmp_path / "file").write_text("")
    bin_dir = Path(sys.executable).parent
    for argv in (
        [bin_dir / "etf-eval", runs[0], "--device", "nonsense"],
        [bin_dir / "etf-compare", runs[0], "--out", tmp_path / "file"],
    ):
        proc = subprocess.run(
            [str(a) for a in argv],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        lines = [line for line in proc.stderr.splitlines() if " warning: " not in line]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"{argv[0].name}: error: "), proc.stderr

"""A run folder from elsewhere (a colleague's sweep, a downloaded checkpoint) runs no code: every checkpoint is read
with torch.load(weights_only=True), every record with YAML's safe loader, and what they refuse is one line. Each
payload below would create a marker file if it ran."""

from __future__ import annotations

import builtins
import math
import struct
import zipfile

import pytest
import torch

from etf_train import EtfTrainError
from etf_train.posthoc import main as etf_eval
from etf_train.training import train
from etf_train.training.checkpoint import load_checkpoint, rng_state, set_rng_state

from .conftest import TINY, etf_train, etf_train_here, make_cfg


class Payload:
    """Unpickling it calls open(marker, "w"): creates the marker."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _plant(run, marker):
    ckpt = run / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    state["extra"] = Payload(marker)
    torch.save(state, ckpt)
    return ckpt


@pytest.fixture
def received(tmp_path):
    run = tmp_path / "received"
    train(make_cfg(*TINY, "trainer.max_epochs=1"), run)
    return run


def test_a_checkpoint_carrying_code_is_refused_by_every_entry_point(received, tmp_path, capsys):
    marker = tmp_path / "ran"
    ckpt = _plant(received, marker)
    with pytest.raises(
        EtfTrainError, match=r"holds a pickled (builtins|io)\.open.*does not run code from a checkpoint"
    ):
        load_checkpoint(ckpt, {})
    assert etf_eval([str(received), "--out", str(tmp_path)]) == 2  # etf-eval RUN
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "does not run code from a checkpoint" in err
    # trainer.resume=PATH into a new folder, and the same command again in the run's own folder (auto resume)
    for args in ([f"trainer.resume={ckpt}", f"hydra.run.dir={tmp_path / 'new'}"], [f"hydra.run.dir={received}"]):
        proc = etf_train(*TINY, "trainer.max_epochs=1", *args, cwd=tmp_path)
        assert proc.returncode == 2 and "does not run code from a checkpoint" in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_a_record_with_a_python_tag_is_one_line_and_constructs_nothing(received, tmp_path, capsys):
    marker = tmp_path / "ran"
    config = received / ".hydra" / "config.yaml"
    config.write_text(f"!!python/object/apply:builtins.open ['{marker}', 'w']\n")
    assert etf_eval([str(received), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"cannot read the run record {config}" in err
    proc = etf_train(*TINY, "trainer.max_epochs=1", f"hydra.run.dir={received}", cwd=tmp_path)
    assert (
        proc.returncode == 2
        and f"cannot read the run record {config}" in proc.stderr
        and "Traceback" not in proc.stderr
    )
    assert not marker.exists()


def test_an_unreadable_file_under_outputs_never_blocks_a_new_run(tmp_path):
    """A damaged overrides.yaml of another run is skipped with a warning naming it (it made every new run a
    traceback)."""
    bad = tmp_path / "outputs" / "2026-01-01" / "00-00-00_x" / ".hydra" / "overrides.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text("- head=learned\n  : [unbalanced")
    proc = etf_train(*TINY, "trainer.max_epochs=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"etf-train: warning: skipping {bad}, which cannot be read" in proc.stderr


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    """The numpy generator's key is stored as a tensor (a numpy array needs more than weights_only allows), and
    checkpoints from before, which hold the array, still load."""
    import random

    import numpy as np

    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    state = rng_state()
    torch.save({"rng": state}, tmp_path / "a.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "a.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    old = {**state, "numpy": np.random.get_state()}  # the layout checkpoints had before
    torch.save({"meta": {}, "config": {}, "rng": old}, tmp_path / "old.pt")
    assert isinstance(load_checkpoint(tmp_path / "old.pt", {})["rng"]["numpy"][1], np.ndarray)


def test_a_checkpoint_without_its_settings_record_is_refused(received, tmp_path, capsys):
    """Without `config` the settings comparison was skipped: a tau-1 checkpoint evaluated under a tau-5 run gave
    test/loss 0.19 where the run logged 1.50."""
    ckpt = received / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["config"]
    torch.save(state, ckpt)
    assert etf_eval([str(received), "--out", str(tmp_path)]) == 2
    assert "holds no record of the settings it was trained with" in capsys.readouterr().err
    with pytest.raises(EtfTrainError, match="holds no record of the settings"):
        train(make_cfg(*TINY, "trainer.max_epochs=1", f"trainer.resume={ckpt}"), tmp_path / "new")


def test_a_diverged_run_never_reads_as_collapse():
    """Features whose norm overflows float32 normalised to h = 0 (every weight finite, the loss ln K), and NC1 of
    equal class means read 0: a diverged run looked perfectly collapsed. Now h is NaN there (the loss is NaN, the
    run stops naming the step) and NC1 without between-class spread is NaN, which no threshold counts."""
    from etf_train.metrics.geometry import nc1_from_projections
    from etf_train.sphere import sphere

    f = torch.full((2, 8), 3e19)  # ||f||^2 = 7.2e39 overflows float32
    f[1] = 1.0
    for grad in (False, True):
        h = sphere(f.clone().requires_grad_(grad), 5.0)
        assert torch.isnan(h[0]).all() and torch.allclose(h[1], torch.full((8,), 5.0 / 8**0.5))
    S = torch.linalg.svdvals(torch.zeros(6, 3, dtype=torch.float64))
    assert torch.isnan(nc1_from_projections(torch.ones(3, dtype=torch.float64), S, 6))
    Hc = torch.randn(6, 3, dtype=torch.float64)
    S = torch.linalg.svdvals(Hc)
    assert torch.isfinite(nc1_from_projections(torch.ones(3, dtype=torch.float64), S, 6))


def test_any_failure_after_the_start_leaves_its_marker_and_one_line(tmp_path, monkeypatch, capfd):
    """An error that is not etf-train's own (out of memory, a library's) left no `failed` marker and a traceback on
    the terminal: now the marker holds its one line, the terminal shows that line, the run's log the traceback."""
    from etf_train import rundir
    from etf_train.training.loop import Run

    from .conftest import etf_train_here

    def boom(self, *args):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(Run, "_step", boom)
    proc = etf_train_here(
        *TINY, "trainer.max_epochs=1", "hydra.run.dir=run", cwd=tmp_path, monkeypatch=monkeypatch, capfd=capfd
    )
    run = tmp_path / "run"
    line = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"etf-train: error: {line} (the traceback is in {tmp_path / 'run' / 'cli.log'})"
    ]
    assert rundir.failure(run).startswith(line)
    log = (run / "cli.log").read_text()
    assert "Traceback (most recent call last)" in log and "in boom" in log


def test_a_finished_checkpoint_into_a_new_folder_is_one_line_and_leaves_no_folder(
    received, tmp_path, monkeypatch, capfd
):
    """It crashed ('No such file or directory: .../checkpoints/finished') and left a folder holding only `.hydra/`."""
    new = tmp_path / "new"
    ckpt = received / "checkpoints" / "last.pt"
    proc = etf_train_here(
        *TINY,
        "trainer.max_epochs=1",
        f"trainer.resume={ckpt}",
        f"hydra.run.dir={new}",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
        capfd=capfd,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"etf-train: error: checkpoint {ckpt} is of a run that finished all its 1 epochs: "
        "nothing to train; `etf-eval` evaluates it, and training longer is a new run"
    )
    assert not new.exists()
    # the run's own checkpoint, named explicitly, is the run itself: finished, nothing to do
    again = etf_train_here(
        *TINY,
        "trainer.max_epochs=1",
        f"trainer.resume={ckpt}",
        f"hydra.run.dir={received}",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
        capfd=capfd,
    )
    assert again.returncode == 0, again.stderr


def _flip_a_weight_bit(ckpt):
    """Flip one bit inside the largest tensor's stored bytes, as a bad disk or transfer would (the zip's CRC for that
    member stays as written)."""
    with zipfile.ZipFile(ckpt) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(ckpt.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[member.header_offset + 26 : member.header_offset + 30])
    data[member.header_offset + 30 + name_len + extra_len + member.file_size // 2] ^= 0x04
    ckpt.write_bytes(bytes(data))
    return member.filename


def test_a_checkpoint_with_a_flipped_bit_is_refused_in_one_line(received, tmp_path, capsys):
    """torch.load does not check the zip's CRCs: the damaged weight loaded, and etf-eval reported its numbers."""
    ckpt = received / "checkpoints" / "last.pt"
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    member = _flip_a_weight_bit(ckpt)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1  # torch alone does not notice
    assert etf_eval([str(received), "--out", str(tmp_path)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"cannot read checkpoint {ckpt} ({member} fails its CRC check: the file is damaged)" in line
    proc = etf_train(
        *TINY, "trainer.max_epochs=2", f"trainer.resume={ckpt}", f"hydra.run.dir={tmp_path / 'new'}", cwd=tmp_path
    )
    assert proc.returncode == 2 and "fails its CRC check" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "new").exists()


def test_a_run_whose_features_lost_their_spread_reads_degenerate_not_collapsed(tmp_path, capsys):
    """An NC1 of NaN (features without between-class spread) must never count as a crossing, and a cell of it reads
    `degenerate`, not `nan`."""
    from etf_train.compare import main as etf_compare
    from etf_train.compare.stats import Spread

    from .test_compare import write_config, write_events

    for seed, last in ((1, 0.05), (2, math.nan)):
        run = tmp_path / "sweep" / str(seed)
        write_config(
            run, {"seed": seed, "head": {"name": "learned"}, "dataset": {"name": "ufm"}, "trainer": {"max_epochs": 3}}
        )
        write_events(
            run,
            {
                "nc/nc1": {1: 2.0, 2: 0.5, 3: last},
                "test/acc": {1: 50.0, 2: 60.0, 3: 70.0},
                "train/eval_acc": {1: 50.0, 2: 60.0, 3: 70.0},
                "train/loss": {1: 2.0, 2: 1.0, 3: 0.5},
            },
        )
    assert (
        etf_compare(
            [
                str(tmp_path / "sweep"),
                "--out",
                str(tmp_path / "out"),
                "--nc1",
                "1",
                "0.1",
                "--metrics",
                "test/acc",
                "nc/nc1",
            ]
        )
        == 0
    )
    table = (tmp_path / "out" / "comparison.md").read_text()
    [row] = [line for line in table.splitlines() if line.startswith("| head=learned")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert "2 [2, 2]" in cells  # NC1 <= 1: both runs at epoch 2
    assert "never [3, never]" in cells  # NC1 <= 0.1: seed 1 at epoch 3; seed 2's NaN is not a crossing
    assert Spread((0.05, math.nan)).format(".2f") == "degenerate"  # NaN propagates

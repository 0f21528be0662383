"""etf-eval: a run's checkpoint evaluated again equals what the run logged; export for post-hoc studies."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from etf_train.posthoc import main
from etf_train.rundir import read_scalars
from etf_train.training import train

from .conftest import TINY, TINY_UFM, interrupted, make_cfg, write_folder

# the scalars an evaluation recomputes (the training-time ones, loss, lr, timing, are not)
EVALUATED = ("test/", "nc/", "nc_test/", "train/eval_acc")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("posthoc") / "run"
    train(make_cfg(*TINY, "head=nearest_etf", "trainer.max_epochs=3", "trainer.save_every_n_epochs=2"), run)
    return run


def logged_at(run: Path, epoch: int) -> dict[str, float]:
    return {
        tag: float(v[list(s).index(epoch)])
        for tag, (s, v) in read_scalars(run).items()
        if tag.startswith(EVALUATED) and epoch in s
    }


def test_eval_of_the_last_checkpoint_equals_the_last_epoch_logged(run, tmp_path):
    """Catches a model rebuilt from another config, evaluated in train mode, or on another split."""
    assert main([str(run), "--out", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "eval.json").read_text())
    want = logged_at(run, 3)
    assert got["epoch"] == 3 and len(want) > 30
    for tag, value in want.items():
        assert got[tag] == pytest.approx(value, rel=1e-5, abs=1e-6), tag


def test_numbered_checkpoints_are_kept_and_evaluate_to_their_epoch(run, tmp_path):
    """trainer.save_every_n_epochs keeps checkpoints/epoch_NNN.pt beside last.pt; etf-eval --checkpoint reads one."""
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pt")) == ["epoch_002.pt"]
    assert torch.load(run / "checkpoints" / "epoch_002.pt", weights_only=False)["epoch"] == 2
    assert main([str(run), "--checkpoint", str(run / "checkpoints" / "epoch_002.pt"), "--out", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "eval.json").read_text())
    for tag, value in logged_at(run, 2).items():
        assert got[tag] == pytest.approx(value, rel=1e-5, abs=1e-6), tag


def test_export_holds_features_labels_means_and_the_classifier(run, tmp_path):
    """The exported arrays reproduce the run's eval-mode train accuracy and NC1 by hand."""
    out = tmp_path / "f.npz"
    assert main([str(run), "--export", str(out), "--out", str(tmp_path)]) == 0
    z = np.load(out)
    h, y, W, b = z["features_train"], z["labels_train"], z["W"], z["b"]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert h.shape == (96, 16) and z["features_test"].shape == (32, 16) and z["P"].shape == (16, 4)
    np.testing.assert_array_equal(z["P"], state["head.P"].numpy())
    np.testing.assert_allclose(np.linalg.norm(h, axis=1), 5.0, rtol=1e-5)  # the head's tau-sphere
    np.testing.assert_allclose(z["class_means"], np.stack([h[y == c].mean(0) for c in range(4)]), rtol=1e-5)
    acc = 100 * np.mean((h @ W.T + b).argmax(1) == y)
    assert acc == pytest.approx(logged_at(run, 3)["train/eval_acc"], abs=1e-4)
    # the raw backbone features, which h normalises, and the metadata that says so
    f = z["raw_features_train"]
    np.testing.assert_allclose(h, 5.0 * f / np.linalg.norm(f, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    meta = json.loads(str(z["meta"]))
    assert (meta["num_classes"], meta["feature_dim"], meta["tau"], meta["epoch"]) == (4, 16, 5.0, 3)
    assert meta["head"]["name"] == "nearest_etf" and meta["features"].startswith("h = tau f / ||f||")
    assert meta["code_version"] and meta["absent"] == {}


def test_export_says_why_b_or_p_is_absent(tmp_path):
    """The authors' learned baseline has no bias and no P: the npz says so instead of leaving the reader to guess."""
    run = tmp_path / "run"
    train(make_cfg(*TINY, "head=learned_authors", "trainer.max_epochs=1"), run)
    assert main([str(run), "--export", str(tmp_path / "f.npz"), "--out", str(tmp_path)]) == 0
    z = np.load(tmp_path / "f.npz")
    assert "b" not in z and "P" not in z and "W" in z
    absent = json.loads(str(z["meta"]))["absent"]
    assert absent["b"] == "the head has no bias (head.bias=false)" and absent["P"].startswith("only nearest_etf")


def test_bad_input_is_one_line(run, tmp_path, capsys):
    """Not a run, a checkpoint of another model, a dataset that is gone: one line each, exit 2."""
    assert main([str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    other = tmp_path / "learned"
    train(make_cfg(*TINY, "head=learned", "trainer.max_epochs=1"), other)
    assert main([str(run), "--checkpoint", str(other / "checkpoints" / "last.pt"), "--out", str(tmp_path)]) == 2
    assert "head: checkpoint 'learned' vs this run 'nearest_etf'" in capsys.readouterr().err
    # the same model with another tau: its weights were scored under this run's tau (test/loss 0.16 for a logged 1.49)
    tau = tmp_path / "tau"
    train(make_cfg(*TINY, "head=nearest_etf", "head.tau=1", "trainer.max_epochs=1"), tau)
    assert main([str(run), "--checkpoint", str(tau / "checkpoints" / "last.pt"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        "is of a run with other settings" in err and "head.tau: 1 -> 5.0" in err and len(err.strip().splitlines()) == 1
    )
    folder = tmp_path / "images"
    write_folder(folder, "train", {"a": 4, "b": 4}, 8, np.random.default_rng(0))
    write_folder(folder, "test", {"a": 2, "b": 2}, 8, np.random.default_rng(1))
    gone = tmp_path / "gone"
    train(
        make_cfg(
            *[o for o in TINY if not o.startswith("dataset")],
            "dataset=image_folder",
            f"dataset.root={folder}",
            "dataset.image_size=8",
            "trainer.max_epochs=1",
            "trainer.batch_size=4",
        ),
        gone,
    )
    (folder / "test" / "a" / "00.png").rename(folder / "moved.png")
    (folder / "test" / "a" / "01.png").unlink()
    assert main([str(gone), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("etf-eval: error: dataset image_folder") and len(err.strip().splitlines()) == 1


def test_the_real_etf_eval_command(run, tmp_path):
    exe = Path(sys.executable).with_name("etf-eval")
    proc = subprocess.run([str(exe), str(run), "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "test/acc=" in proc.stdout and (tmp_path / "eval.json").is_file()


def test_a_checkpoint_from_the_middle_of_an_epoch_is_refused(tmp_path, monkeypatch, capsys):
    """A stop signal saves the weights of a step inside epoch E under epoch E-1: eval.json said "epoch 1" for
    figures the run never logged."""
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupted(m, at=(2, 2))
        with pytest.raises(SystemExit):
            train(make_cfg(*TINY, "trainer.max_epochs=3"), run)
    capsys.readouterr()  # etf-train's own "stopped by SIGTERM" line
    assert main([str(run), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "saved by a stop signal in the middle of epoch 2 (step 2)" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("setting", [[*TINY, "trainer.precision=bf16"], TINY_UFM], ids=["bf16", "ufm"])
def test_eval_repeats_the_runs_own_evaluation(setting, tmp_path):
    """etf-eval evaluated in float32 whatever the run's precision (a bf16 run's figures moved in the third digit),
    and logged test-split NC metrics for UFM, whose test split is its train set (the run logs none)."""
    run = tmp_path / "run"
    train(make_cfg(*setting, "trainer.max_epochs=2"), run)
    assert main([str(run), "--out", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "eval.json").read_text())
    want = logged_at(run, 2)
    assert {k for k in got if k.startswith(EVALUATED)} == set(want)
    for tag, value in want.items():
        assert got[tag] == pytest.approx(value, rel=1e-5, abs=1e-6), tag

"""Resume that loses nothing, graceful pre-emption, numerical guards."""

import math
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from etf_train import EtfTrainError
from etf_train.errors import NonFiniteError
from etf_train.rundir import read_scalars
from etf_train.solver import polar_factors
from etf_train.training import Classifier, train

from .conftest import TINY, make_cfg, run_interrupted_then_resumed, write_folder

# 60 steps an epoch, so a signal lands mid-epoch; deterministic, so runs can be compared bit for bit.
LONG = [
    *TINY,
    "dataset.train_per_class=30",
    "trainer.batch_size=2",
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
]
COMPARED = ("train/loss", "train/acc", "test/loss", "test/acc", "nc/nc1", "nc/nc3")


def start_cli(run_dir, *overrides, cwd=None):
    """`etf-train OVERRIDES` into run_dir (None: Hydra's time-stamped folder under cwd/outputs), in a process group
    of its own (so that a test can signal the group, as Slurm does). Its progress bar redraws at every step
    (tqdm's TQDM_MININTERVAL): at its default 0.1 s, a fast CPU showed an epoch at 0 % and then 68 %."""
    exe = Path(sys.executable).with_name("etf-train")
    args = [str(exe), *overrides, "trainer.progress=true", *([f"hydra.run.dir={run_dir}"] if run_dir else [])]
    return subprocess.Popen(
        args,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=cwd or run_dir.parent,
        start_new_session=True,
        env={**os.environ, "TQDM_MININTERVAL": "0"},
    )


def interrupt_mid_epoch(proc, sig, epoch=2, group=False):
    """Send `sig` (to the whole process group with `group`, DataLoader workers included, as Slurm's scancel and
    time limit do) once the progress bar shows `epoch` between 5 % and 50 % done; returns stderr. The bar lags the
    steps: sent at 90 %, a signal reached the last epoch's evaluation now and then, where the run finishes."""
    seen, sent = [], threading.Event()
    pattern = re.compile(rf"epoch {epoch}/\d+[^:]*:\s+(\d+)%")  # "epoch 2/3 ETA 1.2s:  40%"

    def read():
        buf = ""
        while (ch := proc.stderr.read(1)) != "":
            buf += ch
            if ch in "\r\n":
                m = pattern.search(buf)
                if m and 5 <= int(m.group(1)) <= 50 and not sent.is_set():
                    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
                    sent.set()
                seen.append(buf)
                buf = ""
        seen.append(buf)

    reader = threading.Thread(target=read)
    reader.start()
    proc.wait(timeout=300)
    reader.join()
    assert sent.is_set(), "the run finished before it could be interrupted: " + "".join(seen)[-1500:]
    return "".join(seen)


def final_state(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)


def assert_same_run(a: Path, b: Path):
    sa, sb = final_state(a), final_state(b)
    assert sa["epoch"] == sb["epoch"] == 2
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), f"{k} differs after resume"
    ca, cb = read_scalars(a), read_scalars(b)
    for tag in COMPARED:
        assert list(ca[tag][0]) == list(cb[tag][0]) == [1, 2], tag  # no duplicated or missing epochs
        assert list(ca[tag][1]) == list(cb[tag][1]), tag


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of a head, computed once per head and module."""
    runs = {}

    def get(head):
        if head not in runs:
            runs[head] = tmp_path_factory.mktemp(f"ref-{head}")
            train(make_cfg(*LONG, f"head={head}"), runs[head])
        return runs[head]

    return get


@pytest.mark.parametrize(
    "head",
    [
        pytest.param("learned", marks=pytest.mark.slow),
        pytest.param("fixed_etf", marks=pytest.mark.slow),
        "nearest_etf",
    ],
)
def test_sigkill_mid_epoch_then_same_command_equals_uninterrupted(tmp_path, reference, head):
    run = tmp_path / "run"
    run.mkdir()
    overrides = [*LONG, f"head={head}"]
    proc = start_cli(run, *overrides)
    interrupt_mid_epoch(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert final_state(run)["epoch"] == 1  # the last completed epoch survived the kill intact
    proc = start_cli(run, *overrides)  # the same command again: trainer.resume=auto is the default
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert_same_run(run, reference(head))


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)])
def test_preemption_signal_saves_at_step_boundary_and_resumes_there(tmp_path, reference, sig):
    run = tmp_path / "run"
    run.mkdir()
    overrides = [*LONG, "head=nearest_etf"]
    proc = start_cli(run, *overrides)
    err = interrupt_mid_epoch(proc, sig)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert f"stopped by {signal.Signals(sig).name} at epoch 2, step" in err and "Traceback" not in err
    state = final_state(run)
    assert state["epoch"] == 1 and state["partial"]["epoch"] == 2 and 0 < state["partial"]["step"] < 60
    proc = start_cli(run, *overrides)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert_same_run(run, reference("nearest_etf"))


@pytest.mark.parametrize(("sig", "group"), [(signal.SIGTERM, True), (signal.SIGHUP, False)])
def test_a_signal_to_the_process_group_or_a_hangup_saves_too(tmp_path, sig, group):
    """SIGTERM to the whole group (Slurm, systemd) with DataLoader workers: the workers died first and the main
    process failed without a checkpoint; SIGHUP (a closed terminal) was not handled at all (exit 129, the epoch
    lost). Both now save at the next step boundary."""
    run = tmp_path / "run"
    run.mkdir()
    proc = start_cli(run, *LONG, "head=learned", "loader.mode=dataloader", "loader.num_workers=2")
    err = interrupt_mid_epoch(proc, sig, group=group)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert f"stopped by {signal.Signals(sig).name} at epoch 2, step" in err and "Traceback" not in err
    state = final_state(run)
    assert state["epoch"] == 1 and state["partial"]["epoch"] == 2


def test_dataloader_workers_start_with_stop_signals_blocked(tmp_path):
    """torch's DataLoader worker kills itself on a SIGTERM from any process but its parent: a group signal that met
    an epoch's start, before worker_init_fn ignored it, killed a worker and then the run (seen under torchrun)."""
    from etf_train.data.loaders import StopSafeLoader
    from etf_train.interrupt import STOP_SIGNALS

    mask = tmp_path / "mask"

    def probe(_worker):  # runs where ignore_stop_signals does: what the worker held blocked until then
        mask.write_text(" ".join(str(int(s)) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))

    assert list(StopSafeLoader(range(4), batch_size=2, num_workers=1, worker_init_fn=probe)) != []
    assert {int(s) for s in STOP_SIGNALS} <= {int(x) for x in mask.read_text().split()}
    assert not set(STOP_SIGNALS) & signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the main process's mask is back


def test_same_command_resumes_the_interrupted_time_stamped_run(tmp_path, reference):
    overrides = [*LONG, "head=nearest_etf"]
    proc = start_cli(None, *overrides, cwd=tmp_path)
    interrupt_mid_epoch(proc, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM
    (first,) = [p.parent.parent for p in tmp_path.glob("outputs/*/*/checkpoints/last.pt")]
    proc = start_cli(None, *overrides, cwd=tmp_path)  # the very same command line
    assert proc.wait(timeout=300) == 0
    assert f"resuming the interrupted run in {first.relative_to(tmp_path)}" in proc.stderr.read()
    assert [p.parent.parent for p in tmp_path.glob("outputs/*/*/checkpoints/last.pt")] == [first]
    assert (first / "checkpoints" / "finished").exists()
    assert_same_run(first, reference("nearest_etf"))


def test_signal_is_handed_on_to_the_previous_handler(tmp_path):
    """submitit requeues from its own SIGUSR1 handler: it must still run, after our checkpoint."""
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda s, f: calls.append(s))
    try:
        # Send the signal during the fourth training step (the nearest-ETF head counts its steps).
        original = Classifier.forward

        def forward(self, x, y=None):
            if y is not None and int(self.head.step) == 3:
                os.kill(os.getpid(), signal.SIGUSR1)
            return original(self, x, y)

        Classifier.forward = forward
        with pytest.raises(SystemExit) as info:
            train(make_cfg(*LONG, "head=nearest_etf"), tmp_path)
    finally:
        Classifier.forward = original
        signal.signal(signal.SIGUSR1, previous)
    assert info.value.code == 128 + signal.SIGUSR1
    assert calls == [signal.SIGUSR1]
    assert final_state(tmp_path)["partial"]["step"] == 4


def _nan_at_step(step):
    """Patch the model so that the features of training step `step` are NaN."""
    original, count = Classifier.forward, {"n": 0}

    def forward(self, x, y=None):
        if y is not None:
            count["n"] += 1
            if count["n"] == step:
                return self.head(self.backbone(x) * float("nan"), y)
        return original(self, x, y)

    return original, forward


@pytest.mark.parametrize("head", ["learned", "nearest_etf"])
def test_nonfinite_features_stop_naming_the_step_and_keep_the_checkpoint(tmp_path, head, monkeypatch):
    _, forward = _nan_at_step(5)  # 3 steps an epoch: epoch 2, step 2
    monkeypatch.setattr(Classifier, "forward", forward)
    with pytest.raises(NonFiniteError, match="epoch 2, step 2") as info:
        train(make_cfg(*TINY, f"head={head}", "trainer.max_epochs=2"), tmp_path)
    assert "\n" not in str(info.value) and "trainer.nonfinite=skip" in str(info.value)
    assert final_state(tmp_path)["epoch"] == 1  # the last good checkpoint
    assert "epoch 2, step 2" in (tmp_path / "checkpoints" / "failed").read_text()
    assert not (tmp_path / ".etf-train.lock").exists()


def test_nonfinite_steps_can_be_skipped(tmp_path, monkeypatch):
    _, forward = _nan_at_step(2)
    monkeypatch.setattr(Classifier, "forward", forward)
    last = train(make_cfg(*TINY, "head=nearest_etf", "trainer.nonfinite=skip"), tmp_path)
    assert read_scalars(tmp_path)["train/skipped_steps"][1][0] == 1
    assert all(torch.isfinite(v).all() for v in final_state(tmp_path)["model"].values() if v.is_floating_point())
    assert last["train/acc"] > 0


def test_a_skipped_step_changes_no_buffer(tmp_path, monkeypatch):
    """A skipped step ran the training forward first: BatchNorm statistics, and nearest_etf's P, running means,
    global mean and step counter, moved on the batch whose loss was not finite (learned and fixed heads did not)."""
    from etf_train.training import Run

    original, count = Classifier.forward, {"n": 0}

    def forward(self, x, y=None):  # finite features, so the head updates; then logits whose loss is not finite
        out = original(self, x, y)
        if y is not None:
            count["n"] += 1
            if count["n"] == 2:
                return out * float("nan")
        return out

    real_step, seen = Run._step, []

    def step(self, epoch, step_no, x, y):
        before = {k: v.clone() for k, v in self.model.named_buffers()}
        out = real_step(self, epoch, step_no, x, y)
        seen.append((out is None, sorted(k for k, v in self.model.named_buffers() if not torch.equal(before[k], v))))
        return out

    monkeypatch.setattr(Classifier, "forward", forward)
    monkeypatch.setattr(Run, "_step", step)
    train(
        make_cfg(*TINY, "head=nearest_etf", "backbone=small_cnn", "trainer.nonfinite=skip", "trainer.max_epochs=1"),
        tmp_path,
    )
    assert seen[1] == (True, [])  # skipped, nothing moved
    moved = seen[0][1]
    assert {"head.P", "head.means", "head.global_mean", "head.step"} <= set(moved) and any(
        "running_mean" in k for k in moved
    )
    assert int(final_state(tmp_path)["model"]["head.step"]) == len(seen) - 1  # the skipped step is not counted


@pytest.mark.parametrize("head", ["learned", "fixed_etf", "nearest_etf"])
def test_under_bf16_autocast_every_head_classifies_in_float32(head):
    """learned and fixed_etf took bf16 logits under autocast (fixed_etf even cast its ETF to bf16) while nearest_etf
    computed float32 ones: a precision difference between the heads, on CUDA's default trainer.precision=auto."""
    from etf_train.training import build_model

    cfg = make_cfg(*TINY, f"head={head}")
    model = build_model(cfg, 4, (3, 8, 8), 16).train()
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 4
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, h = model(x, y, features=True)
        f = model.backbone(x)  # the bf16 features the head was given (the backbone is deterministic here)
    assert f.dtype == torch.bfloat16 and logits.dtype == h.dtype == torch.float32
    want_h = 5.0 * f.float() / f.float().norm(dim=1, keepdim=True)  # tau = 5, in float32
    assert torch.allclose(h, want_h, rtol=1e-6, atol=1e-6)
    if head != "nearest_etf":  # its classifier moved with the step; the others' logits are h W^T (+ b) in float32
        W, b = model.head.weight.float(), model.head.bias
        want = h @ W.T + (0 if b is None else b)
        assert torch.allclose(logits, want, rtol=1e-6, atol=1e-6)


def test_bf16_autocast_solves_in_float32(tmp_path):
    last = train(make_cfg(*TINY, "head=nearest_etf", "trainer.precision=bf16", "trainer.max_epochs=1"), tmp_path)
    P = final_state(tmp_path)["model"]["head.P"]
    assert P.dtype == torch.float32 and torch.allclose(P.T @ P, torch.eye(4), atol=1e-5)
    assert last["train/loss"] == last["train/loss"]  # not NaN


def test_svd_failure_retries_in_float64(monkeypatch):
    A = torch.randn(20, 5)
    real_svd = torch.linalg.svd

    def flaky(x, full_matrices=True):
        if x.dtype == torch.float32:
            raise torch.linalg.LinAlgError("did not converge")
        return real_svd(x, full_matrices=full_matrices)

    monkeypatch.setattr(torch.linalg, "svd", flaky)
    U, S, Vh = polar_factors(A)
    assert U.dtype == torch.float32
    ref = real_svd(A.double(), full_matrices=False)
    assert torch.allclose(U @ Vh, (ref[0] @ ref[2]).float(), atol=1e-5)
    monkeypatch.setattr(
        torch.linalg, "svd", lambda x, full_matrices=True: (_ for _ in ()).throw(torch.linalg.LinAlgError("no"))
    )
    with pytest.raises(EtfTrainError, match="failed to converge, even in float64"):
        polar_factors(A)
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        polar_factors(A * float("nan"))


# ----------------------------------------------------------------------------- resume, bit for bit, in-process


def assert_bit_identical(a: Path, b: Path, epochs: int):
    sa, sb = final_state(a), final_state(b)
    assert sa["epoch"] == sb["epoch"] == epochs
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), f"{k} differs after resume"
    assert sa["scheduler"] == sb["scheduler"]
    ca, cb = read_scalars(a), read_scalars(b)
    for tag in ("lr", *COMPARED):
        assert list(ca[tag][0]) == list(cb[tag][0]), tag  # no duplicated or missing epochs
        assert list(ca[tag][1]) == list(cb[tag][1]), tag


def test_resume_with_epochs_left_restores_the_schedule(tmp_path, monkeypatch):
    """Stopped after epoch 1 of 4: a resume that dropped the scheduler state would change the lr of epochs 2-4."""
    cfg = make_cfg(*TINY, "head=nearest_etf", "trainer.max_epochs=4", "trainer.deterministic=true")
    train(cfg, tmp_path / "ref")
    run_interrupted_then_resumed(monkeypatch, cfg, tmp_path / "run", after_epoch=1)
    assert_bit_identical(tmp_path / "ref", tmp_path / "run", 4)
    lr = read_scalars(tmp_path / "run")["lr"][1]
    assert lr[0] == 0.05 and lr[2] == pytest.approx(0.05 * (1 + math.cos(math.pi * 2 / 4)) / 2)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    write_folder(root, "train", {"a": 12, "b": 12, "c": 12}, 12, rng)
    write_folder(root, "test", {"a": 3, "b": 3, "c": 3}, 12, rng)
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_of_an_augmented_dataloader_pipeline_is_bit_identical(tmp_path, monkeypatch, jpeg_folder, workers):
    """Image folder through DataLoaders with random crops and flips: with 0 workers they draw from the global RNG
    (which the checkpoint must restore), with 2 from worker seeds (which must follow the epoch, not the process)."""
    cfg = make_cfg(
        *[o for o in TINY if not o.startswith("dataset")],
        "dataset=image_folder",
        f"dataset.root={jpeg_folder}",
        "dataset.image_size=12",
        "loader.mode=dataloader",
        f"loader.num_workers={workers}",
        "trainer.batch_size=8",
        "trainer.max_epochs=3",
        "trainer.deterministic=true",
        "head=nearest_etf",
    )
    train(cfg, tmp_path / "ref")
    run_interrupted_then_resumed(monkeypatch, cfg, tmp_path / "boundary", after_epoch=1)
    assert_bit_identical(tmp_path / "ref", tmp_path / "boundary", 3)
    run_interrupted_then_resumed(monkeypatch, cfg, tmp_path / "mid", at=(2, 3))
    assert final_state(tmp_path / "mid")["epoch"] == 3
    assert_bit_identical(tmp_path / "ref", tmp_path / "mid", 3)


def test_checkpoints_by_time_replay_the_epochs_since_the_last_one(tmp_path, monkeypatch):
    """trainer.checkpoint_every_s spares tiny epochs a write each: a run killed after epoch 2 of 3 before any
    checkpoint replays from the start and ends bit-identical, every epoch once in the events (the replayed ones
    rewritten, not duplicated)."""
    from etf_train.training import Run

    from .conftest import Crash

    cfg = make_cfg(*TINY, "trainer.max_epochs=3", "trainer.deterministic=true", "trainer.checkpoint_every_s=3600")
    train(cfg, tmp_path / "ref")
    due = Run._checkpoint_due

    def killed_after_epoch_2(self, epoch):
        if epoch == 2:
            raise Crash()
        return due(self, epoch)

    with monkeypatch.context() as m:
        m.setattr(Run, "_checkpoint_due", killed_after_epoch_2)
        with pytest.raises(Crash):
            train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    assert list(read_scalars(tmp_path / "run")["train/loss"][0]) == [1, 2]
    train(cfg, tmp_path / "run")
    assert_bit_identical(tmp_path / "ref", tmp_path / "run", 3)


@pytest.mark.parametrize("last", [False, True])
def test_a_signal_during_evaluation_stops_at_that_epochs_end(tmp_path, monkeypatch, capsys, caplog, last):
    """A stop signal during the evaluation or NC pass was honoured only after them and one more step of the next
    epoch, without a word, and in the last epoch not at all. It is said at once; mid-run the run stops at the end of
    that epoch with an end-of-epoch checkpoint; in the last epoch the run finishes and says there is nothing to
    resume."""
    from etf_train.training import epoch  # run_epoch, which calls evaluate, lives there

    original, calls = epoch.evaluate, []

    def evaluate(*args, **kwargs):  # called once per epoch: the signal arrives during epoch 1's (or the last's)
        calls.append(1)
        if len(calls) == (2 if last else 1):
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(epoch, "evaluate", evaluate)
    cfg = make_cfg(*TINY, "trainer.max_epochs=2")
    if last:
        with caplog.at_level("WARNING", logger="etf_train"):
            train(cfg, tmp_path)
        assert (tmp_path / "checkpoints" / "finished").exists()
        assert "SIGTERM arrived during the last epoch's evaluation: the run finished, nothing to resume" in caplog.text
    else:
        with pytest.raises(SystemExit) as info:
            train(cfg, tmp_path)
        assert info.value.code == 128 + signal.SIGTERM
        state = final_state(tmp_path)
        assert state["epoch"] == 1 and state["partial"] is None  # the end of epoch 1: no step of epoch 2 taken
        assert list(read_scalars(tmp_path)["train/loss"][0]) == [1]
    err = capsys.readouterr().err
    assert "etf-train: SIGTERM received: saving at the next step or epoch boundary, then stopping" in err

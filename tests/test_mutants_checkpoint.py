"""Checkpoint files, stop signals, the failure marker and AGD's saved state, in-process (issue 30, item 3): the
signal and full-disk paths are otherwise held only by subprocess tests, which a mutation run cannot attribute to
the functions they reach. Each test's comment names the mutants it kills."""

from __future__ import annotations

import os
import signal
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from etf_train import rundir
from etf_train.errors import EtfTrainError
from etf_train.training import checkpoint
from etf_train.training.agd import AGD
from etf_train.training.checkpoint import Preempted, SignalGuard, load_checkpoint, save_checkpoint

# ----------------------------------------------------------------------------- the stop signals


def test_the_first_stop_signal_is_said_once_on_stderr_and_recorded(capfd):
    """Kills mutants of `received is None` (said on every signal, or never), of the message (None, dropped, text
    changed, printed to stdout) and of the flag it sets."""
    with SignalGuard() as guard:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert guard.received == signal.SIGUSR2
    out, err = capfd.readouterr()
    assert out == ""
    assert err == "etf-train: SIGUSR1 received: saving at the next step or epoch boundary, then stopping\n"


def test_chain_hands_the_signal_to_the_handler_installed_before():
    """Kills mutants that look up another handler (None, the wrong key), skip calling it, call it for the default
    handlers instead, or call it with other arguments; the handler is restored first (chain's __exit__)."""
    calls = []

    def before(signum, frame):
        calls.append((signum, frame, signal.getsignal(signal.SIGTERM) is before))

    previous = signal.signal(signal.SIGTERM, before)
    try:
        guard = SignalGuard().__enter__()
        os.kill(os.getpid(), signal.SIGTERM)
        assert calls == []  # the guard only records it
        guard.chain()
        assert calls == [(signal.SIGTERM, None, True)]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_chain_does_not_raise_keyboard_interrupt_for_python_s_own_sigint_handler():
    """Kills the mutant `handler in (default_int_handler, ...)`, which calls Python's handler: a KeyboardInterrupt
    after the checkpoint was written."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        guard = SignalGuard().__enter__()
        os.kill(os.getpid(), signal.SIGINT)
        guard.chain()  # no KeyboardInterrupt
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_preempted_names_the_signal_and_where():
    """Kills the mutant that gives the exception no message."""
    e = Preempted(signal.SIGTERM, 3, 7)
    assert str(e) == "SIGTERM at epoch 3, step 7" and e.signum == signal.SIGTERM


# ----------------------------------------------------------------------------- checkpoint files


META = {"head": "learned", "num_classes": 4}


def test_a_damaged_checkpoint_s_advice_depends_on_whose_file_it_is(tmp_path):
    """Kills mutants of _unreadable's advice: `given` ignored, either advice's text changed."""
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(EtfTrainError) as own:
        load_checkpoint(path, META)
    with pytest.raises(EtfTrainError) as given:
        load_checkpoint(path, META, given=True)
    assert str(own.value).startswith(f"cannot read checkpoint {path} (")
    assert str(own.value).endswith("); this run's own checkpoint is damaged: start the run again in a new folder")
    assert str(given.value).endswith("); point trainer.resume at a run's checkpoints/last.pt")


def test_a_flipped_bit_fails_the_crc_check(tmp_path):
    """A weight's bytes changed after writing: the zip's CRC names the damaged entry."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"meta": META, "config": {}, "w": torch.arange(64.0)})
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + 5] ^= 0xFF  # a byte of the stored tensor (uncompressed)
    path.write_bytes(bytes(raw))
    with pytest.raises(EtfTrainError) as e:
        load_checkpoint(path, META, given=True)
    # kills _check_crc's mutants that pass _unreadable None for the path or for `given`
    assert str(e.value) == (
        f"cannot read checkpoint {path} ({info.filename} fails its CRC check: the file is damaged); "
        "point trainer.resume at a run's checkpoints/last.pt"
    )


def test_save_writes_atomically_and_loads_back(tmp_path):
    """The file appears under its name only, no temporary left; a nested folder is created."""
    path = tmp_path / "a" / "b" / "last.pt"
    save_checkpoint(path, {"meta": META, "config": {"seed": 1}, "x": torch.ones(3)})
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    state = load_checkpoint(path, META)
    assert torch.equal(state["x"], torch.ones(3)) and state["config"] == {"seed": 1}


# ----------------------------------------------------------------------------- the failure marker


def test_mark_failed_creates_the_folders_it_needs_and_writes_the_reason(tmp_path):
    """Kills the mkdir mutants (parents False/None/dropped: the run folder itself is missing; exist_ok False/None/
    dropped: checkpoints/ exists already) and the marker text's mutants (the reason plus one newline)."""
    fresh = tmp_path / "never" / "made"
    rundir.mark_failed(fresh, "diverged at epoch 1, step 2")
    assert (fresh / "checkpoints" / "failed").read_text() == "diverged at epoch 1, step 2\n"
    existing = tmp_path / "run"
    (existing / "checkpoints").mkdir(parents=True)
    rundir.mark_failed(existing, "out of memory")
    assert (existing / "checkpoints" / "failed").read_text() == "out of memory\n"


def test_a_marker_that_cannot_be_written_is_removed_not_left_empty(tmp_path, monkeypatch):
    """Kills the except branch's mutants: `run * FAILED` (a TypeError), missing_ok False/None (a write that failed
    before creating the file then raises FileNotFoundError from a best-effort call)."""
    run = tmp_path / "run"

    def full_disk_after_creating(self, text):
        self.touch()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk_after_creating)
    rundir.mark_failed(run, "x")
    assert not (run / "checkpoints" / "failed").exists()

    def full_disk(self, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    rundir.mark_failed(tmp_path / "other", "x")  # nothing raised
    assert not (tmp_path / "other" / "checkpoints" / "failed").exists()


# ----------------------------------------------------------------------------- AGD's saved state


def test_agd_loads_an_old_state_without_the_running_eta_as_an_empty_mean():
    """Kills load_state_dict's default mutants: (1.0, 0), (0.0, 1), None and no default."""
    w = torch.nn.Parameter(torch.ones(3, 2))
    opt = AGD([w])
    old = opt.state_dict()
    old.pop("eta_running")
    opt._eta_sum, opt._eta_count = 5.0, 2
    opt.load_state_dict(old)
    assert opt.pop_eta() is None  # no steps since: no mean
    w.grad = torch.ones(3, 2)
    opt.step()
    assert opt.pop_eta() == pytest.approx(float(opt.last_eta))  # the mean of this one step alone


def test_agd_names_at_most_five_vectors_and_counts_the_rest():
    """Kills `len(names) >= 5` (five names would get " and 0 more")."""
    five = [(f"b{i}", torch.nn.Parameter(torch.zeros(2))) for i in range(5)]
    with pytest.raises(EtfTrainError) as e:
        AGD(five)
    assert "trainable: b0, b1, b2, b3, b4; remove" in str(e.value)
    with pytest.raises(EtfTrainError) as e:
        AGD([*five, ("b5", torch.nn.Parameter(torch.zeros(2)))])
    assert "trainable: b0, b1, b2, b3, b4 and 1 more; remove" in str(e.value)


def test_the_test_delay_falls_between_the_written_temporary_and_the_rename(tmp_path, monkeypatch):
    """ETF_TRAIN_TEST_SAVE_DELAY_S: slept for (its value as seconds) while the temporary file is whole and the
    checkpoint not yet replaced; "0" still sleeps (0 s)."""
    path = tmp_path / "last.pt"
    seen = []
    monkeypatch.setattr(checkpoint.time, "sleep", lambda s: seen.append((s, path.exists(), tmp_exists(path))))
    for value in ("0.25", "0"):
        monkeypatch.setenv(checkpoint.SAVE_DELAY_ENV, value)
        path.unlink(missing_ok=True)
        save_checkpoint(path, {"x": torch.ones(2)})
    assert seen == [(0.25, False, True), (0.0, False, True)]
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))


def tmp_exists(path: Path) -> bool:
    return path.with_name(f".{path.name}.tmp").exists()


def _failing_open(error: Exception):
    def fake_open(file, mode="r", *args, **kwargs):
        raise error

    return fake_open


def test_a_full_disk_before_anything_is_written_says_why_and_that_none_was_written(tmp_path, monkeypatch):
    """The temporary file could not even be created (no file to remove): the disk, its free space, and that no
    checkpoint was written; a nested folder is made first."""
    path = tmp_path / "a" / "b" / "last.pt"
    monkeypatch.setattr("etf_train.errors.free_mb", lambda p: 0 if p == path else 999)  # measured where it writes
    monkeypatch.setattr(checkpoint, "open", _failing_open(OSError(28, "No space left on device")), raising=False)
    with pytest.raises(EtfTrainError) as e:
        save_checkpoint(path, {"x": 1})
    assert str(e.value) == (
        f"cannot write checkpoint {path}: the disk is full (0 MB free there); no checkpoint was written"
    )
    assert path.parent.is_dir()


def test_a_failed_write_of_another_kind_keeps_the_previous_checkpoint_and_names_the_error(tmp_path, monkeypatch):
    """An error that is no full disk (here torch's writer): its type and first line; the previous file stays
    and the temporary is removed."""
    path = tmp_path / "last.pt"
    path.write_bytes(b"previous")

    def broken_save(state, fh):
        fh.write(b"partial")
        raise RuntimeError("writer failed\nat byte 7")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(EtfTrainError) as e:
        save_checkpoint(path, {"x": 1})
    assert str(e.value) == (
        f"cannot write checkpoint {path}: RuntimeError: writer failed; the previous checkpoint is kept"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"] and path.read_bytes() == b"previous"


# ----------------------------------------------------------------------------- the random streams a checkpoint holds


def test_the_rng_state_is_plain_values_and_an_int64_key():
    """numpy's state as (kind, int64 tensor of its 624 words, pos, has_gauss, gauss); no cuda entry on a CPU."""
    np.random.seed(5)
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = checkpoint.rng_state()
    assert set(state) == {"python", "numpy", "torch"} | ({"cuda"} if torch.cuda.is_available() else set())
    s_kind, s_key, s_pos, s_has, s_gauss = state["numpy"]
    assert (s_kind, s_key.dtype, s_key.tolist(), s_pos, s_has, s_gauss) == (
        "MT19937",
        torch.int64,
        key.tolist(),
        pos,
        has_gauss,
        gauss,
    )


def test_every_cuda_generator_is_saved_and_restored(monkeypatch):
    """On a CUDA machine (faked here) the state holds every device's generator under "cuda" and set_rng_state
    hands it back."""
    devices = [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: devices)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = checkpoint.rng_state()
    assert state["cuda"] is devices
    checkpoint.set_rng_state(state)
    assert restored == [devices]


def test_a_checkpoint_holding_numpys_rng_state_as_an_array_loads_with_weights_only(tmp_path):
    """Checkpoints from before the numpy key was a tensor hold numpy's state tuple (a uint32 array): torch's
    weights_only load refuses its classes unless they are allowed (torch 2.5+)."""
    state = np.random.RandomState(3).get_state()
    torch.save({"numpy": state, "step": np.array([7], dtype=np.int64)}, tmp_path / "old.pt")
    with checkpoint._numpy_arrays_allowed():
        loaded = torch.load(tmp_path / "old.pt", weights_only=True)
    assert loaded["numpy"][0] == "MT19937" and np.array_equal(loaded["numpy"][1], state[1])
    assert loaded["numpy"][1].dtype == np.uint32 and loaded["step"].tolist() == [7]

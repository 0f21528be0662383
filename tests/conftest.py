from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from etf_train.cli import config_dir

# Tiny, fast settings shared by the compose-API tests: a few seconds per run on 2 CPU cores. On the CPU on any host
# (auto would pick CUDA and bf16 on a GPU machine, where these tests mean the CPU path; tests/test_cuda.py asks for
# the device itself, later in its overrides).
TINY = [
    "trainer.device=cpu",
    "dataset=synthetic",
    "dataset.num_classes=4",
    "dataset.image_size=8",
    "dataset.channels=1",
    "dataset.train_per_class=24",
    "dataset.test_per_class=8",
    "backbone=small_cnn",
    "backbone.width=8",
    "backbone.dim=16",
    "trainer.batch_size=32",
    "trainer.max_epochs=2",
    "trainer.progress=false",
    "trainer.checkpoint_every_s=0",  # a checkpoint every epoch, which the resume tests count on
]
TINY_UFM = [
    "trainer.device=cpu",
    "dataset=ufm",
    "dataset.num_classes=4",
    "dataset.per_class=16",
    "backbone=ufm",
    "backbone.dim=16",
    "optimizer.lr=1.0",  # free features move slowly at the image-model rate
    "trainer.batch_size=16",
    "trainer.max_epochs=2",
    "trainer.progress=false",
    "trainer.checkpoint_every_s=0",
]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """Under `make mutate` only (a worker testing one mutant): each test file's tests run together, the files
    cheapest first by the seconds mutmut's stats pass measured for these tests (mutmut-stats.json, in the folder the
    worker runs in; without it, in the order of each file's first test). mutmut hands a mutant's tests over fastest
    first, across files: pytest then tears a module's fixtures down at every switch of file and builds them again
    (12 surviving mutants took 1.29x as long), and a cheap file that kills the mutant waited behind a costly one
    whose first test was fast (docs/mutation.md, run 4)."""
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):
        return
    stats = Path("mutmut-stats.json")
    seconds = json.loads(stats.read_text())["duration_by_test"] if stats.exists() else {}
    first: dict[str, int] = {}
    cost: dict[str, float] = {}
    for i, item in enumerate(items):
        file = item.nodeid.partition("::")[0]
        first.setdefault(file, i)
        cost[file] = cost.get(file, 0.0) + seconds.get(item.nodeid, 0.0)

    def key(item) -> tuple[float, int]:
        file = item.nodeid.partition("::")[0]
        return cost[file], first[file]

    items.sort(key=key)  # stable: the order within a file is kept


def make_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def cfg_factory():
    return make_cfg


def write_folder(root, split: str, classes: dict[str, int], size: int, rng) -> list:
    """PNG class folders root/split/<class>/NN.png of random pixels; returns the pixels (uint8 HWC numpy arrays)
    in ImageFolder's order (classes sorted, files sorted)."""
    import numpy as np
    from PIL import Image

    pixels = []
    for name in sorted(classes):
        (root / split / name).mkdir(parents=True)
        for i in range(classes[name]):
            img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / split / name / f"{i:02d}.png")
            pixels.append(img)
    return pixels


def etf_train(*args, cwd, timeout=300, **popen):
    """The real `etf-train` command in a subprocess (completed), output captured."""
    exe = Path(sys.executable).with_name("etf-train")
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1", **popen.pop("env", {})}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout, **popen)


def etf_train_here(*args, cwd, monkeypatch, capfd):
    """`etf-train ARGS` run in this process (the CLI's own main(), Hydra included: only the process start-up is
    spared); returns returncode, stdout and stderr like the subprocess helper."""
    from types import SimpleNamespace

    from etf_train import cli

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["etf-train", *args])
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in logging.Logger.manager.loggerDict)]
    before = {id(lg): list(lg.handlers) for lg in loggers}
    sigint = signal.getsignal(signal.SIGINT)  # main() installs its start-up handler
    capfd.readouterr()
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:  # Hydra's handlers write to this test's captured streams and run folder: not past this call
        signal.signal(signal.SIGINT, sigint)
        for lg in [logging.getLogger(), *(logging.getLogger(n) for n in logging.Logger.manager.loggerDict)]:
            for handler in [h for h in lg.handlers if h not in before.get(id(lg), [])]:
                lg.removeHandler(handler)
                with contextlib.suppress(OSError, ValueError):  # as logging.shutdown does at a real exit
                    handler.close()
    out, err = capfd.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` with its bytes: a refused start must leave this unchanged."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- interrupting a run in-process


class Crash(BaseException):  # nothing in the program handles a kill -9: no failure marker
    """Stands for a kill -9 right after a checkpoint was written."""


def interrupted(monkeypatch, *, after_epoch: int | None = None, at: tuple[int, int] | None = None):
    """Patch Run so that the next run stops: a crash just after the checkpoint of `after_epoch`, or SIGTERM
    during training step `at` = (epoch, step), which saves a partial-epoch checkpoint at that step's end."""
    from etf_train.training import Run

    save, step_fn, calls = Run.save, Run._step, {}

    def crashing_save(self, epoch, partial=None):
        save(self, epoch, partial)
        if partial is None and epoch == after_epoch:
            raise Crash()

    def signalling_step(self, epoch, step, x, y):
        if (epoch, step) == at and not calls:
            calls["sent"] = True
            os.kill(os.getpid(), signal.SIGTERM)
        return step_fn(self, epoch, step, x, y)

    monkeypatch.setattr(Run, "save", crashing_save)
    monkeypatch.setattr(Run, "_step", signalling_step)


def run_interrupted_then_resumed(monkeypatch, cfg, run_dir, **where):
    """Train cfg into run_dir, stopped as `interrupted` says, then resumed by the same call: its last scalars."""
    from etf_train.training import train

    with monkeypatch.context() as m:
        interrupted(m, **where)
        with pytest.raises((Crash, SystemExit)):
            train(cfg, run_dir)
    assert not (run_dir / "checkpoints" / "finished").exists()
    return train(cfg, run_dir)

"""Multiruns through the real `etf-train` command: job folders, etf-compare on a sweep, the joblib, Optuna and
submitit (requeue) plugins, and the pure helpers of cli.py."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from etf_train import cli, search
from etf_train.command import Command
from etf_train.compare import main as compare_main
from etf_train.errors import EtfTrainError
from etf_train.rundir import read_scalars

from .conftest import TINY

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:optuna")  # SQLAlchemy 2 notices at import


def tiny(max_epochs: int) -> list[str]:
    return [a for a in TINY if not a.startswith("trainer.max_epochs=")] + [f"trainer.max_epochs={max_epochs}"]


ONE_EPOCH = tiny(1)


def etf_train(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("etf-train")
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def job_dirs(sweep: Path) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in sweep.glob("*/.hydra")}


# ------------------------------------------------------------------------------------------ real sweeps


def test_multirun_job_folders_name_the_swept_keys_and_compare_reads_them(tmp_path):
    sweep = tmp_path / "sweep"
    proc = etf_train(
        "-m", "head=learned,fixed_etf,nearest_etf", "seed=1,2", *ONE_EPOCH, f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    # the folder that holds the whole comparison, named once at the end
    assert proc.stdout.count(f"tensorboard --logdir {sweep}    then") == 1 and f"etf-compare {sweep}" in proc.stdout
    names = {f"head={h},seed={s}" for h in ("learned", "fixed_etf", "nearest_etf") for s in (1, 2)}
    assert set(job_dirs(sweep)) == names  # the constant TINY overrides stay out of the names
    for name, run in job_dirs(sweep).items():
        saved = OmegaConf.load(run / ".hydra" / "config.yaml")
        assert name == f"head={saved.head.name},seed={saved.seed}" and saved.dataset.num_classes == 4

    # TensorBoard names runs by their folder below --logdir.
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    assert set(EventMultiplexer().AddRunsFromDirectory(str(sweep)).Runs()) == names

    assert compare_main([str(sweep)]) == 0
    for out in ("comparison.md", "comparison.csv", "comparison.png"):
        assert (sweep / out).stat().st_size > 0
    with (sweep / "comparison.csv").open() as f:
        rows = {row["group"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"head=learned", "head=fixed_etf", "head=nearest_etf"}
    assert all(row["runs"] == "2" for row in rows.values())
    for group in rows:  # the final test accuracy column is the median over the two seeds' last logged values
        head = group.removeprefix("head=")
        finals = [read_scalars(job_dirs(sweep)[f"head={head},seed={s}"])["test/acc"][1][-1] for s in (1, 2)]
        assert float(rows[group]["final_test_acc_median"]) == pytest.approx(sum(finals) / 2)


def test_a_failing_job_fails_alone_and_is_reported_in_one_line(tmp_path):
    sweep = tmp_path / "sweep"
    proc = etf_train(
        "-m", "head=nearest_etf,learned", *ONE_EPOCH, "backbone.dim=2", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )  # d=2 < K=4: nearest_etf refuses, learned runs
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "\netf-train: error: head=nearest_etf needs feature dimension d >= number of classes K" in proc.stderr
    assert read_scalars(sweep / "head=learned")["train/acc"][0].tolist() == [1]


def test_joblib_launcher_with_two_workers_runs_the_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = etf_train(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "head=learned,fixed_etf",
        *ONE_EPOCH,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    runs = job_dirs(sweep)
    assert set(runs) == {"head=learned", "head=fixed_etf"}
    for run in runs.values():
        assert read_scalars(run)["train/acc"][0].tolist() == [1]


def test_optuna_search_returns_the_metric_and_writes_best_params(tmp_path):
    sweep = tmp_path / "sweep"
    proc = etf_train(
        "hparams_search=optuna", "hydra.sweeper.n_trials=2", *ONE_EPOCH, f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    # a multirun without -m: it used to end without naming its folder, as a sweep does
    assert f"etf-compare {sweep}" in proc.stdout
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"optimizer.lr", "head.tau"}
    assert 0.005 <= results["best_params"]["optimizer.lr"] <= 0.5 and 1 <= results["best_params"]["head.tau"] <= 20
    trials = job_dirs(sweep)
    # named by number and the searched keys, at 4 significant digits (Optuna samples e.g. 14.686165375401004)
    assert len(trials) == 2 and all(re.fullmatch(r"\d_head\.tau=\d+(\.\d+)?,optimizer\.lr=[\d.e-]+", n) for n in trials)
    for name in trials:
        assert all(
            len(re.sub(r"[^\d]", "", v.split("e")[0]).lstrip("0")) <= 4 for v in re.findall(r"=([\d.e-]+)", name)
        )
    finals = [read_scalars(run)["test/acc"][1][-1] for run in trials.values()]
    assert results["best_value"] == pytest.approx(max(finals))


def test_the_search_space_follows_the_optimiser_and_its_configured_step():
    from etf_train.search import round_dirname
    from etf_train.search import search_overrides as space

    search_overrides = lambda given: space(given, cli.config_dir())  # noqa: E731
    assert search_overrides(["hparams_search=optuna"]) == [
        "optimizer.lr=tag(log, interval(0.005, 0.5))",
        "head.tau=interval(1.0, 20.0)",
    ]
    assert (
        search_overrides(["hparams_search=optuna", "experiment=ufm10"])[0] == "optimizer.lr=tag(log, interval(0.5, 50))"
    )
    assert (
        search_overrides(["hparams_search=optuna", "optimizer=agd"])[0] == "optimizer.gain=tag(log, interval(1, 100))"
    )
    assert search_overrides(["hparams_search=optuna", "seed=choice(1, 2)"]) == []  # the user's own space
    assert round_dirname("head.tau=14.686165375401004,optimizer.lr=0.012345678,seed=1,x=0.5") == (
        "head.tau=14.69,optimizer.lr=0.01235,seed=1,x=0.5"
    )


def test_optuna_searches_agds_gain_and_one_key_when_asked(tmp_path):
    """The preset searched optimizer.lr whatever the optimiser: under AGD (no lr) every trial failed with Hydra's
    advice to append `+optimizer.lr`. Its space now follows the optimiser; a search override names the only key
    searched; a key the config lacks is one line before anything runs."""
    ufm = ["experiment=ufm10_authors", "dataset.per_class=8", "trainer.max_epochs=1", "trainer.progress=false"]
    sweep = tmp_path / "agd"
    proc = etf_train(
        "hparams_search=optuna", "hydra.sweeper.n_trials=2", *ufm, f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_params"]
    assert best.keys() == {"optimizer.gain", "head.tau"} and 1 <= best["optimizer.gain"] <= 100
    sweep = tmp_path / "tau"
    proc = etf_train(
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=1",
        "head.tau=interval(1, 20)",
        *ufm,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_params"].keys() == {"head.tau"}
    proc = etf_train("hparams_search=optuna", "optimizer.lr=tag(log, interval(0.01, 1))", *ufm, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "etf-train: error: the search names optimizer.lr, which this config has no key for (optimizer=agd steps by "
        "optimizer.gain): search a key it has, or add one with '+optimizer.lr=tag(log, interval(0.01, 1))'"
    ]


def test_an_optuna_storage_needs_its_own_study_name(tmp_path):
    """Optuna loads a stored study by name: a second search under the preset's name joined the first, and its
    best trial could be the other experiment's. The database storage itself failed with a traceback (optuna 2.x under
    SQLAlchemy 2)."""
    storage = f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}"
    proc = etf_train("hparams_search=optuna", storage, *ONE_EPOCH, cwd=tmp_path)
    assert proc.returncode == 2 and "give this one its own hydra.sweeper.study_name" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    sweep = tmp_path / "sweep"
    proc = etf_train(
        "hparams_search=optuna",
        storage,
        "hydra.sweeper.study_name=lr_tau",
        "hydra.sweeper.n_trials=1",
        *ONE_EPOCH,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_params"].keys() == {
        "optimizer.lr",
        "head.tau",
    }


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the job process through /proc")
def test_submitit_requeue_reruns_in_the_same_job_folder_and_resumes(tmp_path):
    """submitit_local requeues like Slurm: SIGUSR2 -> its handler pickles the job again, exits 144, and its
    controller starts the job again; the job must land in the same folder and continue from last.pt."""
    sweep = tmp_path / "sweep"
    exe = Path(sys.executable).with_name("etf-train")
    args = [
        str(exe),
        "-m",
        "hydra/launcher=submitit_local",
        "head=choice(nearest_etf)",
        *tiny(60),
        "metrics.every_n_epochs=60",
        f"hydra.sweep.dir={sweep}",
    ]
    main = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = sweep / "head=nearest_etf" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and main.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), main.communicate()[0]
    controllers = [int(p.name) for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
    (job,) = [kid for c in controllers for kid in _children(c)]
    os.kill(job, signal.SIGUSR2)  # what Slurm sends signal_delay_s before a time limit
    out = main.communicate(timeout=300)[0]
    assert main.returncode == 0, out

    assert set(job_dirs(sweep)) == {"head=nearest_etf"}
    run = sweep / "head=nearest_etf"
    log = (run / "cli.log").read_text()
    assert "resumed from" in log and str(ckpt) in log
    steps = read_scalars(run)["train/acc"][0].tolist()
    assert steps == list(range(1, 61))  # every epoch once, across the two processes
    assert len(list(run.glob("events.out.tfevents.*"))) == 2


# ------------------------------------------------------------------------------------------ configs


def test_slurm_launcher_config_makes_a_valid_sbatch_script(tmp_path, monkeypatch):
    """Builds the sbatch script the way the submitit plugin does (keys it doesn't know would raise)."""
    submitit = pytest.importorskip("submitit")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    srun = tmp_path / "bin" / "srun"  # submitit insists on finding srun on PATH; it is never run here
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")
    with initialize_config_dir(config_dir=str(cli.config_dir()), version_base="1.3"):
        cfg = compose(
            "config",
            [
                "hydra/launcher=slurm",
                f"hydra.sweep.dir={tmp_path}/sweep",
                "hydra.launcher.partition=gpu",
                "hydra.launcher.account=proj",
            ],
            return_hydra_config=True,
        )
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    params = dict(launcher.params)
    assert params.pop("submitit_folder") == f"{tmp_path}/sweep/.submitit/%j"
    retries = params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path, slurm_max_num_timeout=retries)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in (
        "--gpus-per-node=1",
        "--ntasks-per-node=1",
        "--time=1440",
        "--signal=USR2@300",
        "--requeue",
        "--partition=gpu",
        "--account=proj",
        "--job-name=etf-train",
    ):
        assert f"#SBATCH {line}\n" in script
    assert executor._executor.max_num_timeout == 10


# ------------------------------------------------------------------------------------------ cli helpers


@pytest.mark.parametrize(
    "spec, multirun, num, count, want",
    [
        ("auto", True, 0, 4, "cuda:0"),
        ("auto", True, 5, 4, "cuda:1"),
        ("auto", True, 7, 2, "cuda:1"),
        ("auto", True, 3, 1, "auto"),  # one GPU: the trainer's auto picks it
        ("auto", True, 3, 0, "auto"),
        ("auto", False, 3, 4, "auto"),  # a single run keeps auto
        ("cpu", True, 3, 4, "cpu"),  # an explicit device wins
        ("cuda:2", True, 3, 4, "cuda:2"),
    ],
)
def test_job_device_spreads_multirun_jobs_over_gpus(spec, multirun, num, count, want):
    assert cli.job_device(spec, multirun, num, count) == want


def test_swept_dirname_excludes_keeps_only_swept_keys():
    always = ["trainer.resume"]
    args = [
        "-m",
        "head=learned,fixed_etf",
        "seed=range(1,3)",
        "dataset=synthetic",
        "+foo.bar=1",
        "hydra.sweep.dir=/x",
        "hydra/launcher=joblib",
        "--cfg",
        "job",
    ]
    assert cli.swept_dirname_excludes(Command(tuple(args)), always) == ["trainer.resume", "dataset", "foo.bar"]
    searched = Command(("hparams_search=optuna", "seed=3", "trainer.resume=never"))
    assert cli.swept_dirname_excludes(searched, always) == ["trainer.resume", "hparams_search", "seed"]
    assert cli.swept_dirname_excludes(Command(("head=learned,",)), always) is None  # bad syntax: left to Hydra


@pytest.mark.parametrize(
    "sweep_args, job_args, want",
    [
        (["head=learned,fixed_etf", "seed=1,2"], ["head=learned", "seed=2"], "head=learned,seed=2"),
        (["seed=range(1,3)"], ["seed=2"], "seed=2"),
        ([], [], ""),  # a multirun sweeping nothing runs its one job in the sweep folder itself
    ],
)
def test_job_folder_name_is_the_swept_overrides(sweep_args, job_args, want):
    """What Hydra computes for a job of `etf-train -m <constants> <sweep_args>` with the excludes main() adds."""
    constants = [*TINY, "head.tau=5", "optimizer=sgd", "scheduler=cosine", "trainer.resume=never"]
    assert len(",".join(constants)) > 255  # Hydra's own name: too long for a file name
    always = OmegaConf.load(cli.config_dir() / "config.yaml").hydra.job.config.override_dirname.exclude_keys
    excludes = cli.swept_dirname_excludes(Command((*constants, *sweep_args)), always)
    hydra_arg = f"{cli.DIRNAME_EXCLUDES}=[{','.join(excludes)}]"
    with initialize_config_dir(config_dir=str(cli.config_dir()), version_base="1.3"):
        cfg = compose("config", [*constants, *job_args, hydra_arg], return_hydra_config=True)
    assert cfg.hydra.job.override_dirname == want


def test_with_override_keeps_the_overrides_together():
    from hydra._internal.utils import get_args_parser  # the parser hydra.main uses

    for args, want in [
        (["a=1", "--cfg", "job"], ["x=2", "a=1", "--cfg", "job"]),
        (["-m", "a=1", "b=2"], ["-m", "x=2", "a=1", "b=2"]),
        (["--cfg", "job"], ["--cfg", "job", "x=2"]),
        ([], ["x=2"]),
    ]:
        assert Command(tuple(args)).with_override("x=2").args == tuple(want)
        assert get_args_parser().parse_args(want).overrides == [a for a in want if "=" in a]


def test_objective_is_the_last_epochs_metric():
    scalars = {"train/acc": 90.0, "test/acc": 80.5}
    assert search.objective(scalars, "test/acc") == 80.5
    assert search.objective(scalars, None) is None
    with pytest.raises(
        EtfTrainError, match="optimized_metric=nc/nc1 is not a scalar of this run; choose one of test/acc, train/acc"
    ):
        search.objective(scalars, "nc/nc1")


@pytest.mark.parametrize(
    "arg, module, package",
    [
        ("hydra/launcher=joblib", "hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
        ("hydra/launcher=slurm", "submitit", "hydra-submitit-launcher"),
        ("hydra/launcher=submitit_local", "hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
        ("hydra/sweeper=optuna", "optuna", "hydra-optuna-sweeper"),
        ("+hparams_search=optuna", "hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
    ],
)
def test_missing_plugin_is_one_line_and_exit_2(arg, module, package, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["etf-train", "-m", arg, "seed=1,2"])
    assert cli.missing_plugin(Command(tuple(sys.argv[1:]))) is None  # installed here
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        f"etf-train: error: {arg.lstrip('+')} needs the {package} plugin: "
        f'pip install -e ".[sweep]" (or pip install {package})\n'
    )


@pytest.mark.slow
def test_a_real_tensorboard_server_lists_the_sweep_in_hparams_and_custom_scalars(tmp_path):
    """The HParams tab said "No hparams data was found" and Custom Scalars was blank: ask a real TensorBoard."""
    import json
    import socket
    import time
    import urllib.request

    sweep = tmp_path / "sweep"
    assert (
        etf_train(
            "-m", "head=learned,nearest_etf", "seed=1,2", *ONE_EPOCH, f"hydra.sweep.dir={sweep}", cwd=tmp_path
        ).returncode
        == 0
    )
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("tensorboard")),
            "--logdir",
            str(sweep),
            "--port",
            str(port),
            "--host",
            "localhost",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def ask(path, body=None):
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(
                f"http://localhost:{port}{path}", data=data, headers={"Content-Type": "application/json"}
            )
            return json.load(urllib.request.urlopen(request, timeout=10))

        for _ in range(120):
            try:
                groups = ask(
                    "/data/plugin/hparams/session_groups",
                    {
                        "experimentName": "",
                        "allowedStatuses": ["STATUS_SUCCESS"],
                        "startIndex": 0,
                        "sliceSize": 10,
                        "colParams": [{"hparam": "head.name"}, {"metric": {"tag": "test/acc"}}],
                    },
                )["sessionGroups"]
                if len(groups) == 4:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert sorted(g["hparams"]["head.name"] for g in groups) == ["learned", "learned", "nearest_etf", "nearest_etf"]
        layout = ask("/data/plugin/custom_scalars/layout")
        assert layout["category"][0]["title"] == "convergence"
    finally:
        server.terminate()
        server.wait(timeout=30)

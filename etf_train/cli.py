"""The `etf-train` command: Hydra composes configs/, then trainer.train runs the experiment.

Bad input ends with one line on stderr, `etf-train: error: ...`, and exit status 2. In a multirun
(`-m`, `hparams_search=...`) a job's error fails that job only: the launcher records it, the other jobs
run, and Hydra (or Optuna, as a failed trial) reports it at the end.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import secrets
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import interrupt, parallel, rundir, search, sweepdir
from .command import Command
from .errors import FULL_MB, EtfTrainError, free_mb, one_line
from .heap import keep_freed_memory
from .runlock import RunLock
from .view import how_to_look

log = logging.getLogger(__name__)

# The optional Hydra plugins (pip extra `sweep`): what each needs importable, and its pip name.
_JOBLIB = (("hydra_plugins.hydra_joblib_launcher", "joblib"), "hydra-joblib-launcher")
_SUBMITIT = (("hydra_plugins.hydra_submitit_launcher", "submitit"), "hydra-submitit-launcher")
_OPTUNA = (("hydra_plugins.hydra_optuna_sweeper", "optuna"), "hydra-optuna-sweeper")
PLUGINS = {
    "hydra/launcher=joblib": _JOBLIB,
    "hydra/launcher=slurm": _SUBMITIT,  # configs/hydra/launcher/slurm.yaml builds on submitit_slurm
    "hydra/launcher=submitit_slurm": _SUBMITIT,
    "hydra/launcher=submitit_local": _SUBMITIT,
    "hydra/sweeper=optuna": _OPTUNA,
    "hparams_search": _OPTUNA,  # every configs/hparams_search/ file is an Optuna search
}
DIRNAME_EXCLUDES = "hydra.job.config.override_dirname.exclude_keys"

# A short id of this process for the default run and sweep folders (configs/config.yaml): two runs, or two sweeps,
# started in the same second get two folders. One value per process, so every reading of the folder agrees.
UID = secrets.token_hex(2)
OmegaConf.register_new_resolver("etf_uid", lambda: UID, replace=True)
OmegaConf.register_new_resolver("etf_round", lambda name: search.round_dirname(str(name)), replace=True)
OmegaConf.register_new_resolver("etf_eq", lambda a, b: a == b, replace=True)  # e.g. a setting that follows head.name
OmegaConf.register_new_resolver("etf_le", lambda a, b: float(a) <= float(b), replace=True)  # e.g. the resnet stem


class JobFailed(CompactHydraException):
    """A multirun job's EtfTrainError: Hydra prints its one line (after the job's overrides), no traceback."""


def config_dir() -> Path:
    """configs/ beside the package in a source checkout, or inside it in an installed wheel."""
    here = Path(__file__).resolve().parent
    packaged = here / "configs"
    return packaged if packaged.is_dir() else here.parent / "configs"


def missing_plugin(cmd: Command) -> str | None:
    """The error line for the first override whose Hydra plugin cannot be imported, or None."""
    for key, value in cmd.given.items():
        choice = key if key == "hparams_search" and value != "null" else f"{key}={value}"
        if choice not in PLUGINS:
            continue
        modules, package = PLUGINS[choice]
        try:
            for module in modules:
                importlib.import_module(module)
        except ImportError:
            return f'{key}={value} needs the {package} plugin: pip install -e ".[sweep]" (or pip install {package})'
    return None


def swept_dirname_excludes(cmd: Command, always: Sequence[str]) -> list[str] | None:
    """exclude_keys for hydra.job.override_dirname that name a sweep's job folders by the swept keys only.

    Hydra names a job folder after all of its overrides, constants included, which buries the swept
    `head=learned,seed=2` in a long string and can pass the 255-byte file-name limit. Excluding the constant
    overrides (those without sweep syntax such as `seed=1,2` or `range(1,4)`) leaves the swept keys, or the
    ones Optuna chooses; a multirun that sweeps nothing runs its one job in the sweep folder itself.
    None when the overrides don't parse (Hydra reports that itself).
    """
    if cmd.parsed is None:
        return None
    constants = [o.key_or_group for o in cmd.parsed if not (o.is_hydra_override() or o.is_sweep_override())]
    return list(dict.fromkeys([*always, *constants]))


def empty_output(cmd: Command) -> str | None:
    """The error line for `hydra.run.dir=` given empty (an unset shell variable), which would write into `.`."""
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        if key in cmd.given and not cmd.given[key].strip():
            return f"{key}= is empty (an unset shell variable?); give a folder, or leave it out for the default"
    return None


def output_folder(cmd: Command) -> str:
    """hydra.run.dir (or hydra.sweep.dir for -m) as given or configured, with ${now:...} and ${etf_uid:} filled in
    as Hydra will; other interpolations stay."""
    key = cmd.output_key
    given = cmd.value(key)
    if given is None:
        given = OmegaConf.to_container(OmegaConf.load(config_dir() / "config.yaml"))["hydra"][key.split(".")[1]]["dir"]
    now = datetime.now()
    return re.sub(r"\$\{now:([^}]*)\}", lambda m: now.strftime(m.group(1)), given).replace("${etf_uid:}", UID)


def unwritable_output(cmd: Command, cwd: Path) -> str | None:
    """The error line when the run's output folder cannot be made (a file in the way, no permission), or None.

    Checked before Hydra starts, which would otherwise fail with a traceback: the part of the output folder
    before its first interpolation other than ${now:...}.
    """
    key = cmd.output_key
    target = cwd / output_folder(cmd).split("${", 1)[0]
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a folder" if not existing.is_dir() else "is not writable"
        return f"cannot write the output folder {target}: {existing} {what}; set {key}=... to a writable place"
    if free_mb(existing) < FULL_MB:  # Hydra's first write of the record would fail with a traceback
        return f"cannot write the output folder {target}: the disk is full ({free_mb(existing)} MB free there)"
    return None


def interrupted_run(cmd: Command, cwd: Path) -> Path | None:
    """The run that the same command left unfinished, so that it resumes rather than starting over.

    With Hydra's default time-stamped folders, a rerun gets a new folder; this finds the newest
    outputs/<date>/<time>_... run started with the same overrides that neither finished nor failed and that no live
    process holds (it may have no checkpoint yet: it then starts over in its folder).
    None for multiruns (a sweep's jobs keep their folders), an explicit hydra.run.dir, or trainer.resume
    other than auto.
    """
    if cmd.multirun or "hydra.run.dir" in cmd.given or cmd.value("trainer.resume", "auto") != "auto":
        return None
    mine = cmd.task
    for saved in sorted(cwd.glob(f"outputs/*/*/{rundir.OVERRIDES}"), reverse=True):  # newest first
        run = saved.parent.parent
        if rundir.state(run).status == "unfinished" and not RunLock(run).held_by_live_process():
            scanned = sweepdir.scanned_yaml(saved)
            if isinstance(scanned, list) and sorted(str(o) for o in scanned) == mine:
                return run.relative_to(cwd)
    return None


def _sweep_size(cmd: Command) -> int | None:
    """How many jobs the basic sweeper makes of the command's overrides (None: they don't parse)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if cmd.parsed is None:
        return None
    task = Command(tuple(cmd.task))  # the sweep's own overrides, as multirun.yaml records them
    return sum(len(batch) for batch in BasicSweeper.split_arguments(task.parsed, None))


def interrupted_sweep(cmd: Command, cwd: Path) -> Path | None:
    """The sweep that the same `etf-train -m ...` left unfinished, so that it continues rather than starting over.

    The newest outputs/multirun/<date>/<time> sweep launched with the same overrides counts when it has fewer
    finished jobs than the overrides make; its finished jobs then return at once and the others resume.
    None for single runs, an explicit hydra.sweep.dir, other sweepers (Optuna) or trainer.resume other than auto.
    """
    if (
        not cmd.multirun
        or "hydra.sweep.dir" in cmd.given
        or cmd.value("trainer.resume", "auto") != "auto"
        or "hparams_search" in cmd.given
        or "hydra/sweeper" in cmd.given
    ):
        return None
    mine = cmd.task
    for saved in sorted(cwd.glob("outputs/multirun/*/*/multirun.yaml"), reverse=True):  # newest first
        scanned = sweepdir.scanned_yaml(saved)
        task = (
            OmegaConf.select(OmegaConf.create(scanned), "hydra.overrides.task", default=None)
            if isinstance(scanned, dict)
            else None
        )
        if task is None or sorted(str(o) for o in task) != mine:
            continue
        finished = sum(rundir.is_finished(job.parent.parent) for job in saved.parent.glob(f"**/{rundir.CONFIG}"))
        size = _sweep_size(cmd)
        return saved.parent.relative_to(cwd) if size is not None and finished < size else None
    return None


def job_device(spec: str, multirun: bool, job_num: int, cuda_count: int) -> str:
    """One GPU per job: with trainer.device=auto in a multirun on a machine with several GPUs, job n runs on
    cuda:(n mod count), so parallel jobs (hydra/launcher=joblib, n_jobs = count) spread over the GPUs."""
    if spec == "auto" and multirun and cuda_count > 1:
        return f"cuda:{job_num % cuda_count}"
    return spec


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> float | None:
    import torch

    from .training import train

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    try:
        OmegaConf.resolve(cfg)  # e.g. dataset.root: ${oc.env:CIFAR10_JPG,...} -> the path the trainer is handed
        job_num = hc.job.num if multirun else 0  # hydra.job.num exists in multiruns only
        device = job_device(str(cfg.trainer.device), multirun, job_num, torch.cuda.device_count())
        cfg.trainer.device = device
        record = (list(hc.overrides.task), OmegaConf.to_container(hc, resolve=False))
        scalars = train(cfg, run_dir, record)
        if not multirun:  # the folder beside other runs to compare with (a sweep names its own at the end)
            print(f"etf-train: {how_to_look(run_dir.parent)}")
        return search.objective(scalars, cfg.get("optimized_metric"))
    except EtfTrainError as e:
        rundir.remove_if_empty(run_dir)  # the folder Hydra made for a start that was refused
        message = one_line(e)
        if multirun:  # fail this job only; the launcher runs the others, Hydra and the sweep's summary report it
            if not run_dir.exists():  # refused before it started: no run folder tells of it
                sweepdir.note_refused(Path(hc.sweep.dir), hc.overrides.task, message)
            print(f"etf-train: error: {message}", file=sys.stderr)
            raise JobFailed(f"etf-train: error: {message}") from e
        print(f"etf-train: error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C before training started (once it runs, a checkpoint is saved first)
        rundir.remove_if_empty(run_dir)
        raise


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("etf-train")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "unknown (not installed)"


def prepare(cmd: Command, cwd: Path) -> tuple[Command, Path | None]:
    """The command Hydra will run, and its sweep folder where known now (None: a single run, or a folder named by an
    interpolation only Hydra fills in). Refused in one line (exit 2) when it cannot run; the run or sweep that the
    same command left unfinished is resumed; a sweep's folder is fixed now so that its end can name it; a sweep's
    job folders are named by the swept keys only."""
    problem = (
        missing_plugin(cmd)
        or empty_output(cmd)
        or unwritable_output(cmd, cwd)
        or (search.check(cmd, config_dir()) if search.is_search(cmd) else None)
    )
    if problem is not None:
        print(f"etf-train: error: {problem}", file=sys.stderr)
        sys.exit(2)
    if search.is_search(cmd):  # its space follows the optimiser
        cmd = Command((*cmd.args, *search.search_overrides(cmd.overrides, config_dir())))
    resume = interrupted_run(cmd, cwd)
    if resume is not None:
        print(f"etf-train: resuming the interrupted run in {resume}", file=sys.stderr)
        cmd = cmd.with_override(f"hydra.run.dir={resume}")
    sweep = interrupted_sweep(cmd, cwd)
    if sweep is not None:
        print(f"etf-train: continuing the interrupted sweep in {sweep}", file=sys.stderr)
        cmd = cmd.with_override(f"hydra.sweep.dir={sweep}")
    sweep_dir = output_folder(cmd) if cmd.multirun else None
    named = sweep_dir is not None and "${" not in sweep_dir
    if named and "hydra.sweep.dir" not in cmd.given:
        cmd = cmd.with_override(f"hydra.sweep.dir={sweep_dir}")
    for override in parallel.default_launcher(cmd, cuda_available):
        cmd = cmd.with_override(override)
    if DIRNAME_EXCLUDES not in cmd.given:
        always = OmegaConf.select(OmegaConf.load(config_dir() / "config.yaml"), DIRNAME_EXCLUDES, default=[])
        excludes = swept_dirname_excludes(cmd, always)
        if excludes:
            cmd = cmd.with_override(f"{DIRNAME_EXCLUDES}=[{','.join(repr(k) for k in excludes)}]")
    return cmd, Path(sweep_dir) if named else None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def set_process_env(cmd: Command) -> None:
    """Environment read once per process, so set before torch loads (later, in _main). OpenMP threads that sleep
    while they wait instead of spinning: with torch's spinning default a busy neighbour on a small machine slows every
    step many times over (docs/benchmarks.md, "The thread cliff"); export OMP_WAIT_POLICY=ACTIVE to choose otherwise.
    cuBLAS's fixed workspace, which deterministic cuBLAS needs, must precede the process's first cuBLAS call, and in
    a sweep an earlier job makes that call. And glibc's allocator keeps freed memory for the next tensor (heap.py)."""
    keep_freed_memory()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "true" in cmd.value("trainer.deterministic", "").lower():  # true, or a sweep over true and false
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # as seed_everything sets it


def main() -> None:
    try:  # the handler too: a Ctrl-C can land on install()'s last lines, after it is in place
        interrupt.install()
        _start(Command(tuple(sys.argv[1:])))
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (inside it, a checkpoint is saved first)
        print("etf-train: interrupted (Ctrl-C) outside training; no training step was lost", file=sys.stderr)
        sys.exit(130)


def _start(cmd: Command) -> None:
    set_process_env(cmd)
    if "--version" in cmd.args or "-V" in cmd.args:  # etf-train's own version; Hydra's --version would print Hydra's
        print(f"etf-train {version()}")
        return
    cmd, sweep_dir = prepare(cmd, Path.cwd())
    sys.argv[1:] = cmd.args  # what Hydra reads: the command line as decided above, set once
    from .compare import sweep_end  # here, not at import: a Ctrl-C during start-up must find the handler set

    if sweep_dir is not None:  # a continued sweep retries the jobs refused before
        (sweep_dir / sweepdir.REFUSED).unlink(missing_ok=True)
    try:
        _main()
    except SystemExit as e:  # how Hydra ends a sweep in which a job failed, after running the others
        if sweep_dir is not None and e.code:
            print(sweep_end(sweep_dir))
        raise
    if sweep_dir is not None:
        print(sweep_end(sweep_dir))


if __name__ == "__main__":
    main()

"""hydra/launcher=parallel: Hydra's side of etf_train/parallel.py. Each job runs as the basic launcher runs it
(Hydra's run_job, the job's folder under the sweep folder), in its own forked process; `n_jobs` at once (null: the
usable cores), each with `threads_per_job` torch threads. Its log lines name the job, and its progress bar is off
unless asked for (trainer.progress=true), so that the jobs' output does not interleave into noise."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def swept(job_overrides: Sequence[Sequence[str]]) -> list[str]:
    """Each job's name: the overrides whose value differs between the jobs (the swept ones), else its number."""
    varying = {o.split("=", 1)[0] for o in set().union(*job_overrides) if not all(o in j for j in job_overrides)}
    return [",".join(o for o in j if o.split("=", 1)[0] in varying) for j in job_overrides]


class ParallelLauncher(Launcher):
    def __init__(self, n_jobs: int | None = None, threads_per_job: int = 1) -> None:
        self.n_jobs, self.threads_per_job = n_jobs, threads_per_job
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # imported once here, so that no forked job pays for them: torch, etf-train, the dynamo that torch's fused
        # optimisers import when first built (1.2 s a process) and matplotlib for the end-of-run figures
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
        import torch
        import torch._dynamo  # noqa: F401

        import etf_train.training  # noqa: F401
        from etf_train.cli import JobFailed
        from etf_train.parallel import run_in_processes, usable_cores

        setup_globals()
        assert self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        at_once = max(1, min(self.n_jobs or usable_cores(), len(job_overrides)))
        log.info(f"Launching {len(job_overrides)} jobs locally, {at_once} at a time")
        names = swept(job_overrides)
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        state = Singleton.get_state()

        def job(idx: int, overrides: Sequence[str], name: str):
            def run() -> tuple[JobStatus, object, str | None]:
                Singleton.set_state(state)
                torch.set_num_threads(self.threads_per_job)
                ret = self._run_one(idx, overrides, name or f"#{idx}")
                # what the sweeper reads; the job's configs hold structured-config classes that do not pickle
                return ret.status, ret._return_value, ret.working_dir

            return run

        jobs = [job(i, o, n) for i, (o, n) in enumerate(zip(job_overrides, names), initial_job_idx)]
        returns = []
        for (overrides, name), outcome in zip(zip(job_overrides, names), run_in_processes(jobs, at_once)):
            if isinstance(outcome.result, tuple):
                status, value, working_dir = outcome.result
            else:
                why = f" ({outcome.result})" if outcome.result else " (killed? its log is in its folder)"
                status, working_dir = JobStatus.FAILED, None
                value = JobFailed(f"etf-train: error: job {name} ended with exit status {outcome.exitcode}{why}")
            returns.append(
                JobReturn(overrides=list(overrides), working_dir=working_dir, status=status, _return_value=value)
            )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def _run_one(self, idx: int, overrides: Sequence[str], name: str) -> JobReturn:
        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        setup_globals()
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
            if OmegaConf.select(sweep_config, "trainer.progress") == "auto":
                sweep_config.trainer.progress = False
            fmt = OmegaConf.select(sweep_config, "hydra.job_logging.formatters.simple.format")
            if isinstance(fmt, str):
                sweep_config.hydra.job_logging.formatters.simple.format = fmt.replace(
                    "%(name)s", name.replace("%", "%%")
                )
        HydraConfig.instance().set_config(sweep_config)
        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

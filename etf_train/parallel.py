"""A CPU sweep's jobs side by side: one forked process per job, as many at once as the cores this process may use,
each a plain etf-train job with its own signal handling, lock and checkpoints (hydra/launcher=parallel, the default
launcher of a sweep on a machine without CUDA; hydra_plugins/etf_train_launcher is Hydra's side of it).

A stop signal (Ctrl-C, SIGTERM, SIGHUP, SLURM's SIGUSR1/2) reaches every running job (a terminal sends Ctrl-C to all
of them; a signal sent to this process alone is passed on): each saves at its next step boundary and stops, no job
starts after it, and the sweep ends with status 128 + signal, as a sequential sweep does; the same command continues
it. Each job is forked from a process that has imported torch and etf-train already, so it starts in milliseconds.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait

from . import interrupt
from .command import Command

CHOOSE = ("hydra/launcher", "hydra.launcher")  # keys by which a command picks or sets a launcher itself


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: a container's or taskset's share), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_launcher(cmd: Command, cuda: Callable[[], bool]) -> list[str]:
    """The overrides that run a sweep's jobs in parallel: for a multirun (not an Optuna search, whose trials follow
    each other) that picks no launcher, on a machine with several usable cores and no CUDA (GPU jobs share the device
    as before); [] otherwise. `cuda` is asked last: it imports torch."""
    if not cmd.multirun or "hparams_search" in cmd.given or any(k.startswith(CHOOSE) for k in cmd.given):
        return []
    if usable_cores() < 2 or not hasattr(os, "fork") or cuda():
        return []
    return ["hydra/launcher=parallel"]


@dataclass
class Outcome:
    """How a job's process ended: its result (None if it sent none) and exit status."""

    result: object
    exitcode: int | None


def _child(job: Callable[[], object], conn) -> None:
    for s in interrupt.STOP_SIGNALS:  # the parent's forwarding handlers are not the job's
        signal.signal(s, signal.SIG_DFL)
    interrupt.install()  # Ctrl-C before training starts: one line, as in a single run
    try:
        result = job()
        try:
            conn.send_bytes(pickle.dumps(result))
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            conn.send_bytes(pickle.dumps(RuntimeError(f"the job's result could not be sent back: {e}")))
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()


def run_in_processes(jobs: Sequence[Callable[[], object]], at_once: int) -> list[Outcome]:
    """Run each job in a forked process, at most `at_once` at a time; their outcomes in job order. On a stop signal,
    or a job that ended by one: pass it to the running jobs, start no more, wait for them, exit 128 + signal."""
    ctx = multiprocessing.get_context("fork")
    pending, running, outcomes = deque(range(len(jobs))), {}, [Outcome(None, None) for _ in jobs]
    stop: list[int] = []

    def forward(signum, frame):
        if not stop:
            stop.append(signum)
            for process, _ in running.values():
                if process.is_alive():
                    os.kill(process.pid, signum)

    previous = {s: signal.signal(s, forward) for s in interrupt.STOP_SIGNALS}
    try:
        while running or (pending and not stop):
            while pending and not stop and len(running) < at_once:
                i = pending.popleft()
                receive, send = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_child, args=(jobs[i], send), daemon=False)
                process.start()
                send.close()
                running[i] = (process, receive)
            ready = wait([c for _, c in running.values()] + [p.sentinel for p, _ in running.values()], timeout=1.0)
            for i, (process, receive) in list(running.items()):
                if receive in ready or process.sentinel in ready:
                    if receive.poll():
                        try:
                            outcomes[i].result = pickle.loads(receive.recv_bytes())
                        except EOFError:  # ended without a result
                            pass
                    if not process.is_alive() or process.sentinel in ready:
                        process.join()
                        receive.close()
                        outcomes[i].exitcode = process.exitcode
                        del running[i]
                        by_signal = (process.exitcode or 0) - 128
                        if by_signal in interrupt.STOP_SIGNALS and outcomes[i].result is None:
                            forward(by_signal, None)  # a job stopped by a signal of its own stops the sweep
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stop:
        raise SystemExit(128 + stop[0])
    return outcomes

"""The steps of the GPU check (scripts/gpu_check.py runs each in its own process): `gpu_steps.py STEP --work DIR`.

  env     versions, device, driver
  tests   the suite's CUDA tests (pytest -m cuda)
  smoke   every head x {fp32, bf16} x {device, dataloader} loader x {svd, gram, newton, riemannian}, and AGD, cutmix, ddn,
          nonfinite=skip, compile + channels_last, etf-eval on the device: finite losses, solver/ms logged
  syncs   host synchronisations per training step, per head and solver (torch.cuda.set_sync_debug_mode and the
          profiler's count of synchronising CUDA calls), ResNet-18, bf16, channels_last
  step    ResNet-18 training step per head and solver (bf16, channels_last, batch 512, CIFAR shapes), compile off
          and on
  solver  (gpu_solver.py) the nearest-ETF solve against bare CUDA SVDs and the Gram/eigh route
  decode, cifar  (gpu_cifar.py) CIFAR-10 JPEGs into the cache, served from the GPU; the three heads trained

Each step writes WORK/STEP.json: checks (name, ok, detail), summary (markdown lines) and data, saved after every
case so that a step stopped at its time limit keeps what it measured. --dry-run: the CPU at toy sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import register_bench_dataset  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from etf_train import rundir  # noqa: E402
from etf_train.cli import config_dir  # noqa: E402
from etf_train.data import COMMON_OPTIONS  # noqa: E402
from etf_train.training import Run, SignalGuard, train  # noqa: E402

HEADS = ("learned", "fixed_etf", "nearest_etf")
SOLVERS = ("svd", "gram", "newton", "riemannian")


class Step:
    """One step's record: checks, summary lines and data, written to WORK/NAME.json at every save()."""

    def __init__(self, name: str, work: Path, dry: bool):
        self.name, self.work, self.dry = name, work, dry
        self.device = "cpu" if dry else "cuda"
        self.dir = work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.checks: list[dict] = []
        self.goals: list[dict] = []
        self.summary: list[str] = []
        self.data: dict = {}

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        print(f"[{'ok' if ok else 'FAILED'}] {name} {detail}", flush=True)
        self.save()
        return ok

    def goal(self, name: str, met: bool, detail: str) -> None:
        """A goal of issue 24, measured: met or not is a result, not a failure of the step."""
        self.goals.append({"name": name, "met": bool(met), "detail": detail})
        print(f"[goal {'met' if met else 'NOT met'}] {name} {detail}", flush=True)
        self.save()

    def save(self) -> None:
        record = {"checks": self.checks, "goals": self.goals, "summary": self.summary, "data": self.data}
        (self.work / f"{self.name}.json").write_text(json.dumps(record, indent=1, default=str))

    def attempt(self, name: str, case, rows) -> bool:
        """Run one case, case() -> (ok, detail), as a check; an exception fails it with its last line. The summary
        becomes `rows` (a list the case may extend, or a function giving the lines)."""
        try:
            ok, detail = case()
        except Exception as e:  # noqa: BLE001 - every case is reported, whatever it raises
            traceback.print_exc()
            ok, detail = False, error_line(e)
        self.summary = rows() if callable(rows) else rows
        return self.check(name, ok, detail)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def error_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:300]


def config(*overrides: str, n: int | None = None, num_classes: int = 10):
    """The composed config; with n, the data replaced by `bench_cifar` (n uint8 CIFAR-shaped images, test 256)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["trainer.progress=false", *overrides])
    if n is not None:
        OmegaConf.set_struct(cfg, False)
        common = {k: v for k, v in OmegaConf.to_container(cfg.dataset).items() if k in COMMON_OPTIONS}
        cfg.dataset = {**common, "name": "bench_cifar", "n": n, "num_classes": num_classes}
    return cfg


# -- env


def env(step: Step) -> None:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "cpus": __import__("os").cpu_count(),
    }
    for mod in ("torchvision", "timm", "hydra", "omegaconf", "tensorboard"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError as e:
            info[mod] = f"missing ({e})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
        }
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        info["driver"] = smi.stdout.strip() or smi.stderr.strip()
    step.data = info
    step.summary = [f"- {k}: {v}" for k, v in info.items()]
    step.check("device", step.dry or info["cuda_available"], info.get("gpu", "no CUDA device"))


# -- tests


def tests(step: Step) -> None:
    """The suite's CUDA tests; a dry run only collects them (they skip without CUDA)."""
    junit = step.dir / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", f"--junitxml={junit}", "tests"]
    if step.dry:  # collecting tests/test_cuda.py is enough to show the command works; the whole suite takes 10 s
        cmd[4:4] = ["--collect-only"]
        cmd[-1] = "tests/test_cuda.py"
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout[-6000:], proc.stderr[-3000:])
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-200:]
    step.summary = [f"- `pytest -m cuda`: {last}"]
    step.check("pytest -m cuda", proc.returncode == 0, last)


# -- smoke


def smoke_cases(dry: bool) -> list[tuple[str, list[str]]]:
    cases = []
    for head in HEADS:
        for solver in SOLVERS if head == "nearest_etf" else (None,):
            for precision in ("fp32", "bf16"):
                for loader in ("device", "dataloader"):
                    name = " ".join(filter(None, (head, solver, precision, loader)))
                    cases.append(
                        (
                            name,
                            [
                                f"head={head}",
                                f"trainer.precision={precision}",
                                f"loader.mode={loader}",
                                *([f"solver={solver}"] if solver else []),
                            ],
                        )
                    )
    cases += [
        ("nearest_etf agd", ["head=nearest_etf", "optimizer=agd", "scheduler=none", "backbone.bias=false"]),
        ("learned_authors agd", ["head=learned_authors", "optimizer=agd", "scheduler=none", "backbone.bias=false"]),
        ("nearest_etf cutmix", ["head=nearest_etf", "mix=cutmix"]),
        ("nearest_etf mixup dataloader", ["head=nearest_etf", "mix=mixup", "loader.mode=dataloader"]),
        ("nearest_etf ddn", ["head=nearest_etf", "head.backward=ddn"]),
        ("nearest_etf nonfinite=skip", ["head=nearest_etf", "trainer.nonfinite=skip"]),
        (
            "nearest_etf compile channels_last",
            ["head=nearest_etf", "trainer.compile=true", "trainer.channels_last=true"],
        ),
    ]
    if dry:  # inductor on the CPU needs a C++ toolchain and a minute: the CUDA case is what this check is for
        cases = [(n, o) for n, o in cases if "compile" not in n]
        # each head and solver once per precision and once per loader: every code path, half the CPU time
        cases = [(n, o) for n, o in cases if not n.endswith(("fp32 dataloader", "bf16 device"))]
    return cases


def smoke(step: Step) -> None:
    register_bench_dataset()
    n = 64 if step.dry else 4 * 64
    base = [
        "backbone=fast_cnn",
        "trainer.batch_size=32" if step.dry else "trainer.batch_size=64",
        f"trainer.max_epochs={1 if step.dry else 2}",
        f"trainer.device={step.device}",
        "trainer.checkpoint_every_s=0",
    ]
    rows = ["| case | result | seconds | last train/loss | solver ms |", "|---|---|---:|---:|---:|"]
    runs = {}
    for name, overrides in smoke_cases(step.dry):

        def case(name=name, overrides=overrides):
            run_dir = step.dir / name.replace(" ", "_")
            start = time.perf_counter()
            train(config(*base, *overrides, n=n), run_dir)
            curves = rundir.read_scalars(run_dir)
            losses = [float(v) for v in curves["train/loss"][1]]
            solver = [float(v) for v in curves.get("solver/ms", ((), ()))[1]]
            precision = rundir.read_record(run_dir)["trainer"]["precision"]
            want = next((o.split("=")[1] for o in overrides if o.startswith("trainer.precision=")), precision)
            ok = all(map(math.isfinite, losses)) and precision == want
            ok = ok and (not name.startswith("nearest") or bool(solver) and all(s > 0 for s in solver))
            runs[name] = run_dir
            rows.append(
                f"| {name} | {'ok' if ok else 'FAILED'} | {time.perf_counter() - start:.1f} | {losses[-1]:.4g} | "
                f"{sum(solver) / len(solver) if solver else math.nan:.3g} |"
            )
            return ok, f"losses {losses}, solver/ms {solver}, precision {precision}"

        step.attempt(name, case, rows)
    from etf_train.posthoc import main as etf_eval

    bf16 = next((n for n in ("nearest_etf svd bf16 device", "nearest_etf svd bf16 dataloader") if n in runs), None)
    for name in (bf16, "nearest_etf compile channels_last"):
        if name in runs:

            def case(name=name):
                rc = etf_eval([str(runs[name]), "--device", step.device])
                logged = float(rundir.read_scalars(runs[name])["test/acc"][1][-1])
                again = json.loads((runs[name] / "eval.json").read_text())["test/acc"] if rc == 0 else math.nan
                return rc == 0 and abs(again - logged) <= 0.5, f"exit {rc}, test/acc {again} vs logged {logged}"

            step.attempt(f"etf-eval --device {step.device}: {name}", case, rows)


# -- syncs


def audit(fn) -> tuple[object, Counter]:
    """fn() under torch.cuda.set_sync_debug_mode("warn"): its result and the Python lines that synchronised."""
    sites: Counter = Counter()
    if not torch.cuda.is_available():
        return fn(), sites
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            sites[f"{Path(w.filename).name}:{w.lineno}"] += 1
    return out, sites


def profiled_syncs(fn) -> int:
    """CUDA runtime calls that wait for the device (stream/device/event synchronize, blocking memcpy) during fn()."""
    acts = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else []
    )
    with torch.profiler.profile(activities=acts) as prof:
        fn()
    names = Counter(e.name for e in prof.events())
    return sum(v for k, v in names.items() if "Synchronize" in k or k == "cudaMemcpy")


def syncs(step: Step) -> None:
    register_bench_dataset()
    steps, batch = (3, 16) if step.dry else (60, 256)
    rows = [
        "| case | syncs in steps (per step) | sites | profiler: syncs in 20 steps | syncs in a whole train_epoch | sites |",
        "|---|---:|---|---:|---:|---|",
    ]
    cases = [(h, [f"head={h}"]) for h in HEADS[:2]] + [
        (f"nearest_etf {s}", ["head=nearest_etf", f"solver={s}"]) for s in SOLVERS
    ]
    for name, overrides in cases:

        def case(name=name, overrides=overrides):
            cfg = config(
                "backbone=fast_cnn" if step.dry else "backbone=resnet18",
                *overrides,
                f"trainer.device={step.device}",
                f"trainer.batch_size={batch}",
                "trainer.channels_last=true",
                n=batch * (steps + 25),
            )
            run = Run(cfg, step.dir / name.replace(" ", "_"))
            run.model.train()
            batches = iter(run.train_loader)

            def train_steps(k: int) -> None:
                for i in range(k):
                    x, y = next(batches)
                    run._step(1, i, x, y)

            train_steps(3)  # warm-up: cuDNN, the head's one-time check of its reference point
            step.sync()
            _, sites = audit(lambda: train_steps(steps))  # (the synchronize after it is not the step's)
            step.sync()
            prof = profiled_syncs(lambda: train_steps(20 if not step.dry else 2))
            _, epoch_sites = audit(lambda: run.train_epoch(2, SignalGuard(), None, None))
            per_step = sum(sites.values()) / steps
            top = lambda c: ", ".join(f"{k} x{v}" for k, v in c.most_common(6)) or "none"  # noqa: E731
            rows.append(
                f"| {name} | {sum(sites.values())} ({per_step:.2f}) | {top(sites)} | {prof} | "
                f"{sum(epoch_sites.values())} over {len(run.train_loader)} steps | {top(epoch_sites)} |"
            )
            step.data[name] = {
                "steps": steps,
                "sites": dict(sites),
                "profiler_20": prof,
                "epoch_sites": dict(epoch_sites),
            }
            step.goal(f"no host synchronisation in a training step: {name}", per_step == 0, f"{per_step:.2f} per step")
            return True, f"{per_step:.2f} per step"

        step.attempt(f"sync audit {name}", case, rows)


# -- step


def step_time(step: Step) -> None:
    """ResNet-18 training step per head and solver, bf16, channels_last, batch 512, compile off then on: a warm-up
    epoch, then the faster of two timed epochs of `steps` steps (time/epoch_s: the training part, synchronised).
    (cudnn.benchmark, which etf-train leaves off, was measured in the first GPU check: no gain; docs/benchmarks.md)"""
    register_bench_dataset()
    steps, batch = (2, 16) if step.dry else (25, 512)
    rows = ["| compile | head | ms/step | images/s | solver ms | step / learned |", "|---|---|---:|---:|---:|---:|"]
    heads = [("learned", []), ("fixed_etf", [])] + [
        (f"nearest_etf {s}", [f"solver={s}"]) for s in ("svd", "gram", "newton")
    ]
    for compiled in (False,) if step.dry else (False, True):
        learned = None
        for name, solver in heads if not compiled else [heads[0], heads[2], heads[4]]:

            def case(name=name, solver=solver, compiled=compiled):
                nonlocal learned
                cfg = config(
                    "backbone=fast_cnn" if step.dry else "backbone=resnet18",
                    f"head={name.split()[0]}",
                    *solver,
                    f"trainer.device={step.device}",
                    f"trainer.batch_size={batch}",
                    "trainer.precision=bf16",
                    "trainer.channels_last=true",
                    f"trainer.compile={compiled}",
                    n=batch * steps,
                )
                run = Run(cfg, step.dir / f"{name.replace(' ', '_')}_compile{compiled}")
                guard = SignalGuard()
                run.train_epoch(1, guard, None, None)
                timed = [run.train_epoch(e, guard, None, None) for e in (2, 3)]
                best = min(timed, key=lambda s: s["time/epoch_s"])
                ms = 1e3 * best["time/epoch_s"] / steps
                learned = ms if name == "learned" else learned
                ratio = ms / learned if learned else math.nan
                rows.append(
                    f"| {compiled} | {name} | {ms:.2f} | {batch * steps / best['time/epoch_s']:,.0f} | "
                    f"{best.get('solver/ms', math.nan):.3f} | {ratio:.3f} |"
                )
                step.data[f"{name} compile={compiled}"] = {"ms": ms, "ratio": ratio, "solver_ms": best.get("solver/ms")}
                if name.startswith("nearest_etf"):
                    step.goal(f"{name} step <= 1.10x learned's, compile={compiled}", ratio <= 1.10, f"{ratio:.3f}x")
                return True, f"{ms:.2f} ms/step"

            step.attempt(f"train step {name} compile={compiled}", case, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=("env", "tests", "smoke", "syncs", "step", "solver", "decode", "cifar"))
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--cifar", type=Path, help="decode: cifar10-jpg.tar.gz (dry run: a small JPEG folder is written)")
    p.add_argument("--budget-s", type=float, default=120, help="cifar: seconds it may take")
    args = p.parse_args(argv)
    step = Step(args.step, args.work, args.dry_run)
    if args.step in ("solver",):
        from gpu_solver import solver as fn
    elif args.step in ("decode", "cifar"):
        import gpu_cifar

        fn = lambda s: getattr(gpu_cifar, args.step)(s, args)  # noqa: E731
    else:
        fn = {"env": env, "tests": tests, "smoke": smoke, "syncs": syncs, "step": step_time}[args.step]
    fn(step)
    step.save()
    return 0 if all(c["ok"] for c in step.checks) else 1


if __name__ == "__main__":
    sys.exit(main())

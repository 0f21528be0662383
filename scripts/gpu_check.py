"""Driver of scripts/gpu_check.sh: each step of scripts/gpu_steps.py in its own process, bounded in time, its log and
results gathered into --out as summary.md, results.json and gpu_check.tar.gz, rewritten after every step so that a
command killed at its limit still brings back what was measured.

A step is its own process so that one CUDA failure (an illegal address poisons the context) or hang costs that step
only. CIFAR-10 (--cifar, the JPEG tarball) is unpacked and decoded into etf-train's cache in the background from
the start, on the CPU cores the other steps leave idle; the last step trains on it for the rest of --budget-s.

    python scripts/gpu_check.py --out /tmp/gpu --cifar .gpu/cifar10-jpg.tar.gz --budget-s 420
    python scripts/gpu_check.py --out /tmp/gpu --dry-run      # CPU, toy sizes: every step's code runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (step, seconds it may take on the GPU); cifar takes what is left of --budget-s
STEPS = (("env", 30), ("tests", 120), ("smoke", 150), ("syncs", 90), ("solver", 90), ("step", 150), ("cifar", None))
CIFAR_MIN_S = 60  # below this the CIFAR-10 step is skipped, saying so


def run_step(name: str, args, work: Path, timeout: float, extra: list[str]) -> dict:
    """Run one step in its own process group; its JSON result, with status and seconds added."""
    cmd = [sys.executable, str(HERE / "gpu_steps.py"), name, "--work", str(work), *extra]
    if args.dry_run:
        cmd.append("--dry-run")
    start = time.monotonic()
    with open(work / "logs" / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    path = work / f"{name}.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    status = "timeout" if rc is None else "ok" if rc == 0 else f"exit {rc}"
    failed = [c for c in result.get("checks", []) if not c["ok"]]
    if status == "ok" and failed:
        status = f"{len(failed)} check(s) failed"
    result.update(status=status, seconds=round(time.monotonic() - start, 1), timeout_s=round(timeout))
    return result


def tail(path: Path, lines: int = 15) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else []


def write_outputs(out: Path, work: Path, results: dict, started: float) -> None:
    """summary.md, results.json and the tarball of the work folder (logs, run folders, comparison)."""
    dry = " (dry run: the CPU at toy sizes; its goals measure nothing)" if "--dry-run" in sys.argv else ""
    lines = [
        f"# etf-train GPU check{dry}",
        "",
        f"wall time so far: {time.monotonic() - started:.0f} s",
        "",
        "| step | status | seconds (limit) |",
        "|---|---|---:|",
    ]
    lines += [f"| {n} | {r['status']} | {r['seconds']} ({r['timeout_s']}) |" for n, r in results.items()]
    for name, r in results.items():
        lines += ["", f"## {name}", ""]
        lines += r.get("summary", [])
        lines += [f"- goal {'met' if g['met'] else 'NOT met'}: {g['name']}: {g['detail']}" for g in r.get("goals", [])]
        bad = [c for c in r.get("checks", []) if not c["ok"]]
        lines += [f"- FAILED {c['name']}: {c['detail']}" for c in bad]
        if r["status"] != "ok":
            lines += ["", "log tail:", "```", *tail(work / "logs" / f"{name}.log"), "```"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    for extra in ("comparison.md", "comparison.png"):
        found = sorted(work.glob(f"cifar/**/{extra}"))
        if found:
            (out / extra).write_bytes(found[0].read_bytes())
    with tarfile.open(out / "gpu_check.tar.gz", "w:gz") as tar:
        tar.add(
            work,
            arcname="gpu_check",
            filter=lambda t: None if t.name.endswith((".pt", ".jpg")) or "/cifar10-jpg" in t.name else t,
        )


def start_decode(args, work: Path) -> subprocess.Popen | None:
    """Unpack CIFAR-10 and decode it into etf-train's cache in the background (the cifar step waits for it)."""
    cmd = [sys.executable, str(HERE / "gpu_steps.py"), "decode", "--work", str(work)]
    if args.cifar:
        cmd += ["--cifar", str(args.cifar)]
    if args.dry_run:
        cmd.append("--dry-run")
    log = open(work / "logs" / "decode.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="summary.md, results.json, gpu_check.tar.gz go here")
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu_check"), help="scratch folder (default /tmp/gpu_check)")
    p.add_argument("--budget-s", type=float, default=420, help="seconds for every step together (default 420)")
    p.add_argument("--cifar", type=Path, help="cifar10-jpg.tar.gz (without it: the CIFAR-10 step is skipped on a GPU)")
    p.add_argument("--steps", nargs="+", default=[s for s, _ in STEPS], help="a subset of the steps, in order")
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: rehearse every step")
    args = p.parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget_s
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)  # a scratch folder: nothing of an earlier check may pass for this one's
    (work / "logs").mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    decoder = start_decode(args, work) if "cifar" in args.steps else None
    results: dict[str, dict] = {}
    limits = dict(STEPS)
    for name in args.steps:
        left = deadline - time.monotonic()
        timeout = left - 15 if limits[name] is None else min(limits[name], max(left - 15, 1))
        if name == "cifar" and timeout < CIFAR_MIN_S:
            results[name] = {"status": f"skipped: {timeout:.0f} s left of --budget-s", "seconds": 0, "timeout_s": 0}
            continue
        extra = ["--budget-s", f"{timeout:.0f}"] if name == "cifar" else []
        results[name] = run_step(name, args, work, timeout, extra)
        print(f"gpu_check: {name}: {results[name]['status']} in {results[name]['seconds']} s", flush=True)
        write_outputs(args.out, work, results, started)
    if decoder is not None and decoder.poll() is None:
        os.killpg(decoder.pid, signal.SIGKILL)
    write_outputs(args.out, work, results, started)
    print((args.out / "summary.md").read_text())
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

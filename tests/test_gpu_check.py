"""The GPU check rehearsed on the CPU: `scripts/gpu_check.sh --dry-run` runs every step's code at toy sizes, so the
script that the GPU machine gets (rarely, and for minutes) cannot rot between loans."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_steps  # noqa: E402

STEPS = ("env", "tests", "smoke", "syncs", "solver", "step", "cifar")


def test_the_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", str(out), "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results) == list(STEPS)
    assert all(r["status"] == "ok" for r in results.values()), {n: r["status"] for n, r in results.items()}
    smoke = {c["name"] for c in results["smoke"]["checks"]}
    for head, solvers in (
        ("learned", [""]),
        ("fixed_etf", [""]),
        ("nearest_etf", [" svd", " gram", " newton", " riemannian"]),
    ):
        for solver in solvers:  # the dry run pairs precision and loader; the GPU runs all four (below)
            assert {f"{head}{solver} fp32 device", f"{head}{solver} bf16 dataloader"} <= smoke
            assert {
                f"{head}{solver} {p} {loader}" for p in ("fp32", "bf16") for loader in ("device", "dataloader")
            } <= {name for name, _ in gpu_steps.smoke_cases(dry=False)}
    assert {
        "nearest_etf ddn",
        "nearest_etf agd",
        "nearest_etf cutmix",
        "etf-eval --device cpu: nearest_etf svd bf16 dataloader",
    } <= smoke
    assert len(results["syncs"]["goals"]) == 6
    assert {"(64, 10) nearest_etf newton fwd+bwd", "(128, 20) bare svd (default driver)"} <= set(
        results["solver"]["data"]
    )
    assert {f"cifar {h}" for h in ("learned", "fixed_etf", "nearest_etf")} <= set(results["cifar"]["data"])
    summary = (out / "summary.md").read_text()
    assert "dry run" in summary.splitlines()[0] and "| cifar | ok |" in summary
    assert (out / "comparison.png").stat().st_size > 0
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"gpu_check/logs/{s}.log" for s in STEPS} <= names
    assert not any(n.endswith((".pt", ".jpg")) for n in names)  # checkpoints and images stay out of what comes back

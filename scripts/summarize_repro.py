"""The tables of docs/results.md, from the runs scripts/reproduce.sh writes (its `tables` step calls this).

    python scripts/summarize_repro.py outputs/repro > outputs/repro/tables.md

Per setting, one row per (optimiser, head), each cell median [min, max] over the seeds' finished runs, with
etf-compare's loading and statistics (etf_train.compare): the first logged epoch at which nc/nc1 <= 0.1 and
<= 0.01 (CIFAR-10: 10 and 7) ("first"), the first epoch from which it stays there ("settled": NC1 is not monotone under SGD at lr 5),
the first epoch at which train/eval_acc (eval-mode accuracy over the train set) reaches each accuracy threshold,
and the last epoch's test/acc, nc/nc1 and nc/nc3. `never`: not within the run's epochs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from etf_train.compare import Run, Spread, first_epoch, load_runs

SETTINGS = {  # setting: (sweep folders, train/eval_acc thresholds, seeds per group, NC1 thresholds)
    **{
        f"UFM-{k}": (
            [f"ufm{k}_{o}{h}" for o in ("sgd", "agd", "agd_depth2") for h in ("", "_free", "_fixed_authors")]
            + [f"ufm{k}_agd_nobackward"],
            [99.0],
            5,
            (0.1, 0.01),
        )
        for k in (10, 100)
    },
    # no CIFAR-10 run of this budget gets near UFM's NC1 thresholds: 10 and 7 tell the heads apart
    "CIFAR-10": (
        ["cifar10_sgd", "cifar10_sgd_free", "cifar10_agd", "cifar10_agd_free"],
        [40.0, 50.0, 60.0],
        3,
        (10.0, 7.0),
    ),
}


def head_label(run: Run) -> str:
    h = run.config.head
    if h.name == "learned":
        return "learned (authors: no bias, renorm)" if h.get("renorm") else "learned (free rows, no bias)"
    if h.name == "fixed_etf" and h.get("center", "none") == "batch":
        return "fixed_etf (authors: bias -W mean(h) of the batch)"
    if h.name == "nearest_etf" and h.get("backward", "polar") != "polar":
        return f"nearest_etf, backward={h.backward}"
    return str(h.name)


def optimiser_label(run: Run) -> str:
    o = run.config.optimizer
    if str(o["_target_"]).endswith("AGD"):
        return "AGD" + ("" if o.get("depth") is None else f", depth {o.depth}")
    return "SGD"


def settled(curve, threshold: float) -> float:
    """The first logged epoch from which the value stays <= threshold; inf if the last one is above it (or NaN)."""
    steps, values = curve
    above = np.flatnonzero(~(values <= threshold))  # NaN counts as above
    if above.size and above[-1] == len(values) - 1:
        return math.inf
    return float(steps[above[-1] + 1]) if above.size else float(steps[0])


def table(runs: list[Run], accs: list[float], seeds: int, nc1: tuple[float, ...]) -> list[str]:
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((optimiser_label(run), head_label(run)), []).append(run)
    header = ["optimiser", "head", "finished"] + [f"NC1 <= {t:g} {w}" for t in nc1 for w in ("first", "settled")]
    header += [f"eval acc >= {t:g} %" for t in accs] + ["final test acc %", "final NC1", "final NC3"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (opt, head), group in sorted(groups.items()):
        done = [r for r in group if r.counted]
        curves = {tag: [r.scalars[tag] for r in done] for tag in ("nc/nc1", "train/eval_acc", "test/acc", "nc/nc3")}
        cells = [opt, head, f"{len(done)}/{seeds}"]
        for t in nc1:
            cells += [
                Spread(tuple(first_epoch(c, t, above=False) for c in curves["nc/nc1"])).format("g"),
                Spread(tuple(settled(c, t) for c in curves["nc/nc1"])).format("g"),
            ]
        cells += [
            Spread(tuple(first_epoch(c, t, above=True) for c in curves["train/eval_acc"])).format("g") for t in accs
        ]
        for tag, spec in (("test/acc", ".2f"), ("nc/nc1", ".2e"), ("nc/nc3", ".3f")):
            cells.append(Spread(tuple(float(v[-1]) for _, v in curves[tag])).format(spec))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/repro")
    out = [f"# Reproduction tables (scripts/summarize_repro.py {root})", "", __doc__.split("\n\n")[2].strip(), ""]
    for setting, (sweeps, accs, seeds, nc1) in SETTINGS.items():
        folders = [root / s for s in sweeps if (root / s).is_dir()]
        if folders:
            runs = load_runs(folders)
            epochs = sorted({int(r.config.trainer.max_epochs) for r in runs})
            out += [f"## {setting} ({', '.join(map(str, epochs))} epochs)", "", *table(runs, accs, seeds, nc1), ""]
    speed = speedup_table(root)
    if speed:
        out += [
            "## Speed-ups over the authors' learned baseline (etf-compare --baseline learned_authors)",
            "",
            *speed,
            "",
        ]
    loss_runs = root / "loss_study"
    if loss_runs.is_dir():
        out += ["## Losses (UFM-10, SGD)", "", *loss_table(load_runs([loss_runs])), ""]
    print("\n".join(out))


def speedup_table(root: Path) -> list[str]:
    """Per UFM setting, optimiser and head, etf-compare's speed-ups over learned_authors (its comparison.csv in
    <setting>/compare/, which reproduce.sh's `figure` writes): at NC1 <= 0.1 and 0.01, at the deepest NC1 decade
    both reach (etf-compare's thresholds follow the data), and at 99 % eval accuracy; median [min, max] over the
    5 seeds, paired."""
    import csv

    lines = []
    for k in (10, 100):
        for opt, name in (("sgd", "SGD"), ("agd", "AGD"), ("agd_depth2", "AGD, depth 2")):
            path = root / f"ufm{k}_{opt}" / "compare" / "comparison.csv"
            if not path.is_file():
                continue
            with path.open() as f:
                rows = list(csv.DictReader(f))
            nc1 = sorted(
                {float(c.split("_le_")[1].rsplit("_", 1)[0]) for c in rows[0] if c.startswith("speedup_nc1_le_")},
                reverse=True,
            )
            for row in rows:
                if not row[f"speedup_nc1_le_{nc1[0]:g}_pairs"] and not row["speedup_train_eval_acc_ge_99_pairs"]:
                    continue  # the baseline itself

                def cell(col, row=row):
                    if not row[f"{col}_median"]:
                        return "-"
                    low, high = float(row[f"{col}_min"]), float(row[f"{col}_max"])
                    return f"{float(row[f'{col}_median']):.2f}x [{low:.2f}, {high:.2f}]"

                deep = next((t for t in reversed(nc1) if row[f"speedup_nc1_le_{t:g}_median"]), None)
                lines.append(
                    f"| UFM-{k} | {name} | {row['group']} | {cell('speedup_nc1_le_0.1')} | {cell('speedup_nc1_le_0.01')} | "
                    + (f"{deep:g}: {cell(f'speedup_nc1_le_{deep:g}')}" if deep else "-")
                    + f" | {cell('speedup_train_eval_acc_ge_99')} |"
                )
    header = [
        "setting",
        "optimiser",
        "group",
        "NC1 <= 0.1",
        "NC1 <= 0.01",
        "deepest NC1 decade both reach",
        "eval acc >= 99 %",
    ]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *lines] if lines else []


def loss_table(runs: list[Run]) -> list[str]:
    """NC1 and NC3 at epochs 10, 30 and 60 per (loss, head)."""
    epochs = (10, 30, 60)
    header = ["loss", "head", *(f"{m} @ {e}" for m in ("NC1", "NC3") for e in epochs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        if run.counted:
            groups.setdefault((str(run.config.loss.name), str(run.config.head.name)), []).append(run)
    for (loss, head), group in sorted(groups.items()):
        cells = [loss, head]
        for tag in ("nc/nc1", "nc/nc3"):
            for e in epochs:
                values = [float(v[list(s).index(e)]) for s, v in (r.scalars[tag] for r in group) if e in s]
                cells.append(Spread(tuple(values)).format(".3g"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()

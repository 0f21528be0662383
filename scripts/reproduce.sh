#!/usr/bin/env bash
# Regenerates every run, table and figure of docs/results.md (GitHub issue 7) on a CPU machine.
#
#   scripts/reproduce.sh              # all settings: runs, then tables and figures
#   scripts/reproduce.sh tables       # only the tables and figures, from runs already in outputs/repro/
#   scripts/reproduce.sh ufm10 ...    # only the named settings (ufm10 ufm100 ablation cifar10 cifar10_long cifar10_lt)
#
# Runs go to outputs/repro/<setting>/ (git-ignored); the etf-compare outputs and the extra table (NC1/NC3 at
# fixed epochs, solver share of the step) to outputs/repro/<setting>/compare/, the plots to docs/figures/.
# CIFAR-10 needs the JPEG copy unpacked: tar -xzf cifar10-jpg.tar.gz -C data/cifar10-jpg (or set CIFAR10_JPG).
# The sizes are the CPU budget of docs/results.md, not the paper's (see there).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
OUT=outputs/repro
FIG=docs/figures
export CIFAR10_JPG=${CIFAR10_JPG:-$PWD/data/cifar10-jpg}
# One intra-op thread per run: on a small shared CPU, torch's default thread pool spin-waits against other
# processes and made single steps ~50x slower in our first attempt.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(trainer.progress=false)
# The CPU budget for CIFAR-10 (the paper: ResNet-18, all 50,000 images, augmentation, batch 256, 200 epochs).
CIFAR=(backbone=small_cnn backbone.width=16 dataset.limit_train=1000 dataset.limit_test=1000 dataset.augment=false
       loader.num_workers=1 trainer.batch_size=64 trainer.max_epochs=15 metrics.every_n_epochs=3)

sweep() {  # sweep SETTING ARGS...: one multirun into outputs/repro/SETTING, with its wall time in wall_s.txt
    local setting=$1; shift
    local t0=$SECONDS
    "$BIN/etf-train" -m "$@" "${COMMON[@]}" hydra.sweep.dir="$OUT/$setting"
    echo $((SECONDS - t0)) > "$OUT/$setting/wall_s.txt"
}

# The authors' learned baseline renormalises its rows after every step: run as a fourth group on UFM.
run_ufm10() {
    sweep ufm10 experiment=ufm10 head=learned,fixed_etf,nearest_etf seed=1,2,3,4,5 \
        trainer.max_epochs=60 metrics.every_n_epochs=2
    sweep ufm10_renorm experiment=ufm10 head=learned head.renorm=true seed=1,2,3,4,5 \
        trainer.max_epochs=60 metrics.every_n_epochs=2
}
run_ufm100() {
    sweep ufm100 experiment=ufm100 head=learned,fixed_etf,nearest_etf seed=1,2,3,4,5 \
        dataset.per_class=20 trainer.max_epochs=40 metrics.every_n_epochs=2
    sweep ufm100_renorm experiment=ufm100 head=learned head.renorm=true seed=1,2,3,4,5 \
        dataset.per_class=20 trainer.max_epochs=40 metrics.every_n_epochs=2
}
run_ablation() {  # the backward=polar runs are the nearest_etf runs of ufm100 (identical config)
    sweep ablation experiment=ufm100 head=nearest_etf head.backward=none seed=1,2,3,4,5 \
        dataset.per_class=20 trainer.max_epochs=40 metrics.every_n_epochs=2
}
run_cifar10() {
    sweep cifar10 experiment=cifar10_jpg_resnet18 head=learned,fixed_etf,nearest_etf seed=1,2,3 \
        "${CIFAR[@]}"
}
run_cifar10_long() {  # one seed, 40 epochs: long enough to see which head fits the 1,000 images first
    sweep cifar10_long experiment=cifar10_jpg_resnet18 head=learned,fixed_etf,nearest_etf seed=1 \
        "${CIFAR[@]}" trainer.max_epochs=40
}
run_cifar10_lt() {
    sweep cifar10_lt experiment=cifar10_jpg_resnet18 head=learned,fixed_etf,nearest_etf seed=1 \
        dataset.imbalance_ratio=10 "${CIFAR[@]}"
}

# extra_table GROUP_BY EPOCHS TEST_PCTS FOLDERS...: epochs to test/acc >= each of TEST_PCTS ('-': none; on UFM the
# test split is the train samples, so this is the eval-mode train accuracy, unlike train/acc, which nearest_etf
# measures with the classifier fitted to the batch's own class means), NC1/NC3 at EPOCHS, the solver's share of the step
extra_table() {
    "$BIN/python" - "$@" <<'PY'
import math, sys
from pathlib import Path
import numpy as np
from etf_train.compare import Spread, first_epoch, group_runs, load_runs, markdown

group_by, epochs, folders = sys.argv[1], [int(e) for e in sys.argv[2].split(",")], sys.argv[4:]
pcts = [] if sys.argv[3] == "-" else [float(p) for p in sys.argv[3].split(",")]
groups = group_runs(load_runs([Path(f) for f in folders]), group_by.split())

def at(run, tag, epoch):  # the value at the last logged epoch <= epoch
    steps, values = run.scalars.get(tag, (np.zeros(0), np.zeros(0)))
    i = np.searchsorted(steps, epoch, side="right") - 1
    return float(values[i]) if i >= 0 else math.nan

header = ["group", "runs"] + [f"test acc >= {p:g}%" for p in pcts]
header += [f"{t} @ {e}" for t in ("NC1", "NC3") for e in epochs]
header += ["train s/epoch", "steps/epoch", "solver ms/step", "solver share of step"]
rows = []
for label, runs in groups.items():
    row = [label, str(len(runs))]
    row += [Spread(tuple(first_epoch(r.scalars["test/acc"], p, above=True) for r in runs)).format("g") for p in pcts]
    row += [Spread(tuple(at(r, tag, e) for r in runs)).format(".3g") for tag in ("nc/nc1", "nc/nc3") for e in epochs]
    epoch_s = np.mean([np.median(r.scalars["time/epoch_s"][1]) for r in runs])  # median: robust to load spikes
    images = np.mean([np.median(r.scalars["throughput/train_img_s"][1] * r.scalars["time/epoch_s"][1]) for r in runs])
    steps = math.ceil(images / runs[0].config.trainer.batch_size)
    row += [f"{epoch_s:.3g}", str(steps)]
    if "solver/ms" in runs[0].scalars:
        ms = np.mean([np.median(r.scalars["solver/ms"][1]) for r in runs])
        row += [f"{ms:.3g}", f"{100 * ms * steps / (1000 * epoch_s):.1f} %"]
    else:
        row += ["-", "-"]
    rows.append(row)
print(markdown(header, rows), end="")
PY
}

compare() {  # compare SETTING FIGURE_NAME 'GROUP_BY KEYS' EPOCHS TEST_PCTS FOLDERS... [-- ETF_COMPARE_OPTIONS...]
    local setting=$1 figure=$2 group_by=$3 epochs=$4 pcts=$5; shift 5
    local out=$OUT/$setting/compare
    mkdir -p "$out" "$FIG"
    local folders=() options=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do folders+=("$1"); shift; done
    [ $# -gt 0 ] && shift && options=("$@")
    "$BIN/etf-compare" "${folders[@]}" --group-by $group_by --out "$out" "${options[@]}"
    extra_table "$group_by" "$epochs" "$pcts" "${folders[@]}" | tee "$out/extra.md"
    # a 64-colour palette keeps the committed PNG at ~50 KB with no visible change
    "$BIN/python" -c 'import sys; from PIL import Image; Image.open(sys.argv[1]).convert("RGB").quantize(64).save(sys.argv[2], optimize=True)' \
        "$out/comparison.png" "$FIG/$figure.png"
}

tables() {
    compare ufm10 ufm10 "head head.renorm" 10,20,40,60 90,95,99 "$OUT/ufm10" "$OUT/ufm10_renorm"
    compare ufm100 ufm100 "head head.renorm" 5,10,20,40 90,95,99 "$OUT/ufm100" "$OUT/ufm100_renorm"
    compare ablation ufm100_backward head.backward 5,10,20,40 90,95,99 "$OUT"/ufm100/head=nearest_etf,seed=* "$OUT/ablation"
    # the CPU budget does not fit CIFAR-10 to 90 %: lower thresholds as well
    compare cifar10 cifar10 head 3,6,15 40,50 "$OUT/cifar10" -- --acc-thresholds 50 70 90 99
    compare cifar10_long cifar10_long head 6,15,30,40 40,50 "$OUT/cifar10_long" -- --acc-thresholds 50 70 90 99
    compare cifar10_lt cifar10_lt head 3,6,15 20,25 "$OUT/cifar10_lt" -- --acc-thresholds 50 70 90 99
}

settings=("$@")
[ ${#settings[@]} -eq 0 ] && settings=(ufm10 ufm100 ablation cifar10 cifar10_long cifar10_lt tables)
for s in "${settings[@]}"; do
    case $s in
        tables) tables ;;
        ufm10 | ufm100 | ablation | cifar10 | cifar10_long | cifar10_lt) "run_$s" ;;
        *) echo "reproduce.sh: unknown setting '$s' (ufm10 ufm100 ablation cifar10 cifar10_long cifar10_lt tables)" >&2; exit 2 ;;
    esac
done

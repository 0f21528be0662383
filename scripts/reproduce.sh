#!/usr/bin/env bash
# Regenerates every run, table and figure of docs/results.md on a CPU machine.
#
#   scripts/reproduce.sh                 # every setting: the runs, then the tables and figures
#   scripts/reproduce.sh tables          # only the tables and figures, from runs already in outputs/repro/
#   scripts/reproduce.sh ufm10 tables    # only the named settings (ufm10 ufm100 ablation batching cifar10 losses
#                                        # tables)
#   scripts/reproduce.sh batching        # UFM-10 under AGD: the authors' per-head batching against one for all
#
# Runs go to outputs/repro/<sweep>/ (git-ignored; REPRO_OUT=<folder> puts them elsewhere), one multirun per sweep;
# the same command continues an interrupted sweep (finished jobs return at once). Tables: outputs/repro/tables.md
# (scripts/summarize_repro.py) and outputs/repro/<setting>/compare/ (etf-compare); figures: docs/figures/*.png.
# CIFAR-10 needs the JPEG copy unpacked (or CIFAR10_JPG set to it), from the project root:
#   mkdir -p data/cifar10-jpg && tar -xzf ../shared/data/cifar10-jpg.tar.gz -C data/cifar10-jpg
# The sizes are the CPU budget of docs/results.md, not the paper's (see there).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
OUT=${REPRO_OUT:-outputs/repro}
FIG=docs/figures
export CIFAR10_JPG=${CIFAR10_JPG:-$PWD/data/cifar10-jpg}
# One intra-op thread per run: on a small shared CPU, steadier than torch's default thread pool.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# The heads: nearest_etf, fixed_etf (identity basis, no bias), the authors' learned baseline (no bias, rows
# renormalised), a learned head with free rows (no bias either: AGD has no rule for biases, and SGD then trains the
# same model) and, on UFM, the authors' fixed ETF (bias -W mean(h) of the batch at hand).
HEADS3=(head=nearest_etf,fixed_etf,learned_authors)
FREE=(head=learned head.bias=false)
FIXED_AUTHORS=(head=fixed_etf_authors)
UFM10=(trainer.max_epochs=100 metrics.every_n_epochs=1 seed=1,2,3,4,5)
UFM100=(dataset.per_class=50 trainer.max_epochs=60 metrics.every_n_epochs=1 seed=1,2,3,4,5)
# The CPU budget for CIFAR-10 (the paper: ResNet-18, all 50,000 images, augmentation, batch 256, 200 epochs).
CIFAR=(experiment=cifar10_jpg_resnet18 backbone=small_cnn backbone.width=16 backbone.bias=false dataset.augment=false
       loader.num_workers=1 trainer.batch_size=64 metrics.every_n_epochs=2 dataset.limit_test=2000
       dataset.limit_train=2000 trainer.max_epochs=16 seed=1,2,3)

sweep() {  # sweep NAME OVERRIDES...: one multirun into outputs/repro/NAME
    local name=$1; shift
    "$BIN/etf-train" -m "$@" trainer.progress=false hydra.sweep.dir="$OUT/$name"
}

run_ufm() {  # run_ufm 10|100 SETTINGS...: 5 heads x (SGD, AGD at the default depth, AGD at depth 2 for every head)
    local k=$1; shift
    local opt
    for opt in sgd agd agd_depth2; do
        local o=("experiment=ufm${k}_authors")
        [ $opt = sgd ] && o=("experiment=ufm$k")
        [ $opt = agd_depth2 ] && o+=(optimizer.depth=2)
        sweep "ufm${k}_$opt" "${o[@]}" "${HEADS3[@]}" "$@"
        sweep "ufm${k}_${opt}_free" "${o[@]}" "${FREE[@]}" "$@"
        sweep "ufm${k}_${opt}_fixed_authors" "${o[@]}" "${FIXED_AUTHORS[@]}" "$@"
    done
}
run_ablation() {  # nearest_etf without the backward through P*, under AGD (the SGD ablation: docs/results.md)
    sweep ufm10_agd_nobackward experiment=ufm10_authors head=nearest_etf head.backward=none "${UFM10[@]}"
    sweep ufm100_agd_nobackward experiment=ufm100_authors head=nearest_etf head.backward=none "${UFM100[@]}"
}
run_batching() {  # issue 26: UFM-10, AGD, the authors' batching per head against the same batching for every head
    # experiment=ufm10_authors batches as the authors' scripts do: nearest_etf on floor(N/B) = 3 stratified folds an
    # epoch, the other heads on shuffled batches of 256 (4 steps); loader.stratified_folds=false: 4 steps for all.
    local heads=(head=nearest_etf,fixed_etf_authors,learned_authors) same=(loader.stratified_folds=false)
    sweep ufm10_agd_authors_batching experiment=ufm10_authors "${heads[@]}" "${UFM10[@]}"
    sweep ufm10_agd_same_batching experiment=ufm10_authors "${heads[@]}" "${same[@]}" "${UFM10[@]}"
    sweep ufm10_agd_authors_batching_free experiment=ufm10_authors "${FREE[@]}" "${UFM10[@]}"
    sweep ufm10_agd_depth2_authors_batching experiment=ufm10_authors head=nearest_etf optimizer.depth=2 "${UFM10[@]}"
    sweep ufm10_agd_depth2_same_batching experiment=ufm10_authors head=nearest_etf,fixed_etf_authors optimizer.depth=2 \
        "${same[@]}" "${UFM10[@]}"
    # etf-compare's default thresholds; its tables in outputs/repro/<name>/compare*/ (no figure goes to docs/)
    local c=(--baseline learned_authors) b=$OUT/ufm10_agd_authors_batching s=$OUT/ufm10_agd_same_batching
    compare "$b/compare" "$b" "${c[@]}"
    compare "$b/compare_steps" "$b" "${c[@]}" --x steps
    compare "$s/compare" "$s" "${c[@]}"
    compare "$b/compare_depth2_free" "$OUT/ufm10_agd_depth2_authors_batching" \
        "$OUT/ufm10_agd_authors_batching_free" "$b" "${c[@]}"
    compare "$s/compare_depth2" "$OUT/ufm10_agd_depth2_same_batching" "$s" "${c[@]}"
}
compare() {  # compare OUT_FOLDER ETF_COMPARE_ARGS...: etf-compare's tables, its printout in stdout.txt
    local out=$1; shift
    mkdir -p "$out"
    "$BIN/etf-compare" "$@" --out "$out" > "$out/stdout.txt" 2>&1
}
run_cifar10() {
    sweep cifar10_sgd "${CIFAR[@]}" "${HEADS3[@]}"
    sweep cifar10_sgd_free "${CIFAR[@]}" "${FREE[@]}"
    sweep cifar10_agd "${CIFAR[@]}" optimizer=agd scheduler=none "${HEADS3[@]}"
    sweep cifar10_agd_free "${CIFAR[@]}" optimizer=agd scheduler=none "${FREE[@]}"
}
run_losses() {  # issue 13: NC under four losses, UFM-10, SGD, 3 seeds
    sweep loss_study experiment=ufm10 loss=ce,label_smoothing,maxsup,mse head=learned,fixed_etf,nearest_etf \
        seed=1,2,3 trainer.max_epochs=60
}

figure() {  # figure NAME ETF_COMPARE_ARGS...: etf-compare into outputs/repro/NAME/compare, its PNG to docs/figures
    local name=$1; shift
    mkdir -p "$OUT/$name/compare" "$FIG"
    "$BIN/etf-compare" "$@" --out "$OUT/$name/compare" --dpi 110 > "$OUT/$name/compare/stdout.txt"
    # a 64-colour palette keeps the committed PNG small with no visible change
    "$BIN/python" -c 'import sys; from PIL import Image; Image.open(sys.argv[1]).convert("RGB").quantize(64).save(sys.argv[2], optimize=True)' \
        "$OUT/$name/compare/comparison.png" "$FIG/$name.png"
}

tables() {
    # NC1 thresholds follow the data (every decade every group's median reaches); speed-ups over the authors' baseline
    local ufm=(--metrics train/eval_acc nc/nc1 nc/nc3 --acc-thresholds 99 --test-acc-thresholds --baseline learned_authors)
    for k in 10 100; do
        for opt in sgd agd agd_depth2; do
            figure "ufm${k}_$opt" "$OUT/ufm${k}_$opt" "$OUT/ufm${k}_${opt}_free" "$OUT/ufm${k}_${opt}_fixed_authors" \
                "${ufm[@]}"
        done
    done
    local cifar=(--metrics train/eval_acc test/acc nc/nc1 nc/nc3 --acc-thresholds 50 60 70 --nc1-thresholds 1 0.1)
    figure cifar10_sgd "$OUT/cifar10_sgd" "$OUT/cifar10_sgd_free" "${cifar[@]}"
    figure cifar10_agd "$OUT/cifar10_agd" "$OUT/cifar10_agd_free" "${cifar[@]}"
    figure loss_study "$OUT/loss_study" --group-by loss.name head --metrics train/eval_acc nc/nc1 nc/nc3 \
        --acc-thresholds 99 --test-acc-thresholds --nc1-thresholds 0.1 0.01
    # after the figures: the speed-up table reads etf-compare's comparison.csv of each UFM setting
    "$BIN/python" scripts/summarize_repro.py "$OUT" > "$OUT/tables.md"
}

settings=("$@")
[ ${#settings[@]} -eq 0 ] && settings=(ufm10 ufm100 ablation batching cifar10 losses tables)
for s in "${settings[@]}"; do
    case $s in
        ufm10) run_ufm 10 "${UFM10[@]}" ;;
        ufm100) run_ufm 100 "${UFM100[@]}" ;;
        ablation | batching | cifar10 | losses) "run_$s" ;;
        tables) tables ;;
        *) echo "reproduce.sh: unknown setting '$s' (ufm10 ufm100 ablation batching cifar10 losses tables)" >&2
           exit 2 ;;
    esac
done

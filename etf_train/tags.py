"""Every scalar tag a run logs (TensorBoard, step = epoch), in one place: the trainer writes them; etf-compare,
etf-eval, the TensorBoard view and the logbook read them. With each tag's display name and axis label for reports.
Imports nothing heavy: the CLI and etf-compare read it before torch."""

from __future__ import annotations

# training, per epoch
LR = "lr"
TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"  # measured during the epoch, as the weights change
SKIPPED_STEPS = "train/skipped_steps"  # trainer.nonfinite=skip
EPOCH_S = "time/epoch_s"
TRAIN_IMG_S = "throughput/train_img_s"
AGD_ETA = "optim/agd_eta"  # AGD's mean step size over the epoch
SOLVER_MS, SOLVER_ITERS, SOLVER_GRAD_NORM = "solver/ms", "solver/iters", "solver/grad_norm"  # nearest_etf's solve

# evaluation: the test split, and the un-augmented train set under the end-of-epoch model
TEST_LOSS, TEST_ACC, TEST_ECE = "test/loss", "test/acc", "test/ece"
EVAL_ACC = "train/eval_acc"
NOISY_FIT = "train/noisy_fit"  # dataset.label_noise: the noisy labels the model predicts
RELIABILITY = "test/reliability"  # a figure, at the last epoch


def on_test(metric: str) -> str:
    """A classification metric of the test split: `test/acc_top5`, `test/acc_class/<name>`."""
    return f"test/{metric}"


def nc(metric: str) -> str:
    """An NC metric over the train set: `nc/nc1`."""
    return f"nc/{metric}"


def nc_test(metric: str) -> str:
    """An NC metric over a held-out test split: `nc_test/nc1`."""
    return f"nc_test/{metric}"


NC1, NC3, EQUINORM_H = nc("nc1"), nc("nc3"), nc("equinorm_h")
NC1_LOG10 = "nc_log10/nc1"  # NC1 spans decades: its log10 reads on TensorBoard's linear axis


def epochs_to(tag: str, value: float, above: bool) -> str:
    """The epoch a run first met a threshold, logged once then: `epochs_to/nc1_le_0.01`,
    `epochs_to/train_eval_acc_ge_99`."""
    what = tag.split("/", 1)[1] if tag.startswith("nc/") else tag.replace("/", "_")
    return f"epochs_to/{what}_{'ge' if above else 'le'}_{value:g}"


# Panel titles and axis labels a reader understands (any other tag is its own title; see compare/plot.py).
TITLES = {
    EVAL_ACC: "train accuracy (eval mode)",
    TRAIN_ACC: "train accuracy (during training)",
    TEST_ACC: "test accuracy",
    TRAIN_LOSS: "train loss",
    TEST_LOSS: "test loss (cross-entropy)",
    NC1: "NC1: within-class variability",
    nc("nc2_w"): "NC2: classifier's distance from an ETF",
    nc("nc2_h"): "NC2: class means' distance from an ETF",
    NC3: "NC3: classifier vs class means",
    nc("nc4"): "NC4: disagreement with nearest class mean",
    nc("equinorm_w"): "classifier row norms (std / mean)",
    EQUINORM_H: "class-mean norms (std / mean)",
    nc("equiangular_w"): "classifier angles off the ETF's",
    nc("equiangular_h"): "class-mean angles off the ETF's",
    SOLVER_MS: "ETF solve time",
}
YLABELS = {
    TEST_LOSS: "cross-entropy",  # evaluated with it whatever the training loss
    LR: "learning rate",
    EPOCH_S: "seconds per epoch",
    TRAIN_IMG_S: "images / s",
    SOLVER_MS: "ms per step",
    SOLVER_ITERS: "iterations per step",
    NC1: "tr(S_W S_B⁺) / K",
    nc("nc2_w"): "distance of W's Gram to the ETF's",
    nc("nc2_h"): "distance of the means' Gram to the ETF's",
    NC3: "distance of W to the class means",
    nc("nc4"): "fraction off the nearest class mean",
    nc("equinorm_w"): "std / mean of W's row norms",
    EQUINORM_H: "std / mean of the class-mean norms",
    nc("equiangular_w"): "mean |cos + 1/(K-1)| of W's rows",
    nc("equiangular_h"): "mean |cos + 1/(K-1)| of the means",
}

import math

import numpy as np
import pytest
import torch

from etf_train import EtfTrainError
from etf_train.rundir import read_scalars
from etf_train.training import Run, load_checkpoint, save_checkpoint, train

from .conftest import TINY, TINY_UFM, make_cfg

SCALARS = {
    "train/loss",
    "train/acc",
    "train/eval_acc",
    "test/loss",
    "test/acc",
    "lr",
    "time/epoch_s",
    "throughput/train_img_s",
}
NC = {
    "nc/nc1",
    "nc/nc2_w",
    "nc/nc2_h",
    "nc/equinorm_w",
    "nc/equinorm_h",
    "nc/equiangular_w",
    "nc/equiangular_h",
    "nc/nc3",
    "nc/nc4",
}


@pytest.mark.parametrize("data", ["synthetic", "ufm"])
@pytest.mark.parametrize("head", ["learned", "fixed_etf", "nearest_etf"])
def test_each_head_trains_and_logs_the_contract(tmp_path, head, data):
    base = TINY if data == "synthetic" else TINY_UFM
    cfg = make_cfg(*base, f"head={head}", "trainer.max_epochs=5", "metrics.every_n_epochs=2")
    last = train(cfg, tmp_path)
    curves = read_scalars(tmp_path)
    expected = SCALARS | NC | ({"solver/ms"} if head == "nearest_etf" else set())
    assert expected <= curves.keys()
    loss = curves["train/loss"][1]
    assert list(curves["train/loss"][0]) == [1, 2, 3, 4, 5]
    # The nearest-ETF head fits its first batch exactly (a_1 = 1), so its curve starts low: compare from epoch 2.
    assert loss[-1] < loss[1] and loss[-1] < math.log(4), f"{head} on {data}: loss did not fall: {loss}"
    assert list(curves["nc/nc1"][0]) == [2, 4, 5]  # every 2 epochs and at the last one
    assert last["train/acc"] == pytest.approx(curves["train/acc"][1][-1], rel=1e-6)
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def test_riemannian_solver_logs_iterations(tmp_path):
    cfg = make_cfg(*TINY, "head=nearest_etf", "solver=riemannian", "trainer.max_epochs=1")
    train(cfg, tmp_path)
    curves = read_scalars(tmp_path)
    assert {"solver/ms", "solver/iters", "solver/grad_norm"} <= curves.keys()
    assert curves["solver/iters"][1][0] >= 1


def test_newton_solver_trains_as_the_svd_solver_does(tmp_path):
    """solver=newton through the config: the same losses as the closed form (svd) to float32 round-off."""
    losses = {}
    for solver in ("svd", "newton"):
        train(make_cfg(*TINY, "head=nearest_etf", f"solver={solver}", "trainer.max_epochs=2"), tmp_path / solver)
        losses[solver] = read_scalars(tmp_path / solver)["train/loss"][1]
    assert losses["newton"] == pytest.approx(losses["svd"], rel=1e-4)


def test_a_finished_run_is_not_trained_again_nor_extended(tmp_path):
    """Running a finished run's folder again trains nothing and returns its last scalars; more epochs is a new run."""
    first = train(make_cfg(*TINY, "trainer.max_epochs=2"), tmp_path)
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    again = train(make_cfg(*TINY, "trainer.max_epochs=2"), tmp_path)
    assert again["test/acc"] == pytest.approx(first["test/acc"], rel=1e-6)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before
    with pytest.raises(EtfTrainError, match=r"trainer.max_epochs: 2 -> 3.*training longer .* is a new run"):
        train(make_cfg(*TINY, "trainer.max_epochs=3"), tmp_path)
    assert list(read_scalars(tmp_path)["train/loss"][0]) == [1, 2]


def test_a_compiled_backbone_keeps_the_checkpoint_keys(tmp_path):
    """trainer.compile compiles in place: the state dict has the same keys as without it (torch.compile's wrapper
    saved `backbone._orig_mod.*`, so a resume across the option and etf-eval of a compiled run failed)."""
    keys = {
        c: set(Run(make_cfg(*TINY, f"trainer.compile={c}"), tmp_path / str(c)).model.state_dict())
        for c in (False, True)
    }
    assert keys[True] == keys[False] and any(k.startswith("backbone.") for k in keys[True])


def test_checkpoint_for_another_model_is_refused(tmp_path):
    """A checkpoint of another head, K or train-set size is refused in one line, before anything is written."""
    train(make_cfg(*TINY, "head=learned", "trainer.max_epochs=1"), tmp_path / "a")
    ckpt = tmp_path / "a" / "checkpoints" / "last.pt"
    with pytest.raises(EtfTrainError, match="head: checkpoint 'learned' vs this run 'nearest_etf'"):
        train(make_cfg(*TINY, "head=nearest_etf", f"trainer.resume={ckpt}"), tmp_path / "b")
    with pytest.raises(EtfTrainError, match="num_classes: checkpoint 4 vs this run 5"):
        train(make_cfg(*TINY, "head=learned", "dataset.num_classes=5", f"trainer.resume={ckpt}"), tmp_path / "b")
    assert not (tmp_path / "b").exists()
    ufm = [o for o in TINY_UFM if "per_class" not in o]
    train(make_cfg(*ufm, "head=learned", "dataset.per_class=16", "trainer.max_epochs=1"), tmp_path / "ufm")
    ufm_ckpt = tmp_path / "ufm" / "checkpoints" / "last.pt"
    with pytest.raises(EtfTrainError, match=r"was started with other settings \(dataset.per_class: 16 -> 8\)"):
        train(
            make_cfg(*ufm, "head=learned", "dataset.per_class=8", "trainer.max_epochs=1", f"trainer.resume={ufm_ckpt}"),
            tmp_path / "ufm8",
        )
    state = torch.load(ufm_ckpt, weights_only=True)
    features = next(k for k in state["model"] if k.startswith("backbone."))
    state["model"][features] = state["model"][features][:-1]  # settings that match, tensors that do not
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(EtfTrainError, match="does not fit this model .*size mismatch") as info:
        train(
            make_cfg(
                *ufm,
                "head=learned",
                "dataset.per_class=16",
                "trainer.max_epochs=1",
                f"trainer.resume={tmp_path / 'bad.pt'}",
            ),
            tmp_path / "ufm16",
        )
    assert "\n" not in str(info.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(
        EtfTrainError, match="cannot read checkpoint .*junk.pt .*point trainer.resume at a run's"
    ) as info:
        train(make_cfg(*TINY, "head=learned", f"trainer.resume={tmp_path / 'junk.pt'}"), tmp_path / "c")
    assert "delete" not in str(info.value)
    with pytest.raises(EtfTrainError, match="no such checkpoint"):
        train(make_cfg(*TINY, f"trainer.resume={tmp_path}/nope.pt"), tmp_path / "c")


def test_atomic_checkpoint_leaves_no_temporary(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"meta": {"head": "learned"}, "config": {}, "epoch": 1})
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    assert load_checkpoint(path, {"head": "learned"})["epoch"] == 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["backbone.dim=3", "head=nearest_etf"], "needs feature dimension d >= number of classes"),
        (["backbone.dim=3", "head=fixed_etf"], "needs feature dimension d >= number of classes"),
        (["trainer.batch_size=0"], "trainer.batch_size must be a positive integer"),
        (["optimizer.lr=-1"], "optimizer.lr must be a finite number > 0"),
        (["trainer.max_epochs=0"], "trainer.max_epochs must be a positive integer"),
        # [100, 150] in a short run: a constant rate recorded as scheduler=step
        (["scheduler=step", "trainer.max_epochs=3"], r"scheduler.milestones \[100, 150\]: \[100, 150\] lie at or past"),
    ],
)
def test_bad_inputs_stop_with_one_clear_line(tmp_path, overrides, message):
    with pytest.raises(EtfTrainError, match=message) as info:
        train(make_cfg(*TINY, *overrides), tmp_path)
    assert "\n" not in str(info.value)


def test_what_torchrun_would_change_in_silence_is_refused():
    """nonfinite=skip let one process skip while the others waited in the gradient all-reduce (a hang with no
    message); head.center=batch centred by each process's share of the batch (train/loss 0.051 vs 0.067 at 1 vs 2)."""
    from etf_train.training.factories import check_world

    for overrides, line in (
        (["trainer.nonfinite=skip"], "trainer.nonfinite=skip is not supported under torchrun"),
        (["head=fixed_etf_authors"], "head.center=batch centres by each process's share"),
        (["trainer.batch_size=15"], "must divide evenly over 2 processes"),
    ):
        cfg = make_cfg(*TINY, *overrides)
        check_world(cfg, 1)  # one process: nothing to refuse
        with pytest.raises(EtfTrainError, match=line):
            check_world(cfg, 2)
    check_world(make_cfg(*TINY, "head=fixed_etf"), 2)


def test_step_schedule_drops_the_rate_at_its_milestones(tmp_path):
    train(
        make_cfg(*TINY, "scheduler=step", "scheduler.milestones=[2]", "trainer.max_epochs=3", "optimizer.lr=0.2"),
        tmp_path,
    )
    assert read_scalars(tmp_path)["lr"][1].tolist() == pytest.approx([0.2, 0.2, 0.02])


def test_extreme_learning_rate_stops_with_a_clear_message(tmp_path):
    cfg = make_cfg(*TINY, "head=learned", "head.normalize=false", "optimizer.lr=1e30", "trainer.max_epochs=3")
    with pytest.raises(EtfTrainError, match="non-finite loss .* lower optimizer.lr"):
        train(cfg, tmp_path)


def dense_nc(h, y, logits, W, b, K):
    """The NC metrics of features h (N, d) with labels y, written densely in numpy (method.md, metrics/nc.py)."""
    N = len(y)
    mu = np.stack([h[y == c].mean(0) for c in range(K)])  # (K, d)
    mu_G = h.mean(0)
    Hc = (mu - mu_G).T  # (d, K)
    S_W = sum(np.outer(v, v) for v in h - mu[y]) / N
    S_B = Hc @ Hc.T / K
    M = np.eye(K) - 1 / K
    var = np.array([((h[y == c] - mu[c]) ** 2).sum(1).mean() for c in range(K)])

    def dist_to_etf(G):
        return np.linalg.norm(G / np.linalg.norm(G) - M / np.sqrt(K - 1))

    def equiangular(G):
        n = np.sqrt(np.diag(G))
        cos = G / np.outer(n, n)
        return np.mean([abs(cos[i, j] + 1 / (K - 1)) for i in range(K) for j in range(i + 1, K)])

    pairs = [(i, j) for i in range(K) for j in range(i + 1, K)]
    nearest = np.argmin(((h[:, None, :] - mu[None]) ** 2).sum(-1), axis=1)
    w_norms, h_norms = np.linalg.norm(W, axis=1), np.linalg.norm(Hc, axis=0)
    out = {
        "nc1": np.trace(S_W @ np.linalg.pinv(S_B)) / K,
        "nc2_w": dist_to_etf(W @ W.T),
        "nc2_h": dist_to_etf(Hc.T @ Hc),
        "equinorm_w": np.std(w_norms, ddof=1) / np.mean(w_norms),
        "equinorm_h": np.std(h_norms, ddof=1) / np.mean(h_norms),
        "equiangular_w": equiangular(W @ W.T),
        "equiangular_h": equiangular(Hc.T @ Hc),
        "nc3": dist_to_etf(W @ Hc),
        "nc4": np.mean(nearest != logits.argmax(1)),
        "cdnv": np.mean([(var[i] + var[j]) / (2 * np.sum((mu[i] - mu[j]) ** 2)) for i, j in pairs]),
        "norm_ratio_w": w_norms.max() / w_norms.min(),
        "norm_ratio_h": h_norms.max() / h_norms.min(),
        "rank_h": np.linalg.matrix_rank(Hc),
        "erank_sw": np.trace(S_W) ** 2 / np.sum(S_W**2),  # the participation ratio
    }
    if b is not None:
        out["bias_collapse"] = np.linalg.norm(W @ mu_G + b)
    return out


@pytest.mark.parametrize("head", ["nearest_etf", "learned"])
def test_logged_metrics_equal_an_independent_recomputation(tmp_path, head):
    """The nc/* (train set) and nc_test/* and test/* (test split) scalars of the last epoch, recomputed densely in numpy
    from head.normalize(backbone(x)) in eval mode: catches metrics taken in train mode, on augmented or partial data,
    on the wrong split, with another classifier or bias, or with a wrong formula."""
    cfg = make_cfg(*TINY, f"head={head}", "trainer.max_epochs=2")
    train(cfg, tmp_path)
    run = Run(cfg, tmp_path)
    assert run.restore()[0] == 2
    model = run.model.eval()
    logged = read_scalars(tmp_path)
    K = 4
    for split, prefix, dataset, labels in (
        ("train", "nc/", run.bundle.eval_train, run.bundle.train_targets),
        ("test", "nc_test/", run.bundle.test, run.bundle.test_targets),
    ):
        x = torch.stack([dataset[i][0] for i in range(len(dataset))])
        y = labels.numpy()
        with torch.no_grad():
            f = model.backbone(x)
            h = model.head.normalize(f).double().numpy()
            logits = model.head(f).double().numpy()
        W = model.head.weight.detach().double().numpy()
        b = None if model.head.bias is None else model.head.bias.detach().double().numpy()
        expected = {prefix + k: v for k, v in dense_nc(h, y, logits, W, b, K).items()}
        if split == "train":
            expected["train/eval_acc"] = 100 * np.mean(logits.argmax(1) == y)
        else:
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            conf, hit = p.max(1), p.argmax(1) == y
            bins = np.ceil(conf * 15).astype(int)  # right-closed bins ((b-1)/15, b/15]
            ece = sum(abs(hit[bins == k].mean() - conf[bins == k].mean()) * np.mean(bins == k) for k in np.unique(bins))
            expected |= {
                "test/acc": 100 * hit.mean(),
                "test/ece": ece,
                **{f"test/acc_class/{c}": 100 * hit[y == c].mean() for c in range(K)},
            }
            assert "test/acc_top5" not in logged  # K = 4 < 10
        for tag, value in expected.items():
            assert logged[tag][0][-1] == 2, tag
            assert logged[tag][1][-1] == pytest.approx(value, rel=1e-4, abs=1e-6), tag


def test_the_run_folder_holds_hparams_a_convergence_layout_the_config_and_a_reliability_diagram(tmp_path):
    """TensorBoard's HParams tab found no data and Custom Scalars was blank: both must be in the run's own event file
    (no time-stamped sub-run with copies of the scalars, as SummaryWriter.add_hparams would make)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    train(make_cfg(*TINY, "trainer.max_epochs=2"), tmp_path)
    (events,) = tmp_path.glob("events.out.tfevents.*")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [".hydra", "checkpoints"]
    acc = EventAccumulator(str(events), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    hp = {k: plugin_data_pb2.HParamsPluginData.FromString(v) for k, v in acc.PluginTagToContent("hparams").items()}
    start = hp["_hparams_/session_start_info"].session_start_info.hparams
    assert start["head.name"].string_value == "nearest_etf" and start["optimizer.lr"].number_value == 0.05
    assert start["seed"].number_value == 1 and start["dataset.name"].string_value == "synthetic"
    metrics = [m.name.tag for m in hp["_hparams_/experiment"].experiment.metric_infos]
    assert {"test/acc", "train/eval_acc", "nc/nc1", "nc/nc3"} <= set(metrics)
    assert hp["_hparams_/session_end_info"].session_end_info.status == api_pb2.STATUS_SUCCESS
    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    (category,) = layout.category
    assert category.title == "convergence"
    assert [c.multiline.tag[0] for c in category.chart] == ["^test/acc$", "^train/eval_acc$", "^nc/nc1$", "^nc/nc3$"]
    assert b"head:" in acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0]
    assert [e.step for e in acc.Images("test/reliability")] == [2]
    # every epoch's scalars, as TensorBoard's own reader sees them (they are written as one event per epoch)
    logged = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert {"train/loss", "train/acc", "test/acc", "nc/nc1", "lr", "time/epoch_s"} <= set(logged)
    assert all(
        [step for step, _ in values] == [1, 2] for tag, values in logged.items() if not tag.startswith("epochs_to/")
    )
    assert logged["lr"][0][1] == pytest.approx(0.05)
    # NC1's log10 (a log axis on TensorBoard's linear one), and how soon each threshold was met, logged once
    assert [v for _, v in logged["nc_log10/nc1"]] == pytest.approx(
        [math.log10(v) for _, v in logged["nc/nc1"]], rel=1e-5
    )
    first = next((step for step, v in logged["nc/nc1"] if v <= 1.0), None)
    assert logged.get("epochs_to/nc1_le_1") == ([(first, float(first))] if first else None)
    assert [m for m in metrics if m.startswith("epochs_to/")] == [
        "epochs_to/nc1_le_1",
        "epochs_to/nc1_le_0.1",
        "epochs_to/nc1_le_0.01",
        "epochs_to/nc1_le_0.001",
        "epochs_to/train_eval_acc_ge_99",
        "epochs_to/test_acc_ge_90",
    ]
    infos = [i.name for i in hp["_hparams_/experiment"].experiment.hparam_infos]  # the HParams tab's column order
    assert infos[:2] == ["head.name", "seed"] and len(infos) == len(start) <= 12  # what tells runs apart, not all


def test_hparams_list_a_sweeps_keys_first_and_thresholds_once_across_a_resume(tmp_path):
    from etf_train.training.logbook import Logbook, swept_keys

    config = {
        "head": {"name": "learned", "tau": 5.0},
        "seed": 2,
        "trainer": {"max_epochs": 3},
        "dataset": {"name": "x"},
    }
    record = (
        ["head=learned", "seed=2", "trainer.max_epochs=3"],
        {"job": {"config": {"override_dirname": {"exclude_keys": ["trainer.max_epochs", "trainer.resume"]}}}},
    )
    assert swept_keys(record, config) == ["head.name", "seed"]
    assert swept_keys(None, config) == []
    book = Logbook(tmp_path, config, 1, record)
    for epoch, nc1 in ((1, 2.0), (2, 0.5)):
        book.scalars(epoch, {"nc/nc1": nc1})
    book.close(False)
    book = Logbook(tmp_path, config, 3)  # a resume: NC1 <= 1 was met at epoch 2 and is not met "again" at 3
    book.scalars(3, {"nc/nc1": 0.05})
    book.close(True)
    curves = read_scalars(tmp_path)
    assert curves["epochs_to/nc1_le_1"][0].tolist() == [2] and curves["epochs_to/nc1_le_1"][1].tolist() == [2.0]
    assert curves["epochs_to/nc1_le_0.1"][0].tolist() == [3]


def test_optimisers_step_fused_where_torch_can_and_fall_back_elsewhere(monkeypatch):
    """A fused step (no per-step temporaries: 3x faster on a UFM-100 feature table) where this torch has one; an
    older torch without CPU kernels must still build the optimiser, not fail."""
    from etf_train.training import factories

    model = torch.nn.Linear(4, 3)
    for name in ("sgd", "adamw"):
        cfg = make_cfg(f"optimizer={name}").optimizer
        assert factories.build_optimizer(cfg, model).defaults["fused"] is True
        with monkeypatch.context() as m:
            m.setattr(factories, "_fused_available", lambda cls, device: False)
            assert not factories.build_optimizer(cfg, model).defaults["fused"]
    assert not factories._fused_available(
        type(
            "NoFused",
            (),
            {"__init__": lambda self, *a, **k: (_ for _ in ()).throw(TypeError("unexpected keyword argument 'fused'"))},
        ),
        torch.device("cpu"),
    )


def test_the_end_of_epoch_finiteness_check_sees_every_nan_and_inf_and_nothing_else():
    """The check reads each tensor's min and max instead of isfinite per value: catches a NaN that min/max would skip,
    an inf of either sign, a float64 value that a float32 comparison would overflow, and a refusal of empty tensors."""
    from etf_train.training.tally import all_finite

    def table(value=None, dtype=torch.float32):
        t = torch.randn(50, 7, dtype=dtype)
        if value is not None:
            t[31, 4] = value
        return t

    ok = [table(), table(1e300, torch.float64), table(dtype=torch.bfloat16), torch.empty(0), torch.arange(3)]
    assert all_finite(ok) and all_finite([])
    for bad in (math.nan, math.inf, -math.inf):
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            assert not all_finite([*ok, table(bad, dtype)]), (bad, dtype)
            assert all_finite([table(1.0, dtype)]) == bool(torch.isfinite(table(1.0, dtype)).all())


def test_a_tiny_leftover_batch_is_named_for_nearest_etf(tmp_path, caplog):
    """64 UFM samples in batches of 31 end every epoch in a batch of two samples: nearest_etf centres a batch by its
    own mean, so that step's logits nearly cancel (the other heads train on it as on any batch). Said once, at the
    start. (A single leftover sample joins the batch before: tests/test_data.py.)"""
    for head, said in (("nearest_etf", True), ("learned", False)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="etf_train"):
            run = Run(make_cfg(*TINY_UFM, f"head={head}", "trainer.batch_size=31"), tmp_path / head)
        run.folder.end()
        assert (
            "each epoch ends in a batch of 2 sample(s) (64 train samples, trainer.batch_size=31)" in caplog.text
        ) == said


def test_cudnn_benchmark_and_tf32_are_options_that_default_to_torchs_own(tmp_path):
    """issue 29, item 5: null leaves the process-wide flags as torch set them; true/false set them; a benchmark that
    times algorithms cannot go with deterministic runs."""
    flags = (
        (torch.backends.cudnn, "benchmark"),
        (torch.backends.cuda.matmul, "allow_tf32"),
        (torch.backends.cudnn, "allow_tf32"),
    )
    before = [getattr(owner, name) for owner, name in flags]
    try:
        run = Run(make_cfg(*TINY), tmp_path / "default")
        run.folder.end()
        assert [getattr(owner, name) for owner, name in flags] == before
        assert run.config["trainer"]["cudnn_benchmark"] is None and run.config["trainer"]["tf32"] is None
        for value in (True, False):
            cfg = make_cfg(*TINY, f"trainer.cudnn_benchmark={value}", f"trainer.tf32={value}")
            Run(cfg, tmp_path / str(value)).folder.end()
            assert [getattr(owner, name) for owner, name in flags] == [value] * 3
        with pytest.raises(EtfTrainError, match="trainer.cudnn_benchmark=true .* trainer.deterministic=true"):
            Run(make_cfg(*TINY, "trainer.cudnn_benchmark=true", "trainer.deterministic=true"), tmp_path / "both")
        with pytest.raises(EtfTrainError, match="trainer.tf32 must be true or false"):
            Run(make_cfg(*TINY, "trainer.tf32=sometimes"), tmp_path / "bad")
    finally:  # the flags are the process's: the other tests get torch's
        for (owner, name), value in zip(flags, before):
            setattr(owner, name, value)


def test_ufm_leaves_out_erank_sw_unless_asked_and_nothing_else_moves(tmp_path):
    """Catches metrics.erank_sw not reaching the NC pass (UFM still paying for the d x d moment, or a run with it
    asked for not getting it), and the switch changing any other number; a bad value is one line."""
    from etf_train.training import SignalGuard

    scalars = {}
    for name, extra in (("default", []), ("asked", ["metrics.erank_sw=true"])):
        cfg = make_cfg(*TINY_UFM, "head=nearest_etf", *extra)
        assert cfg.metrics.erank_sw is bool(extra)  # configs/dataset/budget/ufm.yaml
        run = Run(cfg, tmp_path / name)
        timed = ("time/", "throughput/", "solver/ms")
        scalars[name] = {
            k: v for k, v in run.run_epoch(1, SignalGuard(), None, None).items() if not k.startswith(timed)
        }
        run.folder.end()
    assert "nc/erank_sw" not in scalars["default"] and scalars["asked"]["nc/erank_sw"] > 1
    assert {k: v for k, v in scalars["asked"].items() if k != "nc/erank_sw"} == scalars["default"]
    assert make_cfg(*TINY).metrics.erank_sw is True  # every other dataset keeps it
    with pytest.raises(EtfTrainError, match="metrics.erank_sw must be true or false"):
        Run(make_cfg(*TINY_UFM, "metrics.erank_sw=sometimes"), tmp_path / "bad")


@pytest.mark.parametrize("label_noise", [0.0, 0.25])
def test_ufm_takes_its_test_and_nc_metrics_from_one_pass(tmp_path, monkeypatch, label_noise):
    """UFM's test split is its train set: without label noise one evaluation pass gives both, with the numbers the
    two passes give (recomputed here on the same end-of-epoch model); with noise the labels differ, so two passes."""
    from etf_train.training import SignalGuard, epoch
    from etf_train.training.evaluate import evaluate, evaluate_train_set

    calls = []
    monkeypatch.setattr(epoch, "evaluate_train_set", lambda *a, **k: calls.append(1) or evaluate_train_set(*a, **k))
    run = Run(make_cfg(*TINY_UFM, "head=nearest_etf", f"dataset.label_noise={label_noise}"), tmp_path)
    scalars = run.run_epoch(1, SignalGuard(), None, None)
    run.folder.end()
    assert len(calls) == (label_noise > 0)
    args = (run.model, run.eval_train_loader, run.device, run.autocast)
    separate = evaluate_train_set(*args, run.K, run.world, run.bundle.noisy, erank_sw=False)
    separate |= evaluate(run.model, run.test_loader, run.device, run.autocast, run.world, run.K, erank_sw=False)[0]
    assert {"nc/nc1", "nc/nc4", "train/eval_acc", "test/acc", "test/loss", "test/ece"} <= separate.keys()
    assert not any(k.startswith("nc_test/") for k in scalars)
    for key, value in separate.items():
        assert scalars[key] == value or (math.isnan(value) and math.isnan(scalars[key])), key

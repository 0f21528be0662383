"""What etf-compare says was compared (compare/setting.py), pinned as whole texts: the setting line, the figure's
headline, the readable group labels and the command that reproduces the runs (run 3 of the mutation run left these
strings untested by fast tests). Expected texts are written out here, not built with the module's helpers."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from etf_train.compare.setting import _optimiser, _schedule, _seeds, headline, readable, reproduce, rounded, setting

from .test_compare import fake_run

AGD = "etf_train.training.agd.AGD"
COSINE = "torch.optim.lr_scheduler.CosineAnnealingLR"
# a record with every key the setting line reads
FULL = {
    "seed": 1,
    "dataset": {"name": "ufm"},
    "sizes": {"num_classes": 10, "train_samples": 1000, "feature_dim": 512, "steps_per_epoch": 4},
    "backbone": {"name": "ufm"},
    "loss": {"name": "ce"},
    "optimizer": {"_target_": AGD, "lr": 0.1, "gain": 10, "effective_depth": 2},
    "scheduler": {"_target_": COSINE},
    "trainer": {"max_epochs": 200, "batch_size": 256},
    "code_version": "0.1.0+g1234abc",
}
# a record with only what every run has: no seed, sizes, trainer, scheduler or code version
SPARSE = {
    "dataset": {"name": "cifar10"},
    "backbone": {"name": "resnet18"},
    "loss": {"name": "ce"},
    "optimizer": {"_target_": "torch.optim.SGD"},
}


def record(base: dict, **dotted) -> dict:
    """`base` with keys set, a level a `__` (`optimizer__lr=0.2` sets optimizer.lr; None deletes the key)."""
    out = copy.deepcopy(base)
    for key, value in dotted.items():
        *parents, leaf = key.split("__")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out


def run(config: dict, epochs: int = 12, path: str = "r"):
    """A finished run in memory that logged train/acc for `epochs` epochs."""
    return fake_run(path, config, {"train/acc": dict.fromkeys(range(1, epochs + 1), 50.0)})


def test_rounded_shortens_only_long_decimals():
    """A long sampled decimal reads at 4 significant digits; short decimals, integers and words stay as written."""
    assert rounded("14.686165375401004") == "14.69"
    assert rounded("1.23456") == "1.235"  # 7 characters: past the 6 that are left alone
    assert rounded("10.000") == "10.000"  # 6 characters: as written, though it would shorten
    assert rounded("1234567") == "1234567"  # no decimal point: as written, however long
    assert rounded("abc.defghi") == "abc.defghi"  # not a number
    assert rounded("0.1") == "0.1"


def test_readable_labels_name_heads_optimisers_and_options_in_words():
    """`key=value` pairs read as the head, the optimiser's name and `option value`; unknown optimisers and options
    keep their own spelling, nested head options their path below head, values their `=`."""
    assert readable("head=nearest_etf, optimizer=agd, optimizer.effective_depth=2") == "nearest_etf, AGD, depth 2"
    assert readable("head=learned, head.tau=20, head.bias=False, head.solver.name=qr") == (
        "learned, tau 20, bias False, solver.name qr"
    )
    assert readable("optimizer=lion, optimizer.lr=0.012345678, seed=3") == "lion, lr 0.01235, seed 3"
    assert readable("dataset.root=a=b") == "dataset.root a=b"


def test_the_setting_line_and_headline_of_runs_that_share_every_setting():
    """Every part of the setting line and of the figure's title, for runs that agree on all but the seed: the
    headline leaves out the train samples, the batch and what the line says of the schedule and version."""
    runs = [run(record(FULL, seed=s)) for s in (1, 2, 3, 4, 5, 6)]
    assert setting(runs) == (
        "UFM, K=10, 1,000 train samples · backbone ufm, d=512 · loss ce · AGD (lr 0.1, gain 10, depth 2) · "
        "schedule cosine · 200 epochs, batch 256, 4 steps an epoch · seeds 1-6 · etf-train 0.1.0+g1234abc"
    )
    assert headline({"head=a": runs[:3], "head=b": runs[3:]}) == (
        "UFM, K=10, d=512 · backbone ufm · AGD (lr 0.1, gain 10, depth 2) · 200 epochs · 3 seeds per group"
    )


def test_the_setting_line_and_headline_of_runs_that_recorded_little():
    """Without sizes, trainer, scheduler, seed or code version: those parts say so or are left out, and the epochs
    are the ones the runs logged."""
    runs = [run(SPARSE, epochs=12), run(SPARSE, epochs=10)]
    assert setting(runs) == (
        "cifar10 · backbone resnet18 · loss ce · SGD · schedule none · 10/12 epochs · seed not recorded · "
        "etf-train version not recorded"
    )
    assert (
        headline({"g": runs[:1], "h": runs[1:]})
        == "cifar10 · backbone resnet18 · SGD · 10/12 epochs · 1 seed per group"
    )


def test_the_setting_line_and_headline_of_runs_that_differ():
    """Where runs differ, each part reads `a / b` (a missing value as `-`), and the headline gives the range of
    group sizes."""
    runs = [
        run(record(FULL, seed=4, optimizer__lr=0.012345678, scheduler=None)),
        run(
            record(
                FULL,
                seed=5,
                sizes__num_classes=None,
                sizes__train_samples=None,
                backbone__name="vit",
                optimizer__lr=0.2,
                scheduler___target_="torch.optim.lr_scheduler.StepLR",
                code_version="0.2.0",
            )
        ),
    ]
    assert setting(runs) == (
        "UFM, K=10 / -, 1,000 / - train samples · backbone ufm / vit, d=512 · loss ce · "
        "AGD (lr 0.01235 / 0.2, gain 10, depth 2) · schedule none / step · 200 epochs, batch 256, 4 steps an epoch · "
        "seeds 4, 5 · etf-train 0.1.0+g1234abc / 0.2.0"
    )
    groups = {"a": runs[:1], "b": runs, "c": [*runs, runs[0]]}
    assert headline(groups) == (
        "UFM, K=10 / -, d=512 · backbone ufm / vit · AGD (lr 0.01235 / 0.2, gain 10, depth 2) · 200 epochs · "
        "1-3 seeds per group"
    )


def test_seeds_read_as_one_a_list_or_a_range():
    """One seed, two (never a range), a run of three or more as `a-b`, gaps and negative seeds as a list."""

    def seeds(*values):
        return _seeds([run({"seed": v} if v is not None else {}) for v in values])

    assert seeds(7) == "seed 7"
    assert seeds(7, 7) == "seed 7"
    assert seeds(4, 5) == "seeds 4, 5"
    assert seeds(1, 3) == "seeds 1, 3"
    assert seeds(3, 1, 2) == "seeds 1-3"
    assert seeds(-2, 5) == "seeds -2, 5"
    assert seeds(None, 2, None) == "seed 2"
    assert seeds(None) == "seed not recorded"


def test_optimiser_names_read_the_same_in_any_case_and_unknown_ones_as_their_class():
    """The class name after the last dot, in the usual spelling whatever its case (`adamw` -> AdamW); an unknown
    optimiser by its class name as written."""

    def name(target):
        return _optimiser([run({"optimizer": {"_target_": target}})])

    assert name("my.optim.adamw") == "AdamW"
    assert name("torch.optim.SGD") == "SGD"
    assert name("torch.optim.Lion") == "Lion"


def test_schedules_read_as_short_lower_case_words():
    """CosineAnnealingLR -> cosine, StepLR -> step (a class without a module path too); several as `a / b`, each once."""

    def schedule(*targets):
        return _schedule([run({"scheduler": {"_target_": t}} if t else {}) for t in targets])

    assert schedule(COSINE) == "schedule cosine"
    assert schedule("StepLR") == "schedule step"
    assert schedule(None, "torch.optim.lr_scheduler.StepLR", None) == "schedule none / step"


# ----------------------------------------------------------------------------- the command that reproduces the runs


def job(folder: Path, overrides: list | None, seed: int = 1):
    """A run folder in memory with its .hydra/overrides.yaml (none written for None)."""
    (folder / ".hydra").mkdir(parents=True)
    if overrides is not None:
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return fake_run(str(folder), {"seed": seed}, {})


def test_a_sweeps_own_command_line_reproduces_it_less_hydras_settings(tmp_path):
    """multirun.yaml's task overrides are the command, shell-quoted, without the hydra.* ones; not the overrides
    each run recorded."""
    sweep = tmp_path / "sweep"
    runs = [job(sweep / "0", ["head=learned", "seed=1"]), job(sweep / "1", ["head=nearest_etf", "seed=1"])]
    task = ["head=learned,nearest_etf", "seed=1", "hydra.sweep.dir=/x", "trainer.note=a b"]
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    assert reproduce(runs) == "etf-train -m head=learned,nearest_etf seed=1 'trainer.note=a b'"


def test_without_a_sweep_command_the_runs_overrides_less_optunas_sampled_keys(tmp_path):
    """No multirun.yaml: each key with every value the runs took, in order of first appearance, less hydra's keys
    (also when added or deleted with + or ~) and the keys an Optuna search sampled; a value keeps its own `=`."""
    sweep = tmp_path / "sweep"
    runs = [
        job(
            sweep / "0",
            ["experiment=x", "optimizer.lr=0.1", "+hydra.job.env_set.A=1", "~hydra.foo", "dataset.root=a=b", "seed=1"],
        ),
        job(sweep / "1", ["experiment=x", "optimizer.lr=0.2", "seed=2"]),
    ]
    (sweep / "optimization_results.yaml").write_text(
        yaml.safe_dump({"name": "optuna", "best_params": {"optimizer.lr": 0.1}, "best_value": 0.5})
    )
    assert reproduce(runs) == "etf-train -m experiment=x dataset.root=a=b seed=1,2"


def test_a_sweep_record_that_is_not_a_mapping_or_names_no_task_is_passed_over(tmp_path):
    """A multirun.yaml or optimization_results.yaml that holds a list, or a multirun.yaml without overrides: the
    runs' own overrides make the command, all keys kept."""
    listed = tmp_path / "listed"
    runs = [job(listed / "0", ["optimizer.lr=0.1"]), job(listed / "1", ["optimizer.lr=0.2"])]
    (listed / "multirun.yaml").write_text(yaml.safe_dump(["a", "b"]))
    (listed / "optimization_results.yaml").write_text(yaml.safe_dump(["optimizer.lr"]))
    assert reproduce(runs) == "etf-train -m optimizer.lr=0.1,0.2"
    bare = tmp_path / "bare"
    runs = [job(bare / "0", ["seed=1"])]
    (bare / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"run": {"dir": "x"}}}))
    assert reproduce(runs) == "etf-train -m seed=1"


def test_runs_of_several_sweeps_join_their_overrides_and_a_run_without_any_is_skipped(tmp_path):
    """Runs under two folders: neither folder's multirun.yaml speaks for both, so the overrides do; a run that
    recorded none is passed over, not the end of the list; no overrides at all: no command."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "multirun.yaml").write_text(
            yaml.safe_dump({"hydra": {"overrides": {"task": [f"sweep={name}"]}}})
        )
    runs = [
        job(tmp_path / "a" / "0", None),
        job(tmp_path / "a" / "1", ["seed=1"]),
        job(tmp_path / "b" / "0", ["seed=2"]),
    ]
    assert reproduce(runs) == "etf-train -m seed=1,2"
    assert reproduce([runs[0], job(tmp_path / "b" / "1", None)]) is None

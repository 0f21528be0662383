"""Finding, loading and grouping runs for etf-compare (compare/runs.py) at their edges: the group labels and their
order, which options tell runs of one head or optimiser apart, the warnings for groups that pool or differ in more
than their labels, and every error message (run 3 of the mutation run left these untested by fast tests). Expected
labels and messages are written out here, not built with the module's helpers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from etf_train.compare.runs import (
    _MISSING,
    _head_choice,
    _sort_key,
    check_datasets,
    code_versions,
    config_value,
    find_runs,
    group_runs,
    head_variants,
    load_run,
    optimizer_variants,
    plain,
    pooled_settings,
    unlike_groups,
)
from etf_train.errors import EtfTrainError

from .test_compare import fake_run

SGD, ADAMW = "torch.optim.SGD", "torch.optim.AdamW"
# kept as written in a record: it resolves only inside Hydra, so resolving it raises
HYDRA_CWD = "${hydra:runtime.cwd}/data"


def run(path: str, config: dict, head_choice: str | None = None, epochs: int = 2, status: str = "finished"):
    """A run in memory that logged train/acc for `epochs` epochs."""
    r = fake_run(path, config, {"train/acc": dict.fromkeys(range(1, epochs + 1), 50.0)} if epochs else {}, status)
    return dataclasses.replace(r, head_choice=head_choice)


def paths(groups: dict) -> list[tuple[str, list[str]]]:
    """The groups in their order, each with its runs' paths in theirs."""
    return [(label, [str(r.path) for r in rs]) for label, rs in groups.items()]


# ----------------------------------------------------------------------------- small pieces


def test_plain_gives_integral_floats_as_integers_below_two_to_the_53():
    """5.0 (a yaml default) and 5 (an override) are one setting; 2**53 and above, fractions, text and bools stay."""
    assert type(plain(5.0)) is int and plain(5.0) == 5
    assert type(plain(1000.0)) is int and plain(1000.0) == 1000
    assert type(plain(-3.0)) is int and plain(-3.0) == -3
    assert type(plain(2.0**53 - 1)) is int
    assert type(plain(2.0**53)) is float
    assert plain(2.5) == 2.5 and plain("5.0") == "5.0" and plain(True) is True


def test_sort_key_orders_numbers_then_text_then_missing_values():
    """Numbers by value (bools as text), other values by their text, a missing value last."""
    assert _sort_key([3, "b", _MISSING, True, 2.5]) == ((0, 3), (1, "b"), (2, ""), (1, "True"), (0, 2.5))


def test_included_takes_finished_runs_and_with_include_unfinished_any_run_that_logged_an_epoch():
    """A finished run always; an unfinished one only when asked and when it logged epoch 1 or later."""
    finished = run("f", {}, epochs=2)
    one_epoch = run("u", {}, epochs=1, status="unfinished")
    none_yet = run("n", {}, epochs=0, status="unfinished")
    assert (finished.included(False), finished.included(True)) == (True, True)
    assert (one_epoch.included(False), one_epoch.included(True)) == (False, True)
    assert (none_yet.included(False), none_yet.included(True)) == (False, False)


def test_config_value_errors_name_the_run_and_key():
    """An interpolation that only resolves inside Hydra, and a section asked for as a value, are errors that name
    the run and the key."""
    r = run("runs/1", {"dataset": {"root": HYDRA_CWD, "name": "x"}})
    with pytest.raises(EtfTrainError) as e:
        config_value(r, "dataset.root")
    assert str(e.value).startswith("run runs/1: cannot resolve config key 'dataset.root': ")
    with pytest.raises(EtfTrainError) as e:
        config_value(r, "dataset")
    assert str(e.value) == "config key 'dataset' of run runs/1 is a section, not a value; group by one of its keys"
    assert config_value(r, "dataset.name") == "x" and config_value(r, "seed") is _MISSING


# ----------------------------------------------------------------------------- finding and loading


def test_find_runs_errors_say_what_is_wrong_with_the_folder(tmp_path):
    """A missing folder, a file, and a folder without runs: one message each."""
    with pytest.raises(EtfTrainError) as e:
        find_runs(tmp_path / "nope")
    assert str(e.value) == f"folder does not exist: {tmp_path / 'nope'}"
    (tmp_path / "file").write_text("")
    with pytest.raises(EtfTrainError) as e:
        find_runs(tmp_path / "file")
    assert str(e.value) == f"not a folder: {tmp_path / 'file'}"
    (tmp_path / "empty").mkdir()
    with pytest.raises(EtfTrainError) as e:
        find_runs(tmp_path / "empty")
    assert str(e.value) == f"no runs under {tmp_path / 'empty'}: a run is a directory holding .hydra/config.yaml"


def test_load_run_errors_for_an_unreadable_config_and_one_that_is_not_a_mapping(tmp_path):
    """The config's path and the parser's first line; a list where the mapping should be."""
    (tmp_path / "bad" / ".hydra").mkdir(parents=True)
    (tmp_path / "bad" / ".hydra" / "config.yaml").write_text("seed: [1, 2\n")
    with pytest.raises(EtfTrainError) as e:
        load_run(tmp_path / "bad")
    assert str(e.value) == f"cannot read {tmp_path / 'bad' / '.hydra' / 'config.yaml'}: while parsing a flow sequence"
    (tmp_path / "list" / ".hydra").mkdir(parents=True)
    (tmp_path / "list" / ".hydra" / "config.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(EtfTrainError) as e:
        load_run(tmp_path / "list")
    assert str(e.value) == f"{tmp_path / 'list' / '.hydra' / 'config.yaml'} is not a mapping"


def _events(run_dir: Path, config: dict, acc: dict[int, float], walltime: float) -> Path:
    """An event file as a start of etf-train writes it: its config as text at step 0, then train/acc."""
    before = set(run_dir.glob("events.out.tfevents.*"))
    writer = SummaryWriter(log_dir=str(run_dir))
    writer.add_text("config", f"```yaml\n{yaml.safe_dump(config)}```", 0, walltime=walltime)
    for step, value in acc.items():
        writer.add_scalar("train/acc", value, global_step=step, walltime=walltime + step)
    writer.close()
    (new,) = set(run_dir.glob("events.out.tfevents.*")) - before
    return new


def test_load_run_keeps_its_own_events_names_another_runs_and_reads_hydras_head_choice(tmp_path, capsys):
    """The record as written (a Hydra-only interpolation left unresolved), only the run's own event file in its
    curves and events, a warning naming the other run's file, and the head preset from hydra.yaml."""
    run_dir = tmp_path / "run"
    config = {"seed": 1, "dataset": {"name": "ufm", "root": HYDRA_CWD}}
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), run_dir / ".hydra" / "config.yaml")
    (run_dir / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": {"head": "learned_authors"}}}})
    )
    own = _events(run_dir, config, {1: 60.0, 2: 70.0}, 1000.0)
    other = _events(run_dir, {**config, "seed": 2}, {1: 10.0, 2: 20.0, 3: 30.0}, 2000.0)
    capsys.readouterr()
    loaded = load_run(run_dir)
    assert capsys.readouterr().err == (
        f"etf-compare: warning: {other}: an event file of another run (logged -> recorded: seed: 2 -> 1); "
        f"left out of the curves of {run_dir}\n"
    )
    assert loaded.events == (own,)
    assert {t: (s.tolist(), v.tolist()) for t, (s, v) in loaded.scalars.items()} == {
        "train/acc": ([1, 2], [60.0, 70.0])
    }
    assert loaded.head_choice == "learned_authors"
    assert OmegaConf.to_container(loaded.config)["dataset"]["root"] == HYDRA_CWD  # unresolved, as recorded
    assert loaded.state.status == "unfinished"


def test_head_choice_is_none_unless_hydra_yaml_names_a_head_by_text(tmp_path):
    """No hydra.yaml, or a head choice that is not text: not in the record."""
    assert _head_choice(tmp_path) is None
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"head": 3}}}}))
    assert _head_choice(tmp_path) is None


# ----------------------------------------------------------------------------- what tells runs apart


def test_head_variants_are_the_options_that_differ_among_runs_of_one_head():
    """Within one head name, options whose values differ (5 and 5.0 agree), less excluded ones and `_` keys; a head
    whose runs agree, or a head of one run, has none; an interpolation is compared as written."""
    common = {"depth": 2, "note": HYDRA_CWD}
    l1 = run("l1", {"head": {"name": "learned", "bias": True, "scale": 5.0, "tau": 1, "_marker": 1, **common}})
    l2 = run("l2", {"head": {"name": "learned", "bias": False, "scale": 5, "tau": 1, "_marker": 2, **common}})
    f1 = run("f1", {"head": {"name": "fixed_etf", "tau": 5}})
    f2 = run("f2", {"head": {"name": "fixed_etf", "tau": 6}})
    n1 = run("n1", {"head": {"name": "nearest_etf", "tau": 3}})
    found = head_variants([l1, l2, f1, f2, n1], exclude=["head.tau"])
    assert found == {id(l1): [("head.bias", True)], id(l2): [("head.bias", False)], id(f1): [], id(f2): [], id(n1): []}
    found = head_variants([f1, f2])
    assert found == {id(f1): [("head.tau", 5)], id(f2): [("head.tau", 6)]}


def test_optimizer_variants_name_the_optimiser_when_runs_use_several():
    """Each run's optimiser by its lower-case class name (the full path where two classes share one), then the
    options that differ among runs of one optimiser; a run without an optimizer node gets nothing."""
    s1 = run("s1", {"optimizer": {"_target_": SGD, "lr": 0.1}})
    s2 = run("s2", {"optimizer": {"_target_": SGD, "lr": 0.2}})
    a1 = run("a1", {"optimizer": {"_target_": "my.optim.AdamW"}})
    a2 = run("a2", {"optimizer": {"_target_": ADAMW}})
    n1 = run("n1", {})
    x1 = run("x1", {"optimizer": {"_target_": "Lion"}})  # a class without a module path
    runs = [s1, s2, a1, a2, n1, x1]
    assert optimizer_variants(runs) == {
        id(s1): [("optimizer", "sgd"), ("optimizer.lr", 0.1)],
        id(s2): [("optimizer", "sgd"), ("optimizer.lr", 0.2)],
        id(a1): [("optimizer", "my.optim.AdamW")],
        id(a2): [("optimizer", ADAMW)],
        id(n1): [],
        id(x1): [("optimizer", "lion")],
    }
    # grouped by the optimiser itself, its label already names it; an excluded option is not repeated
    quiet = {id(s1): [("optimizer.lr", 0.1)], id(s2): [("optimizer.lr", 0.2)], id(a1): [], id(a2): [], id(n1): []}
    assert optimizer_variants(runs[:5], exclude=["optimizer"]) == quiet
    assert optimizer_variants(runs[:5], exclude=["optimizer._target_"]) == quiet
    assert optimizer_variants([s1, s2, a2], exclude=["optimizer.lr"]) == {
        id(s1): [("optimizer", "sgd")],
        id(s2): [("optimizer", "sgd")],
        id(a2): [("optimizer", "adamw")],
    }
    # one optimiser: no name, only the options
    assert optimizer_variants([s1, s2]) == {id(s1): [("optimizer.lr", 0.1)], id(s2): [("optimizer.lr", 0.2)]}


def test_group_labels_name_presets_head_options_and_missing_keys_in_sorted_order():
    """Labels `key=value` in --group-by order, a head by its preset name then its differing options, `-` for a
    missing key; groups in value order (missing last), runs of a group by path."""

    def head(**options):
        return {"name": "learned", **options}

    runs = [
        run("p/3", {"seed": 2, "head": head(bias=False)}),
        run("p/2", {"seed": 1, "head": head(bias=True)}),
        run("p/1", {"seed": 1, "head": head(bias=True)}),
        run("p/4", {"seed": 1, "head": head(bias=False)}, head_choice="learned_authors"),
        run("p/5", {"seed": 1}),
    ]
    assert paths(group_runs(runs, ["seed", "head"])) == [
        ("seed=1, head=learned, head.bias=True", ["p/1", "p/2"]),
        ("seed=1, head=learned_authors, head.bias=False", ["p/4"]),
        ("seed=1, head=-", ["p/5"]),
        ("seed=2, head=learned, head.bias=False", ["p/3"]),
    ]


def test_group_by_keys_are_not_repeated_by_the_head_or_optimiser_options():
    """Grouped by head.bias and optimizer.lr as well, the label names each once."""
    runs = [
        run("q/1", {"head": {"name": "learned", "bias": True}, "optimizer": {"_target_": SGD, "lr": 0.1}}),
        run("q/2", {"head": {"name": "learned", "bias": False}, "optimizer": {"_target_": SGD, "lr": 0.2}}),
    ]
    assert paths(group_runs(runs, ["head", "head.bias", "optimizer.lr"])) == [
        ("head=learned, head.bias=False, optimizer.lr=0.2", ["q/2"]),
        ("head=learned, head.bias=True, optimizer.lr=0.1", ["q/1"]),
    ]


def test_group_by_a_key_no_run_has_names_it():
    """`head` is head.name in the message; other keys as given."""
    runs = [run("r/1", {"seed": 1})]
    with pytest.raises(EtfTrainError) as e:
        group_runs(runs, ["head"])
    assert str(e.value) == "no run has config key 'head.name' (from --group-by)"
    with pytest.raises(EtfTrainError) as e:
        group_runs(runs, ["seed", "trainer.nope"])
    assert str(e.value) == "no run has config key 'trainer.nope' (from --group-by)"


# ----------------------------------------------------------------------------- warnings and refusals


def test_check_datasets_names_each_dataset_with_a_run_of_it():
    """Runs of two datasets: each by name, count and a first run, in name order."""
    runs = [run("m/1", {"dataset": {"name": "mnist"}}), run("c/1", {}), run("m/2", {"dataset": {"name": "mnist"}})]
    with pytest.raises(EtfTrainError) as e:
        check_datasets(runs)
    assert str(e.value) == (
        "runs mix datasets: - (1 run, e.g. c/1), mnist (2 runs, e.g. m/1); compare one dataset at a time or pass "
        "--allow-mixed"
    )


def test_code_versions_counts_the_runs_of_each_version():
    """Two or more versions (a missing one as `not recorded`), in sorted order, with their run counts."""

    def version(path, v):
        return run(path, {"code_version": v} if v else {"seed": 1})

    groups = {
        "a": [version("a/1", "0.2.0"), version("a/2", "0.1.0")],
        "b": [version("b/1", "0.1.0"), version("b/2", None)],
    }
    assert code_versions(groups) == [
        "the runs come from 3 versions of etf-train (not recorded: 1 run, 0.1.0: 2 runs, 0.2.0: 1 run); a fix between "
        "them can move their numbers (docs/reliability.md lists what each fix changed)"
    ]
    assert code_versions({"a": [version("a/1", "0.1.0")], "b": [version("b/1", "0.2.0")]}) == [
        "the runs come from 2 versions of etf-train (0.1.0: 1 run, 0.2.0: 1 run); a fix between them can move their "
        "numbers (docs/reliability.md lists what each fix changed)"
    ]
    assert code_versions({"a": [version("a/1", "0.1.0"), version("a/2", "0.1.0")]}) == []


def test_pooled_settings_names_the_first_other_setting_and_each_seed_given_twice():
    """A group's runs against its first: the first run that differs in more than the seed (once a group), then every
    seed that appears twice; runs that differ only in the seed, or record no seed, pool in silence."""

    def cfg(seed, lr=0.1):
        return {
            "dataset": {"name": "x", "root": HYDRA_CWD},
            "optimizer": {"lr": lr},
            **({"seed": seed} if seed else {}),
        }

    groups = {
        "head=learned": [run("g/0", cfg(1)), run("g/1", cfg(2, 0.2)), run("g/2", cfg(3)), run("g/3", cfg(1))],
        "head=fixed": [run("f/0", cfg(1)), run("f/1", cfg(2))],
        "head=none": [run("n/0", cfg(None)), run("n/1", cfg(None))],
    }
    assert pooled_settings(groups) == [
        "group 'head=learned' pools runs with other settings than the seed (g/0 vs g/1: optimizer.lr: 0.1 -> 0.2); "
        "add such keys to --group-by",
        "group 'head=learned' holds seed 1 twice (g/0, g/3): the same run given twice?",
    ]


def _unlike(path: str, head: dict, seed: int, **rest) -> object:
    """A run for the unlike-groups checks: its head, seed and dataset (root a Hydra-only interpolation), and more."""
    dataset = {"name": "x", "root": HYDRA_CWD, **rest.pop("dataset", {})}
    return run(path, {"head": head, "seed": seed, "dataset": dataset, **rest})


def test_unlike_groups_pass_what_the_labels_name():
    """Differences the labels account for: the group-by key (head.name for `head`), head options either label shows,
    the optimiser and its options, the seed, and options of one head only; no groups, no messages."""
    sgd, adamw = {"_target_": SGD, "lr": 0.1}, {"_target_": ADAMW, "lr": 0.1}
    groups = {
        "head=learned, head.bias=False, head.tau=1, optimizer=sgd": [
            _unlike("a/1", {"name": "learned", "bias": False, "tau": 1}, 1, optimizer=sgd)
        ],
        "head=learned, head.bias=True, head.tau=2, optimizer=adamw": [
            _unlike("a/2", {"name": "learned", "bias": True, "tau": 2}, 2, optimizer=adamw)
        ],
        "head=fixed_etf, optimizer=sgd": [
            _unlike("a/3", {"name": "fixed_etf", "tau": 5, "center": True}, 3, optimizer=sgd)
        ],
    }
    assert unlike_groups(groups, ["head"]) == []
    # the group-by key and the optimiser's options count as labelled whatever the labels say
    one = _unlike("e/1", {"name": "a"}, 1, optimizer={"lr": 0.1}, dataset={"label_noise": 0.1})
    two = _unlike("e/2", {"name": "a"}, 1, optimizer={"lr": 0.2}, dataset={"label_noise": 0.2})
    assert unlike_groups({"one": [one], "two": [two]}, ["dataset.label_noise"]) == []
    assert unlike_groups({}, ["head"]) == [] and unlike_groups({"empty": []}, []) == []


def test_unlike_groups_name_what_the_labels_do_not():
    """A setting no label names (the epochs, the metrics interval, a value with a colon) is named, a group against
    the first group; a labelled key whose values hold a colon is still labelled."""

    def at(path, head, seed, where, epochs, every):
        trainer, metrics = {"max_epochs": epochs}, {"every_n_epochs": every}
        return _unlike(path, {"name": head}, seed, dataset={"path": where}, trainer=trainer, metrics=metrics)

    base = at("c/1", "learned", 1, "s3://a", 20, 1)
    other = at("c/2", "fixed_etf", 2, "s3://b", 100, 5)
    assert unlike_groups({"head=learned": [base], "head=fixed_etf": [other]}, ["head"]) == [
        "groups 'head=learned' and 'head=fixed_etf' differ in more than their labels (c/1 vs c/2: dataset.path: "
        "s3://a -> s3://b, metrics.every_n_epochs: 1 -> 5, trainer.max_epochs: 20 -> 100); compare runs of one "
        "setting, or add such keys to --group-by"
    ]
    elsewhere = at("c/3", "learned", 2, "s3://b", 20, 1)
    assert unlike_groups({"dataset.path=s3://a": [base], "dataset.path=s3://b": [elsewhere]}, ["dataset.path"]) == []

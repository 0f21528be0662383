"""The test order under `make mutate` (tests/conftest.py): a mutant's tests grouped by file, so that no module's
fixtures are built twice; any other run keeps pytest's order."""

from __future__ import annotations

import json
from types import SimpleNamespace

from .conftest import pytest_collection_modifyitems

# as mutmut hands them over, fastest first, across files
GIVEN = ["tests/b.py::t1", "tests/a.py::t1", "tests/b.py::t2", "tests/c.py::t1", "tests/a.py::t2", "tests/b.py::t3"]
# grouped by file, the files in the order of their first test
BY_FIRST_TEST = [
    "tests/b.py::t1",
    "tests/b.py::t2",
    "tests/b.py::t3",
    "tests/a.py::t1",
    "tests/a.py::t2",
    "tests/c.py::t1",
]


def ordered(monkeypatch, mutant: str | None, seconds: dict[str, float] | None = None, where=None) -> list[str]:
    if mutant is None:
        monkeypatch.delenv("MUTANT_UNDER_TEST", raising=False)
    else:
        monkeypatch.setenv("MUTANT_UNDER_TEST", mutant)
    if seconds is not None:  # mutmut's stats, in the folder its worker runs in
        (where / "mutmut-stats.json").write_text(json.dumps({"duration_by_test": seconds, "stats_time": 1.0}))
        monkeypatch.chdir(where)
    items = [SimpleNamespace(nodeid=n) for n in GIVEN]
    pytest_collection_modifyitems(items)
    return [item.nodeid for item in items]


def test_a_mutants_tests_run_file_by_file_in_the_order_of_each_files_first_test(monkeypatch):
    assert ordered(monkeypatch, "etf_train.rundir.x_checkpoint__mutmut_3") == BY_FIRST_TEST


def test_with_mutmuts_stats_the_cheapest_file_runs_first(monkeypatch, tmp_path):
    """b's first test is the fastest, but b costs 7 s in all against a's 3 s and c's 0.5 s (a test the stats never
    timed counts 0 s); files that cost the same keep the order of their first test."""
    seconds = {"tests/b.py::t1": 0.1, "tests/b.py::t2": 2.0, "tests/b.py::t3": 4.9, "tests/a.py::t1": 1.0}
    seconds |= {"tests/a.py::t2": 2.0, "tests/c.py::t1": 0.5}
    assert ordered(monkeypatch, "etf_train.rundir.x_checkpoint__mutmut_3", seconds, tmp_path) == [
        "tests/c.py::t1",
        "tests/a.py::t1",
        "tests/a.py::t2",
        "tests/b.py::t1",
        "tests/b.py::t2",
        "tests/b.py::t3",
    ]
    seconds = {"tests/b.py::t1": 1.0, "tests/a.py::t1": 1.0, "tests/c.py::t1": 1.0}
    assert ordered(monkeypatch, "etf_train.rundir.x_checkpoint__mutmut_3", seconds, tmp_path) == BY_FIRST_TEST


def test_every_other_run_keeps_the_order_it_was_given(monkeypatch):
    # no mutmut; mutmut's own passes (its stats, the clean run, the forced failure) name no mutant
    for mutant in (None, "", "stats", "fail"):
        assert ordered(monkeypatch, mutant) == GIVEN

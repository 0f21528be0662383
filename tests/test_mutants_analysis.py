"""etf-compare's option checks and analysis at their boundaries (issue 30's mutation run left these untested): each
limit is tried on both sides, and each refusal's words are written out here."""

from __future__ import annotations

import pytest

from etf_train.compare.analysis import check_options
from etf_train.errors import EtfTrainError

OK = {"acc": [90.0], "test_acc": [90.0], "nc1": [0.1], "dpi": 150, "port": None}


@pytest.mark.parametrize(
    "change",
    [
        {"acc": [1.0001, 100.0]},
        {"test_acc": [100.0]},
        {"nc1": [1e-300]},
        {"nc1": None},
        {"dpi": 1},
        {"dpi": 1200},
        {"port": 0},
        {"port": 65535},
    ],
)
def test_options_at_their_limits_are_accepted(change):
    check_options(**{**OK, **change})


@pytest.mark.parametrize(
    "change, says",
    [
        ({"acc": [1.0]}, "--acc-thresholds must lie in (1, 100], got 1 (accuracies are in percent: 100?)"),
        ({"acc": [0.5]}, "--acc-thresholds must lie in (1, 100], got 0.5 (accuracies are in percent: 50?)"),
        ({"acc": [1.5, 100.01]}, "--acc-thresholds must lie in (1, 100], got 100.01"),
        ({"test_acc": [0.0]}, "--test-acc-thresholds must lie in (1, 100], got 0"),
        ({"test_acc": [-3.0]}, "--test-acc-thresholds must lie in (1, 100], got -3"),
        ({"nc1": [0.1, 0.0]}, "--nc1-thresholds must be positive, got 0"),
        ({"nc1": [-1.0]}, "--nc1-thresholds must be positive, got -1"),
        ({"dpi": 0}, "--dpi must lie in 1..1200, got 0"),
        ({"dpi": 1201}, "--dpi must lie in 1..1200, got 1201"),
        ({"port": -1}, "--port must lie in 0..65535, got -1"),
        ({"port": 65536}, "--port must lie in 0..65535, got 65536"),
    ],
)
def test_options_past_their_limits_are_refused_in_words(change, says):
    with pytest.raises(EtfTrainError) as e:
        check_options(**{**OK, **change})
    assert str(e.value) == says

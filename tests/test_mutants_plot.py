"""etf-compare's panels read back from matplotlib's objects (issue 30: a mutation run found the figure's look pinned
by no test): each group's median line, its min-max band and its runs' thin lines, with their styles; which threshold
lines are drawn; the log axis; an accuracy panel's range; titles, labels, integer ticks and the grid. Every expected
value is written out here."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.layout_engine import ConstrainedLayoutEngine

from etf_train.compare.plot import _panel, check_metrics, figure, ylabel
from etf_train.compare.runs import RecordedRun
from etf_train.errors import EtfTrainError
from etf_train.tags import NC1, TEST_ACC, TRAIN_LOSS

from .test_compare import fake_run

EPOCHS = np.arange(1, 5)


def run(name: str, **curves: tuple) -> RecordedRun:
    """A run that trained 4 epochs (train/loss at each), with these tags at (epochs, values)."""
    scalars = {tag.replace("__", "/"): dict(zip(np.asarray(s).tolist(), v)) for tag, (s, v) in curves.items()}
    return fake_run(name, {}, {TRAIN_LOSS: dict.fromkeys(range(1, 5), 1.0), **scalars})


def panel(tag, groups, lines_at=(), per_seed=False):
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    marked: set[int] = set()
    _panel(ax, tag, groups, "cross-entropy", lines_at, per_seed, marked, "step")
    return ax, marked


def looks(line) -> tuple:
    return (line.get_color(), line.get_linestyle(), line.get_marker(), line.get_markersize(), line.get_linewidth())


NC1_TAG = NC1.replace("/", "__")
GROUPS = {
    "head=learned": [
        run("a", **{NC1_TAG: (EPOCHS, [10, 1, 0.1, 0.01])}),
        run("b", **{NC1_TAG: (EPOCHS, [20, 2, 0.2, 0.02])}),
        run("c"),  # logged no NC1: no thin line
    ],
    "head=fixed_etf": [run("d")],  # no NC1 at all: no line, and the next group keeps its own style
    "head=nearest_etf": [run("e", **{NC1_TAG: ([2, 4], [5, 0.05])})],  # logged every 2nd epoch: markers
}


def test_each_group_draws_its_median_band_and_runs_in_its_own_style():
    ax, marked = panel(NC1, GROUPS, per_seed=True)
    lines = ax.get_lines()
    assert [looks(line) for line in lines] == [
        ("#0072B2", "-", "None", 4, 1.5),  # learned's median
        ("#0072B2", "-", "None", 6.0, 0.5),  # its runs, thin
        ("#0072B2", "-", "None", 6.0, 0.5),
        ("#009E73", ":", "^", 4, 1.5),  # nearest_etf: the third style, with its marker (sparse)
        ("#009E73", "-", "None", 6.0, 0.5),
    ]
    assert [line.get_alpha() for line in lines] == [None, 0.45, 0.45, None, 0.45]
    np.testing.assert_array_equal(lines[0].get_xdata(), [1, 2, 3, 4])
    np.testing.assert_allclose(lines[0].get_ydata(), [15, 1.5, 0.15, 0.015])
    np.testing.assert_allclose(lines[2].get_ydata(), [20, 2, 0.2, 0.02])
    np.testing.assert_array_equal(lines[3].get_xdata(), [2, 4])
    assert marked == {2}
    bands = ax.collections
    assert len(bands) == 2
    for band, colour, points in [
        (bands[0], "#0072B2", {(1, 10), (2, 1), (3, 0.1), (4, 0.01), (1, 20), (2, 2), (3, 0.2), (4, 0.02)}),
        (bands[1], "#009E73", {(2, 5), (4, 0.05)}),
    ]:
        assert tuple(band.get_facecolor()[0]) == pytest.approx(to_rgba(colour, 0.15))
        assert list(band.get_linewidth()) == [0]
        assert {(round(float(x), 9), round(float(y), 9)) for x, y in band.get_paths()[0].vertices} == points
    assert ax.get_yscale() == "log"  # 0.01 to 20: over 1.5 decades
    assert ax.get_autoscaley_on()  # not an accuracy: the range is matplotlib's
    assert ax.get_title() == "NC1: within-class variability"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "tr(S_W S_B⁺) / K")
    assert all(t == int(t) for t in ax.get_xticks())  # epochs, never 1.5
    grid = ax.xaxis.get_gridlines()[0]
    assert grid.get_visible() and grid.get_alpha() == 0.3


def test_without_per_seed_only_medians_are_drawn():
    ax, _ = panel(NC1, GROUPS)
    assert [looks(line)[0] for line in ax.get_lines()] == ["#0072B2", "#009E73"]


def test_threshold_lines_are_drawn_within_the_curves_range_bounds_included():
    ax, _ = panel(NC1, GROUPS, lines_at=[100, 20, 0.01, 0.005])  # the bands span 0.01 to 20
    hlines = ax.get_lines()[2:]
    assert [tuple(line.get_ydata()) for line in hlines] == [(20, 20), (0.01, 0.01)]
    for line in hlines:
        assert (line.get_color(), line.get_linestyle(), line.get_linewidth(), line.get_zorder()) == ("0.5", ":", 0.7, 0)


def test_an_accuracy_panel_is_linear_and_spans_its_medians_with_a_margin():
    rising = {"g": [run("a", test__acc=(EPOCHS[:3], [50, 60, 70])), run("b", test__acc=(EPOCHS[:3], [52, 64, 99.8]))]}
    ax, _ = panel(TEST_ACC, rising)
    # lowest median 51, highest value 99.8: a margin of 5 % of 48.8
    assert ax.get_ylim() == pytest.approx((51 - 2.44, 99.8 + 2.44))
    assert ax.get_yscale() == "linear" and ax.get_title() == "test accuracy" and ax.get_ylabel() == "accuracy (%)"
    low = {"g": [run("a", test__acc=(EPOCHS[:2], [0.2, 10]))]}  # 1.7 decades, but an accuracy: linear
    ax, _ = panel(TEST_ACC, low)
    assert ax.get_yscale() == "linear"
    assert ax.get_ylim() == pytest.approx((0.0, 10.5))  # 0.5 at least, never below 0 %
    flat = {"g": [run("a", test__acc=(EPOCHS[:2], [100, 100]))]}  # UFM's curves sit at 100 %
    assert panel(TEST_ACC, flat)[0].get_ylim() == pytest.approx((99.5, 100.5))


def test_one_point_carries_a_marker_two_points_over_two_epochs_do_not():
    one, two = fake_run("o", {}, {"x/metric": {1: 3.0}}), fake_run("t", {}, {"x/metric": {1: 3.0, 2: 4.0}})
    ax, marked = panel("x/metric", {"one": [one], "two": [two]})
    assert [line.get_marker() for line in ax.get_lines()] == ["o", "None"] and marked == {0}
    assert (ax.get_title(), ax.get_ylabel()) == ("x/metric", "metric")  # a tag without a title of its own
    assert not math.isnan(ax.get_ylim()[0])


def test_the_lines_keep_their_width_under_another_matplotlib_style():
    with matplotlib.rc_context({"lines.linewidth": 3.0}):
        ax, _ = panel(NC1, GROUPS)
    assert [line.get_linewidth() for line in ax.get_lines()] == [1.5, 1.5]


def test_a_metric_that_only_a_run_left_out_logged_gives_an_empty_panel():
    ax, marked = panel(NC1, {"head=learned": [run("a")]}, lines_at=[0.1])
    assert len(ax.get_lines()) == len(ax.collections) == 0 and marked == set()
    assert ax.get_title() == "NC1: within-class variability"


def falling(name: str, status: str = "finished") -> RecordedRun:
    """4 epochs of train/loss and NC1 from 1 to 0.001, test/acc from 40 to 70 %."""
    decay = {1: 1.0, 2: 0.1, 3: 0.01, 4: 0.001}
    return fake_run(name, {}, {TRAIN_LOSS: decay, NC1: decay, TEST_ACC: {1: 40.0, 2: 50.0, 3: 60.0, 4: 70.0}}, status)


def legend_of(fig) -> tuple:
    (legend,) = fig.legends
    return legend, [t.get_text() for t in legend.get_texts()]


def test_the_figure_lays_out_its_panels_legend_and_title():
    groups = {
        "head=learned": [falling("a"), falling("b")],
        "head=fixed_etf": [falling("c"), falling("d", "unfinished")],  # --include-unfinished drew it
        "head=nearest_etf": [],
        "head=other": [falling("e")],
    }
    totals = {"head=learned": 3, "head=nearest_etf": 2}
    metrics = [TRAIN_LOSS, NC1, TEST_ACC, "x/metric"]  # x/metric: in no run drawn here
    with matplotlib.rc_context({"lines.linewidth": 3.0}):  # the legend's lines keep their width too
        fig = figure(groups, metrics, totals, warnings=1, nc1_lines=[0.05], per_seed=True)
    assert isinstance(fig.canvas, FigureCanvasAgg) and isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    # 3 panels a row, 2 rows; 4.5 x 3.2 in a panel, 0.3 in per row of legend (3 groups a row) and 0.4 for the title
    assert tuple(fig.get_size_inches()) == pytest.approx((13.5, 6.4 + 0.6 + 0.4))
    assert [ax.get_visible() for ax in fig.axes] == [True] * 4 + [False] * 2
    assert [ax.get_xlabel() for ax in fig.axes[:4]] == ["epoch"] * 4
    # the NC1 threshold on the NC1 panel only (train/loss spans it too); every run as a thin line as well
    assert [sum(tuple(ln.get_ydata()) == (0.05, 0.05) for ln in ax.get_lines()) for ax in fig.axes[:2]] == [0, 1]
    assert len(fig.axes[0].get_lines()) == 3 + 5  # three medians, five runs
    legend, labels = legend_of(fig)
    assert labels == [
        "learned (n=2 of 3)",
        "fixed_etf (n=2, 1 unfinished)",
        "nearest_etf (n=0 of 2, not drawn)",
        "other (n=1)",
    ]
    assert [looks(h) for h in legend.legend_handles] == [
        ("#0072B2", "-", "None", 4, 1.5),
        ("#D55E00", "--", "None", 4, 1.5),
        ("#009E73", ":", "None", 4, 1.5),
        ("#CC79A7", "-.", "None", 4, 1.5),
    ]
    assert legend._ncols == 3 and not legend.get_frame_on() and legend._outside_loc == "lower"
    assert legend.get_texts()[0].get_fontsize() == pytest.approx(FontProperties(size="small").get_size_in_points())
    assert fig._suptitle.get_text().endswith("band = min-max over seeds\n1 warning: see comparison.md")
    assert fig._suptitle.get_fontsize() == pytest.approx(FontProperties(size="medium").get_size_in_points())
    two = figure({"head=learned": [falling("a")]}, [NC1], warnings=2)
    assert two._suptitle.get_text().endswith("band = min-max over seeds\n2 warnings: see comparison.md")
    assert "warning" not in figure({"head=learned": [falling("a")]}, [NC1])._suptitle.get_text()


@pytest.mark.parametrize(
    ("label_length", "columns"),
    # 13.5 in wide: a column takes 0.075 in a character and 0.6 in: 4.7 in at 55 characters, 5.85 at 70, 8.1 at 100
    [(10, 3), (55, 2), (70, 2), (100, 1)],
)
def test_the_legend_has_as_many_columns_as_its_longest_label_leaves_room_for(label_length, columns):
    names = ["head=a" + "x" * (label_length - len("a (n=1)")), "head=b", "head=c", "head=d"]
    fig = figure({name: [falling(name[5:])] for name in names}, [TRAIN_LOSS, NC1, TEST_ACC])
    legend, labels = legend_of(fig)
    assert max(map(len, labels)) == label_length and legend._ncols == columns
    one = figure({"head=learned": [falling("a")]}, [NC1])
    assert legend_of(one)[0]._ncols == 1


def test_a_metric_without_a_label_of_its_own_is_named_by_its_last_part():
    tags = ("a/b/c", "custom", "test/loss_x", "train/loss")
    assert [ylabel(tag, "mse loss") for tag in tags] == ["c", "custom", "loss_x", "mse loss"]


def test_a_metric_no_run_logged_is_named_with_every_tag_there_is():
    runs = [run("a", **{NC1_TAG: (EPOCHS, [1, 1, 1, 1])}), run("b", test__acc=(EPOCHS, [1, 1, 1, 1]))]
    check_metrics(runs, [NC1, TRAIN_LOSS])
    with pytest.raises(EtfTrainError) as e:
        check_metrics(runs, [NC1, "nc/nc9"])
    assert str(e.value) == "no run has scalar 'nc/nc9' (from --metrics); available: nc/nc1, test/acc, train/loss"


def test_the_loss_panels_name_every_loss_the_runs_train_with():
    from etf_train.compare.plot import _loss_name

    runs = [fake_run(p, {"loss": {"name": n}}, {}) for p, n in (("a", "mse"), ("b", "ce"), ("c", "mse"))]
    assert _loss_name(runs) == "cross-entropy / mse loss"
    assert _loss_name(runs[:1]) == "mse loss" and _loss_name([fake_run("d", {}, {})]) == "cross-entropy"

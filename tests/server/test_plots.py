"""Plots people read: whole-number rounds, only the shot counts measured, a handful of series per
panel with the reference in each, the legend off the data, and no bars that are constant by
construction."""

import pytest

from server.report import PER_PANEL, bands_figure, facets, plot_run, pyplot, sites_figure
from simulation.compare import comparison_markdown, constant_by_construction

METHODS = ["maml", "fomaml", "meta-sgd", "anil", "protonet", "fedavg", "centralized", "local"]


def test_facets_keep_a_handful_per_panel_and_the_reference_in_each():
    groups = facets(METHODS, 4, keep="fedavg")
    assert all(len(g) <= 4 and g[0] == "fedavg" for g in groups)
    assert sorted({m for g in groups for m in g}) == sorted(METHODS)
    assert facets(METHODS[:3]) == [METHODS[:3]]


@pytest.mark.parametrize(("xlabel", "xs"), [("round", (20, 40, 60)), ("shots", (1, 5, 10))])
def test_band_plots_have_whole_number_ticks_and_few_series_per_panel(xlabel, xs):
    plt = pyplot()
    lines = {m: [(x, 0.4 + 0.01 * i, 0.02) for x in xs] for i, m in enumerate(METHODS)}
    fig = bands_figure(plt, lines, "accuracy", "test", 1 / 3, xlabel)
    try:
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert len(axes) == 2
        for ax in axes:
            labelled = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
            assert len(labelled) <= PER_PANEL + 1  # the methods and chance
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert all(float(t).is_integer() for t in ticks), ticks
            if xlabel == "shots":
                assert list(ticks) == [1, 5, 10]
            legend = ax.get_legend()
            assert legend.get_bbox_to_anchor().transformed(ax.transAxes.inverted()).y0 < 0  # below the data
    finally:
        plt.close(fig)


def test_accuracy_without_adapting_is_dropped_when_it_is_chance_for_everyone(tmp_path):
    rows = [
        {"algorithm": m, "seconds": 1.0, "heldout acc-after": 0.6, "heldout acc-after ci95": 0.02,
         "heldout auc-after": 0.7, "heldout auc-after ci95": 0.02, "heldout acc-before": 0.5,
         "heldout acc-before ci95": 0.0, "train-sites acc-after": 0.7, "train-sites acc-after ci95": 0.01}
        for m in ("maml", "fomaml")
    ]  # fmt: skip
    assert constant_by_construction(rows, "heldout acc-before")
    table = comparison_markdown(rows)
    assert "no adaptation" not in table and "chance, by construction" in table
    rows[0]["heldout acc-before"] = 0.55
    assert "no adaptation" in comparison_markdown(rows)


@pytest.mark.parametrize(("before", "bar_groups"), [((0.5, 0.5), 1), ((0.5, 0.62), 2)])
def test_sites_plot_draws_before_bars_only_when_they_differ(tmp_path, before, bar_groups):
    final = {
        name: {"acc-before": b, "acc-before-ci": 0.0 if b == 0.5 else 0.04, "acc-after": 0.7, "acc-after-ci": 0.05}
        for name, b in zip(("a", "new"), before)
    }
    results = {
        "algorithm": "maml",
        "scenario": "t",
        "run_config": {"ways": 2},
        "sites": [{"name": "a", "role": "train"}, {"name": "new", "role": "heldout"}],
        "rounds": [{"round": 3, "evaluate": final}],
    }
    plt = pyplot()
    fig = sites_figure(plt, results)
    try:
        bars = [c for c in fig.axes[0].containers if type(c).__name__ == "BarContainer"]
        assert len(bars) == bar_groups
    finally:
        plt.close(fig)
    plot_run(results, tmp_path)
    assert (tmp_path / "sites_final.png").is_file() and (tmp_path / "heldout_accuracy.png").is_file()

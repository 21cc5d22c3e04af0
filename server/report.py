"""The coordinator's record of a run: results.json, metrics.csv and PNG plots a clinician-scientist can read.

`Recorder` is fed by the coordinator's strategy as rounds finish and rewrites results.json
after every round (atomically), so a run killed midway still leaves its history. No site data
ever reaches it: only per-site metric summaries (means, CI half-widths, episode counts).
"""

from __future__ import annotations

import csv
import math
from datetime import UTC, datetime
from pathlib import Path

from common.files import write_json
from common.metrics import pooled_mean_ci
from server.tracking import TensorBoardSink

EVAL_METRICS = ("acc-after", "auc-after", "loss-after", "acc-before", "support-acc-before", "support-acc-after")
RESULTS = "results.json"


class Recorder:
    def __init__(
        self,
        out_dir: Path,
        run_config: dict[str, object],
        scenario: str,
        algorithm: str,
        sites: list[dict],
        rejected: dict[str, str] | None = None,
        missing: dict[str, str] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.results: dict = {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "algorithm": algorithm,
            "scenario": scenario,
            "run_config": run_config,
            "sites": sites,
            "rejected_sites": dict(rejected or {}),  # connected nodes that take no part, and why
            "missing_sites": dict(missing or {}),  # the scenario's sites no node is, with their roles
            "rounds": [],
        }
        self.roles = {s["name"]: s["role"] for s in sites}
        self.sink: TensorBoardSink | None = None  # experiment tracking, when the run config asks for it

    def _round(self, server_round: int) -> dict:
        rounds = self.results["rounds"]
        if not rounds or rounds[-1]["round"] != server_round:
            rounds.append({"round": server_round, "train": {}, "evaluate": {}})
        return rounds[-1]

    def train(
        self,
        server_round: int,
        per_site: dict[str, dict[str, float]],
        bytes_down: int = 0,
        bytes_up: int = 0,
        seconds: float = float("nan"),
        errors: dict[str, str] | None = None,
        updated: bool = True,
        privacy: dict[str, float] | None = None,
    ) -> None:
        """A training round: each site's metrics, bytes each way, wall time, sites that failed or
        were rejected, and whether the meta-model moved (not when too few updates were acceptable)."""
        row = self._round(server_round)
        row["train"] = per_site
        row["updated"] = updated
        if privacy is not None:
            row["privacy"] = privacy  # cumulative (epsilon, delta) after this round
        row["bytes"] = {"down": bytes_down, "up": bytes_up}
        row["seconds"] = seconds
        if errors:
            row["train_errors"] = errors
        write_json(self.out_dir / RESULTS, self.results)  # progress for whoever watches the run
        if self.sink is not None:
            self.sink.train(server_round, per_site, privacy, seconds)

    def evaluate(
        self, server_round: int, per_site: dict[str, dict[str, float]], errors: dict[str, str] | None = None
    ) -> dict[str, float]:
        """Record per-site evaluation; returns the pooled held-out / training-site summary."""
        row = self._round(server_round)
        row["evaluate"] = per_site
        if errors:
            row["evaluate_errors"] = errors
        row["summary"] = summarize(per_site, self.roles)
        write_json(self.out_dir / RESULTS, self.results)
        if self.sink is not None:
            self.sink.evaluate(server_round, per_site, row["summary"])
        return {
            f"{group}-{metric}{suffix}": value
            for group, metrics in row["summary"].items()
            for metric, (mean, half, _) in metrics.items()
            for suffix, value in (("", mean), ("-ci", half))
        }

    def evaluate_shots(
        self, shots: int, per_site: dict[str, dict[str, float]], errors: dict[str, str] | None = None
    ) -> None:
        """The final meta-model scored with `shots` examples per class (`eval-shots`)."""
        row: dict = {"evaluate": per_site, "summary": summarize(per_site, self.roles)}
        if errors:
            row["evaluate_errors"] = errors
        self.results.setdefault("shots", {})[str(shots)] = row
        write_json(self.out_dir / RESULTS, self.results)

    def finish(self, seconds: float) -> dict:
        evaluated = [r for r in self.results["rounds"] if r["evaluate"]]
        self.results["seconds"] = seconds
        self.results["final"] = evaluated[-1] if evaluated else None
        write_json(self.out_dir / RESULTS, self.results)
        write_metrics_csv(self.results, self.out_dir / "metrics.csv")
        plot_run(self.results, self.out_dir)
        if self.sink is not None:
            self.sink.close()
        return self.results


def summarize(
    per_site: dict[str, dict[str, float]], roles: dict[str, str]
) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Pooled mean and 95% CI over all episodes of the held-out (test) sites, of the validation
    sites (for choosing hyperparameters) and of the training sites."""
    out = {}
    for group, role in (("heldout", "heldout"), ("validation", "validation"), ("train-sites", "train")):
        sites = [m for name, m in per_site.items() if roles.get(name) == role]
        if sites:
            out[group] = {
                metric: pooled_mean_ci([(m[metric], m[f"{metric}-ci"], int(m["num-tasks"])) for m in sites])
                for metric in EVAL_METRICS
                if metric in sites[0]
            }
    return out


def write_metrics_csv(results: dict, path: Path) -> None:
    """Long format: one line per (round, phase, site, metric)."""
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["algorithm", "round", "phase", "site", "role", "metric", "value", "ci95"])
        roles = {s["name"]: s["role"] for s in results["sites"]}
        for row in results["rounds"]:
            for phase in ("train", "evaluate"):
                for site, metrics in sorted(row[phase].items()):
                    for metric, value in metrics.items():
                        if metric.endswith("-ci"):
                            continue
                        out.writerow(
                            [
                                results["algorithm"],
                                row["round"],
                                phase,
                                site,
                                roles.get(site, ""),
                                metric,
                                value,
                                metrics.get(f"{metric}-ci", ""),
                            ]
                        )


def curve(results: dict, group: str = "heldout", metric: str = "acc-after") -> list[tuple[int, float, float]]:
    """(round, mean, CI half-width) of a pooled summary metric over the evaluated rounds."""
    return [
        (r["round"], *r["summary"][group][metric][:2])
        for r in results["rounds"]
        if r.get("summary", {}).get(group, {}).get(metric)
    ]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


PER_PANEL = 4  # series per panel: more, with their CI bands, hide each other


def facets(labels: list[str], per_panel: int = PER_PANEL, keep: str | None = None) -> list[list[str]]:
    """`labels` in groups of at most `per_panel`; `keep` (a reference) is in every group."""
    others = [label for label in labels if label != keep]
    size = per_panel - 1 if keep in labels else per_panel
    groups = [others[i : i + size] for i in range(0, len(others), size)] or [[]]
    return [([keep] if keep in labels else []) + group for group in groups]


def panels(plt, count: int, width: float = 5.0, height: float = 3.6):
    """A figure with `count` panels, at most two per row, sharing the y axis."""
    columns = min(count, 2)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), sharey=True, squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def integer_axis(ax, xs: list[int], exact: bool) -> None:
    """Ticks only at whole numbers: at exactly the values present (shots), or whole rounds."""
    from matplotlib.ticker import MaxNLocator

    if exact:
        ax.set_xticks(sorted(set(xs)))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_bands(
    lines: dict[str, list[tuple[int, float, float]]],
    ylabel: str,
    title: str,
    path: Path,
    chance: float | None,
    xlabel: str = "round",
) -> None:
    """One line per label over rounds (or shots), with its 95% CI as a band, and the chance level;
    at most PER_PANEL lines per panel, the legend below each panel, whole-number x ticks (for
    shots, only the counts measured)."""
    plt = pyplot()
    fig = bands_figure(plt, lines, ylabel, title, chance, xlabel)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def bands_figure(plt, lines: dict[str, list[tuple[int, float, float]]], ylabel: str, title: str, chance, xlabel: str):
    labels = [label for label, points in lines.items() if points]
    groups = facets(labels)
    fig, axes = panels(plt, len(groups))
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}  # a label keeps its colour across panels
    xs_all = [x for label in labels for x, _, _ in lines[label]]
    for ax, group in zip(axes, groups):
        for label in group:
            xs, ys, cis = zip(*lines[label])
            ax.plot(xs, ys, marker="o", label=label, color=colours[label])
            lows, highs = [y - c for y, c in zip(ys, cis)], [y + c for y, c in zip(ys, cis)]
            ax.fill_between(xs, lows, highs, alpha=0.15, color=colours[label])
        if chance:
            ax.axhline(chance, color="grey", linestyle=":", label="chance")
        integer_axis(ax, xs_all, exact=xlabel != "round")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.canvas.draw()  # tick labels exist only once drawn
    return fig


def constant_by_construction(pairs: list[tuple[float, float]]) -> bool:
    """(value, CI half-width) pairs that are all one value with zero-width intervals (NaNs left
    out): accuracy without adapting on relabelled episodes, chance for every site and method."""
    known = [(v, h) for v, h in pairs if not math.isnan(v)]
    return len({round(v, 6) for v, _ in known}) <= 1 and all(h == 0 for _, h in known)


def chance_level(results: dict) -> float | None:
    ways = results["run_config"].get("ways")
    return 1 / ways if ways else None


def plot_run(results: dict, out_dir: Path) -> None:
    roles = {s["name"]: s["role"] for s in results["sites"]}
    evaluated = [r for r in results["rounds"] if r["evaluate"]]
    if not evaluated:
        return
    heldout = sorted(n for n in evaluated[-1]["evaluate"] if roles.get(n) == "heldout")
    lines = {
        site: [
            (r["round"], r["evaluate"][site]["acc-after"], r["evaluate"][site]["acc-after-ci"])
            for r in evaluated
            if site in r["evaluate"]
        ]
        for site in heldout
    }
    plot_bands(
        lines,
        "few-shot query accuracy after adaptation",
        f"{results['algorithm']} on {results['scenario']}: held-out sites (95% CI)",
        out_dir / "heldout_accuracy.png",
        chance_level(results),
    )

    plt = pyplot()
    fig = sites_figure(plt, results)
    fig.savefig(out_dir / "sites_final.png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def sites_figure(plt, results: dict):
    """Each site's accuracy at the last evaluated round, after adapting (and before, unless that
    is the same chance level everywhere, by construction)."""
    roles = {s["name"]: s["role"] for s in results["sites"]}
    evaluated = [r for r in results["rounds"] if r["evaluate"]]
    final = evaluated[-1]["evaluate"]
    names = sorted(final, key=lambda n: (roles.get(n) != "heldout", n))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names)), 4))
    xs = range(len(names))
    before = [final[n]["acc-before"] for n in names]
    # without adapting, relabelled episodes leave every site at chance with no spread: say so, not a bar
    constant = constant_by_construction([(final[n]["acc-before"], final[n].get("acc-before-ci", 0)) for n in names])
    bars = [(0.0, "acc-after", "after adaptation")]
    if not constant:
        bars = [(-0.2, "acc-before", "before adaptation"), (0.2, "acc-after", "after adaptation")]
    for offset, metric, label in bars:
        ax.bar(
            [x + offset for x in xs],
            [final[n][metric] for n in names],
            width=0.4 if len(bars) == 2 else 0.6,
            yerr=[final[n].get(f"{metric}-ci", 0) for n in names],
            capsize=3,
            label=label,
        )
    if chance_level(results):
        ax.axhline(chance_level(results), color="grey", linestyle=":", label="chance")
    ax.set_xticks(list(xs), [f"{n}\n({roles.get(n, '?')})" for n in names], fontsize=8)
    ax.set_ylabel("query accuracy")
    note = f"; without adapting: {before[0]:.3f} at every site, by construction" if constant else ""
    ax.set_title(f"{results['algorithm']}: per site, round {evaluated[-1]['round']} (95% CI){note}", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig

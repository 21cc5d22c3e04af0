"""The benchmark's report: `headline.json` (the rows every table is generated from), a markdown
table, accuracy by shots, and a forest plot of each method's paired difference to FedAvg +
fine-tune with its 95% CI."""

from __future__ import annotations

import json
import math
from pathlib import Path

from common.files import write_json
from server.report import pyplot
from simulation.benchmark import REFERENCE

HEADLINE = "headline.json"


def write_headline(rows: list[dict], out_dir: Path, chance: dict[str, float] | None = None) -> list[dict]:
    """Merge `rows` into `out_dir`/headline.json (replacing the rows of their scenarios and sites,
    keeping the others'), regenerate headline.md from all of them, and plot `rows`' scenarios
    (`<scenario>-by-shots.png`, `<scenario>-forest.png`; `<scenario>-validation-...` for rows of
    validation sites). Returns every row."""
    out_dir = Path(out_dir)
    path = out_dir / HEADLINE
    tables = {_table(r) for r in rows}
    kept = [r for r in (json.loads(path.read_text()) if path.is_file() else []) if _table(r) not in tables]
    every = kept + rows
    write_json(path, every)
    (out_dir / "headline.md").write_text(markdown(every))
    for scenario, sites in sorted(tables):
        mine = [r for r in rows if _table(r) == (scenario, sites)]
        stem = scenario if sites == "heldout" else f"{scenario}-{sites}"
        plot_by_shots(mine, out_dir / f"{stem}-by-shots.png", (chance or {}).get(scenario))
        plot_forest(mine, out_dir / f"{stem}-forest.png")
    return every


def _table(row: dict) -> tuple[str, str]:
    """Which table a row belongs to: its scenario and the role of the sites it was scored on."""
    return row["scenario"], row.get("sites", "heldout")


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def markdown(rows: list[dict]) -> str:
    """One table per scenario: accuracy (%) ± 95% CI, AUROC, and the paired difference to
    FedAvg + fine-tune in points with its 95% CI, per shots."""
    lines: list[str] = []
    for scenario, sites in sorted({_table(r) for r in rows}):
        title = scenario if sites == "heldout" else f"{scenario}, {sites} sites (for choosing settings only)"
        lines += [
            f"### {title}",
            "",
            "| shots | method | accuracy % (95% CI) | AUROC | vs FedAvg + fine-tune, points (95% CI) "
            "| seeds | episodes |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in sorted((r for r in rows if _table(r) == (scenario, sites)), key=lambda r: (r["shots"], -r["acc"])):
            diff = (
                f"{100 * r['diff_vs_fedavg_ft']:+.1f} ({100 * r['diff_ci_low']:+.1f} to {100 * r['diff_ci_high']:+.1f})"
                if r["method"] != REFERENCE and not math.isnan(r["diff_ci_low"])
                else "reference"
            )
            lines.append(
                f"| {r['shots']} | {r['method']} | {_pct(r['acc'])} ± {_pct(r['acc_ci'])} | {r['auc']:.3f} | "
                f"{diff} | {r['seeds']} | {r['episodes']} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot_by_shots(rows: list[dict], path: Path, chance: float | None) -> None:
    plt = pyplot()
    shots = sorted({r["shots"] for r in rows})
    fig, ax = plt.subplots(figsize=(7.5, 4))
    methods = sorted({r["method"] for r in rows})
    step = 0.03 * max(1, shots[-1] - shots[0])  # methods side by side at each K, so their CIs do not hide each other
    for i, method in enumerate(methods):
        points = sorted((r["shots"], r["acc"], r["acc_ci"]) for r in rows if r["method"] == method)
        xs, ys, cis = zip(*points)
        offset = (i - (len(methods) - 1) / 2) * step
        ax.errorbar([x + offset for x in xs], ys, yerr=cis, marker="o", capsize=3, label=method)
    if chance:
        ax.axhline(chance, color="grey", linestyle=":", label="chance")
    ax.set_xticks(shots)
    ax.set_xlabel("labelled images per class at the new site (shots)")
    ax.set_ylabel("query accuracy (95% CI)")
    ax.set_title(f"{rows[0]['scenario']}: accuracy after adapting")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_forest(rows: list[dict], path: Path) -> None:
    """Each method's paired difference to the reference, per shots, with its 95% CI; zero marked."""
    plt = pyplot()
    shots = sorted({r["shots"] for r in rows})
    others = [r for r in rows if r["method"] != REFERENCE and not math.isnan(r["diff_ci_low"])]
    methods = sorted({r["method"] for r in others})
    fig, axes = plt.subplots(
        1, len(shots), figsize=(4 * len(shots), 0.5 * len(methods) + 1.5), sharey=True, squeeze=False
    )
    for ax, k in zip(axes[0], shots):
        for y, method in enumerate(methods):
            row = next((r for r in others if r["method"] == method and r["shots"] == k), None)
            if row is None:
                continue
            low, mid, high = (100 * row[key] for key in ("diff_ci_low", "diff_vs_fedavg_ft", "diff_ci_high"))
            colour = "tab:green" if low > 0 else ("tab:red" if high < 0 else "tab:grey")
            ax.plot([low, high], [y, y], color=colour, linewidth=2)
            ax.plot([mid], [y], marker="o", color=colour)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(f"{k}-shot")
        ax.set_xlabel("points vs FedAvg + fine-tune")
    axes[0][0].set_yticks(range(len(methods)), methods)
    fig.suptitle(f"{rows[0]['scenario']}: paired difference, 95% CI (green: above zero)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

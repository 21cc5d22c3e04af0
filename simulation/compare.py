"""Several methods' runs on the same scenario and seeds, side by side: comparison.csv/.md and plots;
and (`paired_comparison`) their final models scored on the same fixed held-out episodes, with
paired 95% CIs against FedAvg + fine-tune and a forest plot."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

from common.files import write_json
from server.report import chance_level, curve, plot_bands
from server.report import constant_by_construction as constant_pairs
from simulation.adapters import FineTune, MetaLearned
from simulation.benchmark import REFERENCE, Protocol, draw_episodes, headline_rows, score
from simulation.headline import markdown as headline_markdown
from simulation.headline import plot_by_shots, plot_forest


def compare(runs: dict[str, dict], out_dir: Path) -> list[dict]:
    """One table and one plot over runs of several algorithms on the same scenario and seeds."""
    rows = []
    for name, results in runs.items():
        final = results.get("final") or {}
        summary = final.get("summary", {})
        row = {
            "algorithm": name,
            "round": final.get("round"),
            "seconds": round(results.get("seconds", float("nan")), 1),
        }
        for group in ("heldout", "train-sites"):
            for metric in ("acc-after", "auc-after", "acc-before"):
                mean, half, n = summary.get(group, {}).get(metric, (math.nan, math.nan, 0))
                row[f"{group} {metric}"] = mean
                row[f"{group} {metric} ci95"] = half
                row[f"{group} episodes"] = n
        for k, k_summary in shot_summaries(results).items():
            mean, half, _ = k_summary.get("heldout", {}).get("acc-after", (math.nan, math.nan, 0))
            row[f"heldout acc-after {k}-shot"], row[f"heldout acc-after {k}-shot ci95"] = mean, half
        rows.append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "comparison.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "comparison.md").write_text(comparison_markdown(rows))
    first = next(iter(runs.values()))
    plot_bands(
        {name: curve(results) for name, results in runs.items()},
        "held-out few-shot accuracy (95% CI)",
        f"{first['scenario']}: methods compared",
        out_dir / "comparison.png",
        chance_level(first),
    )
    by_shots = {
        name: [(k, *s["heldout"]["acc-after"][:2]) for k, s in shot_summaries(results).items() if "heldout" in s]
        for name, results in runs.items()
    }
    if any(len(points) > 1 for points in by_shots.values()):
        plot_bands(
            by_shots,
            "held-out accuracy after adapting (95% CI)",
            f"{first['scenario']}: final meta-model, by shots",
            out_dir / "comparison_shots.png",
            chance_level(first),
            xlabel="labelled examples per class (shots)",
        )
    return rows


def shot_summaries(results: dict) -> dict[int, dict]:
    """Final held-out/training summaries by shots per class: the run's own and `eval-shots`."""
    final = results.get("final") or {}
    by_shots = {int(k): row["summary"] for k, row in results.get("shots", {}).items()}
    if "summary" in final and "shots" in results.get("run_config", {}):
        by_shots.setdefault(int(results["run_config"]["shots"]), final["summary"])
    return dict(sorted(by_shots.items()))


def constant_by_construction(rows: list[dict], key: str) -> bool:
    """`key` is the same in every row with a zero-width interval (server.report's test)."""
    return constant_pairs([(row[key], row.get(key + " ci95", 0)) for row in rows])


def comparison_markdown(rows: list[dict]) -> str:
    before = not constant_by_construction(rows, "heldout acc-before")
    lines = [
        "| algorithm | held-out acc (after adapting) | held-out AUC | "
        + ("held-out acc (no adaptation) | " if before else "")
        + "training sites acc | seconds |",
        "| --- | --- | --- | " + ("--- | " if before else "") + "--- | --- |",
    ]
    fmt = lambda row, key: "n/a" if math.isnan(row[key]) else f"{row[key]:.3f} ± {row[key + ' ci95']:.3f}"
    for row in rows:
        lines.append(
            f"| {row['algorithm']} | {fmt(row, 'heldout acc-after')} | {fmt(row, 'heldout auc-after')} | "
            + (f"{fmt(row, 'heldout acc-before')} | " if before else "")
            + f"{fmt(row, 'train-sites acc-after')} | {row['seconds']} |"
        )
    if not before and rows:
        value = rows[0]["heldout acc-before"]
        lines += ["", f"(Without adapting, every method scores {value:.3f} on every episode: chance, by construction.)"]
    shots = sorted(
        {
            int(key.split()[2].removesuffix("-shot"))
            for row in rows
            for key in row
            if key.startswith("heldout acc-after ") and key.endswith("-shot")
        }
    )
    if len(shots) > 1:
        lines += [
            "",
            "Held-out accuracy after adapting, by labelled examples per class (the final meta-model):",
            "",
            "| algorithm | " + " | ".join(f"{k}-shot" for k in shots) + " |",
            "| --- |" + " --- |" * len(shots),
        ]
        cell = lambda row, k: fmt(row, f"heldout acc-after {k}-shot") if f"heldout acc-after {k}-shot" in row else "n/a"
        lines += [f"| {row['algorithm']} | " + " | ".join(cell(row, k) for k in shots) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def paired_comparison(
    models: dict[str, Path],
    reference: Path,
    protocol: Protocol,
    out_dir: Path,
    chance: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Every model in `models` adapted with its own algorithm, and the FedAvg model `reference`
    fine-tuned (default settings: `fedmeta benchmark tune` chooses them on validation sites), on
    the same episodes of `protocol`; headline-style rows with paired differences to FedAvg +
    fine-tune. Writes comparison-paired.json/.md, comparison-by-shots.png, comparison-forest.png."""
    episodes = draw_episodes(protocol)
    say = progress or (lambda _: None)
    methods = {name: [score(MetaLearned(path, name=name), episodes, say)] for name, path in models.items()}
    methods[REFERENCE] = [score(FineTune(reference), episodes, say)]
    rows = headline_rows(episodes.scenario.name, methods, sites=protocol.role)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "comparison-paired.json", rows)
    (out_dir / "comparison-paired.md").write_text(headline_markdown(rows, with_targets=False))
    plot_by_shots(rows, out_dir / "comparison-by-shots.png", chance)
    plot_forest(rows, out_dir / "comparison-forest.png")
    return rows

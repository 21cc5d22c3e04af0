"""Run results a clinician-scientist can read: results.json, metrics.csv, PNG plots, comparisons.

`Recorder` is fed by the coordinator's strategy as rounds finish and rewrites results.json
after every round (atomically), so a run killed midway still leaves its history. No site data
ever reaches it: only per-site metric summaries (means, CI half-widths, episode counts).
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from common.metrics import pooled_mean_ci

EVAL_METRICS = ("acc-after", "auc-after", "loss-after", "acc-before", "support-acc-before", "support-acc-after")
RESULTS = "results.json"


def write_json(path: Path, data: object) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(data, tmp, indent=1, allow_nan=True)
    os.replace(tmp.name, path)


class Recorder:
    def __init__(self, out_dir: Path, run_config: dict[str, object], scenario: str, algorithm: str, sites: list[dict],
                 rejected: dict[str, str] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.results: dict = {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "algorithm": algorithm,
            "scenario": scenario,
            "run_config": run_config,
            "sites": sites,
            "rejected_sites": dict(rejected or {}),  # connected nodes that take no part, and why
            "rounds": [],
        }
        self.roles = {s["name"]: s["role"] for s in sites}

    def _round(self, server_round: int) -> dict:
        rounds = self.results["rounds"]
        if not rounds or rounds[-1]["round"] != server_round:
            rounds.append({"round": server_round, "train": {}, "evaluate": {}})
        return rounds[-1]

    def train(self, server_round: int, per_site: dict[str, dict[str, float]], bytes_down: int = 0, bytes_up: int = 0,
              seconds: float = float("nan"), errors: dict[str, str] | None = None, updated: bool = True,
              privacy: dict[str, float] | None = None) -> None:
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

    def evaluate(self, server_round: int, per_site: dict[str, dict[str, float]], errors: dict[str, str] | None = None) -> dict[str, float]:
        """Record per-site evaluation; returns the pooled held-out / training-site summary."""
        row = self._round(server_round)
        row["evaluate"] = per_site
        if errors:
            row["evaluate_errors"] = errors
        row["summary"] = summarize(per_site, self.roles)
        write_json(self.out_dir / RESULTS, self.results)
        return {f"{group}-{metric}{suffix}": value
                for group, metrics in row["summary"].items()
                for metric, (mean, half, _) in metrics.items()
                for suffix, value in (("", mean), ("-ci", half))}

    def evaluate_shots(self, shots: int, per_site: dict[str, dict[str, float]], errors: dict[str, str] | None = None) -> None:
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
        return self.results


def summarize(per_site: dict[str, dict[str, float]], roles: dict[str, str]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Pooled mean and 95% CI over all episodes of the held-out sites and of the training sites."""
    out = {}
    for group, role in (("heldout", "heldout"), ("train-sites", "train")):
        sites = [m for name, m in per_site.items() if roles.get(name) == role]
        if sites:
            out[group] = {
                metric: pooled_mean_ci([(m[metric], m[f"{metric}-ci"], int(m["num-tasks"])) for m in sites])
                for metric in EVAL_METRICS if metric in sites[0]
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
                        out.writerow([results["algorithm"], row["round"], phase, site, roles.get(site, ""), metric, value,
                                      metrics.get(f"{metric}-ci", "")])


def curve(results: dict, group: str = "heldout", metric: str = "acc-after") -> list[tuple[int, float, float]]:
    """(round, mean, CI half-width) of a pooled summary metric over the evaluated rounds."""
    return [(r["round"], *r["summary"][group][metric][:2]) for r in results["rounds"]
            if r.get("summary", {}).get(group, {}).get(metric)]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _bands(lines: dict[str, list[tuple[int, float, float]]], ylabel: str, title: str, path: Path, chance: float | None,
           xlabel: str = "round") -> None:
    """One line per label over rounds (or shots), with its 95% CI as a band, and the chance level."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, points in lines.items():
        if points:
            xs, ys, cis = zip(*points)
            ax.plot(xs, ys, marker="o", label=label)
            ax.fill_between(xs, [y - c for y, c in zip(ys, cis)], [y + c for y, c in zip(ys, cis)], alpha=0.2)
    if chance:
        ax.axhline(chance, color="grey", linestyle=":", label="chance")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _chance(results: dict) -> float | None:
    ways = results["run_config"].get("ways")
    return 1 / ways if ways else None


def plot_run(results: dict, out_dir: Path) -> None:
    roles = {s["name"]: s["role"] for s in results["sites"]}
    evaluated = [r for r in results["rounds"] if r["evaluate"]]
    if not evaluated:
        return
    heldout = sorted(n for n in evaluated[-1]["evaluate"] if roles.get(n) == "heldout")
    lines = {site: [(r["round"], r["evaluate"][site]["acc-after"], r["evaluate"][site]["acc-after-ci"])
                    for r in evaluated if site in r["evaluate"]] for site in heldout}
    _bands(lines, "few-shot query accuracy after adaptation", f"{results['algorithm']} on {results['scenario']}: held-out sites (95% CI)",
           out_dir / "heldout_accuracy.png", _chance(results))

    plt = _pyplot()
    final = evaluated[-1]["evaluate"]
    names = sorted(final, key=lambda n: (roles.get(n) != "heldout", n))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names)), 4))
    xs = range(len(names))
    for offset, metric, label in ((-0.2, "acc-before", "before adaptation"), (0.2, "acc-after", "after adaptation")):
        ax.bar([x + offset for x in xs], [final[n][metric] for n in names], width=0.4,
               yerr=[final[n].get(f"{metric}-ci", 0) for n in names], capsize=3, label=label)
    if _chance(results):
        ax.axhline(_chance(results), color="grey", linestyle=":", label="chance")
    ax.set_xticks(list(xs), [f"{n}\n({roles.get(n, '?')})" for n in names], fontsize=8)
    ax.set_ylabel("query accuracy")
    ax.set_title(f"{results['algorithm']}: per site, round {evaluated[-1]['round']} (95% CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "sites_final.png", dpi=120)
    plt.close(fig)


def compare(runs: dict[str, dict], out_dir: Path) -> list[dict]:
    """One table and one plot over runs of several algorithms on the same scenario and seeds."""
    rows = []
    for name, results in runs.items():
        final = results.get("final") or {}
        summary = final.get("summary", {})
        row = {"algorithm": name, "round": final.get("round"), "seconds": round(results.get("seconds", float("nan")), 1)}
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
    _bands({name: curve(results) for name, results in runs.items()}, "held-out few-shot accuracy (95% CI)",
           f"{first['scenario']}: methods compared", out_dir / "comparison.png", _chance(first))
    by_shots = {name: [(k, *s["heldout"]["acc-after"][:2]) for k, s in shot_summaries(results).items() if "heldout" in s]
                for name, results in runs.items()}
    if any(len(points) > 1 for points in by_shots.values()):
        _bands(by_shots, "held-out accuracy after adapting (95% CI)", f"{first['scenario']}: final meta-model, by shots",
               out_dir / "comparison_shots.png", _chance(first), xlabel="labelled examples per class (shots)")
    return rows


def shot_summaries(results: dict) -> dict[int, dict]:
    """Final held-out/training summaries by shots per class: the run's own and `eval-shots`."""
    final = results.get("final") or {}
    by_shots = {int(k): row["summary"] for k, row in results.get("shots", {}).items()}
    if "summary" in final and "shots" in results.get("run_config", {}):
        by_shots.setdefault(int(results["run_config"]["shots"]), final["summary"])
    return dict(sorted(by_shots.items()))


def comparison_markdown(rows: list[dict]) -> str:
    lines = ["| algorithm | held-out acc (after adapting) | held-out AUC | held-out acc (no adaptation) | training sites acc | seconds |",
             "| --- | --- | --- | --- | --- | --- |"]
    fmt = lambda row, key: "n/a" if math.isnan(row[key]) else f"{row[key]:.3f} ± {row[key + ' ci95']:.3f}"  # noqa: E731
    for row in rows:
        lines.append(f"| {row['algorithm']} | {fmt(row, 'heldout acc-after')} | {fmt(row, 'heldout auc-after')} | "
                     f"{fmt(row, 'heldout acc-before')} | {fmt(row, 'train-sites acc-after')} | {row['seconds']} |")
    shots = sorted({int(key.split()[2].removesuffix("-shot")) for row in rows for key in row
                    if key.startswith("heldout acc-after ") and key.endswith("-shot")})
    if len(shots) > 1:
        lines += ["", "Held-out accuracy after adapting, by labelled examples per class (the final meta-model):", "",
                  "| algorithm | " + " | ".join(f"{k}-shot" for k in shots) + " |", "| --- |" + " --- |" * len(shots)]
        cell = lambda row, k: fmt(row, f"heldout acc-after {k}-shot") if f"heldout acc-after {k}-shot" in row else "n/a"  # noqa: E731
        lines += [f"| {row['algorithm']} | " + " | ".join(cell(row, k) for k in shots) + " |" for row in rows]
    return "\n".join(lines) + "\n"

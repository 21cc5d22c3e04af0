"""Each method's accuracy at a new site weighted by that site's own case mix, beside the same recalls
with the classes weighed alike, and each method's difference to the reference (FedAvg + fine-tune).

The benchmark's episodes query up to `queries` images of every class a site has, so its accuracy
weighs the classes about alike. A hospital meets its classes as often as it has them: a method
that gains on its rarer classes and loses on its common ones leads on the benchmark and trails at
the hospital. This table says which, from the confusion counts kept with each method's scores
(per site) and the site's class counts in the split its episodes come from. Recalls pool every
episode of a seed; the classes weighed are those the episodes queried. Descriptive, like the
per-class tables: queries of one episode share its support set, so no interval is given; the
spread is over the training seeds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.files import write_json
from simulation.benchmark import Scores

REFERENCE = "fedavg+finetune"
MEAN = "mean of the sites"  # the site of rows that weigh every site alike, as the headline does


@dataclass(frozen=True)
class Weighed:
    """One method-seed's per-class recall at a site, averaged two ways (fractions)."""

    alike: float
    case_mix: float


def recalls(confusion: np.ndarray) -> np.ndarray:
    """Per true class, the share of its queries predicted right; NaN for a class never queried."""
    queried = confusion.sum(axis=1)
    return np.divide(np.diag(confusion), queried, out=np.full(len(queried), np.nan), where=queried > 0)


def weigh(confusion: np.ndarray, counts: np.ndarray) -> Weighed:
    """`confusion`'s recalls over the classes it queried: their plain mean, and their mean weighted
    by `counts` (the site's images per class). ValueError where a queried class has no image in
    `counts` (the counts are not those of the split the episodes came from)."""
    recall = recalls(confusion)
    queried = ~np.isnan(recall)
    counts = np.concatenate([counts, np.zeros(max(0, len(recall) - len(counts)))])[: len(recall)]
    if not queried.any():
        raise ValueError("no class was queried: these counts hold no episode")
    if (counts[queried] <= 0).any():
        missing = np.flatnonzero(queried & (counts <= 0)).tolist()
        raise ValueError(f"classes {missing} were queried but the site's counts hold none of them")
    weights = counts[queried] / counts[queried].sum()
    return Weighed(float(recall[queried].mean()), float(weights @ recall[queried]))


def rows(methods: dict[str, list[Scores]], counts: dict[str, np.ndarray], reference: str = REFERENCE) -> list[dict]:
    """Per (shots, site, method): the method's mean over seeds of its recalls weighed alike and by
    the site's case mix (`counts`: site -> images per class), and, where `reference` is scored, the
    difference of those means to it, with the differences seed against seed where both have as
    many seeds (each training seed's meta-model against the same seed's supervised model). Then a
    row per (shots, method) at MEAN, the mean of the sites' rows. Only the sites and shots every run
    of `methods` keeps per-site counts for (none, or all zero, in scores kept from before they were)."""
    out: list[dict] = []
    for shots in sorted({k for runs in methods.values() for r in runs for k in r.site_confusion}):
        sites = [
            s
            for s in sorted(counts)
            if all(np.sum(r.site_confusion.get(shots, {}).get(s, 0)) > 0 for rs in methods.values() for r in rs)
        ]
        by_method: dict[str, list[dict]] = {}
        for site in sites:
            weighed = {
                name: [weigh(r.site_confusion[shots][site], counts[site]) for r in runs]
                for name, runs in methods.items()
            }
            theirs = weighed.get(reference)
            for name, mine in weighed.items():
                alike, case_mix = float(np.mean([w.alike for w in mine])), float(np.mean([w.case_mix for w in mine]))
                row: dict = {"shots": shots, "site": site, "method": name, "alike": alike, "case_mix": case_mix}
                if theirs is not None and name != reference:
                    row["diff_alike"] = alike - float(np.mean([t.alike for t in theirs]))
                    row["diff_case_mix"] = case_mix - float(np.mean([t.case_mix for t in theirs]))
                    if len(mine) == len(theirs):
                        row["diff_case_mix_seeds"] = [m.case_mix - t.case_mix for m, t in zip(mine, theirs)]
                out.append(row)
                by_method.setdefault(name, []).append(row)
        if len(sites) > 1:
            for name, site_rows in by_method.items():
                mean = {"shots": shots, "site": MEAN, "method": name}
                for key in ("alike", "case_mix", "diff_alike", "diff_case_mix"):
                    if key in site_rows[0]:
                        mean[key] = float(np.mean([r[key] for r in site_rows]))
                out.append(mean)
    return out


def markdown(table: list[dict], title: str, reference: str = REFERENCE) -> str:
    """Per shots, one table: each site's and the sites' mean rows, in percent and points."""
    lines = [
        f"# Case mix: {title}",
        "",
        "Each method's per-class recall (queries pooled over a seed's episodes) averaged two ways: "
        "with the queried classes weighed alike (near the benchmark's accuracy, which queries up "
        "to the same number of images of each class) and weighted by the site's own class counts "
        "in the split its episodes come from (what a site counting every case would see). "
        f"Differences are to {reference}'s mean over its seeds, and seed against seed where a method "
        "has as many seeds; no interval (the queries of an episode share its support set). The mean "
        "of the sites weighs each site alike, as the headline does.",
        "",
    ]
    for shots in sorted({r["shots"] for r in table}):
        lines += [
            f"## {shots}-shot",
            "",
            f"| site | method | classes alike % | case mix % | − {reference}: alike | case mix | case mix, per seed |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in (r for r in table if r["shots"] == shots):
            diffs = [f"{100 * r[k]:+.1f}" if k in r else "" for k in ("diff_alike", "diff_case_mix")]
            seeds = ", ".join(f"{100 * d:+.1f}" for d in r.get("diff_case_mix_seeds", []))
            lines.append(
                f"| {r['site']} | {r['method']} | {100 * r['alike']:.1f} | {100 * r['case_mix']:.1f} | "
                + " | ".join(diffs)
                + f" | {seeds} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_case_mix(
    methods: dict[str, list[Scores]], counts: dict[str, np.ndarray], out_dir: Path, stem: str, title: str
) -> Path | None:
    """`out_dir`/case-mix-`stem`.md and .json (the rows); None (nothing written) where no run keeps
    counts per site (scores kept from before they were)."""
    table = rows(methods, counts)
    if not table:
        return None
    out = Path(out_dir) / f"case-mix-{stem}.md"
    out.write_text(markdown(table, title), encoding="utf-8")
    write_json(out.with_suffix(".json"), table)
    return out

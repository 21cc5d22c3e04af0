"""Which classes each method gets right, and what it mistakes them for: per-class recall and the
most frequent confusions, pooled over every episode and training seed of a benchmark run (from
the confusion counts `simulation.benchmark` keeps with each method's scores).

These are descriptive counts, not tests: queries of one episode share its support set, so no
interval is given. They answer "why is this accuracy low", e.g. two look-alike classes taking
each other's queries, which the headline's one number per method cannot show. Where the scores
keep their counts per site (scores made since 2026-12-04), each site's recall follows too: two new
hospitals hold different classes, so pooled counts cannot say which classes a method loses at one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.files import write_json
from simulation.benchmark import Scores

TOP_MISTAKES = 3  # per method and shots: the largest off-diagonal shares


ALL = "all"  # the site of rows pooled over every site


def pooled(runs: list[Scores], shots: int, site: str = ALL) -> np.ndarray | None:
    """A method's confusion counts summed over its seeds, over every site or at one `site`; None
    where a run has none (scores kept from before confusion, or confusion per site, was recorded:
    rescore them)."""
    if site == ALL:
        if any(shots not in r.confusion for r in runs):
            return None
        return np.sum([r.confusion[shots] for r in runs], axis=0)
    if any(site not in r.site_confusion.get(shots, {}) for r in runs):
        return None
    return np.sum([r.site_confusion[shots][site] for r in runs], axis=0)


def sites_of(methods: dict[str, list[Scores]], shots: int) -> list[str]:
    """The sites every run of every method has confusion counts for at `shots` (none in scores
    kept from before they were kept per site)."""
    runs = [r for rs in methods.values() for r in rs]
    held = [set(r.site_confusion.get(shots, {})) for r in runs]
    return sorted(set.intersection(*held)) if held else []


def per_class_rows(methods: dict[str, list[Scores]], names: tuple[str, ...]) -> list[dict]:
    """One row per (shots, method, site, true class with queries): its recall, its query count and
    the class it is most often mistaken for (with that share of its queries); site "all" pools every
    site, then one row set per site where the scores keep them. `names`: the label space's class
    names (index = label)."""
    rows = []
    for name, runs in methods.items():
        for shots in sorted(runs[0].acc):
            for site in [ALL, *sites_of({name: runs}, shots)]:
                counts = pooled(runs, shots, site)
                if counts is not None:
                    rows += _rows(counts, names, {"shots": shots, "method": name, "site": site})
    return rows


def _rows(counts: np.ndarray, names: tuple[str, ...], where: dict) -> list[dict]:
    shares = _mistake_shares(counts)
    rows = []
    for true in np.flatnonzero(counts.sum(axis=1)):
        other = int(shares[true].argmax())
        rows.append(
            {
                **where,
                "class": _name(names, int(true)),
                "queries": int(counts[true].sum()),
                "recall": float(counts[true, true] / counts[true].sum()),
                "mistaken_for": _name(names, other) if shares[true, other] else "",
                "mistaken_share": float(shares[true, other]),
            }
        )
    return rows


def _mistake_shares(counts: np.ndarray) -> np.ndarray:
    """Each off-diagonal count as a share of its true class's queries (the diagonal zeroed)."""
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    np.fill_diagonal(shares, 0.0)
    return shares


def _name(names: tuple[str, ...], label: int) -> str:
    """A class's name as tables show it: without a parenthesized gloss (BloodMNIST's "immature
    granulocytes(myelocytes, metamyelocytes and promyelocytes)" is "immature granulocytes")."""
    return names[label].split("(")[0].strip() if label < len(names) else str(label)


def top_mistakes(counts: np.ndarray, names: tuple[str, ...], top: int = TOP_MISTAKES) -> list[tuple[str, str, float]]:
    """The `top` largest confusions: (true class, predicted class, share of the true class's queries)."""
    shares = _mistake_shares(counts)
    order = np.argsort(shares, axis=None)[::-1][:top]
    cells = [np.unravel_index(i, shares.shape) for i in order]
    return [(_name(names, int(t)), _name(names, int(p)), float(shares[t, p])) for t, p in cells if shares[t, p] > 0]


def markdown(methods: dict[str, list[Scores]], names: tuple[str, ...], title: str) -> str:
    """Per shots: a table of each class's recall (%) by method, then each method's most frequent
    mistakes. Methods without confusion counts are listed as such."""
    lines = [f"# Per-class results: {title}", ""]
    missing = [m for m, runs in methods.items() if any(not r.confusion for r in runs)]
    if missing:
        lines += [
            f"No confusion counts for {', '.join(missing)} (scores kept from before they existed: "
            "`fedmeta benchmark evaluate --rescore`).",
            "",
        ]
    have = {m: runs for m, runs in methods.items() if m not in missing}
    if not have:
        return "\n".join(lines)
    for shots in sorted(next(iter(have.values()))[0].acc):
        counts: dict[str, np.ndarray] = {}
        for method, runs in have.items():
            summed = pooled(runs, shots)
            if summed is not None:
                counts[method] = summed
        lines += [f"## {shots}-shot: recall % per true class (queries pooled over episodes and seeds)", ""]
        lines += _recall_table(counts, names)
        lines += ["", f"{shots}-shot: the most frequent mistakes (true → predicted, share of its queries)", ""]
        lines += ["| method | " + " | ".join(f"mistake {i + 1}" for i in range(TOP_MISTAKES)) + " |"]
        lines += ["| --- |" + " --- |" * TOP_MISTAKES]
        for method, c in counts.items():
            cells = [f"{t} → {p} {share:.0%}" for t, p, share in top_mistakes(c, names)]
            lines.append(f"| {method} | " + " | ".join(cells + [""] * (TOP_MISTAKES - len(cells))) + " |")
        lines.append("")
        lines += _site_tables(have, names, shots)
    return "\n".join(lines)


def _site_tables(methods: dict[str, list[Scores]], names: tuple[str, ...], shots: int) -> list[str]:
    """Per site, its own recall table, for the methods whose scores keep counts per site (the
    others are named); none for one site, whose pooled table is its own."""
    per_site = {m: runs for m, runs in methods.items() if sites_of({m: runs}, shots)}
    sites = sites_of(per_site, shots) if per_site else []
    if len(sites) < 2:
        return []
    lines = []
    if len(per_site) < len(methods):
        lacking = ", ".join(m for m in methods if m not in per_site)
        lines += [
            f"{shots}-shot per site: no counts per site for {lacking} (scores kept from before they were kept).",
            "",
        ]
    for site in sites:
        at_site = {method: pooled(runs, shots, site) for method, runs in per_site.items()}
        lines += [f"### {shots}-shot at {site}: recall % per true class (its episodes only)", ""]
        lines += _recall_table({m: c for m, c in at_site.items() if c is not None}, names)
        lines.append("")
    return lines


def _recall_table(counts: dict[str, np.ndarray], names: tuple[str, ...]) -> list[str]:
    """A markdown table: a row per true class with queries, its query count and each method's recall."""
    first = next(iter(counts.values()))
    lines = ["| class | queries | " + " | ".join(counts) + " |", "| --- | --- |" + " --- |" * len(counts)]
    for label in np.flatnonzero(first.sum(axis=1)):  # every method met the same queries
        cells = [_recall(c, int(label)) for c in counts.values()]
        lines.append(f"| {_name(names, int(label))} | {int(first[label].sum())} | " + " | ".join(cells) + " |")
    return lines


def _recall(counts: np.ndarray, label: int) -> str:
    total = counts[label].sum()
    return f"{100 * counts[label, label] / total:.1f}" if total else ""


def write_per_class(
    methods: dict[str, list[Scores]], names: tuple[str, ...], out_dir: Path, stem: str, title: str
) -> Path | None:
    """`out_dir`/per-class-`stem`.md and .json (the rows); returns the markdown's path, or None
    (nothing written) when no method has confusion counts (every score kept from before them)."""
    if not any(r.confusion for runs in methods.values() for r in runs):
        return None
    out = Path(out_dir) / f"per-class-{stem}.md"
    out.write_text(markdown(methods, names, title), encoding="utf-8")
    write_json(out.with_suffix(".json"), per_class_rows(methods, names))
    return out

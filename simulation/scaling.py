"""How much of a round is framework, and how rounds scale with the number of sites.

For each training round of a simulation: wall time (coordinator sends the meta-parameters ->
last meta-gradient aggregated), each site's compute (its `meta_gradient` call) and the ideal
round time had the framework cost nothing: the slowest site, or the total compute spread over
the sites that can run at once (one per `cpus-per-site` CPUs), whichever is longer.
overhead = (wall - ideal) / ideal. Bytes per site and round are compared with the model size.
"""

from __future__ import annotations

import math
import os
import statistics

SYNTHETIC = """name = "synthetic-{sites}"
description = "{sites} synthetic training sites (scaling benchmark)"
image-size = {image_size}
[episodes]
ways = {ways}
shots = 1
queries = 2
[[sites]]
name = "site"
count = {sites}
source = "synthetic"
num-classes = {ways}
per-class = 4
test-per-class = 3
"""


def synthetic_scenario(sites: int, image_size: int = 28, ways: int = 5) -> str:
    """A scenario TOML with `sites` small synthetic training sites."""
    return SYNTHETIC.format(sites=sites, image_size=image_size, ways=ways)


def round_costs(results: dict, cpus_per_site: float = 1.0, cpus: int | None = None) -> list[dict]:
    """Per training round: wall, site compute (slowest, total), ideal time, overhead, bytes."""
    parallel = max(1, math.floor((cpus or os.cpu_count() or 1) / cpus_per_site))
    rows = []
    for row in results["rounds"]:
        compute = [m["compute-s"] for m in row["train"].values() if "compute-s" in m]
        if not compute:
            continue
        ideal = max(max(compute), sum(compute) / min(parallel, len(compute)))
        rows.append(
            {
                "round": row["round"],
                "sites": len(compute),
                "wall_s": row["seconds"],
                "slowest_site_s": max(compute),
                "total_compute_s": sum(compute),
                "ideal_s": ideal,
                "overhead": (row["seconds"] - ideal) / ideal,
                "bytes_up_per_site": row["bytes"]["up"] / len(compute),
                "bytes_down_per_site": row["bytes"]["down"] / len(compute),
            }
        )
    return rows


def summarize_costs(rows: list[dict], model_bytes: int, skip_first: bool = True) -> dict:
    """Medians over rounds (the first round also starts the actors and is left out)."""
    use = rows[1:] if skip_first and len(rows) > 1 else rows
    median = lambda key: statistics.median(r[key] for r in use)
    return {
        "sites": use[0]["sites"],
        "rounds": len(use),
        "wall_s": median("wall_s"),
        "ideal_s": median("ideal_s"),
        "slowest_site_s": median("slowest_site_s"),
        "overhead": median("overhead"),
        "bytes_up_per_site": median("bytes_up_per_site"),
        "bytes_down_per_site": median("bytes_down_per_site"),
        "model_bytes_fp32": model_bytes,
        "up_ratio_vs_fp32_model": median("bytes_up_per_site") / model_bytes,
        "down_ratio_vs_fp32_model": median("bytes_down_per_site") / model_bytes,
    }

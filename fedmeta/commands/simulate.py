"""`fedmeta simulate`: a whole federation on one machine (or a Ray cluster), with a report."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedmeta.errors import fail, report


def simulate(
    scenario: str = typer.Option("synthetic", help="Built-in scenario (fedmeta scenario list) or a scenario .toml."),
    algorithm: str = typer.Option(
        "maml",
        help="maml, fomaml, meta-sgd, anil, protonet, fedavg; or a baseline: centralized / local "
        "(meta-training maml), or centralized-<algorithm> / local-<algorithm>.",
    ),
    compare: str = typer.Option(
        "",
        help="Comma-separated methods to run on identical scenario and seeds, "
        "e.g. maml,protonet,fedavg,centralized-maml,centralized-protonet,local.",
    ),
    shots: str = typer.Option(
        "",
        help="With --compare including fedavg: score every trained model on the same fixed held-out episodes "
        "at these shots (e.g. 1,5), with paired 95% CIs against FedAvg + fine-tune and a forest plot.",
    ),
    episodes: int = typer.Option(600, min=1, help="With --shots: held-out episodes per shots."),
    rounds: int = typer.Option(
        None, help="Federated rounds (default: the scenario's recommendation, else num-server-rounds)."
    ),
    tasks_per_round: int = typer.Option(
        None, help="Tasks per site and round (default: the scenario's, else tasks-per-round)."
    ),
    eval_every: int = typer.Option(None, help="Evaluate every E rounds (default: the scenario's, else eval-every)."),
    seed: int = typer.Option(0, help="Run seed (tasks, sampling, initialization)."),
    data_dir: Path = typer.Option(None, "--data-dir", envvar="FEDMETA_DATA_DIR", help="MedMNIST files / site folders."),
    out: Path = typer.Option(None, "--out", help="Output directory (default runs/SCENARIO-TIME)."),
    run_config: str = typer.Option(
        "", "--run-config", help='Any run-config keys, flwr style: "inner-lr=0.1 model-width=64".'
    ),
    cpus_per_site: float = typer.Option(1.0, help="CPUs per virtual site (Ray resources)."),
    gpus_per_site: float = typer.Option(0.0, help="GPU fraction per virtual site (0.25: four sites share a GPU)."),
    ray_address: str = typer.Option("", help='Use an existing Ray cluster ("auto" or ip:port) instead of a local one.'),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    force_resume: bool = typer.Option(False, "--force-resume", help="Resume although training settings changed."),
    verbose: bool = typer.Option(False, help="Show Flower's and Ray's logs on the console."),
) -> None:
    """Run federated meta-training with N virtual sites; write results.json, metrics.csv and plots."""
    from common.export import load_meta_model
    from common.runconfig import parse_overrides, parse_run_config
    from common.scenario import data_problems, load_scenario
    from server.tracking import check_tracking
    from simulation.baselines import split_method
    from simulation.compare import compare as write_comparison
    from simulation.compare import constant_by_construction
    from simulation.run import Resources

    console = Console()
    try:
        sc = load_scenario(scenario)
        methods = [m.strip() for m in compare.split(",") if m.strip()] or [algorithm]
        base = {**sc.run_config, "ways": sc.episode.ways, "shots": sc.episode.shots, "queries": sc.episode.queries}
        given = {"num-server-rounds": rounds, "tasks-per-round": tasks_per_round, "eval-every": eval_every}
        values = {
            **base,
            **{k: v for k, v in given.items() if v is not None},
            **parse_overrides(run_config),
            "scenario": scenario,
            "seed": seed,
            **({"data-dir": str(data_dir)} if data_dir else {}),
        }
        for key in ("init-model", "tracking-dir"):  # the coordinator may run elsewhere (Ray, another directory)
            if values.get(key):
                values[key] = str(Path(str(values[key])).resolve())
        if (resume or force_resume) and out is None:
            raise ValueError("--resume continues a run: give its directory with --out")
        values.update({"resume": resume or force_resume, "force-resume": force_resume})
        out = out or Path("runs") / f"{sc.name}-{datetime.now():%Y%m%d-%H%M%S}"
        # a bare `centralized` / `local` meta-trains --algorithm (maml when that is itself a baseline)
        learner = "maml" if split_method(algorithm)[0] else algorithm
        configs = {
            m: parse_run_config(
                {
                    **values,
                    "algorithm": split_method(m, learner)[1],
                    "out-dir": str(out / m if len(methods) > 1 else out),
                    **(
                        {"tracking-dir": str(Path(str(values["tracking-dir"])) / m)}
                        if values.get("tracking-dir") and len(methods) > 1
                        else {}
                    ),
                }
            )
            for m in methods
        }
        for cfg in configs.values():  # a warm start's model is read before anything starts
            if cfg.train.init_model:
                load_meta_model(Path(cfg.train.init_model))
            check_tracking(cfg.train.tracking)
        if not ray_address:  # on a cluster the files are the workers' to have
            problems = data_problems(sc, data_dir)
            if problems:
                raise FileNotFoundError("\n".join(problems))
        resources = Resources(cpus_per_site, gpus_per_site, ray_address)
        resources.ray_init_args()  # this machine can host a site: checked before anything starts
        protocol = _paired_protocol(shots, episodes, methods, scenario, data_dir, values) if shots else None
    except (ValueError, FileNotFoundError) as error:
        fail(error)

    runs = {}
    for method, cfg in configs.items():
        console.print(
            f"[bold]{method}[/bold] on [bold]{sc.name}[/bold]: {len(sc.training_sites)} training + "
            + (f"{len(sc.validation_sites)} validation + " if sc.validation_sites else "")
            + f"{len(sc.heldout_sites)} held-out sites, {cfg.train.num_server_rounds} rounds -> {cfg.train.out_dir}"
        )
        try:
            runs[method] = _run_with_progress(method, cfg, resources, verbose, console)
        except Exception as error:  # noqa: BLE001 -- report which method failed and where its log is
            report(f"{method} failed: {error}")
            _exit(1)
        _print_final(method, runs[method], console)
    if len(runs) > 1:
        rows = write_comparison(runs, out)
        table = Table(title=f"{sc.name}: held-out sites, final round (mean ± 95% CI over episodes)")
        before = not constant_by_construction(rows, "heldout acc-before")  # chance for all: says nothing
        columns = ["method", "acc after adapting", "AUC", *(["acc without adapting"] if before else []), "seconds"]
        for column in columns:
            table.add_column(column)
        fmt = lambda row, key: f"{row[key]:.3f} ± {row[key + ' ci95']:.3f}"
        for row in rows:
            table.add_row(
                row["algorithm"],
                fmt(row, "heldout acc-after"),
                fmt(row, "heldout auc-after"),
                *([fmt(row, "heldout acc-before")] if before else []),
                str(row["seconds"]),
            )
        console.print(table)
        console.print(f"comparison: {out / 'comparison.md'}, {out / 'comparison.csv'}, {out / 'comparison.png'}")
    if protocol is not None:
        _paired(protocol, configs, out, sc, console)


def _paired_protocol(shots: str, episodes: int, methods: list[str], scenario: str, data_dir, values: dict):
    """The fixed held-out episodes `--shots` scores on; refused before any training if it cannot run."""
    from simulation.baselines import split_method
    from simulation.benchmark import Protocol, parse_shots

    if "fedavg" not in methods:
        raise ValueError("--shots compares every method with FedAvg + fine-tune: add fedavg to --compare")
    if all(split_method(m)[0] == "local" for m in methods if m != "fedavg"):
        raise ValueError("--shots scores the trained models: compare at least one model besides fedavg")
    counts = parse_shots(shots)
    seed = int(values.get("eval-seed", 0))
    queries, ways = int(values.get("queries", 15)), int(values.get("ways", 0))
    return Protocol(scenario, str(data_dir or ""), counts, queries, episodes, seed, ways=ways)


def _paired(protocol, configs: dict, out: Path, sc, console: Console) -> None:
    from simulation.baselines import split_method
    from simulation.compare import paired_comparison

    models = {
        m: Path(cfg.train.out_dir) / "model"
        for m, cfg in configs.items()
        if m != "fedavg" and split_method(m)[0] != "local"
    }
    console.print(f"scoring {', '.join(models)} and fedavg + fine-tune on the same held-out episodes ...")
    try:
        paired_comparison(
            models,
            Path(configs["fedavg"].train.out_dir) / "model",
            protocol,
            out,
            None if sc.tasks == "hospital" else 1 / (protocol.ways or sc.episode.ways),
        )
    except ValueError as error:  # e.g. a held-out site too small for the shots asked for
        fail(error)
    console.print((out / "comparison-paired.md").read_text(), highlight=False)
    console.print(f"paired comparison: {out / 'comparison-paired.md'}, {out / 'comparison-forest.png'}")


def _exit(code: int) -> None:
    """Exit now, even if a failed simulation left Flower's ServerApp thread waiting for sites
    (it is not a daemon thread, and would hold the process until round-timeout)."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


def _run_with_progress(method: str, cfg, resources, verbose: bool, console: Console) -> dict:
    from server.report import RESULTS
    from simulation.baselines import run_baseline, split_method
    from simulation.run import simulate as run_simulation

    results_path = Path(cfg.train.out_dir) / RESULTS
    # an earlier run's results (a run refused, or resumed, in the same directory) are not this run's progress
    earlier = results_path.stat().st_mtime_ns if results_path.exists() else None
    done = threading.Event()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("round {task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(method, total=cfg.train.num_server_rounds, status="starting")

        def watch() -> None:
            while not done.wait(1.0):
                try:
                    if results_path.stat().st_mtime_ns == earlier:
                        continue
                    rows = json.loads(results_path.read_text())["rounds"]
                except (OSError, ValueError, KeyError):
                    continue
                status = ""
                evaluated = [r for r in rows if r.get("summary", {}).get("heldout")]
                if evaluated:
                    mean, half, _ = evaluated[-1]["summary"]["heldout"]["acc-after"]
                    status = f"held-out acc {mean:.3f} ± {half:.3f} (round {evaluated[-1]['round']})"
                progress.update(task, completed=len(rows), status=status)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        start = time.monotonic()
        try:
            kind = split_method(method, cfg.meta.algorithm)[0]
            results = run_baseline(kind, cfg) if kind else run_simulation(cfg, resources, verbose)
        finally:
            done.set()
            watcher.join()
        progress.update(task, completed=cfg.train.num_server_rounds, status=f"done in {time.monotonic() - start:.0f} s")
    return results


def _print_final(method: str, results: dict, console: Console) -> None:
    final = results["final"]
    roles = {s["name"]: s["role"] for s in results["sites"]}
    episodes = int(next(iter(final["evaluate"].values()))["num-tasks"])
    table = Table(title=f"{method}: round {final['round']}, per site (mean ± 95% CI over {episodes} episodes)")
    for column in ("site", "role", "acc after adapting", "AUC", "acc without adapting"):
        table.add_column(column)
    for site, m in sorted(final["evaluate"].items(), key=lambda kv: (roles.get(kv[0]) != "heldout", kv[0])):
        table.add_row(
            site,
            roles.get(site, "?"),
            f"{m['acc-after']:.3f} ± {m['acc-after-ci']:.3f}",
            f"{m['auc-after']:.3f} ± {m['auc-after-ci']:.3f}",
            f"{m['acc-before']:.3f} ± {m['acc-before-ci']:.3f}",
        )
    console.print(table)
    out = Path(results["run_config"]["out-dir"])
    console.print(
        f"results: {out / 'results.json'}, {out / 'metrics.csv'}, "
        f"{out / 'heldout_accuracy.png'}, {out / 'sites_final.png'}"
    )

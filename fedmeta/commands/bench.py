"""`fedmeta bench`: speed of the meta-learning core against baselines, and of the federation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from fedmeta.errors import fail

bench_app = typer.Typer(
    help="Measure the speed of the meta-learning core and of a simulated federation.", no_args_is_help=True
)


@bench_app.command("maml")
def bench_maml(
    tasks: int = typer.Option(8, help="Tasks in the meta-batch."),
    ways: int = typer.Option(5, help="Classes per task (N)."),
    shots: int = typer.Option(5, help="Support examples per class (K)."),
    queries: int = typer.Option(15, help="Query examples per class (Q)."),
    inner_steps: int = typer.Option(5, help="Inner-loop SGD steps."),
    inner_lr: float = typer.Option(0.4, help="Inner-loop learning rate."),
    width: int = typer.Option(64, help="Channels of each block of the backbone."),
    image_size: int = typer.Option(28, help="Side of the square 1-channel input."),
    model: str = typer.Option("conv", help="Backbone: conv (Conv-4) or resnet (residual units)."),
    repeats: int = typer.Option(5, min=1, help="Timed repetitions of each method (medians are reported)."),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu, cuda, cuda:1."),
    execution: str = typer.Option("auto", help="Task execution: auto, loop, threads or vmap."),
    seed: int = typer.Option(0, help="Seed for weights and tasks."),
    tf32: bool = typer.Option(
        False, help="CUDA: allow TF32 convolutions and matmuls (faster; gradients then agree to about 1e-3)."
    ),
    kernels: str = typer.Option(
        "auto", help="CPU norm, max-pool and ReLU: native (one fused C function), torch, or auto."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on the last line."),
) -> None:
    """Time one second-order MAML meta-batch: fedmeta vs `higher` vs a plain autograd loop."""
    import torch

    from common.bench import BenchConfig, run_maml_bench

    if device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {device} requested but this torch build sees no CUDA device; use --device cpu")
    try:
        cfg = BenchConfig(
            tasks,
            ways,
            shots,
            queries,
            inner_steps,
            inner_lr,
            width,
            image_size,
            repeats,
            device,
            execution,
            seed,
            tf32,
            kernels,
            model,
        )
    except ValueError as error:
        fail(error)
    console = Console(stderr=as_json)
    result = run_maml_bench(cfg, progress=lambda line: console.print(f"[dim]{line}[/dim]"))
    table = Table(
        title=f"Second-order MAML meta-batch on {result.device} ({result.threads} threads, "
        f"fedmeta execution: {result.execution}, kernels: {result.kernels})"
    )
    for column in ("method", "median s", "fedmeta speedup", "peak mem MB", "grad error vs float64"):
        table.add_column(column, justify="right" if column != "method" else "left")
    for name, secs, ratio in (
        ("fedmeta", result.fedmeta_s, 1.0),
        ("higher", result.higher_s, result.speedup_vs_higher),
        ("autograd loop", result.autograd_s, result.speedup_vs_autograd),
    ):
        mem = result.peak_mem_mb[name.split()[0]]
        err = result.grad_error_vs_float64[name.split()[0]]
        table.add_row(name, f"{secs:.3f}", f"{ratio:.2f}x", "n/a" if mem is None else f"{mem:.0f}", f"{err:.1e}")
    console.print(table)
    console.print(
        f"gradient check: largest relative difference from the float64 meta-gradient (higher, float64): "
        f"{result.max_rel_grad_diff:.2e}; fedmeta vs higher, both float32: {result.fedmeta_vs_higher_float32:.2e}"
    )
    if as_json:
        print(json.dumps(result.to_dict()))


@bench_app.command("federation")
def bench_federation(
    sites: str = typer.Option("10", help="Comma-separated numbers of simulated training sites, e.g. 10,30,100."),
    rounds: int = typer.Option(4, min=2, help="Rounds per size (the first is left out of the medians)."),
    width: int = typer.Option(16, help="Conv-4 width (small model)."),
    tasks_per_round: int = typer.Option(2, help="Tasks per site and round."),
    transport_dtype: str = typer.Option("float32", help="float32 or float16 on the wire."),
    cpus_per_site: float = typer.Option(1.0, help="CPUs per virtual site."),
    out: Path = typer.Option(Path("runs/bench-federation"), help="Where runs and bench.json go."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on the last line."),
) -> None:
    """Framework overhead per round and time per round vs number of sites, on Flower's simulation engine."""
    from common.runconfig import parse_run_config
    from simulation.run import Resources, simulate
    from simulation.scaling import round_costs, summarize_costs, synthetic_scenario

    console = Console(stderr=as_json)
    summaries = []
    for count in [int(s) for s in sites.split(",")]:
        run_dir = out / f"sites-{count}"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "scenario.toml").write_text(synthetic_scenario(count))
        cfg = parse_run_config(
            {
                "scenario": str(run_dir / "scenario.toml"),
                "out-dir": str(run_dir),
                "num-server-rounds": rounds,
                "tasks-per-round": tasks_per_round,
                "eval-every": rounds,
                "eval-tasks": 1,
                "model-width": width,
                "model-groups": min(8, width),
                "inner-steps": 2,
                "ways": 5,
                "shots": 1,
                "queries": 2,
                "transport-dtype": transport_dtype,
                "min-sites": count,
                "execution": "loop",
            }
        )
        console.print(f"[dim]{count} sites, {rounds} rounds...[/dim]")
        results = simulate(cfg, Resources(cpus_per_site=cpus_per_site))
        model_bytes = _model_bytes(cfg)
        summaries.append(summarize_costs(round_costs(results, cpus_per_site), model_bytes))
    table = Table(
        title=f"Simulated federation, width-{width} Conv-4, {tasks_per_round} tasks/site/round, "
        f"{transport_dtype} on the wire"
    )
    for column in ("sites", "round s", "ideal s", "overhead", "up bytes/site", "vs fp32 model", "down vs fp32 model"):
        table.add_column(column, justify="right")
    for s in summaries:
        table.add_row(
            str(s["sites"]),
            f"{s['wall_s']:.2f}",
            f"{s['ideal_s']:.2f}",
            f"{100 * s['overhead']:.0f}%",
            f"{s['bytes_up_per_site']:.0f}",
            f"{s['up_ratio_vs_fp32_model']:.3f}",
            f"{s['down_ratio_vs_fp32_model']:.3f}",
        )
    console.print(table)
    (out / "bench.json").write_text(json.dumps(summaries, indent=1))
    if as_json:
        print(json.dumps(summaries))


def _model_bytes(cfg) -> int:
    from server.app import meta_template

    return sum(v.numel() * 4 for v in meta_template(cfg).values())


@bench_app.command("sanity")
def bench_sanity(
    dataset: str = typer.Option("pneumoniamnist,breastmnist", help="Comma-separated MedMNIST flags."),
    data_dir: Path = typer.Option(
        None, "--data-dir", envvar="FEDMETA_DATA_DIR", help="Directory with the MedMNIST .npz files."
    ),
    sites: int = typer.Option(None, min=1, help="Virtual sites the train split is dealt to, IID (default 4)."),
    rounds: int = typer.Option(
        None, min=1, help="FedAvg rounds (default per dataset: simulation.sanity.DEFAULT_ROUNDS)."
    ),
    local_epochs: int = typer.Option(None, min=1, help="Epochs each site trains over its shard per round (default 1)."),
    batch_size: int = typer.Option(None, min=1, help="Minibatch size of local training (default 32)."),
    lr: float = typer.Option(None, help="Local learning rate (default 1e-3)."),
    optimizer: str = typer.Option(None, help="Local optimizer, fresh each round: adam (default) or sgd."),
    width: int = typer.Option(None, min=1, help="Channels of each Conv-4 block (default 32)."),
    seed: int = typer.Option(0, help="Seed for the split, the initialization and the minibatches."),
    device: str = typer.Option("cpu", help="Torch device: cpu, cuda, cuda:N or auto."),
    out: Path = typer.Option(Path("runs/sanity"), help="sanity.json goes to OUT/DATASET/."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list of the results on the last line."),
) -> None:
    """Full-data FedAvg (supervised, no episodes, in-process: no Flower) beside the MedMNIST v2 paper's ResNet-18."""
    from common.data.medmnist import MedMNISTFileError
    from simulation.sanity import SanityConfig, default_rounds, run_sanity

    console = Console(stderr=as_json)
    given: dict[str, Any] = {
        "sites": sites,
        "local_epochs": local_epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "width": width,
    }
    given = {k: v for k, v in given.items() if v is not None}
    try:
        if data_dir is None:
            raise ValueError(
                "no data directory: give --data-dir (or set FEDMETA_DATA_DIR) "
                "to the directory holding the MedMNIST .npz files"
            )
        configs = [
            SanityConfig(
                dataset=flag,
                data_dir=data_dir,
                rounds=rounds or default_rounds(flag),
                seed=seed,
                device=device,
                out_dir=out / flag,
                **given,
            )
            for flag in (f.strip() for f in dataset.split(","))
            if flag
        ]
        if not configs:
            raise ValueError(
                f"--dataset {dataset!r} names no dataset; give MedMNIST flags such as pneumoniamnist,breastmnist"
            )
        results = []
        for cfg in configs:
            console.print(
                f"[dim]{cfg.dataset}: {cfg.sites} sites, "
                f"{cfg.rounds} rounds of {cfg.local_epochs} local epoch(s)...[/dim]"
            )
            results.append(run_sanity(cfg))
    except (ValueError, MedMNISTFileError) as error:
        fail(error)
    cfg = configs[0]
    table = Table(
        title=f"Full-data FedAvg, {cfg.sites} IID sites, width-{cfg.width} Conv-4, model of the best validation round",
        caption="test split; majority: majority-class rate; paper: ResNet-18 (28 px), MedMNIST v2 Table 3",
    )
    for column in ("dataset", "rounds", "best", "test acc", "test AUC", "majority", "paper acc", "s"):
        table.add_column(column, justify="left" if column == "dataset" else "right", no_wrap=column == "dataset")
    for r in results:
        paper = r["paper_resnet18_28_acc"]
        table.add_row(
            r["dataset"],
            str(len(r["rounds"])),
            str(r["best_round"]),
            f"{r['test_acc']:.3f}",
            f"{r['test_auc']:.3f}",
            f"{r['test_majority_acc']:.3f}",
            "n/a" if paper is None else f"{paper:.3f}",
            f"{r['seconds']:.0f}",
        )
    console.print(table)
    if as_json:
        print(json.dumps(results))

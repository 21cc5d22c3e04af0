"""`fedmeta bench`: speed of the meta-learning core against baselines, in one process."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

bench_app = typer.Typer(help="Measure the speed of fedmeta's meta-learning core.", no_args_is_help=True)


@bench_app.command("maml")
def bench_maml(
    tasks: int = typer.Option(8, help="Tasks in the meta-batch."),
    ways: int = typer.Option(5, help="Classes per task (N)."),
    shots: int = typer.Option(5, help="Support examples per class (K)."),
    queries: int = typer.Option(15, help="Query examples per class (Q)."),
    inner_steps: int = typer.Option(5, help="Inner-loop SGD steps."),
    inner_lr: float = typer.Option(0.4, help="Inner-loop learning rate."),
    width: int = typer.Option(64, help="Channels of each Conv-4 block."),
    image_size: int = typer.Option(28, help="Side of the square 1-channel input."),
    repeats: int = typer.Option(5, min=1, help="Timed repetitions of each method (medians are reported)."),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu, cuda, cuda:1."),
    execution: str = typer.Option("auto", help="Task execution: auto, loop, threads or vmap."),
    seed: int = typer.Option(0, help="Seed for weights and tasks."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on the last line."),
) -> None:
    """Time one second-order MAML meta-batch: fedmeta vs `higher` vs a plain autograd loop."""
    import torch

    from common.bench import BenchConfig, run_maml_bench

    if device.startswith("cuda") and not torch.cuda.is_available():
        typer.echo(f"error: --device {device} requested but this torch build sees no CUDA device; use --device cpu", err=True)
        raise typer.Exit(2)
    cfg = BenchConfig(tasks, ways, shots, queries, inner_steps, inner_lr, width, image_size, repeats, device, execution, seed)
    console = Console(stderr=as_json)
    result = run_maml_bench(cfg, progress=lambda line: console.print(f"[dim]{line}[/dim]"))
    table = Table(title=f"Second-order MAML meta-batch on {result.device} ({result.threads} threads, fedmeta execution: {result.execution})")
    for column in ("method", "median s", "fedmeta speedup", "peak mem MB"):
        table.add_column(column, justify="right" if column != "method" else "left")
    for name, secs, ratio in (
        ("fedmeta", result.fedmeta_s, 1.0),
        ("higher", result.higher_s, result.speedup_vs_higher),
        ("autograd loop", result.autograd_s, result.speedup_vs_autograd),
    ):
        mem = result.peak_mem_mb[name.split()[0]]
        table.add_row(name, f"{secs:.3f}", f"{ratio:.2f}x", "n/a" if mem is None else f"{mem:.0f}")
    console.print(table)
    console.print(f"largest relative gradient difference vs higher: {result.max_rel_grad_diff:.2e}")
    if as_json:
        print(json.dumps(result.to_dict()))

"""`fedmeta benchmark`: the headline protocol. `tune` chooses the baselines' adaptation settings
on the validation sites; `evaluate` scores trained models and the baselines on the same fixed
episodes of the held-out sites and writes headline.json, tables and plots."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from fedmeta.errors import fail

benchmark_app = typer.Typer(
    help="The headline benchmark: identical episodes, paired comparisons.", no_args_is_help=True
)

# what `tune` tries for each baseline's adaptation: every axis extends past the best value the
# first sweep found on new-hospital's validation sites (fine-tuning chose the smallest rate and
# the most steps of its first grid, the linear probe a corner too), and steps 0 (the model as
# it is) is a candidate. Steps cost one trajectory per other setting (simulation.benchmark.tune).
GRIDS: dict[str, dict[str, list]] = {
    "finetune": {"steps": [0, 25, 50, 100, 200], "lr": [3e-5, 1e-4, 3e-4, 1e-3]},
    "linear-probe": {"steps": [100, 200, 400], "lr": [1e-2, 1e-1], "weight_decay": [0.0, 1e-4, 1e-2]},
    "local": {"steps": [25, 100, 200], "lr": [1e-3, 3e-3, 1e-2]},
    # a meta-model adapts with its own inner loop: how many steps it takes at the new site (0: the
    # meta-model as it is) and at what fraction of its meta-trained rate, as fine-tuning's steps
    # and rate are chosen (22 distinct tries against fine-tuning's 20: steps 0 is one). On
    # new-hospital FOMAML still gained from 10 to 20 steps (77.2 to 77.6%), hence 40 and 80; a
    # start warm-started from the supervised model overshot at its own rate (76.1% with no step,
    # 57.0% after 2: docs/sweeps/new-hospital-8.txt), hence the smaller rates
    "meta-learned": {"steps": [0, 1, 2, 5, 10, 20, 40, 80], "lr_scale": [0.1, 0.3, 1.0]},
}


DEVICE_HELP = (
    "Where each method adapts: cpu (the reported figures), cuda or cuda:N (a GPU; scores are "
    "named by the device, so CPU scores are not reused for it), or auto."
)


def _models(specs: list[str]) -> dict[str, list[Path]]:
    """`NAME=DIR` options into {name: [dir, ...]} (several dirs of one name: its training seeds)."""
    out: dict[str, list[Path]] = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep or not Path(directory, "model.json").is_file():
            fail(
                f"--model {spec!r}: give NAME=DIR, DIR a model directory (model.json + model.safetensors), "
                "e.g. maml=runs/new-hospital/seed0/maml/model"
            )
        out.setdefault(name, []).append(Path(directory))
    return out


@benchmark_app.command("tune")
def tune(
    scenario: str = typer.Option(..., help="A benchmark scenario with validation sites, e.g. new-hospital."),
    supervised: Path = typer.Option(..., help="A supervised FedAvg model directory (its fine-tuning is tuned)."),
    model: list[str] = typer.Option(
        [],
        help="NAME=DIR of a meta-model (one training seed): its evaluation inner steps and rate are tuned too, "
        "as the baselines' are (ProtoNet takes no steps: NAME+finetune, fine-tuning from its prototypes, is tuned).",
    ),
    data_dir: Path = typer.Option(None, "--data-dir", envvar="FEDMETA_DATA_DIR", help="MedMNIST files."),
    shots: str = typer.Option("1,5", help="Shots the settings must do well at (mean accuracy over them)."),
    queries: int = typer.Option(15, min=1, help="Query images per class, where a class has that many."),
    episodes: int = typer.Option(50, min=1, help="Validation episodes per shots."),
    out: Path = typer.Option(Path("tuned.json"), help="The chosen settings and every try's validation score."),
    retune: bool = typer.Option(
        False,
        help="Tune every method again; by default the methods OUT already holds (same protocol, and the same "
        "model where OUT records it: a method whose model was trained again is tuned again; local "
        "training's settings follow the backbone's shape, not the supervised weights) are kept, "
        "and one stopped midway goes on from its last kept episodes (e.g. tuned.progress/ beside tuned.json).",
    ),
    device: str = typer.Option(
        "cpu",
        help=DEVICE_HELP,
    ),
    local: bool = typer.Option(
        True,
        help="Also tune local training from scratch; --no-local leaves it out (a sweep that does not score it; "
        "its grid trains a model from scratch for every try and episode).",
    ),
    finetune_meta: bool = typer.Option(
        False,
        help="Also tune NAME+finetune for each --model that adapts by steps (MAML, FOMAML, Meta-SGD, ANIL): "
        "every weight of the meta-model fine-tuned on the support set as FedAvg + fine-tune is, on "
        "fine-tuning's grid, so the meta-learned start meets the baseline's own adaptation "
        "(a ProtoNet's NAME+finetune is always tuned). `evaluate` scores every NAME+finetune --tuned holds.",
    ),
) -> None:
    """Choose fine-tuning, linear-probe and local-training settings (and meta-models' evaluation
    steps) on the validation sites only."""
    from common.device import resolve_device
    from common.files import write_json
    from common.models import ModelConfig
    from simulation.adapters import (
        FineTune,
        LinearProbe,
        Loaded,
        MetaLearned,
        Scratch,
        architecture_digest,
        finetuned,
    )
    from simulation.benchmark import Protocol, draw_episodes, parse_shots
    from simulation.benchmark import tune as tune_grid

    console = Console()
    header = {"scenario": scenario, "shots": list(parse_shots(shots)), "episodes": episodes, "role": "validation"}
    try:
        protocol = Protocol(scenario, str(data_dir or ""), parse_shots(shots), queries, episodes, role="validation")
        compute_on = resolve_device(device)
        reference = Loaded.from_dir(supervised)
        config: ModelConfig = reference.model.config
        chosen = {} if retune else _kept_tuning(out, header)
        progress = out.parent / f"{out.stem}.progress"  # per method, the episodes a stopped tuning scored
        if retune:  # and no episode an earlier tuning left half-way
            shutil.rmtree(progress, ignore_errors=True)
    except (ValueError, FileNotFoundError) as error:
        fail(error)
    factories: dict[str, tuple[Callable[..., Any], dict[str, list]]] = {
        "finetune": (lambda **p: FineTune(supervised, **p).to(compute_on), GRIDS["finetune"]),
        "linear-probe": (lambda **p: LinearProbe(supervised, **p).to(compute_on), GRIDS["linear-probe"]),
        "local": (lambda **p: Scratch(config, **p).to(compute_on), GRIDS["local"]),
    }
    tuned_on = dict.fromkeys(factories, reference.digest)  # the model each method's settings suit
    tuned_on["local"] = architecture_digest(config)  # local training suits a shape, not weights
    if not local:
        del factories["local"], tuned_on["local"]
    # a local entry written before it was keyed by shape names the supervised model it was tuned beside
    also = {"local": reference.digest}
    for name, dirs in _models(model).items():
        meta_model = MetaLearned(dirs[0])
        prototypes = not meta_model.takes_steps()
        if prototypes:  # prototypes take no steps; fine-tuning from them does
            console.print(f"{name}: adapts without steps (prototypes); tuning {finetuned(name)} from its prototypes")
        else:
            factories[name] = (
                lambda d=dirs[0], n=name, **p: MetaLearned(d, name=n, **p).to(compute_on),
                GRIDS["meta-learned"],
            )
            tuned_on[name] = meta_model.digest
        if prototypes or finetune_meta:  # fine-tuned as the supervised model is, on its grid
            factories[finetuned(name)] = (
                lambda d=dirs[0], n=name, pr=prototypes, **p: FineTune.of_meta_model(d, n, pr, **p).to(compute_on),
                GRIDS["finetune"],
            )
            tuned_on[finetuned(name)] = meta_model.digest
    for name in [name for name in factories if name in chosen]:
        if chosen[name].get("model", tuned_on[name]) not in (tuned_on[name], also.get(name)):  # e.g. retrained
            console.print(f"{name}: tuned again, {out} holds settings tuned on another model")
            del chosen[name]
        else:
            console.print(f"{name}: kept from {out} ({chosen[name]['best']})")
    todo = {name: entry for name, entry in factories.items() if name not in chosen}
    if todo:
        try:  # one draw of the validation episodes for every adapter left, none when all are kept
            drawn = draw_episodes(protocol)
        except (ValueError, FileNotFoundError) as error:  # e.g. a validation site too small for the episodes
            fail(error)
    else:
        console.print(f"every method is kept from {out}: no validation episodes drawn")
    for name, (factory, grid) in todo.items():
        console.print(f"tuning {name} on the validation sites: {grid}")
        kept = progress / name  # a stopped tuning goes on from its last episodes
        best, table = tune_grid(factory, grid, drawn, keep=kept)
        chosen[name] = {"best": best, "tries": table, "model": tuned_on[name]}
        console.print(f"  {name}: {best} (validation accuracy {table[json.dumps(best, sort_keys=True)]:.3f})")
        write_json(out, {"protocol": header, **chosen})  # after each method: a stopped run keeps them
        shutil.rmtree(kept, ignore_errors=True)
        if progress.is_dir() and not any(progress.iterdir()):
            progress.rmdir()
    out.with_suffix(".md").write_text(tries_markdown(header, chosen), encoding="utf-8")
    console.print(f"settings: {out}, every try: {out.with_suffix('.md')}")


def tries_markdown(header: dict, chosen: dict) -> str:
    """Every try of every method with its validation accuracy, the chosen one in bold."""
    lines = [
        f"# Adaptation settings tried on {header['scenario']}'s validation sites",
        "",
        f"Mean accuracy over {header['shots']} shots, {header['episodes']} validation episodes per shots.",
        "",
        "| method | setting | validation accuracy % |",
        "| --- | --- | --- |",
    ]
    for name, entry in chosen.items():
        best = json.dumps(entry["best"], sort_keys=True)
        for setting, acc in entry["tries"].items():
            mark = "**" if setting == best else ""
            text = ", ".join(f"{k} {v}" for k, v in json.loads(setting).items())
            lines.append(f"| {name} | {mark}{text}{mark} | {mark}{100 * acc:.1f}{mark} |")
    return "\n".join(lines) + "\n"


def _kept_tuning(out: Path, header: dict) -> dict:
    """The methods an earlier `tune` left in `out`, if it tuned on the same validation protocol."""
    if not out.is_file():
        return {}
    data = json.loads(out.read_text())
    if data.get("protocol") != header:
        raise ValueError(
            f"{out} was tuned with {data.get('protocol')}, not {header}: "
            "pass the same --shots and --episodes, another --out, or --retune"
        )
    return {k: v for k, v in data.items() if k != "protocol"}


@benchmark_app.command("evaluate")
def evaluate(
    scenario: str = typer.Option(..., help="The scenario the models were trained on."),
    model: list[str] = typer.Option([], help="NAME=DIR of a meta-model; repeat a NAME for its training seeds."),
    supervised: list[Path] = typer.Option(
        [],
        help="Supervised FedAvg model directories (one per seed): "
        "scored fine-tuned, with a linear probe and with prototypes.",
    ),
    tuned: Path = typer.Option(None, help="tuned.json from `fedmeta benchmark tune` (else the defaults)."),
    local: bool = typer.Option(True, help="Also score local training from scratch at the new site."),
    local_seeds: int = typer.Option(
        1,
        min=1,
        help="Initializations local training is scored from (it has no consortium training seed; "
        "each one costs as long as fine-tuning a seed).",
    ),
    data_dir: Path = typer.Option(None, "--data-dir", envvar="FEDMETA_DATA_DIR", help="MedMNIST files."),
    shots: str = typer.Option("1,5", help="Shots per class at the new site."),
    queries: int = typer.Option(15, min=1, help="Query images per class, where a class has that many."),
    episodes: int = typer.Option(600, min=1, help="Test episodes per shots, over the held-out sites."),
    eval_seed: int = typer.Option(0, help="Which episodes: the same for every method."),
    sites: str = typer.Option(
        "heldout",
        help="heldout: the reported figures (touch once). validation: compare training settings "
        "(a recipe sweep) on the validation sites, against the same baselines.",
    ),
    out: Path = typer.Option(
        None,
        help="headline.json, headline.md and plots go here (default: docs/results; runs/validation for validation).",
    ),
    rescore: bool = typer.Option(
        False,
        help="Score every method again. By default a method-seed whose scores OUT/scores already holds "
        "(same adapter, settings, model and episodes) is kept, and one stopped midway goes on from "
        "its last kept episodes (NAME-SEED.progress.json beside them): a stopped evaluation resumes. "
        "Pass it after changing how an adapter works (the code is not part of the match).",
    ),
    device: str = typer.Option(
        "cpu",
        help=DEVICE_HELP,
    ),
    accept_device: list[str] = typer.Option(
        [],
        "--accept-device",
        help="Also keep finished scores made on this device type (cpu or cuda; repeat for both) by "
        "otherwise identical adapters on the same episodes, e.g. to finish on the CPU a table a GPU "
        "scored in part. CPU and CUDA logits agree to about 1e-3; the console names each kept "
        "score's device: say so where the table is reported.",
    ),
) -> None:
    """Score every method on the same episodes of the held-out (or validation) sites; paired CIs
    against FedAvg + fine-tune."""
    from common.device import resolve_device
    from common.scenario import load_scenario
    from simulation.adapters import (
        FineTune,
        LinearProbe,
        Loaded,
        MetaLearned,
        Prototypes,
        Scratch,
        best_settings,
        finetuned,
    )
    from simulation.benchmark import (
        Protocol,
        draw_episodes,
        headline_rows,
        parse_shots,
        score_methods,
    )
    from simulation.casemix import write_case_mix
    from simulation.headline import write_headline
    from simulation.perclass import write_per_class

    console = Console()
    try:
        protocol = Protocol(scenario, str(data_dir or ""), parse_shots(shots), queries, episodes, eval_seed, sites)
        compute_on = resolve_device(device)
        unknown = sorted(set(accept_device) - {"cpu", "cuda"})
        if unknown:
            raise ValueError(f"--accept-device {', '.join(unknown)}: give a device type, cpu or cuda")
        out = out or Path("docs/results" if sites == "heldout" else "runs/validation")
        sc = load_scenario(scenario)
        settings = json.loads(tuned.read_text()) if tuned else {}
        scored = ("finetune", "linear-probe", "local") if local else ("finetune", "linear-probe")
        untuned = [name for name in scored if name not in settings] if tuned else []
        if untuned:  # e.g. local, tuned by a sweep with `tune --no-local`: not scored with defaults
            raise ValueError(
                f"--tuned {tuned} holds no settings for {', '.join(untuned)}: tune them with `fedmeta benchmark "
                "tune` (without --no-local, the same --out)"
                + (", or score without local training (--no-local)" if untuned == ["local"] else "")
            )
        models = _models(model)
        if not supervised:
            raise ValueError("--supervised: the reference method (FedAvg + fine-tune) needs a supervised model")
        episodes_ = draw_episodes(protocol)
    except (ValueError, FileNotFoundError) as error:
        fail(error)

    def best(name: str) -> dict:
        return best_settings(settings, name)

    adapters: dict[str, list] = {n: [MetaLearned(d, name=n, **best(n)) for d in dirs] for n, dirs in models.items()}
    for n, dirs in models.items():  # each meta-model also fine-tuned, where `tune` chose how (tune --finetune-meta)
        if finetuned(n) in settings:  # a ProtoNet from its prototypes, the others from their own head
            prototypes = not adapters[n][0].takes_steps()
            adapters[finetuned(n)] = [FineTune.of_meta_model(d, n, prototypes, **best(finetuned(n))) for d in dirs]
    adapters["fedavg+finetune"] = [FineTune(d, **best("finetune")) for d in supervised]
    adapters["fedavg+linear-probe"] = [LinearProbe(d, **best("linear-probe")) for d in supervised]
    adapters["fedavg+prototypes"] = [Prototypes(d) for d in supervised]
    if local:
        config = Loaded.from_dir(supervised[0]).model.config
        adapters["local"] = [Scratch(config, seed=s, **best("local")) for s in range(local_seeds)]
    for runs in adapters.values():
        for adapter in runs:
            adapter.to(compute_on)

    def say(line: str) -> None:
        console.print(f"[dim]{line}[/dim]")

    methods = score_methods(adapters, episodes_, out / "scores" / sc.name / sites, rescore, say, accept_device)
    rows = headline_rows(sc.name, methods, sites=sites)
    chance = None if sc.tasks == "hospital" else 1 / sc.episode.ways
    write_headline(rows, out, {sc.name: chance} if chance else None)
    console.print((out / "headline.md").read_text(), highlight=False)
    names = sc.label_space(sc.sites[(sc.heldout_sites if sites == "heldout" else sc.validation_sites)[0]])
    where = "new (held-out) sites" if sites == "heldout" else "validation sites"
    per_class = write_per_class(methods, names, out, f"{sc.name}-{sites}", f"{sc.name}, {where}")
    if per_class:
        console.print(f"per-class recall and mistakes: {per_class}")
    case_mix = write_case_mix(methods, episodes_.counts, out, f"{sc.name}-{sites}", f"{sc.name}, {where}")
    if case_mix:
        console.print(f"accuracy weighted by each site's case mix: {case_mix}")


@benchmark_app.command("report")
def report_tables(
    results: Path = typer.Option(Path("docs/results"), help="The directory holding headline.json."),
    doc: Path = typer.Option(
        Path("docs/RESULTS.md"), help="The page whose block between the headline.json markers is regenerated."
    ),
) -> None:
    """Regenerate headline.md and the headline tables of docs/RESULTS.md from headline.json."""
    from simulation.headline import HEADLINE, embed, markdown

    path = results / HEADLINE
    try:
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run `fedmeta benchmark evaluate` (or make results) first")
        rows = json.loads(path.read_text())
        (results / "headline.md").write_text(markdown(rows))
        embed(rows, doc, str(path))
    except (ValueError, FileNotFoundError) as error:
        fail(error)
    Console().print(f"tables regenerated from {path}: {results / 'headline.md'}, {doc}")


@benchmark_app.command("status")
def status(
    out: Path = typer.Option(Path("docs/results"), help="The --out of `fedmeta benchmark evaluate`."),
    scenario: str = typer.Option(None, help="Only this scenario's scores (default: every one under OUT/scores)."),
) -> None:
    """Where each scoring under OUT/scores stands: per method-seed, scored, being scored (by which
    process), stopped midway, or still to score (an evaluate run asked for it or for more shots of it,
    none has started), and its episodes per shots. Reads only: run it beside the scoring."""
    from simulation.scoring_status import as_text, method_seeds, scores_directories

    directories = scores_directories(out, scenario)
    if not directories:
        what = f"{scenario}'s scores" if scenario else "scores"
        fail(f"{out / 'scores'} holds no {what}: give the --out that `fedmeta benchmark evaluate` wrote to")
    for directory in directories:
        typer.echo(f"{directory}\n{as_text(method_seeds(directory))}\n")

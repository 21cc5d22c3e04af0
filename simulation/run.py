"""Run the fedmeta ServerApp and ClientApp with Flower's simulation engine (Ray): N virtual sites.

The apps are the same that a real deployment runs. The run config is written into a throwaway
Flower app directory (`pyproject.toml` with `[tool.flwr.app.config]`), the one place Flower's
simulation reads a full run config from, so every virtual site sees exactly this run's values.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from common.procs import terminate_descendants
from common.runconfig import RunConfig, flat_run_config
from common.scenario import load_scenario
from server.app import meta_template
from server.appdir import write_app_dir
from server.checkpoint import CHECKPOINT, prepare_resume
from server.report import RESULTS

if TYPE_CHECKING:
    from flwr.app import UserConfig
    from flwr.app.typing import ConfigRecordValues


@dataclass(frozen=True)
class Resources:
    """Per virtual site: CPUs and a GPU fraction (0.25 puts four sites on one GPU)."""

    cpus_per_site: float = 1.0
    gpus_per_site: float = 0.0
    ray_address: str = ""  # join an existing Ray cluster ("auto" or "ip:port") instead of starting one

    def __post_init__(self) -> None:
        if self.cpus_per_site <= 0 or not 0 <= self.gpus_per_site <= 1:
            raise ValueError(f"{self}: cpus-per-site must be > 0 and gpus-per-site in [0, 1]")

    def ray_init_args(self) -> dict[str, ConfigRecordValues]:
        """Arguments for `ray.init`, after checking that this machine can host one site.

        Flower's Ray backend fails an unplaceable site inside its runtime thread, and the
        ServerApp then waits for sites that never come; checking here turns that into an error
        that names the option. The GPU count is torch's, given to Ray explicitly, so both agree
        on what a site with `gpus-per-site` gets."""
        if self.ray_address:  # the cluster's own resources decide; Ray refuses resource arguments here
            _check_reachable(self.ray_address)
            return {"address": self.ray_address}
        cpus = os.cpu_count() or 1
        if self.cpus_per_site > cpus:
            raise ValueError(
                f"cpus-per-site={self.cpus_per_site:g} but this machine has {cpus} CPU(s): "
                f"lower --cpus-per-site to at most {cpus}, or use --ray-address for a larger cluster"
            )
        args: dict[str, ConfigRecordValues] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if self.gpus_per_site > 0:
            import torch

            gpus = torch.cuda.device_count()
            if gpus == 0:
                raise ValueError(
                    f"gpus-per-site={self.gpus_per_site:g} but torch sees no CUDA GPU on this machine: use "
                    "--gpus-per-site 0 (sites then compute on the CPU), or install the CUDA build of torch"
                )
            args["num_gpus"] = gpus
        return args


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """An `ip:port` Ray address must answer: Ray itself retries an unreachable one for minutes."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address {address!r}: give the head node as ip:port (e.g. 10.0.0.5:6379) or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ValueError(
            f"--ray-address {address}: no Ray head node answers there ({error}); start one with "
            f"`ray start --head --port {port}` on that machine, or fix the address"
        ) from error


def simulate(
    cfg: RunConfig,
    resources: Resources = Resources(),
    verbose: bool = False,
    on_start: Callable[[int], None] | None = None,
    nodes: int | None = None,
) -> dict:
    """Run one federated simulation; returns the results written to `cfg.train.out_dir`.
    `nodes`: virtual SuperNodes, by default one per scenario site; another count reproduces a
    `flwr run .` federation of the wrong size (the coordinator reports the sites left out)."""
    from flwr.app import Context, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    from client.app import app as client_app
    from server.app import app as server_app

    if not cfg.train.out_dir:
        raise ValueError("a simulation needs an output directory (out-dir)")
    out_dir = Path(cfg.train.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scenario = load_scenario(cfg.data.scenario)
    num_sites = len(scenario.sites)
    run_config = flat_run_config(cfg)
    # the ServerApp starts while the engine registers the virtual nodes: it waits for all of them
    run_config["min-sites"] = max(cfg.train.min_sites, nodes or num_sites)
    user_config = cast("UserConfig", run_config)  # every run-config field is a bool, int, float or str
    # the ServerApp decides; asking first turns a refusal into this error, not a Ray log line
    prepare_resume(
        out_dir / CHECKPOINT,
        run_config,
        cfg.train.resume,
        cfg.train.force_resume,
        template=meta_template(cfg) if cfg.train.resume else None,
    )
    # Ray warns on every start unless told how to treat GPU visibility for num_gpus=0 actors
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    handler = _log_to(out_dir / "simulation.log", verbose)
    backend: dict[str, dict[str, ConfigRecordValues]] = {
        "client_resources": {"num_cpus": resources.cpus_per_site, "num_gpus": resources.gpus_per_site}
    }
    backend["init_args"] = resources.ray_init_args()
    if not resources.ray_address:
        backend["init_args"]["log_to_driver"] = verbose
    # the legacy in-process entry point needs a run registered under Flower's default federation
    run = Run.create_empty(run_id=1)
    run.override_config, run.primary_task_id, run.federation_id = dict(user_config), 1, NOOP_FEDERATION_ID
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=dict(user_config))
    if on_start is not None:
        on_start(num_sites)
    try:
        with tempfile.TemporaryDirectory(prefix="fedmeta-app-") as app_dir:
            write_app_dir(Path(app_dir), run_config)
            _run_simulation(
                num_supernodes=nodes or num_sites,
                exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                client_app=client_app,
                server_app=server_app,
                backend_config=backend,
                app_dir=app_dir,
                is_app=True,  # makes the virtual sites read their run config from app_dir
                run=run,
                server_app_context=context,
                verbose_logging=verbose,
            )
    finally:
        if not resources.ray_address:  # a cluster's processes are the cluster's own
            left = stop_orphaned_ray()
            if left:
                logging.getLogger("flwr").warning(
                    "stopped %d Ray processes a failed local Ray start left running (pids %s)",
                    len(left),
                    ", ".join(map(str, left)),
                )
        _detach(handler)
    results_path = out_dir / RESULTS
    if not results_path.is_file():
        raise RuntimeError(f"the simulation ended without results; see {out_dir / 'simulation.log'}")
    results = json.loads(results_path.read_text())
    if not results.get("final"):
        raise RuntimeError(f"the simulation ended before its last round; see {out_dir / 'simulation.log'}")
    return results


def stop_orphaned_ray() -> list[int]:
    """Stop the Ray processes this process started and no Ray session owns any more; their pids.

    A local Ray whose raylet does not register within Ray's fixed 30 s (seen on 2 cores busy with
    scoring) fails inside `ray.init`, before Ray records the node, and its GCS server, dashboard
    and monitors outlive the run (and the Python process). A finished simulation has shut Ray down
    already, so this finds nothing then; while Ray is still up (someone else's session) it does
    nothing."""
    import ray

    if ray.is_initialized():
        return []
    return terminate_descendants(str(Path(ray.__file__).parent))


def _log_to(path: Path, verbose: bool) -> logging.Handler:
    """Flower's log goes to `path` in full; the console shows warnings only unless `verbose`."""
    logger = logging.getLogger("flwr")
    handler = logging.FileHandler(path, mode="a")  # a resumed run continues the log
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.addHandler(handler)
    for console in logger.handlers:
        if console is not handler:
            console.setLevel(logging.INFO if verbose else logging.WARNING)
    return handler


def _detach(handler: logging.Handler) -> None:
    logger = logging.getLogger("flwr")
    logger.removeHandler(handler)
    handler.close()
    for console in logger.handlers:
        console.setLevel(logging.INFO)

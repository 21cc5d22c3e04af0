"""`fedmeta coordinator`: the consortium's long-running coordinator (SuperLink, fleet gateway, run)."""

from __future__ import annotations

import shlex
import signal
from pathlib import Path

import typer
from rich.console import Console

from fedmeta.commands.service import load_config, stop_on_sigterm
from fedmeta.errors import check_result, fail, report

RUN_FAILED = 6  # the training run failed, timed out or was stopped


def coordinator(
    config: Path = typer.Option(..., "--config", help="coordinator.toml from the coordinator bundle."),
    run: bool = typer.Option(
        False, "--run", help="Also start the federated meta-training run (else print its command)."
    ),
    exit_after_run: bool = typer.Option(
        False,
        "--exit-after-run",
        help="With --run: stop everything when the run ends (a failed run always does, with exit code 6).",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run from out-dir's checkpoint when there is one (after a crash or restart); "
        "else start a new run.",
    ),
    force_resume: bool = typer.Option(False, "--force-resume", help="Resume although training settings changed."),
    check: bool = typer.Option(False, "--check", help="Only check the bundle and config, start nothing."),
) -> None:
    """Start the coordinator: SuperLink (TLS, SuperNode authentication, persistent state), the fleet
    gateway on the public port, the provisioned sites registered; optionally the training run."""
    from deploy.config import ConfigError, load_coordinator_config
    from deploy.coordinator import AUDIT_LOG, Coordinator, check_coordinator, check_run_start

    console = Console()
    cfg = load_config(load_coordinator_config, config)
    if check:
        check_result(check_coordinator(cfg), f"{config}: ready (sites dial {cfg.hosts[0]}:{cfg.fleet_port})")
        return
    if resume or force_resume:
        from server.checkpoint import CHECKPOINT

        checkpoint = Path(str(cfg.run_config["out-dir"])) / CHECKPOINT
        if not checkpoint.exists():
            console.print(f"no checkpoint at {checkpoint}: starting a new run")
            resume = force_resume = False
    if run:
        try:  # before any process starts: a run that cannot use out-dir's checkpoint must not start
            check_run_start(cfg, resume or force_resume, force_resume)
        except (ValueError, FileExistsError, FileNotFoundError) as error:
            fail(error, 1)
    stop_on_sigterm()
    node = Coordinator(cfg, echo=lambda line: console.print(line, highlight=False, soft_wrap=True))
    code = 0
    try:
        node.start()
        command = node.run_command(resume or force_resume, force_resume)
        if cfg.audit:
            console.print(f"what sites send (types and shapes, never values): {cfg.log_dir / AUDIT_LOG}")
        if not run:
            console.print(
                "start training with:\n  " + f"FLWR_HOME={shlex.quote(str(node.flwr_home))} " + shlex.join(command)
            )
        else:
            child = node.start_run(
                echo=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True),
                resume=resume or force_resume,
                force_resume=force_resume,
            )
            console.print(
                f"run started; its log is {cfg.log_dir / 'run.log'}, results go to {cfg.run_config['out-dir']}"
            )
            code = child.wait()
            status, details = node.run_status()
            if status != "finished:completed":  # failed, timed out or stopped: say so in the exit code
                code = code or RUN_FAILED
                report(
                    f"run {node.run_id} ended {status}: {details or 'no details'}; its log is {cfg.log_dir / 'run.log'}"
                )
            else:
                console.print(f"run {node.run_id} {status}", highlight=False)
        if not exit_after_run and code == 0:
            console.print("coordinator running; Ctrl-C (or SIGTERM) stops it")
            signal.pause()
    except KeyboardInterrupt:
        console.print("stopping")
    except (ConfigError, ValueError) as error:  # the bundle or config: restarting will not help
        fail(error, 1)
    except (RuntimeError, FileNotFoundError, OSError) as error:  # e.g. a port still taken: worth a restart
        fail(error, 5)
    finally:
        node.stop()
    raise typer.Exit(code)

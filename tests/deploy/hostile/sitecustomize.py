"""A hostile (or badly modified) site for the deployment test, as a hospital could build one: its
Python runs with this directory on PYTHONPATH, so every process of the site (`fedmeta site`, the
SuperNode, each ClientApp) imports this first. When the ClientApp module loads, its helpers are
wrapped so that the site's replies break the rules the coordinator enforces:

- every training round: a list-valued training metric (`meta-loss`);
- its first evaluation: a reply without `acc-after-ci`; every later one: `acc-after` = NaN.

The ClientApp runs in a fresh process per message, so the evaluation count is kept in the file
named by FEDMETA_HOSTILE_STATE.
"""

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path


def _count(kind: str) -> int:
    path = Path(os.environ["FEDMETA_HOSTILE_STATE"]).with_suffix(f".{kind}")
    calls = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(calls))
    return calls


def _corrupt(module) -> None:
    real_train, real_evaluate = module._private_meta_gradient, module.evaluate_site

    def train(site, msg):
        grads, metrics = real_train(site, msg)
        metrics["meta-loss"] = [float(metrics["meta-loss"]), 0.0]
        return grads, metrics

    def evaluate(algorithm, meta, tasks):
        metrics = real_evaluate(algorithm, meta, tasks)
        if _count("evaluate") == 1:
            metrics.pop("acc-after-ci")
        else:
            metrics["acc-after"] = float("nan")
        return metrics

    module._private_meta_gradient, module.evaluate_site = train, evaluate


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds `client.app` the normal way, then corrupts the module once it has executed."""

    def find_spec(self, name, path=None, target=None):
        if name != "client.app":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _corrupt(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("FEDMETA_HOSTILE_STATE"):
    sys.meta_path.insert(0, _AfterImport())

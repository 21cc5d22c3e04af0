"""Every package fedmeta imports is declared, and constraints.txt is the set CI tests."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import sysconfig
import tomllib
from importlib.metadata import distributions, packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedmeta", "common", "server", "client", "simulation", "deploy")


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string ("flwr[simulation]>=1.42" -> "flwr")."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0]).lower()


def _imported_modules() -> dict[str, Path]:
    """Top-level names of the absolute imports in fedmeta's own sources, with one file using each."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], path)
    return found


def test_every_third_party_import_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    declared |= {_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    providers = packages_distributions()
    undeclared = []
    for module, path in sorted(_imported_modules().items()):
        if module in sys.stdlib_module_names or module in PACKAGES or module == "tests":
            continue
        dists = {_name(d) for d in providers.get(module, [])}
        assert dists, f"{module} (imported in {path.relative_to(ROOT)}) is not installed"
        if not dists & declared:
            undeclared.append(f"{module} ({path.relative_to(ROOT)}, from {sorted(dists)})")
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"


def test_constraints_pin_every_installed_package_at_its_installed_version():
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pinned[_name(name)] = version
    # what pip installed into this environment; not what a package vendors on sys.path at import
    # time (Ray adds its own psutil and colorama once imported)
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    installed = {
        _name(d.metadata["Name"]): d.version.split("+")[0]  # torch 2.13.0+cpu is the pinned 2.13.0
        for d in distributions(path=site)
        if _name(d.metadata["Name"]) not in {"fedmeta", "pip", "setuptools", "wheel"}
    }
    missing = sorted(set(installed) - set(pinned))
    assert not missing, f"installed but not in constraints.txt (regenerate it, see its header): {missing}"
    differ = {n: (pinned[n], v) for n, v in installed.items() if pinned[n] != v}
    assert not differ, f"constraints.txt pins (pinned, installed): {differ}; install with -c or regenerate"


def test_reading_a_scenario_or_run_config_does_not_load_monai():
    """MONAI takes about 3.4 s to import: a command that refuses a scenario, a run-config key or a
    model path answers before loading it (docs/BENCHMARKS.md, start-up)."""
    probe = (
        "import sys, common.scenario, common.runconfig, common.export\n"
        "print(sorted(m for m in sys.modules if m.startswith('monai')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout

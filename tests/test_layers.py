"""The house's floors point down only: `common/` (pure PyTorch/MONAI, never flwr) <- `server/`,
`client/` (the Flower edges) <- `simulation/`, `deploy/` <- `fedmeta/` (the command). Every
import in every module, at the top or inside a function, is checked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what each package may import of the project's packages (itself included)
ALLOWED = {
    "common": {"common"},
    "server": {"common", "server"},
    "client": {"common", "client"},
    "simulation": {"common", "server", "client", "simulation"},
    "deploy": {"common", "server", "client", "deploy"},
    "fedmeta": {"common", "server", "client", "simulation", "deploy", "fedmeta"},
}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import statement of a file; relative imports resolved."""
    package = path.relative_to(ROOT).parent.as_posix().replace("/", ".")
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            found.append((node.lineno, ".".join(p for p in (base, node.module or "") if p)))
    return found


def modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_import_runs_up_a_floor_or_sideways(package):
    offences = []
    for path in modules(package):
        for line, module in imports(path):
            top = module.split(".")[0]
            if top in ALLOWED and top not in ALLOWED[package]:
                offences.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert offences == [], "\n".join(offences)


def test_the_ground_floor_never_imports_flower():
    offences = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in modules("common")
        for line, module in imports(path)
        if module.split(".")[0] == "flwr"
    ]
    assert offences == [], "\n".join(offences)


def test_the_images_copy_only_the_packages_they_run():
    """A site runs `fedmeta site` (deploy, client, common); the coordinator `fedmeta coordinator`
    (deploy, server, common): neither image copies the simulation harness."""
    for image in ("Dockerfile.site", "Dockerfile.coordinator"):
        text = (ROOT / "deploy" / "docker" / image).read_text()
        assert (
            "COPY simulation" not in text
            and "!simulation" not in (ROOT / "deploy" / "docker" / f"{image}.dockerignore").read_text()
        )

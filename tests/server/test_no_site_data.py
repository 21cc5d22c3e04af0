"""The coordinator never opens site data: nothing under server/ reaches a data loader."""

import ast
from pathlib import Path

LOADERS = {"load_site", "load_hospital_site", "load_folder", "check_folder", "synthetic_site", "load", "locate"}


def test_server_code_imports_no_data_loader():
    for path in (Path(__file__).parents[2] / "server").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = {alias.name for alias in node.names}
                assert not names & LOADERS, f"{path.name} imports {names & LOADERS} from {node.module}"
                assert node.module not in ("common.data.medmnist", "common.data.folder"), f"{path.name}: {node.module}"

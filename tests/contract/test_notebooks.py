"""Notebooks are thin (DESIGN.md II.5): one literal-only parameters cell whose names equal the stage
dataclass fields, no def/class, no sys.path / !pip / %cd, no committed outputs, kernel python3."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from ezsd_core import artefacts, config

NB_DIR = Path(__file__).resolve().parents[2] / "notebooks"
INSPECT_PARAMS = {"split", "run_root", "max_samples", "launch_app"}
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_every_stage_has_a_notebook_and_every_pipeline_notebook_a_stage() -> None:
    stems = {p.stem for p in NOTEBOOKS if not p.stem.startswith("9")}
    assert stems == {artefacts.stage_dirname(s) for s in config.STAGE_CONFIGS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_thin(path: Path) -> None:
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    cells = nb["cells"]
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    tree = ast.parse(_source(params[0]))
    names = []
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, "parameters cell: one assignment per line"
        assert isinstance(node.targets[0], ast.Name)
        ast.literal_eval(node.value)  # raises on anything but a literal
        names.append(node.targets[0].id)
    stage = path.stem[3:]
    expected = INSPECT_PARAMS if path.stem.startswith("9") else set(config.field_names(config.STAGE_CONFIGS[stage]))
    assert set(names) == expected and len(names) == len(set(names)), f"parameters {names} != {sorted(expected)}"
    code = [c for c in cells if c["cell_type"] == "code"]
    assert len(code) <= 8, "at most 8 code cells"
    for c in code:
        src = _source(c)
        assert not c.get("outputs") and not c.get("execution_count"), "outputs must not be committed"
        if c is not params[0]:
            assert len(src.splitlines()) <= 10, f"code cell longer than 10 lines:\n{src}"
        for bad in ("sys.path", "!pip", "%pip", "%cd"):
            assert bad not in src, f"{bad} in a notebook"
        body = ast.parse("\n".join(x for x in src.splitlines() if not x.lstrip().startswith(("%", "!"))))
        assert not any(isinstance(n, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef) for n in ast.walk(body))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_papermill_reads_every_parameter(path: Path) -> None:
    """papermill's own parser (not ast) must see every parameter: a ';' or ' = ' in a comment makes it
    drop the line and warn "Passed unknown parameter" on every run."""
    import papermill

    cell = next(c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", []))
    expected = [n.targets[0].id for n in ast.parse(_source(cell)).body]
    assert list(papermill.inspect_notebook(str(path))) == expected

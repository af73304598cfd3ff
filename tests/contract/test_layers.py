"""The import graph obeys DESIGN.md II.3: lower layers never import higher ones, stages never import
each other, layer 0 never imports torch, papermill only in pipeline, fiftyone only lazily in viz."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "ezsd_core"
LAYER0 = {"config", "artefacts", "lineage", "splits", "prompts"}
LAYER1 = {"structures", "runtime", "toyshapes", "toydraw", "toyworld", "crops", "tinyclip", "shards", "data",
          "scriptarchive", "fastops"}
LAYER2 = {"clip", "losses", "evaluation", "bootstrap", "detector", "trained"}
ALLOWED: dict[str, set[str]] = {
    **{m: LAYER0 for m in LAYER0},
    **{m: LAYER0 for m in ("structures", "runtime", "toyshapes", "crops", "tinyclip")},
    # scriptarchive: reads a TorchScript archive's tensors (torch only); clip builds on it
    "scriptarchive": set(),
    # fastops: torchvision's RoIAlign and 1x1 convs as matmuls (torch, torchvision.ops only)
    "fastops": set(),
    "toydraw": LAYER0 | {"toyshapes"},
    "toyworld": LAYER0 | {"toyshapes", "toydraw"},
    "shards": LAYER0 | {"structures"},
    "data": LAYER0 | {"structures"},
    **{m: LAYER0 | LAYER1 for m in ("clip", "losses", "evaluation")},
    "bootstrap": LAYER0 | {"evaluation"},
    "detector": LAYER0 | LAYER1 | {"losses"},
    # trained: rebuilds stage 04's detector from its manifest + weights for stage 05, predict and export
    "trained": LAYER0 | LAYER1 | {"detector"},
    "pipeline": LAYER0,
    "report": LAYER0 | LAYER1,
    "viz": LAYER0 | LAYER1,
    "predict": LAYER0 | LAYER1 | LAYER2,
    # ezsd check: reads the data like data.py (without its torch readers) and times CLIP (layer 2)
    "check": LAYER0 | LAYER1 | LAYER2,
    # ezsd export: the detector of predict.Predictor.from_run, traced to ONNX / TorchScript
    "export": LAYER0 | LAYER1 | LAYER2 | {"predict"},
    "distributed": LAYER0 | {"pipeline"},
    # bootstrap: the ablation's intervals span four runs, so no stage can own them (lazy import)
    "ablation": LAYER0 | {"pipeline", "report", "bootstrap", "data"},
    "cli": LAYER0 | LAYER1 | {"pipeline", "report", "predict", "distributed", "viz", "ablation", "check",
                                   "export"},
    "__init__": set(),
}
NO_TORCH = ("torch", "torchvision", "open_clip", "timm", "safetensors")


def _modules() -> list[tuple[str, Path]]:
    out = [(p.stem, p) for p in PKG.glob("*.py")]
    out += [(f"stages.{p.stem}", p) for p in (PKG / "stages").glob("*.py") if p.stem != "__init__"]
    return sorted(out)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module top level?) for every import in the file, lazy ones included."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "ezsd_core":
                found += [(f"ezsd_core.{a.name}", id(node) in top) for a in node.names]
            else:
                found.append((node.module, id(node) in top))
    return found


def _internal(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "ezsd_core" or len(parts) == 1:
        return None
    return ".".join(parts[1:3]) if parts[1] == "stages" and len(parts) > 2 else parts[1]


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_module_imports_only_allowed_layers(module: str, path: Path) -> None:
    imported = [(_internal(n), top, n) for n, top in _imports(path)]
    if module.startswith("stages."):
        allowed = LAYER0 | LAYER1 | LAYER2
    else:
        assert module in ALLOWED, f"{module}.py is not in the layer table of DESIGN.md II.3 / this test"
        allowed = ALLOWED[module]
    for internal, _, full in imported:
        if internal is None:
            continue
        if internal.startswith("stages."):
            raise AssertionError(f"{module} imports another stage ({full}); stages talk through artefacts only")
        assert internal in allowed, f"{module} may not import {internal} (allowed: {sorted(allowed)})"
    third_party = {n.split(".")[0]: top for n, top in _imports(path)}
    if module in LAYER0 or module == "pipeline":
        bad = [n for n in third_party if n in NO_TORCH]
        assert not bad, f"{module} is layer 0 / the runner and must not import {bad}"
    if module != "pipeline":
        assert "papermill" not in third_party, f"{module} imports papermill (only pipeline may)"
    if "fiftyone" in third_party:
        assert module == "viz" and not third_party["fiftyone"], "fiftyone is imported only inside viz functions"


def test_layer_table_names_existing_modules() -> None:
    """A renamed module must be renamed here too, or its rules silently stop applying."""
    existing = {m for m, _ in _modules() if not m.startswith("stages.")}
    assert existing <= set(ALLOWED), sorted(existing - set(ALLOWED))


def test_package_import_has_no_side_effects() -> None:
    import subprocess
    import sys

    code = "import sys, ezsd_core, ezsd_core.config, ezsd_core.pipeline; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", "importing the package, config or the runner must not import torch"

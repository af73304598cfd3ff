"""The pip route (Makefile/CI) and the conda route (environment.yml) install the same exact pins, and
those pins satisfy every dependency pyproject.toml declares."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_lock_satisfies_every_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    pins = _lock()
    for text in declared:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared in pyproject.toml but not pinned in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock pins {name}=={pins[name]}, needs {req}"


def test_conda_route_installs_the_lock() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-r requirements.lock" in pip
    assert any(line.startswith("-e .") for line in pip)
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"] if isinstance(d, str))


def test_make_and_ci_install_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -r requirements.lock" in makefile
    assert "python3 -m venv" in makefile
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_cu126_route_keeps_every_pin_but_the_cuda13_build() -> None:
    """`make setup-cu126` (V100 nodes): the same torch/torchvision versions from the CUDA 12.6 index, every
    other pin of the lock unchanged, and none of the CUDA 13 runtime pins that the cu126 wheel replaces."""
    import re
    import subprocess

    out = subprocess.run(["make", "-s", "--no-print-directory", "cu126-lock"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    lines = [line.split("#", 1)[0].strip() for line in out.splitlines()]
    kept = {canonicalize_name(line.partition("==")[0]): line.partition("==")[2] for line in lines if line}
    pins = _lock()
    dropped = set(pins) - set(kept)
    assert {"torch", "torchvision", "triton", "nvidia-cudnn-cu13", "nvidia-nccl-cu13"} <= dropped
    assert all(re.match(r"(torch|torchvision|triton|cuda-|nvidia-)", n) for n in dropped), sorted(dropped)
    assert all(pins[n] == v for n, v in kept.items()), "a kept pin changed"
    plan = subprocess.run(["make", "-n", "setup-cu126"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    torch_line = next(line for line in plan.splitlines() if "whl/cu126" in line)
    assert f"torch=={pins['torch']}" in torch_line and f"torchvision=={pins['torchvision']}" in torch_line
    assert plan.index("whl/cu126") < plan.index("-r .venv/requirements-cu126.txt"), "torch must be installed first"

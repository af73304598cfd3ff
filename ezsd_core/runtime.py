"""Seeds, devices, threads and checkpoint files.

Role: the small runtime facts every stage needs: ``seed_everything`` (called first in each
``run()``), ``resolve_device``, and checkpoint save/load that never unpickles arbitrary objects
(``weights_only=True``, ``map_location="cpu"``). Layer 1: torch; imports artefacts.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ezsd_core import artefacts

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> dict[str, Any]:
    """Seed python, numpy and torch; return what the manifest records about determinism."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return {"seed": seed, "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "num_threads": torch.get_num_threads()}


def configure_threads() -> None:
    """Use all cores without OpenMP spin-waiting (spinning made CPU steps ~3x slower on 2 cores)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else is checked.

    Raises:
        ValueError: a CUDA device was asked for on a machine without one, or the name is invalid.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device: got {device!r}; allowed: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: got {device!r} but CUDA is not available here; use device: cpu or auto")
    return dev


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """``torch.save`` a dict of tensors/primitives atomically (a crash never leaves half a file)."""
    with artefacts.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` on the CPU, without unpickling code."""
    return torch.load(path, map_location="cpu", weights_only=True)

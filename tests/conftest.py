"""Session setup shared by every test: offline, headless, CPU-only, small thread count, temp FiftyOne."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub / fiftyone / matplotlib (the notebooks papermill starts
# inherit this environment too).
_TMP = Path(tempfile.mkdtemp(prefix="ezsd-tests-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(_TMP / "fiftyone-db"))
os.environ.setdefault("FIFTYONE_CONFIG_DIR", str(_TMP / "fiftyone-config"))
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory) -> Path:
    """A tiny toy world (8 train / 4 val scenes of 64 px, 96 iconic pairs), written once per session."""
    from ezsd_core import toyworld

    return toyworld.generate(tmp_path_factory.mktemp("world") / "smoke", toyworld.SMOKE_SPEC)

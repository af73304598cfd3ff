"""The fuzz test of issue 9: flip a random byte of a random artefact of a finished smoke run; the next
``ezsd run`` repairs exactly that artefact (its stage, its shard) and ends byte-identical."""

from __future__ import annotations

import random
from pathlib import Path

import integrity_runs
import pytest
from integrity_runs import PARAMS, STAGES, overrides

from ezsd_core import artefacts, config, pipeline

finished_run = integrity_runs.finished_run  # a fixture (see integrity_runs)
in_process_runner = integrity_runs.in_process_runner  # a fixture (see integrity_runs)
run_copy = integrity_runs.run_copy  # a fixture (see integrity_runs)


def _listed(run_root: Path) -> dict[tuple[str, str], bytes]:
    """(stage, output path) -> bytes of every output some manifest lists."""
    return {(s, o["path"]): (artefacts.stage_dir(run_root, s) / o["path"]).read_bytes()
            for s in STAGES for o in artefacts.read_manifest(artefacts.stage_dir(run_root, s))["outputs"]}


def _expected_execution(stage: str, path: str) -> tuple[str, int]:
    """The one execution a damaged output needs: its shard's, or shard 0 (re-finalise / whole stage)."""
    doc = config.read_params(PARAMS)
    n = doc[stage].get("num_shards", 1)
    shard = next((i for i in range(n) if path.endswith(artefacts.shard_name(i, n))), 0)
    return stage, shard


def _flip_and_repair(run_root: Path, world: Path, calls: list, rng: random.Random) -> None:
    clean = _listed(run_root)
    stage, path = rng.choice(sorted(clean))
    target = artefacts.stage_dir(run_root, stage) / path
    raw = bytearray(clean[stage, path])
    at = rng.randrange(len(raw))
    raw[at] ^= 1 << rng.randrange(8)
    target.write_bytes(bytes(raw))
    outcomes = pipeline.run(PARAMS, overrides=overrides(world, run_root), echo=lambda _: None)
    where = f"byte {at} of {stage}/{path}"
    assert calls == [_expected_execution(stage, path)], where
    assert [o.stage for o in outcomes if not o.skipped] == [stage], f"{where}: nothing downstream recomputed"
    repaired = _listed(run_root)
    assert repaired.keys() == clean.keys() and all(repaired[k] == clean[k] for k in clean), where


@pytest.mark.parametrize("seed", range(3))
def test_a_flipped_byte_is_repaired_alone_and_the_run_ends_byte_identical(run_copy, in_process_runner, seed) -> None:
    world, run_root = run_copy
    _flip_and_repair(run_root, world, in_process_runner, random.Random(seed))

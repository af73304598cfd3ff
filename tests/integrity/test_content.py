"""Artefacts are judged by their content: a damaged output is found and recomputed alone, readers take
their inputs from the upstream manifest (never a glob), and checkpoint inputs are hashed (issue 9)."""

from __future__ import annotations

from pathlib import Path

import integrity_runs
import pytest
import torch
from integrity_runs import PARAMS, overrides

from ezsd_core import artefacts, config, lineage, pipeline, shards
from ezsd_core.stages import extract_features, train_detector

finished_run = integrity_runs.finished_run  # a fixture (see integrity_runs)
in_process_runner = integrity_runs.in_process_runner  # a fixture (see integrity_runs)
run_copy = integrity_runs.run_copy  # a fixture (see integrity_runs)


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def _damage(path: Path, how: str) -> None:
    if how == "flip":  # same size: only the content hash can tell
        _flip(path, len(path.read_bytes()) - 5)
    else:
        path.write_bytes(path.read_bytes()[:-16])


def _listed(run_root: Path) -> dict[Path, str]:
    """Every output some manifest lists -> its sha256 on disk."""
    found = {}
    for stage in artefacts.STAGE_NUMBERS:
        folder = artefacts.stage_dir(run_root, stage)
        for o in artefacts.read_manifest(folder)["outputs"]:
            found[Path(stage) / o["path"]] = artefacts.sha256_file(folder / o["path"])
    return found


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_shard_is_recomputed_alone_and_nothing_downstream(run_copy, in_process_runner, how) -> None:
    world, run_root = run_copy
    clean = _listed(run_root)
    shard = artefacts.stage_dir(run_root, "propose_regions") / "regions" / artefacts.shard_name(1, 2)
    _damage(shard, how)
    outcomes = {o.stage: o for o in pipeline.run(PARAMS, overrides=overrides(world, run_root), echo=print)}
    assert in_process_runner == [("propose_regions", 1)], "only the damaged shard ran"
    assert outcomes["propose_regions"].detail.startswith("output regions/shard-00001-of-00002.safetensors: ")
    assert all(o.skipped for s, o in outcomes.items() if s != "propose_regions")
    assert _listed(run_root) == clean, "the repaired run is byte-identical to the clean one"


def test_a_damaged_file_of_intact_shards_is_rewritten_by_one_execution(run_copy, in_process_runner) -> None:
    world, run_root = run_copy
    clean = _listed(run_root)
    _flip(artefacts.stage_dir(run_root, "propose_regions") / "metrics.json", 10)
    pipeline.run(PARAMS, overrides=overrides(world, run_root), echo=print)
    assert in_process_runner == [("propose_regions", 0)], "one execution re-finalises; no shard is recomputed"
    assert _listed(run_root) == clean


def test_an_upstream_output_damaged_since_is_named_by_the_stage_that_reads_it(run_copy) -> None:
    _, run_root = run_copy
    _flip(artefacts.stage_dir(run_root, "extract_features") / "feats" / artefacts.shard_name(0, 2), -5)
    with pytest.raises(artefacts.MissingArtefactError,
                       match=r"'extract_features'.*output feats/shard-00000-of-00002.safetensors: content changed"):
        train_detector.feature_index(run_root)


def test_shard_files_no_manifest_lists_are_ignored_by_readers(run_copy) -> None:
    _, run_root = run_copy
    regions = artefacts.stage_dir(run_root, "propose_regions") / "regions"
    feats = artefacts.stage_dir(run_root, "extract_features") / "feats"
    for folder, group in ((regions, "region"), (feats, "gt")):  # an earlier num_shards: 3 left these behind
        listed = shards.RaggedShard(folder / artefacts.shard_name(0, 2))
        ids = [int(i) for i in listed.image_ids]
        rows = [{f"{group}_boxes": torch.zeros(0, 4)} for _ in ids]
        fields = {k: v for k, v in listed.image_fields.items() if k != "image_ids"}
        shards.write_shard(folder / artefacts.shard_name(2, 3), ids, {group: rows}, {"key": "an old run"},
                           image_fields=fields)
    names = {s.path.name for s, _ in extract_features.region_index(run_root).values()}
    assert names == {artefacts.shard_name(0, 2), artefacts.shard_name(1, 2)}
    names = {s.path.name for s, _ in train_detector.feature_index(run_root).values()}
    assert names == {artefacts.shard_name(0, 2), artefacts.shard_name(1, 2)}


def test_a_checkpoint_file_given_as_input_is_hashed_into_the_lineage(tmp_path: Path, smoke_world: Path) -> None:
    weights = tmp_path / "clip.safetensors"
    weights.write_bytes(b"weights v1")
    doc = config.read_params(PARAMS)
    sets = [f"common.data_root={smoke_world}", f"common.run_root={tmp_path / 'run'}",
            f"finetune_clip.clip_pretrained={weights}", "finetune_clip.clip_model=ezsd-tiny-cnn"]
    cfg = config.stage_config(doc, "finetune_clip", source="x", overrides=sets)
    first = config.upstream_hashes(cfg)
    assert first["file:clip_pretrained"] == artefacts.sha256_file(weights)
    weights.write_bytes(b"weights v2")  # same path, other content: the stage is stale
    assert config.upstream_hashes(cfg)["file:clip_pretrained"] != first["file:clip_pretrained"]
    tag = config.stage_config(doc, "finetune_clip", source="x", overrides=sets[:2])
    assert lineage.input_files(tag) == {}, "pretrain_clip (the default) is tracked as an upstream stage"
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text("{}")
    (folder / "open_clip_model.safetensors").write_bytes(b"weights v1")
    local = config.stage_config(doc, "finetune_clip", source="x", overrides=[*sets[:2], sets[3],
                                                                            f"finetune_clip.clip_pretrained=local-dir:{folder}"])
    before = config.upstream_hashes(local)
    names = {"file:clip_pretrained/open_clip_config.json", "file:clip_pretrained/open_clip_model.safetensors"}
    assert names <= set(before)
    (folder / "open_clip_model.safetensors").write_bytes(b"weights v2")
    assert config.upstream_hashes(local) != before, "a local-dir: folder's files are inputs too"


def test_the_fast_path_hashes_only_when_size_or_time_differs(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "a.bin").write_bytes(b"abc")
    entry = artefacts.output_entry(tmp_path, "a.bin")
    hashed: list[Path] = []
    real = artefacts.sha256_file
    monkeypatch.setattr(artefacts, "sha256_file", lambda p: hashed.append(Path(p)) or real(p))
    assert artefacts.output_problem(tmp_path, entry) is None and hashed == []
    (tmp_path / "a.bin").write_bytes(b"abd")  # same size, new mtime: hashed, and found changed
    assert artefacts.output_problem(tmp_path, entry) == "content changed (sha256 differs)" and len(hashed) == 1
    assert lineage.staleness(tmp_path, config_hash="x", upstream={}) == "not run yet"
